"""vpgrid status, compact, report and list: read a store and the registries."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from orchestrator.cli.common import JsonOpt, LIST_KINDS, StoreArg, _at_least, _one_of, _reading, _usage, app, err
from orchestrator.report.names import FAMILIES, METRICS, SELECT_KEYS, VARIANTS, VECTOR_FORMATS  # plain tuples: no pandas


def _fmt_eta(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    return time.strftime("%H:%M:%S", time.gmtime(seconds)) if seconds < 86400 else f"{seconds / 86400:.1f} days"


REHEARSAL_LINE = "REHEARSAL: this store holds a rehearsal; its done runs were rehearsed (inputs checked, no training), not results"


def _status_view(rep, show_failed: bool = False):
    """The status as rich renderables: a summary line, running trials, and a per-axis table."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    parts = [Text(REHEARSAL_LINE)] if rep.rehearsal else []
    parts += [Text.from_markup(f"[bold]{rep.grid}[/] in {rep.store}: {rep.done} done, {rep.failed} failed, "
                              f"{rep.pending} pending of {rep.total}" +
                              (f" ({rep.not_in_grid} rows of runs no longer in the grid)" if rep.not_in_grid else ""))]
    job = rep.job or {}
    if job.get("state") == "failed":
        parts.append(Text(f"submitted as job {job['job_id']}, which failed before its driver ran: {job['error']}; "
                          f"its log: ray job logs --address {job['address']} {job['job_id']}", style="red"))
    elif job.get("state") == "waiting":
        parts.append(Text(f"submitted as job {job['job_id']}, waiting for its driver"
                          + (f" ({job['error']})" if job.get("error") else "")
                          + f"; its log: ray job logs --address {job['address']} --follow {job['job_id']}"))
    if rep.driver_alive:
        rate = f"{rep.runs_per_minute:.1f} runs/min" if rep.runs_per_minute else "rate not measured yet"
        parts.append(Text(f"launch running: {len(rep.running)} trials active, {rate}, ETA {_fmt_eta(rep.eta_seconds)}"))
        parts += [Text(f"  {h['trial']}: {h['runs_done']}/{h['runs_total']} runs") for h in rep.running]
    elif rep.pending and job.get("state") != "waiting":
        parts.append(Text(f"no launch running; finish with: vpgrid resume {rep.store}"))
    t = Table("axis", "value", "done", "failed", "pending")
    for axis, values in rep.by_axis.items():
        for v, c in values.items():
            t.add_row(axis, v, str(c["done"]), str(c["failed"] or ""), str(c["pending"] or ""))
    parts.append(t)
    if show_failed:
        from orchestrator.report.names import shots_text
        from workers.core.store import Store

        df = Store(rep.store).frame()
        for _, r in df[df["status"] == "failed"].iterrows():
            parts.append(Text(f"{r['run_key']} {r['model']} {r['compression']} {r['method']} {r['dataset']} "
                              f"shots={shots_text(r['shots'])} seed={r['seed']}: {r['error'].splitlines()[0]}", style="red"))
    return Group(*parts)


@app.command()
def status(store: StoreArg, as_json: JsonOpt = False,
           watch: Annotated[bool, typer.Option("--watch", help="Refresh until the launch ends.")] = False,
           interval: Annotated[float, typer.Option(help="Seconds between refreshes with --watch (> 0).",
                                                   callback=_at_least(0, strict=True))] = 2.0,
           failed: Annotated[bool, typer.Option("--failed", help="List failed runs with their error.")] = False) -> None:
    """Done / failed / pending runs of STORE, per axis, with running trials and an ETA."""
    from orchestrator.status import status as compute
    from workers.core.store import Store

    with _reading(store):
        rep = compute(Store(store))
    if as_json:
        typer.echo(json.dumps(rep.to_dict(), indent=1))
        return
    from rich.console import Console  # not needed for --json

    con = Console(soft_wrap=True)  # long lines stay whole when piped
    if not watch:
        con.print(_status_view(rep, failed))
        return
    from rich.live import Live

    with Live(_status_view(rep), console=con, auto_refresh=False) as live:
        # a submitted job's driver is on its way while the Jobs server says so
        while rep.driver_alive or ((rep.job or {}).get("state") == "waiting" and not rep.job.get("error")):
            time.sleep(interval)
            rep = compute(Store(store))
            live.update(_status_view(rep), refresh=True)
    if failed:
        con.print(_status_view(rep, True))


@app.command()
def compact(store: StoreArg) -> None:
    """Merge the store's one-row files into one file (readers see the same rows)."""
    from workers.core.store import Store

    s = Store(store)
    s.grid_text()
    before, after = s.compact()
    err(f"{before} files -> {after}")


