"""The paper's scale, rehearsed: `plan --estimate --gpus` against hand-worked schedules, rehearsal stores that
never mix with results, a rehearsal's input checks on one node, and a rehearsal of a 2,025-run grid on a
two-node local cluster with its store on an S3 server, compacted while trials publish, every run exactly once
(docs/scale.md; `vpgrid bench scale` rehearses the paper's whole grid)."""
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.estimate import DEFAULT_TABLE, load_table, run_seconds, schedule
from orchestrator.grid import expand, parse_grid
from workers.core.store import Store
from tests.conftest import TINY, write_grid

pytestmark = pytest.mark.unit

cli = CliRunner()
VPGRID = [sys.executable, "-m", "orchestrator.cli"]


def trials(*shares):
    return [SimpleNamespace(trial_id=chr(ord("A") + i), gpu=s) for i, s in enumerate(shares)]


def test_schedule_on_two_gpus_by_hand():
    # t=0: A and B fill GPU 0, C (a whole GPU) takes GPU 1, D and E wait; t=3: C ends, D and E share GPU 1
    # (ending at 8 and 5); A ends last, at 10.
    m = schedule(trials(0.5, 0.5, 1.0, 0.5, 0.5), [10, 4, 3, 5, 2], gpus=2)
    assert m.wall_s == 10 and m.busy_s == 0.5 * 10 + 0.5 * 4 + 3 + 0.5 * 5 + 0.5 * 2
    assert m.utilisation == pytest.approx(13.5 / (2 * 10)) and (m.longest_s, m.longest_trial) == (10, "A")


def test_schedule_lets_a_smaller_later_trial_start_while_a_larger_one_waits():
    # one GPU: A takes half; B needs all of it and waits for A (10 s); C fits beside A at once (0..1); B 10..12
    m = schedule(trials(0.5, 1.0, 0.5), [10, 2, 1], gpus=1)
    assert m.wall_s == 12 and m.shares == {"0.5": 2, "1": 1}


def test_schedule_refuses_trials_without_a_gpu_share():
    from orchestrator.estimate import TableError

    with pytest.raises(TableError, match="trial B asks for gpu 0"):
        schedule(trials(0.5, 0), [1, 1], gpus=1)


def small_grid(tmp_path: Path, gpu: float, **changes) -> Path:
    d = yaml.safe_load(TINY)
    d.update(resources={"cpu": 1, "gpu": gpu}, **changes)
    return write_grid(tmp_path, yaml.safe_dump(d))


