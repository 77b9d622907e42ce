"""Real launches on a local Ray cluster, in subprocesses: packing on a logical GPU, kill and resume.

Each launch runs in its own session so that Ray's helper processes, which a SIGKILLed driver leaves
behind, can be reaped with the process group. Launches that kill nothing join the session's Ray head
(`ray_head`); the others start a Ray of their own, as a launch without --address does. What a launch says and
its exit code for each outcome: test_launch_accounting.py, without Ray.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds
import pytest
import yaml

from orchestrator.grid import expand, parse_grid
from workers.core.store import Store
from tests.conftest import TINY, reap, write_grid

pytestmark = pytest.mark.integration

ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
VPGRID = [sys.executable, "-m", "orchestrator.cli"]


def start(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(VPGRID + args, cwd=cwd, env={**ENV, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def finish(p: subprocess.Popen, timeout: float = 300) -> tuple[str, str]:
    try:
        out, err = p.communicate(timeout=timeout)
    finally:
        reap(p)
    assert p.returncode == 0, err[-3000:]
    return out, err


def raw_keys(store: Path) -> list[str]:
    """run_key of every row in every file, without deduplication."""
    files = [str(f) for f in (store / "runs").glob("*.parquet") if not f.name.startswith(".")]
    return ds.dataset(files).to_table(columns=["run_key"]).column("run_key").to_pylist() if files else []


def grid_text(**changes) -> str:
    d = yaml.safe_load(TINY)
    for k, v in changes.items():
        d[k] = v if not isinstance(v, dict) or k not in d else {**d[k], **v}
    return yaml.safe_dump(d)


def concurrency(df: pd.DataFrame) -> int:
    """Most trials whose [first start, last finish] intervals overlap at one moment."""
    spans = df.groupby("trial").agg(a=("started_at", "min"), b=("finished_at", "max"))
    events = sorted([(a, 1) for a in spans.a] + [(b, -1) for b in spans.b])
    best = cur = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


@pytest.mark.smoke
def test_launch_end_to_end_and_relaunch_runs_nothing(tmp_path, ray_head):
    g = write_grid(tmp_path, grid_text())
    out, err = finish(start(["launch", str(g), "--store", "s", "-q", "--address", ray_head.address], tmp_path))
    store = tmp_path / "s"
    assert out.strip() == str(store.resolve())
    df = pd.read_parquet(store)
    runs = expand(parse_grid(g.read_text()))
    assert sorted(df["run_key"]) == sorted(r.run_key for r in runs)
    assert (df["status"] == "ok").all(), df["error"].dropna().tolist()
    assert df["trial"].nunique() == 8 and len(raw_keys(store)) == len(runs)  # cells of 6 in pieces of 3; compacted
    out, err = finish(start(["launch", str(g), "--store", "s", "-q", "--address", ray_head.address], tmp_path))
    assert "nothing to run: all 24 runs" in err
    assert json.loads(subprocess.run(VPGRID + ["status", "s", "--json"], cwd=tmp_path, env=ENV, capture_output=True,
                                     text=True).stdout)["done"] == 24


@pytest.mark.parametrize("gpu, expected", [(0.25, 4), (0.5, 2)])
def test_fractional_gpu_packing_on_a_logical_gpu(tmp_path, gpu, expected, gate):
    """ray.init(num_gpus=1) on a CPU machine: trials of gpu 0.25 run four at a time, of 0.5 two. The gate holds
    every trial at its first run, so the packing limit is reached however slowly trials start, and the trials'
    heartbeats show how many run at once."""
    text = grid_text(resources={"cpu": 0.5, "gpu": gpu}, pack_size=2, methods=["rlm", "ilm"])  # 8 trials of 2 runs
    g = write_grid(tmp_path, text)
    p = start(["launch", str(g), "--store", "s", "-q", "--num-gpus", "1", "--num-cpus", "8"], tmp_path, gate.env)
    running, most, t0 = tmp_path / "s" / "_vpgrid" / "running", 0, time.time()
    try:
        while most < expected:  # held at the gate: the trials Ray lets run at once pile up
            assert p.poll() is None and time.time() - t0 < 400, f"{most} trials at once"
            most = max(most, len(list(running.glob("*.json"))) if running.is_dir() else 0)
            time.sleep(0.05)
        gate.open()
        while p.poll() is None:
            most = max(most, len(list(running.glob("*.json"))) if running.is_dir() else 0)
            time.sleep(0.05)
    except BaseException:
        reap(p)
        raise
    finish(p)
    df = pd.read_parquet(tmp_path / "s")
    assert (df["status"] == "ok").all() and df["trial"].nunique() == 8
    assert most == expected and concurrency(df) <= expected


def wait_for_rows(store: Path, n: int, p: subprocess.Popen, timeout: float = 400) -> None:
    t0 = time.time()
    while len(raw_keys(store)) < n if (store / "runs").is_dir() else True:
        assert p.poll() is None, "launch ended before the kill point"
        assert time.time() - t0 < timeout, f"{len(raw_keys(store))} of {n} rows after {timeout} s"
        time.sleep(0.05)


def test_sigkill_the_driver_then_resume_runs_each_run_exactly_once(tmp_path, gate):
    """Kill points held by the gate: the launch publishes exactly the runs released, whatever the machine's speed."""
    g = write_grid(tmp_path, grid_text(pack_size=3))
    store = tmp_path / "s"
    expected = sorted(r.run_key for r in expand(parse_grid(g.read_text())))
    finished: dict[str, float] = {}
    # kill points: while Ray starts (no rows yet), after 3 runs, and after 18 of the 24
    for i, release in enumerate([0, 3, 15]):
        args = ["launch", str(g), "--store", "s", "-q"] if i == 0 else ["resume", "s", "-q"]
        p = start(args, tmp_path, gate.env)
        gate.release(release)
        if release == 0:  # the store exists and Ray is starting: launch.json is written just before ray.init
            t0 = time.time()
            while not (store / "_vpgrid" / "launch.json").exists():
                assert p.poll() is None and time.time() - t0 < 400
                time.sleep(0.05)
        wait_for_rows(store, len(finished) + release, p)
        os.kill(p.pid, signal.SIGKILL)  # the driver only, as a preemption would
        p.wait()
        reap(p)
        gate.kill_holders()  # the trials it left waiting at the gate: none publishes another run
        st = Store(store)
        now = {r: t for r, t in zip(st.frame()["run_key"], st.frame()["finished_at"])}
        assert len(now) == len(finished) + release
        for key, t in finished.items():
            assert now[key] == t, "a run finished before the kill ran again"
        finished = now
    # Tune's own state may be torn by a kill; the store does not depend on it
    for f in (store / "_vpgrid" / "tune").rglob("experiment_state*.json"):
        f.write_text(f.read_text()[:50])
    gate.open()
    out, err = finish(start(["resume", "s", "-q"], tmp_path, gate.env))
    assert "(18 already done)" in err
    keys = raw_keys(store)
    assert sorted(keys) == expected  # every run present, exactly once, no duplicates
    df = Store(store).frame()
    assert (df["status"] == "ok").all()
    for key, t in finished.items():
        assert df.set_index("run_key").loc[key, "finished_at"] == t
    st = json.loads(subprocess.run(VPGRID + ["status", "s", "--json"], cwd=tmp_path, env=ENV, capture_output=True,
                                   text=True).stdout)
    assert (st["total"], st["done"], st["pending"]) == (24, 24, 0)


