"""An executor for `orchestrator.launch.launch` that runs each trial in this process, one after another, through
`workers.trial.run_trial` (what the Ray trainable calls): no Ray, so a launch's accounting (exit codes,
--retry-failed, pending runs) is tested in seconds. Tune's part (retries, packing, the cluster watch) keeps its
own end-to-end tests (test_launch.py, test_cluster.py)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from orchestrator.ray_tune import Executed, Trials


class TrialLost(RuntimeError):
    pass


@dataclass
class InProcess:
    """`lose={i: n}`: trial i (in launch order) dies after publishing n runs, as a worker lost with its node when
    no retry is left. `interrupt_after=k`: Ctrl-C once k trials have run (Tune stops gracefully)."""

    lose: dict = field(default_factory=dict)
    interrupt_after: int | None = None
    asked: list = field(default_factory=list)  # the Trials of each launch
    reports: list = field(default_factory=list)  # what each published run reported, as Tune would get it

    def __call__(self, job: Trials) -> Executed:
        import torch

        from workers.trial import run_trial

        self.asked.append(job)
        errors, t0, threads = [], time.time(), torch.get_num_threads()
        try:
            for i, config in enumerate(job.configs):
                if self.interrupt_after is not None and i >= self.interrupt_after:
                    return Executed(errors, job.num_gpus or 0.0, time.time() - t0, interrupted=True)
                try:
                    run_trial(config, "in-process", self._reporter(i, config["trial_id"]))
                except TrialLost as e:  # as Tune gives it: the error's last line
                    errors.append(str(e).strip().splitlines()[-1][:300])
            return Executed(errors, job.num_gpus or 0.0, time.time() - t0)
        finally:
            torch.set_num_threads(threads)  # run_trial sets the trial's; the other tests keep theirs

    def _reporter(self, i: int, trial: str):
        def report(metrics: dict) -> None:
            self.reports.append(metrics)
            if i in self.lose and metrics["runs_done"] >= self.lose[i]:
                raise TrialLost(f"trial {trial}: its worker died")
        return report
