"""`vpgrid plan --estimate`: image-passes counted by hand for a tiny grid, dataset sizes checked against the
loaders, throughput tables refused in one line, and the control plane still torch-free."""
import ast
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.estimate import DEFAULT_TABLE, estimate, load_table, parse_table, run_passes
from orchestrator.grid import expand, parse_grid
from workers.core.schemas import DATASETS as DATASET_CARDS
from workers.core.schemas import sizes as sizes_mod
from workers.core.schemas.datasets import dataset_sizes
from workers.core.schemas.sizes import CALTECH101, EUROSAT

pytestmark = pytest.mark.unit

ROOT = Path(__file__).parents[1]
cli = CliRunner()

# demo_cnn on digits (1257 train / 540 test, 10 classes) and on shapes cut to 100 train (5 per class) / 60 test
# with cap_shots; 1, 10 and full shots; rlm, flm, ilm; one seed; 4 epochs.
TINY = {
    "name": "tiny", "models": [{"name": "demo_cnn", "weights": "random"}], "methods": ["rlm", "flm", "ilm"],
    "datasets": ["digits", {"name": "shapes", "args": {"n_train": 100, "n_test": 60, "cap_shots": True}}],
    "shots": [1, 10, "full"], "seeds": [0], "train": {"epochs": 4, "batch_size": 8}}
TABLE = {"machine": "test", "device": "cpu", "card": "test card", "dtype": "float32", "measured_at": "now",
         "models": {"demo_cnn": {"input_size": 32, "batch": 8, "train_images_per_s": 100.0,
                                 "forward_images_per_s": 1000.0, "startup_s": 2.0}}}


def _grid(d=TINY):
    return parse_grid(yaml.safe_dump(d))


def test_tiny_grid_counted_by_hand():
    # digits: N = 10 (1 shot), 100 (10 shots), 1257 (full): sum 1367. shapes: N = 20, 100 (10 shots capped at the
    # 5 each class has), 100 (full): sum 220.
    # fwd+bwd = 3 methods x 4 epochs x sum N:  digits 3*4*1367 = 16404, shapes 3*4*220 = 2640  -> 19044
    # forward = test once per run + remaps (rlm none, flm N once, ilm N every epoch):
    #   digits: 9*540 + 1367 + 4*1367 = 4860 + 6835 = 11695;  shapes: 9*60 + 220 + 4*220 = 540 + 1100 = 1640
    # reference protocol: the test split after each of the 4 epochs instead of once:
    #   digits: 9*4*540 + 6835 = 26275;  shapes: 9*4*60 + 1100 = 3260
    parts, total = estimate(_grid(), "tiny", parse_table(TABLE, "t.json"), strict=True)
    assert (total.runs, total.train, total.forward, total.ref_forward) == (18, 19044, 11695 + 1640, 26275 + 3260)
    assert total.exact and not total.failing and not total.unknown
    # hours: 2 trials (one per dataset, 9 runs each), 2 s start-up each; the reference starts 18 processes
    assert total.trials == 2
    assert total.hours == pytest.approx((19044 / 100 + 13335 / 1000 + 2 * 2) / 3600)
    assert total.ref_hours == pytest.approx((19044 / 100 + 29535 / 1000 + 18 * 2) / 3600)


def test_eval_every_lp_and_per_run_counts():
    d = {**TINY, "datasets": ["digits"], "shots": [10], "methods": ["ilm", "lp"],
         "train": {"epochs": 6, "batch_size": 8, "eval_every": 2}}
    ilm, lp = expand(_grid(d))
    # ilm: 6 epochs x 100 fwd+bwd; forward: 6 remaps x 100 + test at the end + after epochs 2, 4, 6 (3 x 540)
    assert run_passes(ilm) == run_passes(ilm).__class__(600, 600 + 540 + 3 * 540, True, False)
    assert run_passes(ilm, reference=True).forward == 600 + 6 * 540
    # lp: the training images' features once, the test split once; no backward through the model
    assert (run_passes(lp).train, run_passes(lp).forward) == (0, 100 + 540)