@app.command()
def report(store: StoreArg, as_json: JsonOpt = False,
           metric: Annotated[list[str], typer.Option(metavar="METRIC", help=f"Metrics of the Markdown tables: {', '.join(METRICS)}.",
                                                     callback=_one_of(METRICS))] = ["accuracy", "ece"],
           out: Annotated[Optional[Path], typer.Option("--out", help="Write every figure and table the store's axes allow, with DIR/index.html and DIR/README.md, into this folder.")] = None,
           select: Annotated[list[str], typer.Option("--select", metavar="KEY=VALUE", help=f"Only runs whose KEY has VALUE (repeatable: values of one key are alternatives, keys must all hold); KEY: {', '.join(SELECT_KEYS)}.")] = [],
           ece: Annotated[str, typer.Option("--ece", help="ECE in the figures: proper (ece) or paper (the paper code's ece_paper).",
                                            callback=_one_of(VARIANTS))] = "proper",
           kl: Annotated[str, typer.Option("--kl", help="KL to uniform in the figures: proper (kl_incorrect) or paper (kl_incorrect_paper).",
                                           callback=_one_of(VARIANTS))] = "proper",
           family: Annotated[list[str], typer.Option("--family", metavar="FAMILY", help=f"With --out, only these figure/table families (repeatable): {', '.join(FAMILIES)} [default: all].",
                                                     callback=_one_of(FAMILIES))] = [],
           vector: Annotated[str, typer.Option("--vector", help="With --out, the vector format written beside each PNG: svg or pdf.",
                                               callback=_one_of(VECTOR_FORMATS))] = "svg") -> None:
    """Mean ± std over seeds per variant, dataset, method and shots (values in %), as Markdown; with --out DIR,
    the paper's figures and tables from whatever the store holds, with an index listing what is missing."""
    from orchestrator.report.runs import parse_select
    from workers.core.store import Store

    wanted = parse_select(select)
    if out is not None:
        from orchestrator.report.deliver import Options, write

        opts = Options(select=wanted, ece=ece, kl=kl, families=tuple(family) or FAMILIES, vector=vector,
                       metrics=tuple(metric))
        with _reading(store):
            if Store(store).rehearsal():
                err(REHEARSAL_LINE)
            info = write(store, out, opts, progress=err)
        err(f"{info['written']} figures and tables written, {info['skipped']} not drawn (reasons in the index) "
            f"from {info['ok']} finished runs ({info['failed']} failed, {info['pending']} pending) in {info['seconds']:.1f} s")
        if as_json:
            typer.echo(json.dumps({k: v for k, v in info.items() if k != "entries"}, indent=1, default=str))
        else:
            typer.echo(info["index"])
        return
    from orchestrator.report.runs import axis_value, run_table, select as pick
    from orchestrator.report.summary import markdown, summary

    s = Store(store)
    s.grid_text()
    if s.rehearsal():
        (err if as_json else typer.echo)(REHEARSAL_LINE)
    rows = run_table(s.frame())
    if wanted:
        have = {(a, axis_value(a, v)) for a in wanted for v in rows[a]} if len(rows) else set()
        for a, vs in wanted.items():
            for v in vs:
                if (a, v) not in have:
                    _usage(f"--select {a}={v}: no stored run has it")
        rows = pick(rows, wanted)
    table = summary(rows)
    if as_json:
        typer.echo(table.to_json(orient="records", indent=1))
    else:
        typer.echo(markdown(table, tuple(metric)))


def _schema_rows(kinds: list[str]) -> list[dict]:
    """One row per registered name: kind, name, help, and each argument's type, default and valid values."""
    from workers.core.schemas import CARDS

    rows = []
    for kind in kinds:
        for name, schema in sorted(CARDS[kind[:-1]].items()):
            args = [{"name": k, "type": a.type, "required": a.required, "default": None if a.required else a.default,
                     "valid": a.describe(), "help": a.help} for k, a in schema.args.items()]
            rows.append({"kind": kind[:-1], "name": name, "help": schema.help, "args": args})
    return rows


@app.command("list")
def list_(kind: Annotated[Optional[str], typer.Argument(help=f"One of: {', '.join(LIST_KINDS)} [default: all four].",
                                                        callback=_one_of(LIST_KINDS), show_default=False)] = None,
          as_json: JsonOpt = False) -> None:
    """Every registered model, compression, method and dataset, with its arguments and their defaults."""
    rows = _schema_rows([kind] if kind else list(LIST_KINDS))
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table("kind", "name", "arguments: name=default (or required), valid values", "what it is")
    for r in rows:
        args = "\n".join((f"{a['name']} required" if a["required"] else f"{a['name']}={json.dumps(a['default'])}")
                         + f"  {a['valid']}" for a in r["args"]) or "-"
        t.add_row(r["kind"], r["name"], args, r["help"])
    Console(soft_wrap=True).print(t, markup=False)
