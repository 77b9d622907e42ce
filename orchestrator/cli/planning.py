"""vpgrid plan: validate and count a grid; its estimate and its schedule on N GPUs. Runs nothing."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from orchestrator.cli.common import JsonOpt, app


@app.command()
def plan(grid: Path, as_json: JsonOpt = False,
         estimate: Annotated[bool, typer.Option("--estimate", help="Also count the image-passes per study and the hours "
                                                "they take, for vpgrid and for the reference scripts' protocol.")] = False,
         throughput: Annotated[Optional[Path], typer.Option("--throughput", metavar="FILE", help="Throughput table "
                               "(JSON, from `vpgrid bench train --json`) for the hours; implies --estimate "
                               "[default: the table shipped for this repository's CPU].")] = None,
         gpus: Annotated[Optional[int], typer.Option("--gpus", min=1, metavar="N", help="Also schedule the packed trials "
                         "on N GPUs as the launch will and print the predicted wall time, slot utilisation and the "
                         "longest trial; implies --estimate (docs/scale.md).")] = None) -> None:
    """Count the runs and trials of GRID, with a breakdown per axis. Runs nothing."""
    from orchestrator.grid import expand, load_grid
    from orchestrator.plan import breakdown, pack
    from orchestrator.validate import check_grid

    g, _ = load_grid(grid)
    check_grid(g, str(grid))
    runs = expand(g, str(grid))
    trials = pack(g, runs)
    resources = {}
    for m in dict.fromkeys(r.model for r in runs):
        res = g.resources_for(m)
        resources[m] = res.model_dump() if res else "model default"
    out = {"grid": g.name, "runs": len(runs), "trials": len(trials), "by_axis": breakdown(runs),
           "resources_per_trial": resources}
    cost = _estimate(g, str(grid), throughput) if estimate or throughput or gpus else None
    if cost:
        out["estimate"] = {"throughput": cost[2], "studies": [p.to_dict() for p in cost[0]], "total": cost[1].to_dict()}
    span = _makespan(g, str(grid), runs, cost[3], gpus) if gpus else None
    if span:
        out["estimate"]["makespan"] = span.to_dict()
    if as_json:
        typer.echo(json.dumps(out, indent=1))
        return
    typer.echo(f"grid {g.name}: {len(runs)} runs in {len(trials)} trials (pack size {g.pack_size})")
    for axis, counts in out["by_axis"].items():
        typer.echo(f"  {axis:<12} " + ", ".join(f"{k}: {v}" for k, v in counts.items()))
    typer.echo("  per trial    " + ", ".join(
        f"{m}: " + (f"cpu {r['cpu']:g}, gpu {r['gpu']:g}" if isinstance(r, dict) else r) for m, r in resources.items()))
    if cost:
        from orchestrator.estimate import render

        typer.echo("\n".join(render(*cost[:2], cost[3])))
    if span:
        from orchestrator.estimate import render_makespan

        typer.echo("\n".join(render_makespan(span)))


def _makespan(g, source: str, runs, table, gpus: int):
    """The launch's packing and order on `gpus` GPUs, with the models' default resources from their cards as the
    launch resolves them (torch-free). A checkpoint format a model cannot read fails here as at the launch."""
    from orchestrator.estimate import makespan
    from orchestrator.validate import check_runs

    return makespan(g, source, table, gpus, check_runs(runs, source))


def _estimate(g, source: str, throughput: Optional[Path]):
    """(per-study parts, total, the table's header as a dict, the table) for `plan --estimate`. A table given with
    --throughput must hold every model of the grid (exit 2 otherwise); the shipped default may lack some."""
    from orchestrator.estimate import DEFAULT_TABLE, estimate, load_table

    table = load_table(throughput or DEFAULT_TABLE)
    parts, total = estimate(g, source, table, strict=throughput is not None)
    header = {k: getattr(table, k) for k in ("path", "machine", "device", "card", "dtype", "measured_at")}
    return parts, total, header, table
