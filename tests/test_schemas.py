"""Every card has a registered builder (a registry refuses a builder without a card), every card's arguments pass
their own checks, and each card agrees with the code that consumes its arguments (in the spirit of timm's tests
over every model)."""
import inspect

import pytest

from workers.catalog import REGISTRIES
from workers.core.registry import Registry
from workers.core.schema import REQUIRED, Arg, check_args
from workers.core.schemas import CARDS, MAPPINGS

pytestmark = pytest.mark.unit

DECLARED = [(kind, name) for kind, table in CARDS.items() for name in table]


@pytest.mark.parametrize("kind, name", DECLARED, ids=lambda v: str(v))
def test_every_card_has_a_registered_builder(kind, name):
    assert name in REGISTRIES[kind], f"{kind} {name!r} has a card in workers/core/schemas but no builder"


def test_every_label_mapping_card_has_a_builder():
    from workers.mapping import LABEL_MAPPINGS

    assert LABEL_MAPPINGS.names() == sorted(MAPPINGS)


@pytest.mark.parametrize("kind, name", DECLARED, ids=lambda v: str(v))
def test_defaults_pass_their_own_checks(kind, name):
    schema = CARDS[kind][name]
    assert schema.help and all(a.help for a in schema.args.values())
    problems = check_args(schema, schema.defaults())
    assert problems == [f"arg {k!r} is required ({a.describe()})" for k, a in schema.args.items() if a.required]


def test_a_registry_refuses_a_name_without_a_card_and_exposes_the_card():
    card = object()
    reg = Registry("blue widget", {"known": card})
    builder = reg.register("known")(object())
    assert reg.get("known") is builder and reg.card("known") is card and reg.entry("known").card is card
    with pytest.raises(ValueError, match="'unknown' has no card: declare it in workers/core/schemas/widgets.py"):
        reg.register("unknown")
    with pytest.raises(ValueError, match="'known' is registered twice"):
        reg.register("known")(object())


@pytest.mark.parametrize("name", sorted(CARDS["dataset"]))
def test_dataset_loaders_take_exactly_their_declared_args(name):
    fn = REGISTRIES["dataset"].get(name)
    # size, root and crop say how to load, not what: they are not the grid's dataset args
    params = [p for p in inspect.signature(fn).parameters.values() if p.name not in ("size", "root", "crop")]
    assert {p.name for p in params} == set(CARDS["dataset"][name].args) - {"cap_shots"}
    assert all(p.default is inspect.Parameter.empty for p in params), "defaults belong in the schema only"


@pytest.mark.parametrize("name", ["dense", "magnitude", "random", "channel", "fakequant"])
def test_builtin_compressions_take_exactly_their_declared_args(name):
    fn = inspect.unwrap(REGISTRIES["compression"].get(name))
    params = list(inspect.signature(fn).parameters)[2:]  # after (model, calib)
    assert set(params) == set(CARDS["compression"][name].args)


def test_closed_choices_match_the_tables_that_use_them():
    from workers.compression.structured import _IMPORTANCE
    from workers.models.clip_text import CLASSES, TEMPLATES

    assert set(CARDS["compression"]["channel"].args["importance"].choices) == set(_IMPORTANCE)
    for name in ("clip_vit_b32", "clip_vit_l14", "clip_vit_l14_336"):
        args = CARDS["model"][name].args
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
