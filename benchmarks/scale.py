"""`vpgrid bench scale`: the paper grid rehearsed on a local multi-node Ray cluster, the store on an S3 server on
the loopback, with a driver and two worker raylets SIGKILLed once and the whole cluster stopped and started
afresh; one JSON of what held (docs/scale.md). A benchmark, never a test: it takes ~20 minutes.

Every node is a raylet of its own on this machine, with its own temp dir and ports and logical GPUs; the trials
ask the grid's GPU share of them. The checkpoint files and dataset folders the grid names exist, empty, under a
temporary $VPGRID_CKPT and data root: a rehearsal checks presence, not contents (no sha256 is declared for them).
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Optional

from benchmarks.common import PAPER, moto_s3
from orchestrator.cli.tools import machine

BUCKET = "scale"
VPGRID = [sys.executable, "-m", "orchestrator.cli"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def requests_by_kind(log: Path) -> Counter:
    """The S3 server's own access log, counted by kind: PUT, GET, LIST (a GET of a bucket with a prefix or
    list-type), HEAD, DELETE, POST (batch deletes)."""
    counts: Counter = Counter()
    for m in re.finditer(r'"(GET|PUT|POST|DELETE|HEAD) (\S+) HTTP', log.read_text(errors="replace")):
        kind, path = m.groups()
        counts["LIST" if kind == "GET" and re.search(r"[?&](list-type|prefix|delimiter|versions)", path) else kind] += 1
    return counts


class LocalCluster:
    """A head (no CPUs: the driver's node) and `workers` nodes of `gpus` logical GPUs and 8 CPUs a GPU (a 0.25-GPU
    trial asks 2 CPUs), each a raylet with its own temp dir and ports."""

    def __init__(self, workers: int, gpus: int, root: Path) -> None:
        from ray.cluster_utils import Cluster

        self.root = root
        self.cluster = Cluster(initialize_head=True, connect=False, head_node_args=self._ports("h", num_cpus=0))
        self.workers = [self.add(gpus) for _ in range(workers)]
        self.cluster.wait_for_nodes()
        self.address = self.cluster.address

    def _ports(self, name: str, **kw) -> dict:
        temp = tempfile.mkdtemp(prefix=f"{name}-", dir=self.root)
        return {**kw, "temp_dir": temp, "dashboard_agent_listen_port": _port(), "metrics_export_port": _port()}

    def add(self, gpus: int):
        return self.cluster.add_node(**self._ports("w", num_cpus=8 * gpus, num_gpus=gpus))

    def shutdown(self) -> None:
        self.cluster.shutdown()


class Monitor(threading.Thread):
    """Samples `vpgrid status --json` every 10 s (its latency) and the driver's RSS every second."""

    def __init__(self, store: str) -> None:
        super().__init__(daemon=True)
        self.store, self.latency, self.rss, self.done = store, [], 0, 0
        self.driver: Optional[subprocess.Popen] = None
        self.stop = threading.Event()

    def run(self) -> None:
        import psutil

        next_status = 0.0
        while not self.stop.wait(1.0):
            if self.driver is not None and self.driver.poll() is None:
                try:
                    rss = psutil.Process(self.driver.pid).memory_info().rss
                    self.rss = max(self.rss, rss)
                except psutil.Error:
                    pass
            if time.time() >= next_status:
                next_status = time.time() + 10
                t0 = time.perf_counter()
                r = subprocess.run(VPGRID + ["status", self.store, "--json"], capture_output=True, text=True)
                if r.returncode == 0:
                    self.latency.append(time.perf_counter() - t0)
                    self.done = json.loads(r.stdout)["done"]


