"""`vpgrid bench gpu` (`python -m workers.gpu_check`): the short GPU check, under 8 minutes on one CUDA card.

1. one VP run per model family on the GPU (bf16 autocast, as the loop runs there), random weights built offline;
2. fractional packing: a real `vpgrid launch` of a small generated grid, 4 trials at `gpu: 0.25` on the one GPU,
   and how many of them ran at once;
3. benchmark (a), the training loop over the bare step, on the GPU;
4. the throughput table of this card for `vpgrid plan --estimate --throughput` (written to --out).
Prints one JSON summary. Random weights: the timings are real, the accuracies mean nothing.
Without CUDA it prints one line and exits 1.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

# One entry per model family (workers/models/): the model and the VP method its run uses.
FAMILIES = (("demo_cnn", "ilm"), ("resnet18", "ilm"), ("deit_tiny", "ilm"), ("swin_tiny", "ilm"),
            ("clip_vit_b32", "clip_vp"))
TABLE_MODELS = ("demo_cnn", "resnet18", "resnet34", "resnet50", "deit_tiny", "swin_tiny", "clip_vit_b32",
                "clip_vit_l14_336")
LAUNCH_TIMEOUT_S = 240


def gpu_grid(gpu: float = 0.25, trials: int = 4, pack: int = 2) -> str:
    """A grid of `trials` trials (one variant and dataset, `pack` runs each) that each ask for `gpu` of a GPU."""
    return yaml.safe_dump({
        "name": "gpu-check", "models": [{"name": "demo_cnn", "weights": "random", "args": {"width": 16}}],
        "methods": ["ilm"], "datasets": ["digits"], "shots": [10], "seeds": list(range(trials * pack)),
        "train": {"epochs": 10, "batch_size": 32}, "pack_size": pack, "resources": {"cpu": 1, "gpu": gpu}},
        sort_keys=False)


def _families(device, cache: Path) -> list[dict]:
    from workers.run import Context, run
    from workers.core.spec import RunSpec, TrainConfig

    out = []
    for model, method in FAMILIES:
        spec = RunSpec(model=model, method=method, dataset="digits", shots=10, seed=0, weights="random",
                       train=TrainConfig(epochs=3, batch_size=32))
        t0 = time.perf_counter()
        row = run(spec, Context(cache, device))
        out.append({"model": model, "method": method, "status": row.status, "device": row.device,
                    "setup_s": row.setup_seconds, "train_s": row.train_seconds, "eval_s": row.eval_seconds,
                    "wall_s": time.perf_counter() - t0,
                    "error": row.error.splitlines()[0] if row.error else None})
    return out


def _overlap(df) -> int:
    """The most trials whose runs were in flight at one moment."""
    spans = df.groupby("trial").agg(start=("started_at", "min"), end=("finished_at", "max"))
    edges = sorted([(t, 1) for t in spans["start"]] + [(t, -1) for t in spans["end"]], key=lambda e: (e[0], e[1]))
    best = cur = 0
    for _, step in edges:
        cur += step
        best = max(best, cur)
    return best


def _launch(root: Path, gpu: float) -> dict:
    import pandas as pd

    grid = root / "gpu-check.yaml"
    grid.write_text(gpu_grid(gpu))
    cmd = [sys.executable, "-m", "orchestrator.cli", "launch", str(grid), "--store", str(root / "store"), "-q"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S,
                       env={**os.environ, "VPGRID_CACHE": str(root / "cache")})
    out = {"exit_code": p.returncode, "wall_s": time.perf_counter() - t0, "gpu_per_trial": gpu}
    if p.returncode != 0:
        return {**out, "stderr_tail": p.stderr[-2000:]}
    df = pd.read_parquet(root / "store")
    return {**out, "runs": len(df), "ok": int((df["status"] == "ok").sum()), "trials": int(df["trial"].nunique()),
            "devices": sorted(df["device"].dropna().unique().tolist()), "max_trials_at_once": _overlap(df)}


def _benchmark(name: str):
    """Benchmark `name` of the benchmarks/ package, found as `vpgrid bench` finds it (entry points "vpgrid.bench"):
    the product does not import that package."""
    from importlib.metadata import entry_points

    found = list(entry_points(group="vpgrid.bench", name=name))
    if not found:
        raise RuntimeError(f"benchmark {name!r} is not installed (the benchmarks package: pip install -e .)")
    return found[0].load()


def main(argv: list[str]) -> int:
    import argparse

    import torch

    p = argparse.ArgumentParser(prog="python -m workers.gpu_check")
    p.add_argument("--out", default=None, help="the throughput table [default: throughput-<card>.json here]")
    p.add_argument("--cpu-dry-run", action="store_true", help=argparse.SUPPRESS)  # exercises the code on a CPU
    a = p.parse_args(argv)
    dry = a.cpu_dry_run
    if not torch.cuda.is_available() and not dry:
        print("error: no CUDA device here (torch.cuda.is_available() is False); `vpgrid bench gpu` runs only on a "
              "CUDA machine", file=sys.stderr)
        return 1
    from workers import bench

    device = torch.device("cpu" if dry else "cuda")
    t_start = time.perf_counter()
    summary: dict = {"check": "gpu", "card": bench.card(device), "torch": torch.__version__,
                     "cuda": torch.version.cuda, "weights": "random, built offline: timings only, accuracies "
                     "meaningless", "dry_run_on_cpu": dry}
    root = Path(tempfile.mkdtemp(prefix="vpgrid-gpu-check-"))
    phases = [("families", lambda: _families(device, root / "cache")),
              ("fractional_launch", lambda: _launch(root, 0.0 if dry else 0.25)),
              ("loop_over_bare", lambda: _benchmark("loop")("resnet18", batch=64 if not dry else 8, epochs=3)),
              ("throughput", lambda: bench.bench_train(list(TABLE_MODELS[:1] if dry else TABLE_MODELS)))]
    for name, fn in phases:
        t0 = time.perf_counter()
        try:
            summary[name] = fn()
        except Exception as e:  # a failing phase must not hide the others' numbers
            summary[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
        summary.setdefault("phase_s", {})[name] = time.perf_counter() - t0
        print(f"gpu check: {name} done in {summary['phase_s'][name]:.0f} s", file=sys.stderr)
    table = summary["throughput"]
    if "models" in table:
        slug = re.sub(r"[^a-z0-9]+", "-", table["card"].lower()).strip("-")
        path = Path(a.out or f"throughput-{device.type}-{slug}.json")
        path.write_text(json.dumps(table, indent=1) + "\n")
        summary["throughput_table"] = str(path)
    summary["total_s"] = time.perf_counter() - t_start
    print(json.dumps(summary, indent=1))
    return 0 if all("error" not in summary[n] for n, _ in phases if isinstance(summary[n], dict)) else 3


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
