"""vpgrid launch, submit and resume: run what a store lacks, here or as a Ray Job, and say how it went."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from orchestrator.cli.common import (AddressOpt, CallbackOpt, CpusOpt, DataOpt, EXIT_RUNS_FAILED, EXIT_RUNS_PENDING, GpusOpt, MaxFailuresOpt,
                                     QuietOpt, RehearseOpt, RetryOpt, SpeedupOpt, StoreArg, ThroughputOpt,
                                     _usage, app, err)


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

    g = parse_grid(grid_text, source)
    s = launch(g, grid_text, source, store, **opts)
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

    job = submit_job(address, grid_text, args, store, data_root, check_store=check_store, verbose=verbose)
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
    g, text = load_grid(grid)
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

    g, text = load_grid(grid)
    check_grid(g, str(grid))  # the job would refuse it too, but only after the cluster started it
    expand(g, str(grid))
    _submit(address, text, _job_args(retry_failed, max_failures, callback, _rehearsal(rehearse, speedup, None)),
            store, data_root, check_store=not skip_store_check, verbose=verbose)


@app.command()
def resume(store: StoreArg, address: AddressOpt = None, num_cpus: CpusOpt = None, num_gpus: GpusOpt = None,
           retry_failed: RetryOpt = False, quiet: QuietOpt = False, data_root: DataOpt = None,
           max_failures: MaxFailuresOpt = None, callback: CallbackOpt = [], rehearse: RehearseOpt = False,
           speedup: SpeedupOpt = 1.0, throughput: ThroughputOpt = None) -> None:
    """Finish the grid saved in STORE: run exactly what the store lacks (same exit codes as launch)."""
    from workers.core.store import Store

    rh = _rehearsal(rehearse, speedup, throughput)
    s = Store(store)
    text = s.grid_text()
    if address and address.startswith(("http://", "https://")):
        _submit(address, text, _job_args(retry_failed, max_failures, callback, rh), s.root, data_root)
        return
    _launch(f"{s.root}/_vpgrid/grid.yaml", text, s.root,
            _run_options(address, num_cpus, num_gpus, retry_failed, quiet, data_root, max_failures, callback, rh))
