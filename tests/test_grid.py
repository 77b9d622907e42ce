import dataclasses
import hashlib

import pytest

from orchestrator.grid import GridError, expand, load_grid, parse_grid
from tests.conftest import TINY
from workers.spec import RunSpec, TrainConfig


def grid_with(**changes) -> str:
    import yaml

    d = yaml.safe_load(TINY)
    d.update(changes)
    return yaml.safe_dump(d)


def test_expansion_is_the_product_of_axes():
    runs = expand(parse_grid(TINY))
    assert len(runs) == 2 * 3 * 1 * 2 * 2  # variants x methods x datasets x shots x seeds
    assert len({r.run_key for r in runs}) == len(runs)
    assert {(r.compression, r.compression_level) for r in runs} == {("dense", None), ("magnitude", 0.5)}


def test_list_valued_compression_args_expand():
    text = grid_with(models=[{"name": "demo_cnn", "compressions": [{"method": "fakequant", "bits": [4, 2], "act_bits": [None, 8]}]}])
    runs = expand(parse_grid(text))
    assert {tuple(sorted(r.compression_args.items())) for r in runs} == {
        (("act_bits", a), ("bits", b)) for a in (None, 8) for b in (4, 2)}


def test_run_key_is_stable_and_semantic():
    spec = RunSpec(model="demo_cnn", method="ilm", dataset="digits", shots=10, seed=1,
                   compression="magnitude", compression_args={"sparsity": 0.9, "scope": "global"})
    # The key is sha256 of this canonical JSON (sorted keys, no spaces, no grid name), first 16 hex digits.
    # Changing the scheme orphans every existing store, so this spells it out.
    canonical = ('{"compression":"magnitude","compression_args":{"scope":"global","sparsity":0.9},'
                 '"dataset":"digits","dataset_args":{},"method":"ilm","model":"demo_cnn","model_args":{},'
                 '"seed":1,"shots":10,"train":{"batch_size":128,"epochs":100,"eval_batch_size":256,"gamma":0.1,'
                 '"input_size":null,"lr":0.01,"milestones":[0.5,0.72]},"weights":"pretrained"}')
    expected = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    assert spec.run_key == RunSpec.from_dict(spec.to_dict()).run_key == expected
    reordered = dataclasses.replace(spec, compression_args={"scope": "global", "sparsity": 0.9})
    assert reordered.run_key == spec.run_key
    assert dataclasses.replace(spec, grid="other").run_key == spec.run_key  # bookkeeping only
    for change in ({"seed": 2}, {"shots": None}, {"method": "flm"}, {"train": TrainConfig(epochs=99)},
                   {"compression_args": {"sparsity": 0.8, "scope": "global"}}, {"weights": "random"}):
        assert dataclasses.replace(spec, **change).run_key != spec.run_key, change


def test_run_keys_do_not_depend_on_axis_order_or_resources():
    a = {r.run_key for r in expand(parse_grid(TINY))}
    b = {r.run_key for r in expand(parse_grid(grid_with(seeds=[2, 1], shots=[2, 1], resources={"cpu": 2, "gpu": 0.5})))}
    assert a == b


def test_overrides_and_batch_size_per_shots():
    text = grid_with(train={"epochs": 5, "batch_size": {1: 4, 2: 16}},
                     overrides=[{"match": {"method": "ilm", "shots": 2}, "set": {"epochs": 7, "lr": 0.1}}])
    for r in expand(parse_grid(text)):
        assert r.train.batch_size == {1: 4, 2: 16}[r.shots]
        hit = r.method == "ilm" and r.shots == 2
        assert (r.train.epochs, r.train.lr) == ((7, 0.1) if hit else (5, 0.01))


def test_include_and_exclude():
    runs = expand(parse_grid(grid_with(include=[{"method": ["ilm", "flm"]}],
                                       exclude=[{"compression": "magnitude", "shots": 1}])))
    assert {r.method for r in runs} == {"ilm", "flm"}
    assert not [r for r in runs if r.compression == "magnitude" and r.shots == 1]
    assert len(runs) == 2 * 2 * 2 + 2 * 1 * 2


@pytest.mark.parametrize("change, needle", [
    ({"shots": [0]}, "shots.0"),
    ({"shots": ["all"]}, "shots.0"),
    ({"seeds": [1, 1]}, "seeds: Value error, duplicate value 1"),
    ({"methods": []}, "methods: List should have at least 1 item"),
    ({"modles": []}, "modles: Extra inputs are not permitted"),
    ({"name": "has space"}, "name: String should match pattern"),
    ({"train": {"epochs": -1}}, "train.epochs"),
    ({"train": {"milestones": [0.7, 0.5]}}, "train.milestones"),
    ({"resources": {"gpu": 1.5}}, "resources.gpu"),
    ({"overrides": [{"match": {"method": "ilm"}, "set": {"epochz": 3}}]}, "unknown training field(s) ['epochz']"),
    ({"exclude": [{"modle": "x"}]}, "exclude.0.modle"),
    ({"train": {"batch_size": {1: 8}}}, "train.batch_size has no entry for shots 2"),
])
def test_validation_errors_name_the_field(change, needle):
    with pytest.raises(GridError) as e:
        expand(parse_grid(grid_with(**change), "g.yaml"), "g.yaml")
    assert "g.yaml" in str(e.value) and needle in str(e.value), str(e.value)


def test_duplicate_runs_are_an_error():
    text = grid_with(datasets=["digits", {"name": "digits"}])
    with pytest.raises(GridError, match="the same run appears twice"):
        expand(parse_grid(text))


@pytest.mark.parametrize("text, needle", [("a: [1", "not valid YAML"), ("- 1\n- 2", "a grid is a YAML mapping")])
def test_not_a_grid(text, needle):
    with pytest.raises(GridError, match=needle):
        parse_grid(text)


def test_missing_file(tmp_path):
    with pytest.raises(GridError, match="grid file not found"):
        load_grid(tmp_path / "nope.yaml")


def test_shipped_grids_parse():
    from pathlib import Path

    for p in Path(__file__).parents[1].glob("grids/*.yaml"):
        g, _ = load_grid(p)
        assert expand(g, str(p))
