"""The `vpgrid` command. Data goes to stdout; progress, hints and errors to stderr.

Heavy imports (Ray, torch, pandas) happen inside the commands that need them, so `--help`, `plan` and
`status` start fast.
"""
from __future__ import annotations

import difflib
import json
import os
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from orchestrator.report import FAMILIES, METRICS, SELECT_KEYS, VARIANTS, VECTOR_FORMATS  # plain tuples: report.py imports pandas only when it runs

# No Rich markup: it would eat "[default: ...]" in the help text.
app = typer.Typer(add_completion=True, no_args_is_help=True, rich_markup_mode=None,
                  help="Visual prompting on compressed models, as a grid.")


def _usage(msg: str) -> None:
    """A usage error in one line (exit 2), instead of Click's boxed usage text."""
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(2)


def _at_least(lo: float, strict: bool = False):
    """Option callback: the value is >= lo (> lo if strict)."""
    def check(ctx: typer.Context, param: typer.CallbackParam, value):
        if value is not None and not ctx.resilient_parsing and (value < lo or (strict and value == lo)):
            _usage(f"{param.opts[0]} {value:g} must be {'>' if strict else '>='} {lo:g}")
        return value
    return check


def _one_of(valid: tuple[str, ...]):
    """Option/argument callback: every value is one of `valid`."""
    def check(ctx: typer.Context, param: typer.CallbackParam, value):
        if value is None or ctx.resilient_parsing:
            return value
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if v not in valid:
                close = difflib.get_close_matches(v, valid, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                _usage(f"{(param.opts or [param.name])[0]}: unknown value {v!r}{hint} (valid: {', '.join(valid)})")
        return value
    return check


LIST_KINDS = ("models", "compressions", "methods", "datasets")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON to stdout.")]
StoreArg = Annotated[str, typer.Argument(help="A store made by `vpgrid launch`: a path, file://, s3:// or gs:// URI.")]
AddressOpt = Annotated[Optional[str], typer.Option("--address", help="Ray to run on: 'auto' or HOST:PORT joins a running cluster from one of its nodes; http://HEAD:8265 submits a Ray Job; else $RAY_ADDRESS, else a local Ray.")]
MaxFailuresOpt = Annotated[Optional[int], typer.Option("--max-failures", min=-1, help="Retries of a trial whose worker or node died (-1: no limit) [default: the grid's max_failures, 3].")]
CallbackOpt = Annotated[list[str], typer.Option("--callback", help="Tune logger callback: csv, json, tensorboard, wandb, mlflow or package.module:Class (repeatable).")]
CpusOpt = Annotated[Optional[float], typer.Option("--num-cpus", help="Local cluster only: CPUs Ray may use (> 0).",
                                                  callback=_at_least(0, strict=True))]
GpusOpt = Annotated[Optional[float], typer.Option("--num-gpus", help="Local cluster only: GPUs Ray may use (a logical GPU on a CPU machine).",
                                                  callback=_at_least(0))]
RetryOpt = Annotated[bool, typer.Option("--retry-failed", help="Run again the runs whose row says failed.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
RehearseOpt = Annotated[bool, typer.Option("--rehearse", help="Run the grid through the whole real path, but each run only "
                        "checks its inputs on its node and sleeps its estimated seconds; rows say `rehearsed`, into a "
                        "store of its own (docs/scale.md).")]
SpeedupOpt = Annotated[float, typer.Option("--speedup", metavar="X", help="With --rehearse: sleep the estimated seconds / X (> 0).",
                                           callback=_at_least(0, strict=True))]
ThroughputOpt = Annotated[Optional[Path], typer.Option("--throughput", metavar="FILE", help="With --rehearse: the throughput "
                          "table the sleeps come from [default: the shipped one, as plan --estimate].")]
DataOpt = Annotated[Optional[str], typer.Option("--data-root", help="Dataset root on this cluster [default: $VPGRID_DATA, else the grid's data_root].")]


def err(msg: str) -> None:
    typer.echo(msg, err=True)


def _fail(e: Exception) -> None:
    if os.environ.get("VPGRID_DEBUG") == "1":
        raise e
    err(f"error: {e}")
    from orchestrator.errors import ClusterGone, Interrupted

    raise typer.Exit(EXIT_RUNS_PENDING if isinstance(e, (ClusterGone, Interrupted)) else EXIT_ERROR)


# Exit codes of launch, resume and submit (docs/cli.md).
EXIT_ERROR, EXIT_USAGE, EXIT_RUNS_FAILED, EXIT_RUNS_PENDING = 1, 2, 3, 4


def _known_errors() -> tuple[type[Exception], ...]:
    from orchestrator.errors import LaunchError, StoreError
    from orchestrator.grid import GridError

    return GridError, StoreError, LaunchError, FileNotFoundError, PermissionError


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

    try:
        g, _ = load_grid(grid)
        check_grid(g, str(grid))
        runs = expand(g, str(grid))
    except _known_errors() as e:
        _fail(e)
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
    """The launch's packing and order on `gpus` GPUs. Trial resources need the models' registered defaults, as
    the launch resolves them (this imports the workers)."""
    from orchestrator.estimate import TableError, makespan
    from orchestrator.launch import check_names

    try:
        return makespan(g, source, table, gpus, check_names(runs, source))
    except TableError as e:
        _usage(str(e))
    except _known_errors() as e:
        _fail(e)


def _estimate(g, source: str, throughput: Optional[Path]):
    """(per-study parts, total, the table's header as a dict, the table) for `plan --estimate`. A table given with
    --throughput must hold every model of the grid (exit 2 otherwise); the shipped default may lack some."""
    from orchestrator.estimate import DEFAULT_TABLE, TableError, estimate, load_table

    try:
        table = load_table(throughput or DEFAULT_TABLE)
        parts, total = estimate(g, source, table, strict=throughput is not None)
    except TableError as e:
        _usage(str(e))
    header = {k: getattr(table, k) for k in ("path", "machine", "device", "card", "dtype", "measured_at")}
    return parts, total, header, table


def _rehearsal(rehearse: bool, speedup: float, throughput: Optional[Path]):
    if not rehearse:
        if speedup != 1.0 or throughput is not None:
            _usage("--speedup and --throughput go with --rehearse")
        return None
    from orchestrator.launch import Rehearsal

    return Rehearsal(speedup, str(throughput.resolve()) if throughput else None)


def _launch(source: str, grid_text: str, store: str, opts: dict) -> None:
    """Run a grid here (this process drives Ray) and exit with a code that says how it went."""
    from orchestrator.grid import parse_grid
    from orchestrator.launch import launch

    try:
        g = parse_grid(grid_text, source)
        s = launch(g, grid_text, source, store, **opts)
    except _known_errors() as e:
        _fail(e)
    if s.launched == 0:
        err(f"nothing to run: all {s.total} runs of {g.name} are in the store")
    elif s.rehearsal:
        _rehearsal_summary(s)
    else:
        err(f"{s.ok} ok, {s.failed} failed of {s.launched} runs launched ({s.skipped} already done) "
            f"in {s.seconds:.0f} s" + (f"; {s.errored_trials} trials errored" if s.errored_trials else ""))
    typer.echo(s.store)
    for e in dict.fromkeys(s.trial_errors):
        err(f"trial error: {e}")
    if s.interrupted:
        err(f"interrupted (Ctrl-C): {s.pending} runs are still pending; finish with: vpgrid resume {s.store}")
        raise typer.Exit(EXIT_RUNS_PENDING)
    if s.pending:
        err(f"{s.pending} runs are still pending (their trials ran out of retries); finish with: vpgrid resume {s.store}")
        raise typer.Exit(EXIT_RUNS_PENDING)
    if s.failed:
        err(f"see the errors: vpgrid status {s.store} --failed")
        raise typer.Exit(EXIT_RUNS_FAILED)


def _rehearsal_summary(s) -> None:
    """What a rehearsal found: runs rehearsed, inputs missing on which nodes, predicted against measured wall."""
    x = s.rehearsal.speedup
    err(f"rehearsal: {s.ok} rehearsed, {s.failed} failed of {s.launched} runs launched ({s.skipped} already done) "
        f"in {s.seconds:.0f} s" + (f"; {s.errored_trials} trials errored" if s.errored_trials else ""))
    for error, hosts in s.missing.items():
        err(f"  missing on {', '.join(hosts)}: {error}")
    if s.predicted_s:
        measured = s.tune_s * x
        err(f"  wall on {s.gpus:g} GPUs: predicted {s.predicted_s / 3600:,.2f} h, measured {s.tune_s:.0f} s x {x:g} = "
            f"{measured / 3600:,.2f} h ({100 * (measured / s.predicted_s - 1):+.0f}%)")


def _submit(address: str, grid_text: str, args: list[str], store: str, data_root: Optional[str],
            check_store: bool = True, verbose: bool = False) -> None:
    from orchestrator.submit import submit_job

    try:
        job = submit_job(address, grid_text, args, store, data_root, check_store=check_store, verbose=verbose)
    except _known_errors() as e:
        _fail(e)
    typer.echo(job)
    err(f"submitted Ray Job {job}; follow it with: ray job logs --address {address} --follow {job}\n"
        f"  or: vpgrid status {store} --watch")


def _run_options(address, num_cpus, num_gpus, retry_failed, quiet, data_root, max_failures, callback,
                 rehearse=None) -> dict:
    return dict(address=address, num_cpus=num_cpus, num_gpus=num_gpus, retry_failed=retry_failed,
                progress=not quiet, data_root=data_root, max_failures=max_failures, callbacks=tuple(callback),
                rehearse=rehearse)


def _job_args(retry_failed, max_failures, callback, rehearse=None) -> list[str]:
    """The options a Ray Job's `vpgrid launch` gets: what means the same on the cluster (no local Ray sizes).
    A rehearsal's --throughput table is a file here, not on the cluster: submit refuses it (launch on the head)."""
    if rehearse is not None and rehearse.throughput:
        _usage("--throughput is a file on this machine; a submitted rehearsal sleeps by the shipped table "
               "(run vpgrid launch --rehearse --throughput FILE on the head node instead)")
    out = ["-q"] + (["--retry-failed"] if retry_failed else [])
    out += ["--rehearse", "--speedup", f"{rehearse.speedup:g}"] if rehearse is not None else []
    out += ["--max-failures", str(max_failures)] if max_failures is not None else []
    for c in callback:
        out += ["--callback", c]
    return out


StoreOpt = Annotated[Optional[str], typer.Option("--store", help="Where results go: a path, file://, s3:// or gs:// URI [default: results/<grid name>].")]


@app.command()
def launch(grid: Path, store: StoreOpt = None, address: AddressOpt = None, num_cpus: CpusOpt = None,
           num_gpus: GpusOpt = None, retry_failed: RetryOpt = False, quiet: QuietOpt = False,
           data_root: DataOpt = None, max_failures: MaxFailuresOpt = None, callback: CallbackOpt = [],
           rehearse: RehearseOpt = False, speedup: SpeedupOpt = 1.0, throughput: ThroughputOpt = None) -> None:
    """Run every run of GRID that the store does not have yet; print the store. Exit codes: 0 all ok,
    1 error, 2 usage, 3 some runs failed, 4 some runs still pending (trials out of retries, cluster gone)."""
    from orchestrator.grid import load_grid

    rh = _rehearsal(rehearse, speedup, throughput)
    try:
        g, text = load_grid(grid)
    except _known_errors() as e:
        _fail(e)
    store = store or str(Path("results") / g.name)
    if address and address.startswith(("http://", "https://")):
        _submit(address, text, _job_args(retry_failed, max_failures, callback, rh), store, data_root)
        return
    _launch(str(grid), text, store,
            _run_options(address, num_cpus, num_gpus, retry_failed, quiet, data_root, max_failures, callback, rh))


@app.command()
def submit(grid: Path, address: Annotated[str, typer.Option("--address", help="The cluster's Ray Jobs address, http://HEAD:8265.")],
           store: Annotated[str, typer.Option("--store", help="Where results go, as the cluster sees it: s3://, gs:// or a path mounted on every node.")],
           retry_failed: RetryOpt = False, data_root: DataOpt = None, max_failures: MaxFailuresOpt = None,
           callback: CallbackOpt = [], rehearse: RehearseOpt = False, speedup: SpeedupOpt = 1.0,
           skip_store_check: Annotated[bool, typer.Option("--skip-store-check", help="Do not read or write the store "
                                       "from this machine (a store only the cluster's nodes may use).")] = False,
           verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Ray's own INFO lines (package uploads).")] = False) -> None:
    """Submit GRID as a Ray Job that runs `vpgrid launch` on the cluster. The store is checked and the grid written
    to it from here when this machine reaches it; the job is followed until its driver's first heartbeat (exit 1
    with the job's last log lines if it fails first). Prints the job id."""
    from orchestrator.grid import expand, load_grid
    from orchestrator.validate import check_grid

    try:
        g, text = load_grid(grid)
        check_grid(g, str(grid))  # the job would refuse it too, but only after the cluster started it
        expand(g, str(grid))
    except _known_errors() as e:
        _fail(e)
    _submit(address, text, _job_args(retry_failed, max_failures, callback, _rehearsal(rehearse, speedup, None)),
            store, data_root, check_store=not skip_store_check, verbose=verbose)


@app.command()
def resume(store: StoreArg, address: AddressOpt = None, num_cpus: CpusOpt = None, num_gpus: GpusOpt = None,
           retry_failed: RetryOpt = False, quiet: QuietOpt = False, data_root: DataOpt = None,
           max_failures: MaxFailuresOpt = None, callback: CallbackOpt = [], rehearse: RehearseOpt = False,
           speedup: SpeedupOpt = 1.0, throughput: ThroughputOpt = None) -> None:
    """Finish the grid saved in STORE: run exactly what the store lacks (same exit codes as launch)."""
    from orchestrator.store import Store

    rh = _rehearsal(rehearse, speedup, throughput)
    try:
        s = Store(store)
        text = s.grid_text()
    except _known_errors() as e:
        _fail(e)
    if address and address.startswith(("http://", "https://")):
        _submit(address, text, _job_args(retry_failed, max_failures, callback, rh), s.root, data_root)
        return
    _launch(f"{s.root}/_vpgrid/grid.yaml", text, s.root,
            _run_options(address, num_cpus, num_gpus, retry_failed, quiet, data_root, max_failures, callback, rh))


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
        from orchestrator.report import shots_text
        from orchestrator.store import Store

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
    from orchestrator.store import Store

    try:
        rep = compute(Store(store))
    except _known_errors() as e:
        _fail(e)
    except OSError as e:  # an unreachable store: one line, not a traceback
        _fail(RuntimeError(f"store {store}: {str(e).splitlines()[0]}"))
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
    from orchestrator.store import Store

    try:
        s = Store(store)
        s.grid_text()
        before, after = s.compact()
    except _known_errors() as e:
        _fail(e)
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
    from orchestrator.figures import SelectError, parse_select
    from orchestrator.store import Store

    try:
        wanted = parse_select(select)
    except SelectError as e:
        _usage(str(e))
    if out is not None:
        from orchestrator.deliver import Options, write

        opts = Options(select=wanted, ece=ece, kl=kl, families=tuple(family) or FAMILIES, vector=vector,
                       metrics=tuple(metric))
        try:
            if Store(store).rehearsal():
                err(REHEARSAL_LINE)
            info = write(store, out, opts, progress=err)
        except SelectError as e:
            _usage(str(e))
        except _known_errors() as e:
            _fail(e)
        except OSError as e:
            _fail(RuntimeError(f"store {store}: {str(e).splitlines()[0]}"))
        err(f"{info['written']} figures and tables written, {info['skipped']} not drawn (reasons in the index) "
            f"from {info['ok']} finished runs ({info['failed']} failed, {info['pending']} pending) in {info['seconds']:.1f} s")
        if as_json:
            typer.echo(json.dumps({k: v for k, v in info.items() if k != "entries"}, indent=1, default=str))
        else:
            typer.echo(info["index"])
        return
    from orchestrator.report import markdown, summary

    try:
        s = Store(store)
        s.grid_text()
        if s.rehearsal():
            (err if as_json else typer.echo)(REHEARSAL_LINE)
        frame = s.frame()
        if wanted:
            from orchestrator.figures import run_table, select as pick

            rows = run_table(frame)
            have = {(a, v) for a in wanted for v in rows[a].map(lambda x, a=a: _axis(a, x))} if len(rows) else set()
            for a, vs in wanted.items():
                for v in vs:
                    if (a, v) not in have:
                        _usage(f"--select {a}={v}: no stored run has it")
            frame = pick(rows, wanted)
        table = summary(frame)
    except _known_errors() as e:
        _fail(e)
    if as_json:
        typer.echo(table.to_json(orient="records", indent=1))
    else:
        typer.echo(markdown(table, tuple(metric)))


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


def _axis(axis: str, v):
    from orchestrator.figures import axis_value

    return axis_value(axis, v)


@app.command()
def bench(what: Annotated[list[str], typer.Argument(help="Any of: plan, store, status, status_s3, launch, cluster, report, "
                                                         "scale (orchestration; scale: the paper grid rehearsed on a local "
                                                         "multi-node cluster, ~20 min, docs/scale.md); train, loop, protocol, batching (model speed, "
                                                         "measured by workers/bench.py); gpu (the GPU check) "
                                                         "[default: all but batching, scale and gpu].", show_default=False)] = None,
          as_json: JsonOpt = False,
          models: Annotated[Optional[str], typer.Option("--models", metavar="A,B", help="Models `train` measures "
                            "[default: those of --grid, else the paper's and the demo's].")] = None,
          grid: Annotated[Optional[Path], typer.Option("--grid", help="`train` measures this grid's models.")] = None,
          out: Annotated[Optional[Path], typer.Option("--out", metavar="FILE", help="Also write the throughput table "
                         "that `train` (or `gpu`) measures to FILE.")] = None) -> None:
    """Measure planning, the store, launch overhead and model speed on this machine. `train --json` prints the
    throughput table that `vpgrid plan --estimate --throughput` reads."""
    from orchestrator.bench import BENCHES, DATA_BENCHES, GPU_CHECK, machine

    valid = [*BENCHES, *DATA_BENCHES, GPU_CHECK]
    what = what or [w for w in valid if w not in ("batching", "scale", GPU_CHECK)]
    unknown = [w for w in what if w not in valid]
    if unknown:
        _usage(f"unknown benchmark {unknown[0]!r}; valid: {', '.join(valid)}")
    names = _bench_models(models, grid)
    if GPU_CHECK in what:
        if what != [GPU_CHECK]:
            _usage("run `vpgrid bench gpu` alone: it measures on the GPU and prints its own JSON summary")
        import subprocess
        import sys

        args = ["--out", str(out)] if out else []
        raise typer.Exit(subprocess.call([sys.executable, "-m", "workers.gpu_check", *args]))
    results = []
    for w in what:
        err(f"running {w} ...")
        if w in BENCHES:
            results.append(BENCHES[w]())
            continue
        import workers.bench as data_bench  # torch is imported here, in the data plane, for these only

        try:
            results.append(data_bench.bench_train(names) if w == "train" else data_bench.BENCHES[w]())
        except RuntimeError as e:
            _fail(e)
        if w == "train" and out:
            out.write_text(json.dumps(results[-1], indent=1) + "\n")
    if as_json:
        typer.echo(json.dumps(results[0] if what == ["train"] else {"machine": machine(), "results": results}, indent=1))
        return
    typer.echo(f"machine: {machine()}")
    for r in results:
        r = {**r, "models": {m: ", ".join(f"{k}={v:.3g}" for k, v in e.items()) for m, e in r["models"].items()}} \
            if "models" in r else r
        typer.echo("  " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))


def _bench_models(models: Optional[str], grid: Optional[Path]) -> Optional[list[str]]:
    """The models `bench train` measures: --models, else --grid's, else None (the default set)."""
    from workers.schemas import MODELS

    names = [m.strip() for m in models.split(",") if m.strip()] if models else None
    if grid is not None and names is None:
        from orchestrator.grid import load_grid

        try:
            g, _ = load_grid(grid)
        except _known_errors() as e:
            _fail(e)
        names = list(dict.fromkeys(m.name for part in g.parts() for m in part.models))
    for n in names or []:
        if n not in MODELS:
            from workers.schema import did_you_mean

            _usage(f"--models: unknown model {n!r}{did_you_mean(n, MODELS)} (valid: {', '.join(sorted(MODELS))})")
    return names


def _schema_rows(kinds: list[str]) -> list[dict]:
    """One row per registered name: kind, name, help, and each argument's type, default and valid values."""
    from workers.schemas import SCHEMAS

    rows = []
    for kind in kinds:
        for name, schema in sorted(SCHEMAS[kind[:-1]].items()):
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


def main() -> None:
    try:
        app()
    except _known_errors() as e:  # anything a command did not catch itself still ends in one line
        if os.environ.get("VPGRID_DEBUG") == "1":
            raise
        err(f"error: {e}")
        raise SystemExit(EXIT_ERROR)


if __name__ == "__main__":
    main()