def _inputs(root: Path, runs) -> tuple[str, str]:
    """Empty stand-ins for every checkpoint file and dataset folder the runs name: ($VPGRID_CKPT, data root)."""
    from workers.core.schemas import DATASETS
    from workers.core.schemas.layouts import TEXT_TASKS

    ckpt, data = root / "ckpt", root / "data"
    os.environ["VPGRID_CKPT"] = str(ckpt)
    for r in runs:
        for w in (r.weights, r.compression_args.get("checkpoint")):
            if isinstance(w, dict):
                for k in ("path", "mask"):
                    if w.get(k):
                        p = Path(os.path.expandvars(w[k]))
                        p.parent.mkdir(parents=True, exist_ok=True)
                        p.touch()
        for need in DATASETS[r.dataset].layout if r.dataset in DATASETS else ():
            (data / need.format(**{"partition": 1, **r.dataset_args})).mkdir(parents=True, exist_ok=True)
        if r.dataset in TEXT_TASKS:
            (data / r.dataset).mkdir(parents=True, exist_ok=True)
            for f in ("splice.data",) if r.dataset == "splice" else ("train.csv", "test.csv"):
                (data / r.dataset / f).touch()
    return str(ckpt), str(data)


def _launch(args: list[str], mon: Monitor, log: Path) -> subprocess.Popen:
    env = {**os.environ, "VPGRID_COMPACT_EVERY_S": "60", "VPGRID_COMPACT_MIN_FILES": "200", "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen(VPGRID + args, env=env, stdout=subprocess.DEVNULL, stderr=open(log, "ab"))
    mon.driver = p
    return p


def _first_trial_after(store, since: float, timeout: float = 600) -> Optional[float]:
    """Seconds from `since` until a trial's heartbeat appears in the store."""
    while time.time() - since < timeout:
        try:
            if any(h.get("updated", 0) >= since for h in store.heartbeats()):
                return time.time() - since
        except OSError:  # the S3 server busy: try again
            pass
        time.sleep(1)
    return None


def bench_scale(workers: int = 3, gpus: int = 1, sleeps_s: float = 600, seeds: Optional[int] = None) -> dict:
    """`seeds`: the paper grid with seeds 1..N only (a reduced rehearsal: N/3 of the runs), else all of it."""
    import boto3

    from orchestrator.estimate import DEFAULT_TABLE, load_table, schedule, trial_seconds
    from orchestrator.grid import expand, parse_grid
    from orchestrator.validate import check_runs
    from orchestrator.plan import pack
    from workers.core.store import Store

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    root = Path(tempfile.mkdtemp(prefix="vs-", dir="/tmp"))  # short: Ray's sockets live under the temp dirs
    text = PAPER.read_text()
    if seeds:
        text = text.replace("seeds: [1, 2, 3]", f"seeds: {list(range(1, seeds + 1))}")
    grid = parse_grid(text)
    plan = expand(grid)
    ckpt, data = _inputs(root, plan)
    trials = pack(grid, plan, check_runs(plan, str(PAPER)))
    table = load_table(DEFAULT_TABLE)
    secs = [a + sum(b) for a, b in (trial_seconds(t, table) for t in trials)]
    predicted = schedule(trials, secs, workers * gpus).wall_s
    speedup = predicted / sleeps_s
    out: dict = {"bench": "scale", "machine": machine(), "grid": f"grids/paper.yaml, seeds 1..{seeds}" if seeds else
                 "grids/paper.yaml", "runs": len(plan), "trials": len(trials),
                 "nodes": f"head + {workers} workers x {gpus} logical GPU", "speedup": speedup}
    s3_log = root / "s3.log"
    with moto_s3(BUCKET, s3_log):
        boto3.client("s3").put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        store_uri = f"s3://{BUCKET}/paper"
        grid_file = root / "paper.yaml"
        grid_file.write_text(text)
        flags = ["--rehearse", "--speedup", f"{speedup:g}", "--data-root", data, "-q"]
        mon, log, walls = Monitor(store_uri), root / "drivers.log", []
        mon.start()
        t0 = time.time()
        cluster = LocalCluster(workers, gpus, root)
        try:
            # 1. launch; at a quarter of the runs SIGKILL two worker raylets and the driver, then resume
            t = time.time()
            d = _launch(["launch", str(grid_file), "--store", store_uri, "--address", cluster.address, *flags], mon, log)
            out["first_trial_after_launch_s"] = _first_trial_after(Store(store_uri), t)
            while mon.done < len(plan) // 4 and d.poll() is None:
                time.sleep(1)
            for w in cluster.workers[:2]:
                w.kill_raylet()
            d.send_signal(signal.SIGKILL)
            d.wait()
            walls.append(time.time() - t)
            for w in cluster.workers[:2]:
                cluster.cluster.remove_node(w, allow_graceful=False)
            cluster.workers[:2] = [cluster.add(gpus) for _ in range(2)]  # replacements, as an autoscaler would
            cluster.cluster.wait_for_nodes()
            t = time.time()
            d = _launch(["resume", store_uri, "--address", cluster.address, *flags], mon, log)
            out["first_trial_after_resume_s"] = _first_trial_after(Store(store_uri), t)
            # 2. at 60%, stop the whole cluster (head included, a preempted spot cluster), then a fresh one
            while mon.done < len(plan) * 6 // 10 and d.poll() is None:
                time.sleep(1)
            d.send_signal(signal.SIGKILL)
            d.wait()
            walls.append(time.time() - t)
            cluster.shutdown()
            cluster = LocalCluster(workers, gpus, root)
            t = time.time()
            d = _launch(["resume", store_uri, "--address", cluster.address, *flags], mon, log)
            out["first_trial_after_fresh_cluster_s"] = _first_trial_after(Store(store_uri), t)
            out["last_driver_exit"] = d.wait()
            walls.append(time.time() - t)
        finally:
            cluster.shutdown()
            mon.stop.set()
        out.update(_tally(store_uri, plan, requests_by_kind(s3_log), mon, walls, time.time() - t0, speedup, predicted,
                          workers * gpus, trials, sum(secs) / speedup))
    out["driver_log_tail"] = log.read_text().splitlines()[-5:]
    return out


def _tally(store_uri: str, plan, counts: Counter, mon: Monitor, walls: list[float], wall: float, speedup: float,
           predicted: float, gpus: int, trials, slept: float) -> dict:
    """`slept`: the sleeps of every trial once (start-up and runs, / speed-up); a trial cut by a kill sleeps again
    for its unfinished runs, which counts here as orchestration."""
    import boto3
    import statistics

    from workers.core.store import Store

    df = Store(store_uri).frame()
    versions: Counter = Counter()
    parts = 0
    for page in boto3.client("s3").get_paginator("list_object_versions").paginate(Bucket=BUCKET, Prefix="paper/runs/"):
        for v in page.get("Versions", []):
            m = re.search(r"/([0-9a-f]{16})\.\w+\.parquet$", v["Key"])
            if m:
                versions[m.group(1)] += 1
            parts += "/part-" in v["Key"]
    lat = sorted(mon.latency)
    slots = 4 * gpus  # 0.25-GPU trials; CLIP's 0.5-GPU trials take two
    return {
        "runs_in_plan": len(plan), "distinct_rows": int(df["run_key"].nunique()),
        "rehearsed": int((df["status"] == "rehearsed").sum()), "failed": int((df["status"] == "failed").sum()),
        "objects_written_per_run": dict(Counter(versions.values())),
        "wall_s": wall, "driver_walls_s": walls,
        "orchestration_s_per_trial": (sum(walls) * slots - slept) / len(trials),
        "driver_peak_rss_gib": mon.rss / 2**30,
        "status_json_p50_s": statistics.median(lat) if lat else None,
        "status_json_p95_s": lat[int(0.95 * (len(lat) - 1))] if lat else None,
        "status_samples": len(lat),
        "s3_requests_per_run": {k: v / len(plan) for k, v in sorted(counts.items())},
        "compactions": parts, "sleeps_s": slept, "predicted_wall_s": predicted,
        "measured_wall_x_speedup_s": sum(walls) * speedup,
        "gpus": gpus,
    }
