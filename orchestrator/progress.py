"""A progress bar of runs done, fed by Ray Tune results (one result per finished run)."""
from __future__ import annotations

from ray.tune import Callback
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class RunProgress(Callback):
    """Counts runs as trials report them, and asks `watch` each step whether the cluster is still there."""

    def __init__(self, total: int, watch=None, enabled: bool = True) -> None:
        self.ok = self.failed = 0
        self._watch = watch
        self._progress = Progress(TextColumn("runs"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                                  TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True),
                                  disable=not enabled)
        self._task = self._progress.add_task("runs", total=total, info="")

    def __getstate__(self) -> dict:  # Tune pickles its callbacks with the experiment; the bar stays here
        return {"ok": self.ok, "failed": self.failed}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._watch = None
        self._progress = Progress(disable=True)
        self._task = self._progress.add_task("runs", total=0, info="")

    def __enter__(self) -> "RunProgress":
        self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.stop()

    def on_step_begin(self, iteration, trials, **info) -> None:
        if self._watch is not None:
            self._watch.check()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if "run_key" not in result:
            return
        if result["ok"]:
            self.ok += 1
        else:
            self.failed += 1
        running = sum(1 for t in trials if t.status == "RUNNING")
        self._progress.update(self._task, advance=1, info=f"failed {self.failed} · trials running {running}")
