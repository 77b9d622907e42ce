"""Every registered name has an argument schema and every schema a registered name; each schema agrees with
the code that consumes its arguments (in the spirit of timm's tests over every model)."""
import inspect

import pytest

from workers.catalog import REGISTRIES
from workers.core.registry import Registry
from workers.core.schema import REQUIRED, Arg, Schema, check_args
from workers.core.schemas import SCHEMAS

pytestmark = pytest.mark.unit

DECLARED = [(kind, name) for kind, table in SCHEMAS.items() for name in table]
REGISTERED = [(kind, name) for kind, reg in REGISTRIES.items() for name in reg.names()]


@pytest.mark.parametrize("kind, name", DECLARED, ids=lambda v: str(v))
def test_every_schema_has_a_registered_name(kind, name):
    assert name in REGISTRIES[kind], f"{kind} {name!r} is declared in workers/schemas but never registered"


@pytest.mark.parametrize("kind, name", REGISTERED, ids=lambda v: str(v))
def test_every_registered_name_has_its_schema(kind, name):
    assert REGISTRIES[kind].schema(name) is SCHEMAS[kind][name]


@pytest.mark.parametrize("kind, name", DECLARED, ids=lambda v: str(v))
def test_defaults_pass_their_own_checks(kind, name):
    schema = SCHEMAS[kind][name]
    assert schema.help and all(a.help for a in schema.args.values())
    problems = check_args(schema, schema.defaults())
    assert problems == [f"arg {k!r} is required ({a.describe()})" for k, a in schema.args.items() if a.required]


def test_a_registry_refuses_a_name_without_a_schema():
    reg = Registry("widget", {"known": Schema("a widget")})
    reg.register("known")(object())
    with pytest.raises(ValueError, match="'unknown' has no argument schema: declare it in workers/core/schemas/widgets.py"):
        reg.register("unknown")


@pytest.mark.parametrize("name", sorted(SCHEMAS["dataset"]))
def test_dataset_loaders_take_exactly_their_declared_args(name):
    fn = REGISTRIES["dataset"].get(name)
    # size, root and crop say how to load, not what: they are not the grid's dataset args
    params = [p for p in inspect.signature(fn).parameters.values() if p.name not in ("size", "root", "crop")]
    assert {p.name for p in params} == set(SCHEMAS["dataset"][name].args) - {"cap_shots"}
    assert all(p.default is inspect.Parameter.empty for p in params), "defaults belong in the schema only"


@pytest.mark.parametrize("name", ["dense", "magnitude", "random", "channel", "fakequant"])
def test_builtin_compressions_take_exactly_their_declared_args(name):
    fn = inspect.unwrap(REGISTRIES["compression"].get(name))
    params = list(inspect.signature(fn).parameters)[2:]  # after (model, calib)
    assert set(params) == set(SCHEMAS["compression"][name].args)


@pytest.mark.parametrize("name", sorted(SCHEMAS["model"]))
def test_model_input_size_default_is_its_canvas(name):
    from workers.models import MODELS

    assert SCHEMAS["model"][name].args["input_size"].default == MODELS.meta(name).input_size


def test_closed_choices_match_the_tables_that_use_them():
    from workers.compression.structured import _IMPORTANCE
    from workers.models.clip_text import CLASSES, TEMPLATES

    assert set(SCHEMAS["compression"]["channel"].args["importance"].choices) == set(_IMPORTANCE)
    for name in ("clip_vit_b32", "clip_vit_l14", "clip_vit_l14_336"):
        args = SCHEMAS["model"][name].args
        assert set(args["templates"].choices) == set(TEMPLATES) and set(args["classes"].choices) == set(CLASSES)


@pytest.mark.parametrize("arg, good, bad, message", [
    (Arg("float", REQUIRED, "x", lo=0, hi=1, closed="[)"), [0, 0.5, 0.999], [1, 1.5, -0.1, float("nan")],
     "x 1.5 is out of range [0, 1)"),
    (Arg("int", 4, "x", lo=2, hi=8), [2, 8], [1, 9, 4.0, True], "x 9 is out of range [2, 8]"),
    (Arg("int", 224, "x", lo=1, multiple_of=16), [16, 224], [100, 0], "x 100 is not a multiple of 16"),
    (Arg("str", "a", "x", choices=("a", "b")), ["a", "b"], ["c", 1], "x 'c' is not one of 'a', 'b'"),
    (Arg("bool", False, "x"), [True, False], [1, "yes"], "x 'yes' is not a bool"),
    (Arg("int", None, "x", lo=2, hi=8, nullable=True), [None, 2], [1, "8"], "x '8' is not an int"),
])
def test_arg_checks_against_hand_picked_values(arg, good, bad, message):
    assert [arg.problem("x", v) for v in good] == [None] * len(good)
    assert all(arg.problem("x", v) for v in bad)
    assert message in [arg.problem("x", v) for v in bad]