def test_failed_runs_exit_3_and_retry_failed_reruns_only_them(tmp_path, ray_head):
    """Digits has under 500 images a class, so the 500-shot runs fail (no cap_shots), every time. Every way in
    (launch or resume, with or without --retry-failed) is in test_launch_accounting.py."""
    g = write_grid(tmp_path, grid_text(shots=[1, 500], methods=["rlm"], seeds=[1]))
    store = tmp_path / "s"

    def run(args: list[str]) -> tuple[int, str]:
        p = start(args + ["--address", ray_head.address], tmp_path)
        try:
            _, err = p.communicate(timeout=300)
        finally:
            reap(p)
        return p.returncode, err

    def finished() -> dict:
        df = Store(store).frame()
        return dict(zip(zip(df["run_key"], df["status"]), df["finished_at"]))

    code, err = run(["launch", str(g), "--store", "s", "-q"])
    assert code == 3 and "2 ok, 2 failed of 4 runs launched" in err and f"vpgrid status {store} --failed" in err
    first = finished()
    code, err = run(["resume", "s", "-q", "--retry-failed"])
    assert code == 3 and "0 ok, 2 failed of 2 runs launched (2 already done)" in err
    now = finished()
    assert {k: t for k, t in now.items() if k[1] == "ok"} == {k: t for k, t in first.items() if k[1] == "ok"}
    assert all(now[k] > t for k, t in first.items() if k[1] == "failed")  # ran again


def test_the_store_is_compacted_during_a_long_launch(tmp_path, ray_head):
    """Two runs published, the rest held at the gate: every trial has three runs, so none can finish and its
    heartbeat stays while the merge happens (with three released, one trial could end before the next began)."""
    g = write_grid(tmp_path, grid_text(pack_size=3))
    gate = ray_head.gate
    gate.close()
    p = start(["launch", str(g), "--store", "s", "-q", "--address", ray_head.address], tmp_path,
              {"VPGRID_COMPACT_EVERY_S": "1", "VPGRID_COMPACT_MIN_FILES": "2"})
    runs = tmp_path / "s" / "runs"
    try:
        gate.release(2)
        wait_for_rows(tmp_path / "s", 2, p)
        t0 = time.time()
        while not list(runs.glob("part-*.parquet")):  # merged while trials wait at the gate
            assert p.poll() is None and time.time() - t0 < 120, "no compaction during the launch"
            time.sleep(0.1)
        assert list((tmp_path / "s" / "_vpgrid" / "running").glob("*.json"))  # trials still at work
    except BaseException:
        reap(p)
        raise
    finally:
        gate.open()
    finish(p)
    assert sorted(raw_keys(tmp_path / "s")) == sorted(r.run_key for r in expand(parse_grid(g.read_text())))
