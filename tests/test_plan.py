from collections import Counter

import pytest
import yaml

from orchestrator.grid import expand, parse_grid
from orchestrator.plan import BREAKDOWN_AXES, axis_value, breakdown, breakdown_by_state, pack
from tests.conftest import TINY

pytestmark = pytest.mark.unit


def test_packs_group_variant_and_dataset_and_cover_every_run_once():
    d = yaml.safe_load(TINY)
    d["pack_size"] = 5
    d["models"][0]["resources"] = {"cpu": 0.5, "gpu": 0.25}
    grid = parse_grid(yaml.safe_dump(d))
    runs = expand(grid)
    trials = pack(grid, runs)
    keys = [r.run_key for t in trials for r in t.runs]
    assert sorted(keys) == sorted(r.run_key for r in runs)  # each run in exactly one trial
    for t in trials:
        assert len(t.runs) <= 5
        assert len({(r.variant_key, r.dataset) for r in t.runs}) == 1
        assert (t.cpu, t.gpu) == (0.5, 0.25)
    # 12 runs per variant in 2 cells of 6 (3 methods x 2 seeds): a cell larger than the pack size 5 goes in two
    # even pieces of 3, and two pieces do not fit one pack: 4 packs of 3 per variant
    assert sorted(len(t.runs) for t in trials) == [3] * 8
    assert all(len({r.cell_key for r in t.runs}) == 1 for t in trials)
    assert len({t.trial_id for t in trials}) == len(trials)
    assert [t.trial_id for t in pack(grid, runs)] == [t.trial_id for t in trials]  # deterministic


def test_packs_keep_cells_whole_and_alike_in_size_largest_first():
    """Cells (one variant, dataset, shots and training config) fill packs whole, each into the least-filled pack
    it fits; the trials with the most training (epochs x images) come first."""
    d = yaml.safe_load(TINY)
    d.update(pack_size=12, shots=[1, 2, 5, "full"], seeds=[1, 2], methods=["rlm", "ilm"])
    d["overrides"] = [{"match": {"shots": "full"}, "set": {"epochs": 1}}]
    grid = parse_grid(yaml.safe_dump(d))
    runs = expand(grid)
    trials = pack(grid, runs)
    cells = Counter(r.cell_key for r in runs)
    assert set(cells.values()) == {4}  # 2 methods x 2 seeds
    for t in trials:
        for c in {r.cell_key for r in t.runs}:
            assert sum(r.cell_key == c for r in t.runs) == cells[c]  # every cell whole in one trial
    # per variant 4 cells of 4, packs of <= 12: 2 packs of 8, not 12 + 4
    assert sorted(len(t.runs) for t in trials) == [8] * 4
    costs = [sum(r.train.epochs * (1000 if r.shots is None else r.shots) for r in t.runs) for t in trials]
    assert costs == sorted(costs, reverse=True) and costs[0] > costs[-1]
    # prompt_batch is how a worker runs a cell, not what it computes: same keys, same packs
    d["train"]["prompt_batch"] = 2
    again = pack(parse_grid(yaml.safe_dump(d)), expand(parse_grid(yaml.safe_dump(d))))
    assert [[r.run_key for r in t.runs] for t in again] == [[r.run_key for r in t.runs] for t in trials]


def test_breakdown_counts():
    runs = expand(parse_grid(TINY))
    b = breakdown(runs)
    assert b["method"] == {"rlm": 8, "flm": 8, "ilm": 8}
    assert b["compression"] == {"dense": 12, "magnitude@0.5": 12}
    assert b["shots"] == {"1": 12, "2": 12}
    assert sum(b["seed"].values()) == len(runs) == sum(Counter(r.dataset for r in runs).values())


def test_breakdowns_match_a_run_by_run_count_on_the_paper_grid():
    """The counting goes through Counter over raw values; compare with counting axis_value run by run."""
    import random

    from orchestrator.grid import load_grid

    runs = expand(load_grid("grids/paper.yaml")[0])
    rng = random.Random(0)
    states = [rng.choice(["done", "failed", "pending"]) for _ in runs]
    slow = {a: {} for a in BREAKDOWN_AXES}
    for r, s in zip(runs, states):
        for a in BREAKDOWN_AXES:
            slow[a].setdefault(str(axis_value(r, a)), {"done": 0, "failed": 0, "pending": 0})[s] += 1
    got = breakdown_by_state(runs, states)
    assert got == slow
    assert all(list(got[a]) == list(slow[a]) for a in BREAKDOWN_AXES)  # values in order of first appearance
    assert breakdown(runs) == {a: {v: sum(c.values()) for v, c in slow[a].items()} for a in BREAKDOWN_AXES}
    assert "resnet50" in got["model"] and "lth@12" in got["compression"] and "full" in got["shots"]


def test_resources_precedence_model_then_grid_then_registry_default():
    d = yaml.safe_load(TINY)
    d["models"].append({"name": "resnet18", "weights": "random", "resources": {"cpu": 2, "gpu": 0.5}})
    defaults = {"demo_cnn": {"cpu": 1, "gpu": 0.25}, "resnet18": {"cpu": 4, "gpu": 1}}
    grid = parse_grid(yaml.safe_dump(d))
    got = {(t.runs[0].model, t.cpu, t.gpu) for t in pack(grid, expand(grid), defaults)}
    assert got == {("demo_cnn", 1, 0.25), ("resnet18", 2, 0.5)}  # registry default; the model's own entry
    assert {(t.cpu, t.gpu) for t in pack(grid, expand(grid)) if t.runs[0].model == "demo_cnn"} == {(None, None)}
    d["resources"] = {"cpu": 3, "gpu": 0}
    grid = parse_grid(yaml.safe_dump(d))
    got = {(t.runs[0].model, t.cpu, t.gpu) for t in pack(grid, expand(grid), defaults)}
    assert got == {("demo_cnn", 3, 0), ("resnet18", 2, 0.5)}  # grid-level beats the default, not the model's own


def test_launcher_reads_the_models_default_resources_from_their_cards():
    from orchestrator.validate import check_runs

    d = yaml.safe_load(TINY)
    d["models"] = [{"name": "resnet50", "weights": "random"}, {"name": "clip_vit_l14", "weights": "random"}]
    assert check_runs(expand(parse_grid(yaml.safe_dump(d))), "g.yaml") == {
        "resnet50": {"cpu": 2, "gpu": 0.25}, "clip_vit_l14": {"cpu": 2, "gpu": 0.5}}


def test_plan_gpus_refuses_a_checkpoint_format_the_model_cannot_read_as_the_launch_does(tmp_path):
    """`plan --gpus` and the launch check the formats with one function, torch-free, from the models' cards."""
    from typer.testing import CliRunner

    from orchestrator.cli import app
    from orchestrator.grid import GridError
    from orchestrator.validate import check_runs

    d = yaml.safe_load(TINY)
    d["models"][0]["weights"] = {"format": "upop", "path": "w.pt"}
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(d))
    r = CliRunner().invoke(app, ["plan", str(path), "--gpus", "1"])
    why = "model 'demo_cnn' cannot load checkpoint format 'upop' (it loads: state_dict)"
    assert r.exit_code != 0 and why in r.output
    with pytest.raises(GridError) as e:
        check_runs(expand(parse_grid(yaml.safe_dump(d))), "g.yaml")
    assert str(e.value) == f"g.yaml: {why}"