def test_capped_shots_without_per_class_counts_are_an_upper_bound():
    pets = dataset_sizes("oxford_pets", {"cap_shots": True})
    assert pets.train_images(50, cap=True) == sizes_mod.Count(50 * 37, False)
    assert pets.train_images(100, cap=True) == sizes_mod.Count(3680, False)  # never more than the split
    assert pets.train_images(100, cap=False) == sizes_mod.Count(3700, True)  # or the run fails: exact either way
    dtd = dataset_sizes("dtd", {})
    assert dtd.train_images(50, cap=True) == sizes_mod.Count(40 * 47, True)  # every class has 40


def test_uncapped_shots_above_a_class_count_fail_and_are_reported():
    d = {**TINY, "datasets": ["digits"], "shots": [200], "methods": ["rlm"]}  # digits classes have 122..128
    _, total = estimate(_grid(d), "t", parse_table(TABLE, "t.json"), strict=True)
    assert total.failing == 1 and total.train == 0


def test_unknown_sizes_are_reported_not_guessed(monkeypatch):
    monkeypatch.setitem(DATASET_CARDS, "shapes", dataclasses.replace(DATASET_CARDS["shapes"], sizes=None))
    parts, total = estimate(_grid(), "t", parse_table(TABLE, "t.json"), strict=True)
    assert total.unknown == {"shapes": 9} and total.hours is None and total.ref_hours is None
    assert total.train == 16404  # digits only
    from orchestrator.estimate import render

    assert any("9 runs have unknown sizes (shapes" in line for line in render(parts, total, None))


# ---- sizes against the loaders ----

@pytest.mark.parametrize("name", sorted(DATASET_CARDS))
def test_every_dataset_card_has_sizes_matching_its_class_count(name):
    s = dataset_sizes(name, {})
    assert s is not None, f"{name}: add its split sizes to its card in workers/core/schemas/datasets.py"
    assert s.classes == DATASET_CARDS[name].num_classes
    if s.train_per_class is not None:
        assert len(s.train_per_class) == s.classes and sum(s.train_per_class) == s.train


@pytest.mark.parametrize("args", [{}, {"test_fraction": 0.5}])
def test_digits_sizes_match_the_loader(args):
    from workers.data import load_dataset

    d = load_dataset("digits", 8, None, **args)
    s = dataset_sizes("digits", args)
    assert (s.train, s.test) == (len(d.train_y), len(d.test_y))
    if s.train_per_class is not None:
        assert list(s.train_per_class) == d.train_y.bincount().tolist()


def test_shapes_sizes_match_the_loader():
    from workers.data import load_dataset

    args = {"n_train": 47, "n_test": 13}
    d = load_dataset("shapes", 8, None, **args)
    s = dataset_sizes("shapes", args)
    assert (s.train, s.test) == (47, 13)
    assert list(s.train_per_class) == d.train_y.bincount(minlength=20).tolist()


@pytest.mark.parametrize("name, totals, n", [("eurosat", EUROSAT, 27000), ("caltech101", CALTECH101, 8677)])
@pytest.mark.parametrize("fraction", [0.2, 0.35])
def test_self_split_sizes_follow_the_loaders_split(name, totals, n, fraction):
    """EuroSAT and Caltech101 are cut by workers.data.vision.stratified_split: run it on labels with the
    datasets' per-class counts (27,000 and 8,677 images: the documented totals)."""
    import torch

    from workers.data.vision import stratified_split

    assert sum(totals.values()) == n
    y = torch.cat([torch.full((k,), c) for c, k in enumerate(totals.values())])
    tr, te = stratified_split(y, fraction)
    s = dataset_sizes(name, {"test_fraction": fraction})
    assert (s.train, s.test) == (len(tr), len(te))
    assert list(s.train_per_class) == y[tr].bincount().tolist()


