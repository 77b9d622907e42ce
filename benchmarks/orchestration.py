"""The orchestration benchmarks of `vpgrid bench`: plan, store, status, status_s3, launch, cluster and report."""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.common import PAPER, best, cli_seconds, moto_s3


def _paper_like_grid(n_seeds: int = 3) -> dict:
    models = [{"name": "demo_cnn", "args": {"width": w}, "compressions": ["dense", {"method": "magnitude", "sparsity": [0.8, 0.9, 0.95]}, {"method": "fakequant", "bits": [4, 3, 2]}]}
              for w in (8, 16, 24, 32, 48)]
    return {"name": "bench", "models": models, "methods": ["rlm", "flm", "ilm"],
            "datasets": [{"name": "digits", "args": {"i": i}} for i in range(8)], "shots": [1, 10, 50, 100, "full"],
            "seeds": list(range(n_seeds)), "train": {"batch_size": {1: 8, 10: 32, 50: 64, 100: 128, "full": 256}}}


def bench_plan(repeats: int = 3) -> dict:
    """Expand and pack a synthetic paper-sized grid and grids/paper.yaml itself; `vpgrid plan` on the latter."""
    from orchestrator.grid import expand, parse_grid
    from orchestrator.plan import breakdown, pack

    out: dict = {"bench": "plan"}
    for name, text in (("synthetic", yaml.safe_dump(_paper_like_grid())), ("paper", PAPER.read_text())):
        grid = parse_grid(text)
        runs = expand(grid)
        trials = pack(grid, runs)
        out.update({f"{name}_runs": len(runs), f"{name}_trials": len(trials),
                    f"{name}_expand_s": best(lambda: expand(parse_grid(text)), repeats),
                    f"{name}_pack_s": best(lambda: pack(grid, runs), repeats)})
    out["paper_breakdown_s"] = best(lambda: breakdown(runs), repeats)  # runs: the paper's, from the loop
    out["paper_cli_s"] = cli_seconds(["plan", str(PAPER)], repeats)
    return out


