"""Visual prompting with a label mapping on a frozen model (the reference ILM-VP recipe): one method per label
mapping (rlm, flm, ilm, ...; `workers.mapping`), all trained by `train_prompts`.

`train_prompts` trains K runs that share the model, the dataset and the step schedule in one pass of the frozen
model per step: the K prompted mini-batches are concatenated, and each run keeps its own prompt, Adam, multi-step
schedule, shuffling, few-shot subset and label mapping (RLM fixed by the seed, FLM once with the initial prompt,
ILM at the start of every epoch). The model is in eval mode (BatchNorm on its running statistics), so no sample
sees another and each run computes what it would alone. A run alone is the K = 1 case.
"""
from __future__ import annotations

import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from workers.mapping import LABEL_MAPPINGS, compute_mapping, map_logits
from workers.methods.base import BATCHED, METHODS
from workers.metrics import run_metrics
from workers.models import ModelCard
from workers.prompts import PadPrompter
from workers.core.spec import RunSpec
from workers.train import (Job, Learner, Task, TrainOutput, fit, images, model_dtype, prompt_tensors, require_images,
                           upcast)


def device_split(tasks: list[Task], device: torch.device) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(pool, rows): one device copy of the training images the runs use (uint8 stays uint8) and, per run, the
    pool rows of its training set in order. Runs whose subsets come from one split share the images they share."""
    first = tasks[0].split_x
    if first is not None and all(t.split_x is first and t.rows is not None for t in tasks):
        used, inverse = torch.unique(torch.cat([t.rows for t in tasks]), return_inverse=True)
        pool = first[used].to(device)
        return pool, list(inverse.to(device).split([len(t.rows) for t in tasks]))
    pool = torch.cat([t.train_x for t in tasks]).to(device)
    starts = torch.tensor([0] + [len(t.train_x) for t in tasks]).cumsum(0).tolist()
    return pool, [torch.arange(a, b, device=device) for a, b in zip(starts, starts[1:])]


class PromptJob(Job):
    """K pad prompts on one frozen model; the runs' tasks share the test split and the training-set size."""

    def __init__(self, model: nn.Module, meta: ModelCard, tasks: list[Task], specs: list[RunSpec],
                 device: torch.device) -> None:
        self.model, self.meta, self.specs, self.device = model, meta, specs, device
        self.dtype = model_dtype(model)
        self.amp = device.type == "cuda"  # bf16 autocast on GPU, as the reference used AMP
        self.cfg = specs[0].train
        self.num_target = tasks[0].num_classes
        self.pool, self.rows = device_split(tasks, device)
        self.train_y = [t.train_y.to(device) for t in tasks]
        test = tasks[0].test_x
        self.test_x = test.to(device) if all(t.test_x is test for t in tasks) else None
        self.tasks = tasks
        self.prompters, self.mappings, self.epoch_acc = [], [None] * len(specs), [[] for _ in specs]
        for spec in specs:
            torch.manual_seed(spec.seed)  # as a run alone: the prompt is made right after seeding
            self.prompters.append(PadPrompter(meta.input_size, tasks[0].train_x.shape[-1], meta.mean,
                                              meta.std).to(device=device, dtype=self.dtype))
        self._stacked: tuple = ()

    def learners(self) -> list[Learner]:
        return [Learner(k, s, torch.optim.Adam(self.prompters[k].parameters(), lr=s.train.lr))
                for k, s in enumerate(self.specs)]

    @torch.no_grad()
    def _forward(self, ks: list[int], n: int, images_of: Callable[[int, int, int], torch.Tensor],
                 reduce: Callable[[int, torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
        """reduce(k, source logits) of every run k's prompted images, no autocast (evaluation always ran in
        float32). A GPU takes eval_batch_size images per run at a time; a CPU eval_batch_size in all, where
        larger forwards got slower (the demo CNN: 1790 images/s at 256, 995 at 1024)."""
        out: list[list[torch.Tensor]] = [[] for _ in ks]
        bs = self.cfg.eval_batch_size
        if self.device.type != "cuda":
            bs = max(1, bs // len(ks))
        for i in range(0, n, bs):
            x = torch.cat([self.prompters[k](images_of(k, i, i + bs)) for k in ks])
            for j, (k, logits) in enumerate(zip(ks, self.model(x).chunk(len(ks)))):
                out[j].append(reduce(k, upcast(logits)))
        return [torch.cat(o) for o in out]

    def remap(self, live: list[Learner]) -> None:
        """Frequency mappings under the current prompts (no grad, no RNG): one pass for all the runs that remap."""
        ks = [r.k for r in live]
        pred = self._forward(ks, len(self.rows[0]),
                             lambda k, i, j: images(self.pool[self.rows[k][i:j]], self.dtype),
                             lambda k, logits: logits.argmax(1))
        pred = torch.stack(pred).cpu()  # one copy for all the runs
        for r, p in zip(live, pred):
            self._map(r, source_pred=p, targets=self.tasks[r.k].train_y)

    def _map(self, r: Learner, **data) -> None:
        try:
            self.mappings[r.k] = compute_mapping(r.spec.method, num_source=self.meta.num_classes,
                                                 num_target=self.num_target, seed=r.spec.seed, **data).to(self.device)
        except Exception as e:  # a bad mapping fails its run alone
            r.error = e

    def start_epoch(self, epoch: int, live: list[Learner]) -> None:
        self.map_due(live)
        self._stacked = ()

    def map_due(self, live: list[Learner]) -> None:
        """The mappings due now: a run's first (RLM from its seed, FLM under the initial prompt), ILM's every time."""
        due = [r for r in live if self.mappings[r.k] is None
               or LABEL_MAPPINGS.card(r.spec.method).schedule == "every_epoch"]
        by_data = []
        for r in due:
            if LABEL_MAPPINGS.card(r.spec.method).schedule == "fixed":
                self._map(r)
            else:
                by_data.append(r)
        if by_data:
            self.remap(by_data)

    def losses(self, live: list[Learner], idx: torch.Tensor) -> torch.Tensor:
        ks = [r.k for r in live]
        if not self._stacked or self._stacked[0] != ks:  # the runs' rows, labels, mappings: once per epoch
            self._stacked = (ks, torch.stack([self.rows[k] for k in ks]), torch.stack([self.train_y[k] for k in ks]),
                             torch.stack([self.mappings[k] for k in ks]))
        _, rows, ys, maps = self._stacked
        kk, b = idx.shape
        x = images(self.pool[rows.gather(1, idx).flatten()], self.dtype).view(kk, b, *self.pool.shape[1:])
        x = torch.cat([self.prompters[k](xk) for k, xk in zip(ks, x)])
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            logits = self.model(x)
        logits = upcast(logits).view(kk, b, -1)
        mapped = logits.gather(2, maps[:, None, :].expand(kk, b, maps.shape[1]))  # each run's own mapping
        loss = F.cross_entropy(mapped.flatten(0, 1), ys.gather(1, idx).flatten(), reduction="none")
        return loss.view(kk, b).mean(1)

    def test_logits(self, live: list[Learner]) -> list[torch.Tensor]:
        """Each run's mapped test logits (N, K), on the device."""
        ks = [r.k for r in live]
        if self.test_x is not None:
            test = self.test_x
            return self._forward(ks, len(test), lambda k, i, j: images(test[i:j], self.dtype),
                                 lambda k, logits: map_logits(logits, self.mappings[k]))
        return [self._forward([k], len(self.tasks[k].test_x),
                              lambda k, i, j: images(self.tasks[k].test_x[i:j].to(self.device), self.dtype),
                              lambda k, logits: map_logits(logits, self.mappings[k]))[0] for k in ks]

    def end_epoch(self, epoch: int, live: list[Learner]) -> None:
        every = self.cfg.eval_every
        if every and (epoch + 1) % every == 0 and live:  # no grad, no RNG: training is unchanged
            for r, logits in zip(live, self.test_logits(live)):
                y = self.tasks[r.k].test_y.to(logits.device)
                self.epoch_acc[r.k].append(float((logits.argmax(1) == y).double().mean()))


def train_prompts(model: nn.Module, meta: ModelCard, tasks: list[Task], specs: list[RunSpec],
                  device: torch.device) -> list[TrainOutput | BaseException]:
    """Train the runs' prompts together; per run its TrainOutput or the exception that failed it alone.
    The runs must share the training schedule (spec.train) and the training-set size."""
    for task, spec in zip(tasks, specs):
        require_images(task, spec.method)
    if len({s.train.canonical for s in specs}) > 1 or len({len(t.train_x) for t in tasks}) > 1:
        raise ValueError("runs trained together need one training schedule and one training-set size")
    t0 = time.perf_counter()
    job = PromptJob(model, meta, tasks, specs, device)
    learners = job.learners()
    fit(job, learners, len(tasks[0].train_x), device)
    if not specs[0].train.epochs:  # no epoch mapped: map once, as at the start of training
        job.map_due([r for r in learners if r.error is None])
    train_seconds = (time.perf_counter() - t0) / len(specs)  # includes per-epoch evaluations, if any

    t0 = time.perf_counter()
    live = [r for r in learners if r.error is None]
    outs: list[TrainOutput | BaseException] = [r.error for r in learners]
    if live:
        logits = [x.cpu() for x in job.test_logits(live)]
        eval_seconds = (time.perf_counter() - t0) / len(live)
        for r, lg in zip(live, logits):
            k = r.k
            epoch_acc = job.epoch_acc[k] if r.spec.train.eval_every else None
            outs[k] = TrainOutput(run_metrics(lg, tasks[k].test_y, r.spec), job.mappings[k].cpu().tolist(), r.loss,
                                  train_seconds, eval_seconds, epoch_accuracy=epoch_acc,
                                  prompt=prompt_tensors(job.prompters[k]))
    return outs


def train_prompt(model: nn.Module, meta: ModelCard, task: Task, spec: RunSpec, device: torch.device) -> TrainOutput:
    """One run alone: the K = 1 case of `train_prompts`."""
    out = train_prompts(model, meta, [task], [spec], device)[0]
    if isinstance(out, BaseException):
        raise out
    return out


# Every label mapping is a VP method of the same name, trained by the one prompt loop.
for _name in LABEL_MAPPINGS.names():
    METHODS.register(_name)(train_prompt)
    BATCHED.register(_name)(train_prompts)
