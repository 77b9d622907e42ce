"""The `vpgrid` command: one Typer app (common.py: its error boundary and shared options) and one module per
group of commands. Heavy imports (Ray, torch, pandas) happen inside the commands that need them, so `--help`,
`plan` and `status` start fast."""
# Each module registers its commands on `app`, in this order (the order of `vpgrid --help`).
from orchestrator.cli import planning, running, reading, tools  # noqa: F401,I001
from orchestrator.cli.common import app, main
from orchestrator.cli.tools import pretrain

__all__ = ["app", "main", "pretrain"]