def bench_store(n: int = 2000) -> dict:
    from orchestrator.grid import expand, parse_grid
    from workers.core.store import Store
    from workers.core.spec import RunResult

    runs = expand(parse_grid(yaml.safe_dump(_paper_like_grid())))[:n]
    root = Path(tempfile.mkdtemp(prefix="vpgrid-bench-"))
    try:
        st = Store(root)
        st.create("name: bench\n")
        rows = [RunResult.for_spec(r, "ok", accuracy=0.5, ece=0.1, label_mapping=list(range(10)),
                                   per_class_accuracy=[0.5] * 10, finished_at=time.time()) for r in runs]
        t0 = time.perf_counter()
        for r in rows:
            st.publish(r)
        t1 = time.perf_counter()
        st.statuses()
        t2 = time.perf_counter()
        st.compact()
        t3 = time.perf_counter()
        st.statuses()
        t4 = time.perf_counter()
        return {"bench": "store", "rows": len(rows), "publish_ms_per_row": 1000 * (t1 - t0) / len(rows),
                "read_keys_s": t2 - t1, "compact_s": t3 - t2, "read_keys_after_compact_s": t4 - t3}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _status_at_paper_scale(root: str, repeats: int, threads: int = 1) -> dict:
    """Publish every run of grids/paper.yaml into the store at `root`, then time `status` on one-row files
    and after compaction."""
    from concurrent.futures import ThreadPoolExecutor

    from orchestrator.grid import expand, parse_grid
    from orchestrator.status import status
    from workers.core.store import Store
    from workers.core.spec import RunResult

    text = PAPER.read_text()
    runs = expand(parse_grid(text))
    st = Store(root)
    st.create(text)
    rows = [RunResult.for_spec(r, "ok" if i % 10 else "failed", accuracy=0.5, ece=0.1,
                               label_mapping=list(range(10)), per_class_accuracy=[0.5] * 10, finished_at=time.time())
            for i, r in enumerate(runs)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:  # many workers publish at once on a cluster
        list(pool.map(st.publish, rows))
    publish_s = time.perf_counter() - t0

    def full(rep) -> None:  # the benchmark measures a full store, not an empty one
        assert (rep.done, rep.failed, rep.pending) == (len(runs) - len(runs[::10]), len(runs[::10]), 0), rep

    one_row = best(lambda: status(Store(root)), repeats, full)
    t0 = time.perf_counter()
    st.compact()
    compact_s = time.perf_counter() - t0
    compacted = best(lambda: status(Store(root)), repeats, full)
    return {"runs": len(runs), "publish_ms_per_run": 1000 * publish_s * threads / len(runs),
            "status_one_row_files_s": one_row, "compact_s": compact_s, "status_compacted_s": compacted}


def bench_status(repeats: int = 3) -> dict:
    """`status` of a local store holding every run of grids/paper.yaml: on one-row files, then compacted."""
    root = Path(tempfile.mkdtemp(prefix="vpgrid-bench-"))
    try:
        out = _status_at_paper_scale(str(root), repeats)
        return {"bench": "status", **out, "status_cli_compacted_s": cli_seconds(["status", str(root), "--json"], repeats)}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def bench_status_s3(repeats: int = 3) -> dict:
    """The same on a real S3 API server on the loopback (moto's server mode, installed with the test extra)."""
    with moto_s3("bench"):
        out = _status_at_paper_scale("s3://bench/store", repeats, threads=16)
        return {"bench": "status_s3", **out,
                "status_cli_compacted_s": cli_seconds(["status", "s3://bench/store", "--json"], repeats)}


def _short_runs_grid(name: str, trials: int, runs_per_trial: int) -> str:
    return yaml.safe_dump({
        "name": name, "models": [{"name": "demo_cnn", "weights": "random", "args": {"width": 8}}],
        "methods": ["rlm"], "datasets": [{"name": "digits"}], "shots": [1], "seeds": list(range(trials * runs_per_trial)),
        "train": {"epochs": 20, "batch_size": 8}, "resources": {"cpu": 1}, "pack_size": runs_per_trial})


def _overheads(df, t0: float, wall: float, slots: int, trials: int) -> dict:
    """Split a launch's wall time into runs, per-trial setup, time to the first run, and the rest: orchestration."""
    run_s = float((df["train_seconds"] + df["eval_seconds"]).sum())
    setup_s = float(df.groupby("trial")["setup_seconds"].max().sum())
    first = float(df["started_at"].min()) - t0
    busy, used = run_s + setup_s, min(slots, trials)
    return {"wall_s": wall, "run_s": run_s, "setup_s": setup_s, "first_run_after_s": first,
            "overhead_s_per_trial": max(0.0, wall * used - busy - first * used) / trials,
            "utilisation_after_start": busy / (used * (wall - first))}


def bench_launch(trials: int = 16, runs_per_trial: int = 4) -> dict:
    """A real local launch of short runs: how much of the wall time is runs, how much orchestration."""
    import pandas as pd

    from orchestrator.grid import parse_grid
    from orchestrator.launch import launch

    cpus = os.cpu_count() or 1
    text = _short_runs_grid("bench-launch", trials, runs_per_trial)
    root = Path(tempfile.mkdtemp(prefix="vpgrid-bench-"))
    try:
        t0 = time.time()
        s = launch(parse_grid(text), text, "bench", root / "store", cache_dir=root / "cache", progress=False)
        wall = time.time() - t0
        df = pd.read_parquet(root / "store")
        return {"bench": "launch", "runs": s.launched, "trials": s.trials, "slots": cpus,
                **_overheads(df, t0, wall, cpus, trials)}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def bench_cluster(trials: int = 8, runs_per_trial: int = 4, workers: int = 2) -> dict:
    """A multi-node Ray cluster on this machine (a head and `workers` one-CPU worker nodes, each with its own
    raylet and temp dir): the grid submitted as a Ray Job, as from a laptop. Measures submit -> first run and
    the per-trial orchestration overhead; the store is a local folder every node here sees."""
    import pandas as pd
    from ray.cluster_utils import Cluster
    from ray.job_submission import JobSubmissionClient

    from workers.core.store import Store
    from orchestrator.submit import submit_job

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    root = Path(tempfile.mkdtemp(prefix="vpgrid-bench-", dir="/tmp"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={
        "num_cpus": 0, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": port,
        "temp_dir": str(root / "h")})
    try:
        for i in range(workers):
            cluster.add_node(num_cpus=1, temp_dir=str(root / f"w{i}"))
        cluster.wait_for_nodes()
        text = _short_runs_grid("bench-cluster", trials, runs_per_trial)
        address = f"http://127.0.0.1:{port}"
        store = str(root / "store")
        t0 = time.time()
        job = submit_job(address, text, ["-q"], store, None)
        client = JobSubmissionClient(address)
        first_seen = None
        while str(client.get_job_status(job)).split(".")[-1] not in ("SUCCEEDED", "FAILED", "STOPPED"):
            if first_seen is None and Store(store).exists() and Store(store).statuses():
                first_seen = time.time() - t0
            time.sleep(0.1)
        wall = time.time() - t0
        status = str(client.get_job_status(job)).split(".")[-1]
        df = pd.read_parquet(store)
        return {"bench": "cluster", "nodes": 1 + workers, "job": status, "runs": len(df), "trials": trials,
                "slots": workers, "first_row_seen_s": first_seen, **_overheads(df, t0, wall, workers, trials)}
    finally:
        cluster.shutdown()
        shutil.rmtree(root, ignore_errors=True)


def bench_report(repeats: int = 1) -> dict:
    """`vpgrid report --out` over a synthetic store of every run of grids/paper.yaml with a fourth seed (15,880
    rows: every metric, reliability bins and label mappings filled, 1 run in 10 failed), written as one compacted
    file, as a finished launch leaves it. CPU seconds (this process and its drawing workers) beside the wall time:
    on shared cores the wall time depends on the neighbours' load, which is reported too."""
    import random
    import resource

    import pyarrow as pa
    import pyarrow.parquet as pq

    from orchestrator.grid import expand, parse_grid
    from workers.core.store import SCHEMA, Store
    from workers.core.spec import RunResult

    text = PAPER.read_text().replace("seeds: [1, 2, 3]", "seeds: [1, 2, 3, 4]")
    runs = expand(parse_grid(text))
    root = Path(tempfile.mkdtemp(prefix="vpgrid-bench-"))
    rng = random.Random(0)
    bins = [0] * 5 + [50] * 10
    rows = []
    for i, spec in enumerate(runs):
        ok = i % 10 != 3
        metrics = dict(accuracy=rng.random(), ece=rng.random() / 4, ece_paper=rng.random() / 100,
                       conf_correct=rng.random(), kl_incorrect=rng.random(), kl_incorrect_paper=rng.random() / 100,
                       reliability_count=bins, reliability_confidence=[None] * 5 + [(b + .5) / 15 for b in range(5, 15)],
                       reliability_accuracy=[None] * 5 + [rng.random() for _ in range(10)],
                       label_mapping=[rng.randrange(1000) for _ in range(10)], per_class_accuracy=[0.5] * 10,
                       upstream_accuracy=0.7, params=25_000_000) if ok else {}
        rows.append(RunResult.for_spec(spec, "ok" if ok else "failed", error=None if ok else "RuntimeError: boom",
                                       finished_at=1.0, **metrics).to_row())
    try:
        st = Store(root / "store")
        st.create(text)
        pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), root / "store" / "runs" / "part-bench.parquet")

        def cpu() -> float:
            a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
            return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime

        fastest = None
        for _ in range(repeats):
            shutil.rmtree(root / "report", ignore_errors=True)
            c0, t0 = cpu(), time.perf_counter()
            from orchestrator.report.deliver import Options, write

            info = write(str(root / "store"), root / "report", Options())
            wall, used = time.perf_counter() - t0, cpu() - c0
            if fastest is None or wall < fastest[0]:
                fastest = (wall, used, info)
        wall, used, info = fastest
        return {"bench": "report", "rows": len(rows), "figures": info["figures"], "written": info["written"],
                "not_drawn": info["skipped"], "report_s": wall, "cpu_s": used, "read_and_plan_s": info["plan_s"],
                "draw_s": info["draw_s"], "draw_workers": min(_workers(), info["figures"])}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _workers() -> int:
    from orchestrator.report.deliver import workers

    return workers()