def plan_json(*args) -> dict:
    r = cli.invoke(app, ["plan", *map(str, args), "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_plan_gpus_one_whole_gpu_runs_the_trials_back_to_back(tmp_path):
    g = small_grid(tmp_path, 1.0)
    out = plan_json(g, "--gpus", 1)
    span, total = out["estimate"]["makespan"], out["estimate"]["total"]
    # one trial at a time: the wall is the sum of every trial, which the estimate's hours count per model
    assert span["trials"] == out["trials"] and span["gpus"] == 1
    assert span["wall_s"] == pytest.approx(total["hours"] * 3600, rel=1e-9)
    assert span["utilisation"] == pytest.approx(1.0)


def test_plan_gpus_by_hand_from_the_table(tmp_path):
    """Per-trial seconds from the table (start-up + each run's), scheduled by hand: 4 slots a GPU, trials in
    the launch's order."""
    g = small_grid(tmp_path, 0.25)
    grid = parse_grid(g.read_text())
    table = load_table(DEFAULT_TABLE)
    from orchestrator.validate import check_runs
    from orchestrator.plan import pack

    runs = expand(grid)
    packed = pack(grid, runs, check_runs(runs, str(g)))
    secs = [table.get("demo_cnn").startup_s + sum(run_seconds(r, table) for r in t.runs) for t in packed]
    assert len(secs) > 4
    # one GPU, four slots: the first four trials start at 0; each later one takes the slot that frees first
    slots = sorted(secs[:4])
    for s in secs[4:]:
        slots = sorted(slots[1:] + [slots[0] + s])
    wall = max(slots)
    span = plan_json(g, "--gpus", 1)["estimate"]["makespan"]
    assert span["wall_s"] == pytest.approx(wall, rel=1e-9)
    assert span["longest_s"] == pytest.approx(max(secs)) and span["shares"] == {"0.25": len(secs)}
    assert span["utilisation"] == pytest.approx(0.25 * sum(secs) / wall)
    text = cli.invoke(app, ["plan", str(g), "--gpus", "1"]).stdout
    assert f"on 1 GPUs ({len(secs)} trials at 0.25 GPU" in text and "predicted wall" in text and "longest trial" in text


def test_plan_gpus_refuses_a_grid_whose_trials_ask_no_gpu(tmp_path):
    r = cli.invoke(app, ["plan", str(small_grid(tmp_path, 0)), "--gpus", "2"])
    assert r.exit_code == 2 and "asks for gpu 0" in r.stderr


# -- rehearsal stores never mix with results -----------------------------------------------------------------

def one_line_error(r) -> str:
    assert r.exit_code == 1, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def test_a_rehearsal_store_refuses_a_real_launch_and_a_real_store_a_rehearsal(tiny_grid, tmp_path):
    rehearsal, real = Store(tmp_path / "rh"), Store(tmp_path / "real")
    rehearsal.create(tiny_grid.read_text(), rehearsal={"speedup": 10, "throughput": None})
    real.create(tiny_grid.read_text())
    line = one_line_error(cli.invoke(app, ["launch", str(tiny_grid), "--store", rehearsal.root, "-q"]))
    assert "holds a rehearsal" in line and "--rehearse" in line
    line = one_line_error(cli.invoke(app, ["resume", rehearsal.root, "-q"]))
    assert "holds a rehearsal" in line
    line = one_line_error(cli.invoke(app, ["launch", str(tiny_grid), "--store", real.root, "--rehearse", "-q"]))
    assert "holds real results" in line
    assert not any(Path(real.runs_dir).iterdir()) and not any(Path(rehearsal.runs_dir).iterdir())
    assert not (Path(real.meta_dir) / "rehearsal.json").exists()


def test_speedup_without_rehearse_is_a_usage_error(tiny_grid, tmp_path):
    r = cli.invoke(app, ["launch", str(tiny_grid), "--store", str(tmp_path / "s"), "--speedup", "5"])
    assert r.exit_code == 2 and "--speedup and --throughput go with --rehearse" in r.stderr


def test_status_and_report_say_rehearsal_in_their_first_line(tiny_grid, tmp_path):
    from workers.core.spec import RunResult

    s = Store(tmp_path / "rh")
    s.create(tiny_grid.read_text(), rehearsal={"speedup": 10, "throughput": None})
    spec = expand(parse_grid(tiny_grid.read_text()))[0]
    s.publish(RunResult.for_spec(spec, "rehearsed", finished_at=1.0))
    st = cli.invoke(app, ["status", s.root])
    assert st.exit_code == 0 and st.stdout.splitlines()[0].startswith("REHEARSAL")
    assert "1 done" in st.stdout.splitlines()[1]
    js = json.loads(cli.invoke(app, ["status", s.root, "--json"]).stdout)
    assert js["rehearsal"] == {"speedup": 10, "throughput": None} and js["done"] == 1
    rep = cli.invoke(app, ["report", s.root])
    assert rep.exit_code == 0 and rep.stdout.splitlines()[0].startswith("REHEARSAL")


# -- a rehearsal's input checks ----------------------------------------------------------------------------------

def test_rehearse_pack_checks_inputs_as_the_real_run_and_caches_the_digests(tmp_path, monkeypatch):
    from workers.checkpoints import sha256_file
    from workers.rehearse import Digests, rehearse_pack

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "w.pth").write_bytes(b"weights")
    digest = sha256_file(ckpt / "w.pth")
    d = yaml.safe_load(TINY)
    d["models"][0]["weights"] = {"path": "$REHEARSE_CKPT/w.pth", "sha256": digest[:12]}
    specs = expand(parse_grid(yaml.safe_dump(d)))[:3]
    monkeypatch.setenv("REHEARSE_CKPT", str(ckpt))
    rows = list(rehearse_pack(specs, [0.0] * 3, 0.0, 1.0, tmp_path / "cache", None, "t"))
    assert [r.status for r in rows] == ["rehearsed"] * 3 and rows[0].device == "rehearsal"
    assert list(Digests(tmp_path / "cache").known.values()) == [digest]  # hashed once, kept on the node

    monkeypatch.setenv("REHEARSE_CKPT", str(tmp_path / "elsewhere"))
    rows = list(rehearse_pack(specs, [0.0] * 3, 0.0, 1.0, tmp_path / "cache", None, "t"))
    assert {r.status for r in rows} == {"failed"}
    assert rows[0].error.startswith(f"CheckpointError: checkpoint file not found: {tmp_path / 'elsewhere' / 'w.pth'}")
    assert rows[0].error.endswith(f"(on {os.uname().nodename})")

    (ckpt / "w.pth").write_bytes(b"other weights")  # same path, new contents: hashed again, and refused
    monkeypatch.setenv("REHEARSE_CKPT", str(ckpt))
    (row, *_) = rehearse_pack(specs[:1], [0.0], 0.0, 1.0, tmp_path / "cache", None, "t")
    assert row.status == "failed" and "sha256 mismatch" in row.error


def test_rehearse_pack_checks_the_dataset_layout(tmp_path):
    from workers.rehearse import rehearse_pack

    d = yaml.safe_load(TINY)
    d["datasets"] = [{"name": "svhn"}]
    (spec, *_) = expand(parse_grid(yaml.safe_dump(d)))
    (row,) = rehearse_pack([spec], [0.0], 0.0, 1.0, tmp_path / "cache", str(tmp_path / "data"), "t")
    assert row.status == "failed" and f"dataset 'svhn' not found under data root '{tmp_path / 'data'}'" in row.error
    (tmp_path / "data").mkdir()
    for f in ("train_32x32.mat", "test_32x32.mat"):
        (tmp_path / "data" / f).write_bytes(b"")
    (row,) = rehearse_pack([spec], [0.0], 0.0, 1.0, tmp_path / "cache", str(tmp_path / "data"), "t")
    assert row.status == "rehearsed"


def test_rehearse_pack_checks_a_text_and_a_dna_task_as_their_loaders_do(tmp_path):
    """The rehearsal's row says what the text loader says at a missing file, and rehearses once both exist."""
    from workers.data import load_dataset
    from workers.rehearse import rehearse_pack

    d = yaml.safe_load(TINY)
    for name, files in (("ag_news", ["train.csv", "test.csv"]), ("splice", ["splice.data"])):
        d["datasets"] = [{"name": name}]
        (spec, *_) = expand(parse_grid(yaml.safe_dump(d)))
        root = tmp_path / name
        (row,) = rehearse_pack([spec], [0.0], 0.0, 1.0, tmp_path / "cache", str(root), "t")
        with pytest.raises(FileNotFoundError) as real:
            load_dataset(name, root=str(root), **dict(spec.dataset_args))
        assert row.status == "failed" and str(real.value) in row.error, (row.error, str(real.value))
        (root / name).mkdir(parents=True)
        for f in files:
            (root / name / f).write_text("")
        (row,) = rehearse_pack([spec], [0.0], 0.0, 1.0, tmp_path / "cache", str(root), "t")
        assert row.status == "rehearsed", row.error


# -- a 2,025-run rehearsal on a two-node cluster, the store on S3 ------------------------------------------------

BIG = """
name: big
models:
  - name: demo_cnn
    weights: {path: "$VPGRID_TEST_CKPT/demo.pth"}
    args: {width: 4}
    compressions: [dense, {method: magnitude, sparsity: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]}]
  - name: demo_cnn
    weights: random
    args: {width: 8}
    compressions: [dense, {method: magnitude, sparsity: [0.2, 0.4, 0.6, 0.8]}]
methods: [rlm, flm, ilm]
datasets: [{name: digits}]
shots: [1, 2, 4, 8, 16]
seeds: [1, 2, 3, 4, 5, 6, 7, 8, 9]
train: {epochs: 2, batch_size: 8, input_size: 8}
pack_size: 135
resources: {cpu: 1, gpu: 0.5}
"""


@pytest.mark.slow
@pytest.mark.cluster
def test_a_rehearsal_of_2025_runs_on_two_nodes_with_the_store_on_s3(s3_bucket, tmp_path):
    """Two nodes, each with its own checkpoint folder: the file is there on the head, absent on the worker.
    Every run is published exactly once, while the driver compacts every 2 s; the worker's runs of the
    checkpoint-backed model fail naming it."""
    import boto3
    from ray.cluster_utils import Cluster

    text = BIG
    runs = expand(parse_grid(text))
    assert len(runs) == 2025
    bucket = s3_bucket.removeprefix("s3://")
    boto3.client("s3").put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    have, empty = tmp_path / "have", tmp_path / "empty"
    have.mkdir(), empty.mkdir()
    (have / "demo.pth").write_bytes(b"not read by a rehearsal")
    c = Cluster(initialize_head=True, connect=False,
                head_node_args={"num_cpus": 2, "num_gpus": 1, "env_vars": {"VPGRID_TEST_CKPT": str(have)},
                                "temp_dir": tempfile.mkdtemp(prefix="sh-", dir="/tmp")})
    try:
        c.add_node(num_cpus=2, num_gpus=1, env_vars={"VPGRID_TEST_CKPT": str(empty)},
                   temp_dir=tempfile.mkdtemp(prefix="sw-", dir="/tmp"))
        c.wait_for_nodes()
        g = write_grid(tmp_path, text)
        store = f"{s3_bucket}/rh"
        r = subprocess.run(VPGRID + ["launch", str(g), "--store", store, "--address", c.address, "--rehearse",
                                     "--speedup", "2000", "-q"],
                           env={**os.environ, "PYTHONUNBUFFERED": "1", "VPGRID_COMPACT_EVERY_S": "2",
                                "VPGRID_COMPACT_MIN_FILES": "20"}, cwd=tmp_path, capture_output=True, text=True,
                           timeout=600)
    finally:
        c.shutdown()
    print(r.stderr[-2000:])  # the rehearsal's summary, shown with -s
    assert r.returncode == 3, r.stderr  # runs failed: the worker node lacks the checkpoint
    versions: Counter = Counter()  # every version ever PUT of each run's one-row file, compacted away or not
    merged = set()  # every merged file ever written
    for page in boto3.client("s3").get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix="rh/runs/"):
        for v in page.get("Versions", []):
            m = re.search(r"/([0-9a-f]{16})\.(ok|failed|rehearsed)\.parquet$", v["Key"])
            if m:
                versions[m.group(1)] += 1
            elif "/part-" in v["Key"]:
                merged.add(v["Key"])
    assert set(versions) == {x.run_key for x in runs} and set(versions.values()) == {1}, "a run published twice"
    assert len(merged) >= 2, "no compaction while the trials published"  # the end-of-launch one, and earlier ones
    df = Store(store).frame()
    assert len(df) == len(runs) and df["host"].notna().all()
    backed = df["weights"].str.contains("VPGRID_TEST_CKPT")
    assert (df.loc[~backed, "status"] == "rehearsed").all()
    failed = df[df["status"] == "failed"]
    assert len(failed) and failed["weights"].str.contains("VPGRID_TEST_CKPT").all()
    assert failed["error"].str.startswith(f"CheckpointError: checkpoint file not found: {empty / 'demo.pth'} (on ").all()
    assert (df.loc[backed, "status"] == "rehearsed").any()  # the head has the file
    # the nodes ran different trials; the failed ones all ran where the folder is empty
    assert Counter(df["node"]).keys() and df.loc[backed & (df["status"] == "failed"), "node"].nunique() == 1
    (line,) = [x for x in r.stderr.splitlines() if "missing on" in x]  # one node, named
    assert f"node {failed['node'].iloc[0][:12]}: CheckpointError: checkpoint file not found" in line
    assert "predicted" in r.stderr and "measured" in r.stderr
    st = subprocess.run(VPGRID + ["status", store], capture_output=True, text=True, timeout=120)
    assert st.stdout.startswith("REHEARSAL") and f"of {len(runs)}" in st.stdout


