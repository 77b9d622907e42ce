"""A progress bar of runs done, fed by Ray Tune results (one result per finished run), and one line per trial
that fails (retried or out of retries)."""
from __future__ import annotations

from pathlib import Path

from ray.tune import Callback
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class RunProgress(Callback):
    """Counts runs as trials report them, and asks `watch` each step whether the cluster is still there."""

    def __init__(self, total: int, watch=None, enabled: bool = True, max_failures: int = 0, node_of=None) -> None:
        self.ok = self.failed = 0
        self._watch = watch
        self._max_failures = max_failures
        self._node_of = node_of  # trial id -> (the node its heartbeat names, whether Ray has it alive)
        self._progress = Progress(TextColumn("runs"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                                  TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True),
                                  disable=not enabled)
        self._task = self._progress.add_task("runs", total=total, info="")

    def __getstate__(self) -> dict:  # Tune pickles its callbacks with the experiment; the bar stays here
        return {"ok": self.ok, "failed": self.failed, "_max_failures": self._max_failures}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._watch = self._node_of = None
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

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        limit = "no limit" if self._max_failures < 0 else f"of {self._max_failures}"
        self._say(f"{self._what(trial)}; retry {trial.num_failures} {limit}")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._say(f"{self._what(trial)}; out of retries ({trial.num_failures}): its runs stay pending")

    def _what(self, trial) -> str:
        """One line for a trial that failed: lost with its node (Ray's long node-death text is not repeated), or
        failed with the last line of its error."""
        trial_id = trial.config.get("pack", {}).get("trial_id", str(trial))
        node, alive = self._node_of(trial_id) if self._node_of else (None, None)
        text = _last_failure(trial)
        lost = alive is False or any(s in text for s in LOST)
        if lost:
            return f"trial {trial_id} lost with {f'node {node}' if node else 'its node'}"
        why = (text.splitlines() or [""])[-1][:200]
        return f"trial {trial_id} failed" + (f" on node {node}" if node else "") + (f": {why}" if why else "")

    def _say(self, line: str) -> None:
        self._progress.console.print(line, markup=False, highlight=False, soft_wrap=True)


def _last_failure(trial) -> str:
    """The text of the trial's latest failure, from the error file Tune writes on the driver before it calls the
    callbacks (the copy in the experiment's storage is synced later)."""
    try:
        path = trial.error_file
        return Path(path).read_text().rsplit("Failure #", 1)[-1].strip() if path and Path(path).is_file() else ""
    except (OSError, AttributeError):
        return ""


# Ray's words for a worker or node that went away, as opposed to an exception raised by the run itself
LOST = ("died unexpectedly", "node has died", "ActorDiedError", "RayActorError", "WorkerCrashedError",
        "NodeDiedError", "ActorUnavailableError",
        "actor is temporarily unavailable")  # its raylet gone, before Ray marks the node dead