def test_documented_totals():
    # torchvision's documented splits (see the comments in workers/core/schemas/datasets.py and sizes.py)
    assert sum(sizes_mod.SVHN) == 73257 and len(CALTECH101) == 101 and len(EUROSAT) == 10
    assert (dataset_sizes("cifar10", {}).train, dataset_sizes("flowers102", {}).test) == (50000, 6149)


# ---- the throughput table and the CLI ----

def _write(tmp_path, data) -> Path:
    p = tmp_path / "table.json"
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    return p


def _drop(d: dict, *path):
    d = json.loads(json.dumps(d))
    *parents, last = path
    inner = d
    for k in parents:
        inner = inner[k]
    del inner[last]
    return d


def _set(d: dict, value, *path):
    d = json.loads(json.dumps(d))
    *parents, last = path
    inner = d
    for k in parents:
        inner = inner[k]
    inner[last] = value
    return d


BAD_TABLES = [
    ("{not json", "not valid JSON at line 1"),
    ([1, 2], "a throughput table is a JSON object"),
    (_drop(TABLE, "card"), "card: missing"),
    (_set(TABLE, "tpu", "device"), "device: 'tpu' is not one of cpu, cuda"),
    (_set(TABLE, "fp8", "dtype"), "dtype: 'fp8' is not one of float32, bfloat16"),
    (_set(TABLE, "fast", "models", "demo_cnn", "train_images_per_s"),
     "models.demo_cnn.train_images_per_s: must be a number > 0 (got 'fast')"),
    (_set(TABLE, 0, "models", "demo_cnn", "forward_images_per_s"), "models.demo_cnn.forward_images_per_s: must be a number > 0"),
    (_set(TABLE, 1.5, "models", "demo_cnn", "batch"), "models.demo_cnn.batch: must be an integer > 0 (got 1.5)"),
    (_drop(TABLE, "models", "demo_cnn", "startup_s"), "models.demo_cnn.startup_s: missing"),
    (_set(TABLE, 1, "models", "demo_cnn", "speed"), "models.demo_cnn.speed: unknown field"),
    (_set(TABLE, {}, "models"), "no entry for model 'demo_cnn'"),
]


@pytest.mark.parametrize("data, message", BAD_TABLES, ids=[m.split(":")[0] for _, m in BAD_TABLES])
def test_bad_throughput_table_is_refused_in_one_line(tmp_path, data, message):
    grid = tmp_path / "tiny.yaml"
    grid.write_text(yaml.safe_dump(TINY))
    table = _write(tmp_path, data)
    r = cli.invoke(app, ["plan", str(grid), "--estimate", "--throughput", str(table)])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {table}: ") and message in lines[0], r.stderr


def test_missing_throughput_file(tmp_path):
    grid = tmp_path / "tiny.yaml"
    grid.write_text(yaml.safe_dump(TINY))
    r = cli.invoke(app, ["plan", str(grid), "--throughput", str(tmp_path / "nope.json")])
    assert r.exit_code == 2 and "nope.json: cannot read the throughput table" in r.stderr


def test_plan_estimate_prints_both_protocols(tmp_path):
    grid = tmp_path / "tiny.yaml"
    grid.write_text(yaml.safe_dump(TINY))
    r = cli.invoke(app, ["plan", str(grid), "--estimate", "--throughput", str(_write(tmp_path, TABLE)), "--json"])
    assert r.exit_code == 0, r.output
    est = json.loads(r.stdout)["estimate"]
    assert est["throughput"]["card"] == "test card"
    t = est["total"]
    assert (t["train_passes"], t["forward_passes"], t["reference_forward_passes"]) == (19044, 13335, 29535)
    assert t["reference_over_vpgrid"] == pytest.approx((190.44 + 29.535 + 36) / (190.44 + 13.335 + 4))
    text = cli.invoke(app, ["plan", str(grid), "--throughput", str(_write(tmp_path, TABLE))]).stdout
    assert "reference protocol" in text and "1.23x" in text


