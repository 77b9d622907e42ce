"""vpgrid pretrain and bench: make the demo's source weights; measure this machine."""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from orchestrator.cli.common import JsonOpt, _one_of, _usage, app, err


PRETRAINABLE = ("demo_cnn",)


@app.command()
def pretrain(model: Annotated[str, typer.Argument(help=f"The model to pre-train: {', '.join(PRETRAINABLE)}.",
                                                  callback=_one_of(PRETRAINABLE))],
             out: Annotated[Path, typer.Option("--out", help="The safetensors file to write.")],
             width: Annotated[int, typer.Option(help="Channels of the first block.", min=1)] = 16,
             epochs: Annotated[int, typer.Option(help="Epochs on shapes.", min=1)] = 10,
             images: Annotated[int, typer.Option(help="Shapes training images.", min=1)] = 8000,
             seed: Annotated[int, typer.Option(help="Seed of the initial weights, the data and the shuffling.")] = 0,
             threads: Annotated[int, typer.Option(help="Torch threads: the float sums' order, so the bytes, depend on it.", min=1)] = 1) -> None:
    """Pre-train a source model and write its weights: the shipped demo_cnn weights are this command with its
    defaults (docs/demo.md). Prints the file's sha256."""
    from workers.checkpoints import sha256_file
    from workers.models.demo_cnn import pretrain_to_file

    if out.suffix != ".safetensors":
        _usage(f"--out {out}: the file must end in .safetensors")
    t0 = time.time()
    acc = pretrain_to_file(out, width=width, epochs=epochs, images=images, seed=seed, threads=threads)
    err(f"{model} pre-trained in {time.time() - t0:.0f} s: {100 * acc:.1f}% on the shapes test split")
    typer.echo(f"{out} sha256:{sha256_file(out)}")


BUILT_IN = ("train", "gpu")  # the product's own: they write the throughput tables `plan --estimate` reads
NOT_BY_DEFAULT = ("batching", "scale", "gpu")  # long (scale: ~20 min), or alone (gpu)
# The order `vpgrid bench` lists and runs them in (entry points come sorted by name); others follow, by name.
ORDER = ("plan", "store", "status", "status_s3", "launch", "cluster", "report", "scale", "train", "loop", "protocol",
         "batching", "gpu")


def installed_benchmarks() -> dict:
    """The other benchmarks, by name: the entry points of group "vpgrid.bench" (the project's benchmarks/ package
    registers its own in pyproject.toml; the product never imports it)."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group="vpgrid.bench") if ep.name not in BUILT_IN}


@app.command()
def bench(what: Annotated[list[str], typer.Argument(help="Any of: plan, store, status, status_s3, launch, cluster, report, "
                                                         "scale (orchestration; scale: the paper grid rehearsed on a local "
                                                         "multi-node cluster, ~20 min, docs/scale.md); train, loop, protocol, batching (model speed; "
                                                         "train: the throughput table); gpu (the GPU check) "
                                                         "[default: all but batching, scale and gpu].", show_default=False)] = None,
          as_json: JsonOpt = False,
          models: Annotated[Optional[str], typer.Option("--models", metavar="A,B", help="Models `train` measures "
                            "[default: those of --grid, else the paper's and the demo's].")] = None,
          grid: Annotated[Optional[Path], typer.Option("--grid", help="`train` measures this grid's models.")] = None,
          out: Annotated[Optional[Path], typer.Option("--out", metavar="FILE", help="Also write the throughput table "
                         "that `train` (or `gpu`) measures to FILE.")] = None) -> None:
    """Measure planning, the store, launch overhead and model speed on this machine. `train --json` prints the
    throughput table that `vpgrid plan --estimate --throughput` reads."""
    others = installed_benchmarks()
    valid = sorted([*others, *BUILT_IN], key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    what = what or [w for w in valid if w not in NOT_BY_DEFAULT]
    if "gpu" in what and what != ["gpu"]:
        _usage("run `vpgrid bench gpu` alone: it measures on the GPU and prints its own JSON summary")
    unknown = [w for w in what if w not in valid]
    if unknown:
        _usage(f"unknown benchmark {unknown[0]!r}; valid: {', '.join(valid)}")
    names = _bench_models(models, grid)
    if what == ["gpu"]:
        import subprocess
        import sys

        args = ["--out", str(out)] if out else []
        raise typer.Exit(subprocess.call([sys.executable, "-m", "workers.gpu_check", *args]))
    from workers.core.errors import VpgridError

    results = []
    for w in what:
        err(f"running {w} ...")
        try:
            if w == "train":
                from workers.bench import bench_train  # torch is imported here, in the data plane, for train only

                results.append(bench_train(names))
                if out:
                    out.write_text(json.dumps(results[-1], indent=1) + "\n")
            else:
                results.append(_load(others[w])())
        except RuntimeError as e:  # a benchmark that cannot run here says why
            raise VpgridError(str(e)) from None
    if as_json:
        typer.echo(json.dumps(results[0] if what == ["train"] else {"machine": machine(), "results": results}, indent=1))
        return
    typer.echo(f"machine: {machine()}")
    for r in results:
        r = {**r, "models": {m: ", ".join(f"{k}={v:.3g}" for k, v in e.items()) for m, e in r["models"].items()}} \
            if "models" in r else r
        typer.echo("  " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))


def _load(ep):
    try:
        return ep.load()
    except (ImportError, AttributeError) as e:  # installed metadata that no longer matches the code
        from workers.core.errors import VpgridError

        raise VpgridError(f"benchmark {ep.name!r}: cannot load {ep.value} ({e}); reinstall vpgrid (pip install -e .)") from None


def _bench_models(models: Optional[str], grid: Optional[Path]) -> Optional[list[str]]:
    """The models `bench train` measures: --models, else --grid's, else None (the default set)."""
    from workers.core.schemas import MODELS

    names = [m.strip() for m in models.split(",") if m.strip()] if models else None
    if grid is not None and names is None:
        from orchestrator.grid import load_grid

        g, _ = load_grid(grid)
        names = list(dict.fromkeys(m.name for part in g.parts() for m in part.models))
    for n in names or []:
        if n not in MODELS:
            from workers.core.schema import did_you_mean

            _usage(f"--models: unknown model {n!r}{did_you_mean(n, MODELS)} (valid: {', '.join(sorted(MODELS))})")
    return names


def machine() -> str:
    """This machine in one line, as `vpgrid bench` prints it above its results."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, Python {platform.python_version()}"
