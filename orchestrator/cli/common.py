"""What every `vpgrid` command shares: the app and its one error boundary, usage errors, option types and exit
codes. Data goes to stdout; progress, hints and errors to stderr."""
from __future__ import annotations

import contextlib
import difflib
import os
from pathlib import Path
from typing import Annotated, Optional

import typer
import typer.core


class _OneLineErrors(typer.core.TyperGroup):
    """The CLI's one error boundary: an error vpgrid can explain (a VpgridError, or a file that is missing or not
    readable) ends in one line on stderr and its exit code (1; 2 for usage; 4 when runs are left pending), with
    the traceback only under VPGRID_DEBUG=1."""

    def invoke(self, ctx):
        from workers.core.errors import VpgridError

        try:
            return super().invoke(ctx)
        except (VpgridError, FileNotFoundError, PermissionError) as e:
            if os.environ.get("VPGRID_DEBUG") == "1":
                raise
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(getattr(e, "exit_code", 1)) from None


# No Rich markup: it would eat "[default: ...]" in the help text.
app = typer.Typer(cls=_OneLineErrors, add_completion=True, no_args_is_help=True, rich_markup_mode=None,
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


@contextlib.contextmanager
def _reading(store: str):
    """An unreachable store (a network error the store could not name better) ends in one line that names it."""
    from workers.core.errors import StoreError

    try:
        yield
    except (FileNotFoundError, PermissionError):
        raise
    except OSError as e:
        raise StoreError(f"store {store}: {str(e).splitlines()[0]}") from None


# Exit codes of launch, resume and submit beyond an error's own (1, usage 2; docs/cli.md).
EXIT_RUNS_FAILED, EXIT_RUNS_PENDING = 3, 4


def main() -> None:
    app()