def test_the_trials_go_to_tune_in_launch_order_as_small_configs():
    """The searcher that replaces grid_search: each config once, in order, then finished; the runs are not in it."""
    from ray.tune.search import Searcher

    from orchestrator.launch import _pack_payload
    from orchestrator.ray_tune import _packs_searcher
    from orchestrator.plan import pack

    grid = parse_grid(TINY)
    packed = pack(grid, expand(grid), {"demo_cnn": {"cpu": 1, "gpu": 0}})
    configs = [{"trial_id": t.trial_id} for t in packed]
    s = _packs_searcher(configs)
    got = [s.suggest(str(i)) for i in range(len(configs) + 2)]
    assert got[:-2] == [{"pack": c} for c in configs] and got[-2:] == [Searcher.FINISHED] * 2
    table = load_table(DEFAULT_TABLE)
    payload = json.loads(_pack_payload(packed[0], table))
    from workers.core.spec import RunSpec

    assert [RunSpec.from_dict(r) for r in payload["runs"]] == list(packed[0].runs)
    assert payload["seconds"] == [run_seconds(r, table) for r in packed[0].runs]
    assert payload["startup_s"] == table.get("demo_cnn").startup_s


def test_the_trainable_rehearses_a_pack_without_torch_or_ray(tiny_grid, tmp_path, monkeypatch):
    """The Ray adapter's rehearsal branch, with Ray's two calls stood in for: rows published, done ones skipped."""
    from workers import ray_adapter

    reports = []
    monkeypatch.setattr(ray_adapter.ray, "get_runtime_context", lambda: SimpleNamespace(get_node_id=lambda: "n1"))
    monkeypatch.setattr(ray_adapter.tune, "report", reports.append)
    from orchestrator.launch import _pack_payload
    from orchestrator.plan import pack

    grid = parse_grid(tiny_grid.read_text())
    (trial, *_) = pack(grid, expand(grid), {"demo_cnn": {"cpu": 1, "gpu": 0}})
    store = Store(tmp_path / "rh")
    store.create(tiny_grid.read_text(), rehearsal={"speedup": 1e6, "throughput": None})
    from workers.core.spec import RunResult

    store.publish(RunResult.for_spec(trial.runs[0], "rehearsed", finished_at=1.0))  # an earlier attempt's
    config = {"trial_id": trial.trial_id, "cpu": 1, "gpu": 0, "store": store.root, "cache": str(tmp_path / "c"),
              "data_root": None, "retry_failed": False, "rehearse": 1e6}
    ray_adapter.trainable({"pack": config}, {trial.trial_id: _pack_payload(trial, load_table(DEFAULT_TABLE))})
    df = store.frame()
    assert sorted(df["run_key"]) == sorted(r.run_key for r in trial.runs) and (df["status"] == "rehearsed").all()
    assert len(reports) == len(trial.runs) - 1 and all(r["ok"] == 1 for r in reports)
    assert set(df.loc[df["finished_at"] > 1.0, "node"]) == {"n1"} and store.heartbeats() == []


def test_a_rehearsal_worker_does_not_import_torch():
    code = ("import sys, workers.rehearse, workers.core.schemas.layouts; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert r.returncode == 0, r.stderr