def test_the_shipped_table_is_valid_and_covers_the_paper_grid():
    table = load_table(DEFAULT_TABLE)
    for m in ("demo_cnn", "resnet18", "resnet34", "resnet50", "deit_tiny", "swin_tiny", "clip_vit_l14_336"):
        assert m in table.models
    r = cli.invoke(app, ["plan", str(ROOT / "grids" / "paper.yaml"), "--estimate", "--json"])
    assert r.exit_code == 0, r.output
    est = json.loads(r.stdout)["estimate"]
    assert [s["study"] for s in est["studies"]] == ["vision", "clip", "crossmodal"]
    assert est["total"]["runs"] == json.loads(r.stdout)["runs"] and est["total"]["hours"] > 0
    assert est["total"]["reference_hours"] > est["total"]["hours"]


def test_default_table_lacking_a_model_gives_unknown_hours_not_an_error(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({**TINY, "models": [{"name": "clip_vit_b32", "weights": "random"}]}))
    r = cli.invoke(app, ["plan", str(grid), "--estimate"])
    if "clip_vit_b32" in load_table(DEFAULT_TABLE).models:
        pytest.skip("the shipped table measures clip_vit_b32")
    assert r.exit_code == 0 and "no throughput for clip_vit_b32: hours unknown" in r.stdout


@pytest.mark.integration
@pytest.mark.parametrize("args", [["plan", "PAPER", "--estimate"], ["plan", "PAPER", "--estimate", "--gpus", "4"],
                                  ["plan", "PAPER", "--json"], ["list"]])
def test_planning_and_listing_import_neither_torch_nor_ray(args):
    """A fresh interpreter: the cards answer these without the workers (--gpus reads the models' resources)."""
    args = [str(ROOT / "grids" / "paper.yaml") if a == "PAPER" else a for a in args]
    code = ("import sys; from typer.testing import CliRunner; from orchestrator.cli import app; "
            f"r = CliRunner().invoke(app, {args!r}); "
            "assert r.exit_code == 0, r.output; "
            "print(sorted(m for m in ('torch', 'ray', 'torchvision', 'timm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"


def test_no_orchestrator_module_imports_torch_even_lazily():
    for path in sorted((ROOT / "orchestrator").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n == "torch" or n.startswith("torch.") for n in names), f"{path.name} imports torch"


# ---- the GPU check, without a GPU ----

@pytest.mark.integration
def test_gpu_check_without_cuda_says_so_in_one_line():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine: the check would run")
    r = subprocess.run([sys.executable, "-m", "workers.gpu_check"], capture_output=True, text=True, cwd=ROOT)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 1 and len(lines) == 1 and "no CUDA device" in lines[0], r.stderr
    assert r.stdout == ""


def test_gpu_check_grid_plans_into_four_quarter_gpu_trials():
    from orchestrator.plan import pack
    from orchestrator.validate import check_grid
    from workers.gpu_check import gpu_grid

    g = parse_grid(gpu_grid(), "gpu-check")
    check_grid(g, "gpu-check")
    trials = pack(g, expand(g))
    assert len(trials) == 4 and {(t.cpu, t.gpu) for t in trials} == {(1.0, 0.25)}
    assert all(r.weights == "random" for t in trials for r in t.runs)


def test_bench_gpu_must_run_alone():
    r = cli.invoke(app, ["bench", "gpu", "plan"])
    assert r.exit_code == 2 and "run `vpgrid bench gpu` alone" in r.stderr


@pytest.mark.integration
def test_bench_train_refuses_an_unknown_model():
    r = cli.invoke(app, ["bench", "train", "--models", "resnet19"])
    assert r.exit_code == 2 and "unknown model 'resnet19'" in r.stderr and "did you mean 'resnet18'" in r.stderr
