"""The one epoch loop every transfer method trains with (VP, CLIP prompting, reprogramming, LP, FF), and what runs
and methods hand each other (Task, TrainOutput).

The loop trains K runs at once (K = 1 is a run alone): each run keeps its own optimiser, scheduler, shuffling
generator and loss; a method's `Job` turns the K runs' mini-batches into K losses, typically through one pass of
the frozen model. Runs share no parameter, so the backward of the summed losses gives each run exactly the
gradient it would get alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from workers.models import ModelCard
from workers.core.spec import RunSpec, TrainConfig


def images(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Images (uint8, or float in [0,1]) as `dtype` in [0,1]; for float32 exactly `workers.data.as_float`."""
    return x.to(dtype).div_(255) if x.dtype == torch.uint8 else x.to(dtype)


def model_dtype(model: nn.Module) -> torch.dtype:
    """The frozen model's floating dtype: inputs and prompts follow it (float64 in the equivalence tests)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def upcast(t: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 outputs of autocast to float32 for the loss; float32 and float64 stay as they are."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


def to_canvas(x: torch.Tensor, meta: ModelCard, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Target images (uint8, or float in [0,1]) -> normalised model inputs at the model's canvas size."""
    x = images(x, dtype)
    if x.shape[-1] != meta.input_size:
        x = F.interpolate(x, size=(meta.input_size, meta.input_size), mode="bilinear", align_corners=False)
    mean = torch.tensor(meta.mean, device=x.device, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(meta.std, device=x.device, dtype=dtype).view(1, 3, 1, 1)
    return (x - mean) / std


@dataclass
class Task:
    """One run's data: the few-shot training subset and the whole test split, with the target class names."""

    train_x: torch.Tensor  # images (N, 3, s, s), uint8 or float in [0, 1]; or token ids (N, L) for cross-modal tasks
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    # Where train_x came from, when it is a subset of a split: train_x == split_x[rows]. Runs trained together
    # then share one device copy of the images their subsets use.
    split_x: Optional[torch.Tensor] = None
    rows: Optional[torch.Tensor] = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass
class TrainOutput:
    metrics: dict
    mapping: list[int] | None  # VP: label_mapping[target] = source; None for LP/FF
    final_train_loss: float
    train_seconds: float  # trained with others: the batch's time / the number of runs in it
    eval_seconds: float
    epoch_accuracy: list[float] | None = None  # test accuracy after epochs N, 2N, ... (train.eval_every = N)
    prompt: dict[str, torch.Tensor] | None = None  # VP: the learned prompt's tensors, saved beside the store


def prompt_tensors(prompt: nn.Module) -> dict[str, torch.Tensor]:
    """The learned parameters of a prompt, by name, on the CPU."""
    return {n: p.detach().cpu().contiguous() for n, p in prompt.named_parameters()}


def require_images(task: Task, method: str) -> None:
    """Image methods on token data would fail deep inside with a shape error; say what is wrong instead."""
    if task.train_x.ndim != 4:
        raise TypeError(f"method {method!r} needs images (N, 3, H, W); this dataset gives token ids "
                        f"{tuple(task.train_x.shape)}: use method 'reprogram' for text and DNA tasks")


def multistep(opt: torch.optim.Optimizer, cfg: TrainConfig):
    return torch.optim.lr_scheduler.MultiStepLR(opt, [int(f * cfg.epochs) for f in cfg.milestones], cfg.gamma)


@dataclass(eq=False)
class Learner:
    """One run's state in the loop. `lr_at(step)`, if given, sets the lr before every step (CLIP's cosine);
    otherwise the multi-step decay steps once per epoch."""

    k: int  # the run's position in its job
    spec: RunSpec
    opt: torch.optim.Optimizer
    lr_at: Optional[Callable[[int], float]] = None
    after_step: Callable[[], None] = lambda: None
    loss: float = 0.0  # the last epoch's mean training loss
    error: Optional[BaseException] = None  # set when the run failed; it then leaves the loop alone
    gen: torch.Generator = field(init=False)
    sched: object = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.gen = torch.Generator().manual_seed(self.spec.seed)
        if self.lr_at is None:
            self.sched = multistep(self.opt, self.spec.train)


class Job:
    """What a method gives the loop. `losses(live, idx)`: idx is (len(live), b) positions in each run's own
    training set, on the device; returns each run's mean loss over its own rows, shape (len(live),)."""

    def start_epoch(self, epoch: int, live: list[Learner]) -> None:
        """Before the epoch's shuffling (label mappings); a failure here sets that learner's error."""

    def losses(self, live: list[Learner], idx: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def end_epoch(self, epoch: int, live: list[Learner]) -> None:
        """After the epoch (per-epoch evaluation)."""


def _alive(learners: list[Learner]) -> list[Learner]:
    return [r for r in learners if r.error is None]


def fit(job: Job, learners: list[Learner], n: int, device: torch.device) -> None:
    """Train every learner for its spec's epochs on n training examples each, in shuffled mini-batches.
    The learners share the step schedule (epochs, batch size); a non-finite epoch loss fails that run alone."""
    cfg = learners[0].spec.train
    step = 0
    for epoch in range(cfg.epochs):
        job.start_epoch(epoch, _alive(learners))
        live = _alive(learners)
        if not live:
            return
        # Each run shuffles with its own generator, as alone; the epoch's order reaches the device in one copy.
        order = torch.stack([torch.randperm(n, generator=r.gen) for r in live]).to(device, non_blocking=True)
        sums = torch.zeros(len(live), dtype=torch.float64, device=device)
        for i in range(0, n, cfg.batch_size):
            idx = order[:, i:i + cfg.batch_size]
            losses = job.losses(live, idx)
            for r in live:
                if r.lr_at is not None:
                    for g in r.opt.param_groups:
                        g["lr"] = r.lr_at(step)
                r.opt.zero_grad(set_to_none=True)
            losses.sum().backward()  # runs share no parameter: each gets exactly its own gradient
            for r in live:
                r.opt.step()
                r.after_step()
            sums += losses.detach().double() * idx.shape[1]  # no sync per step: read once per epoch
            step += 1
        for r, s in zip(live, sums.tolist()):
            if r.sched is not None:
                r.sched.step()
            r.loss = s / max(n, 1)
            if not math.isfinite(s):
                r.error = FloatingPointError(f"training loss is not finite at epoch {epoch + 1}/{cfg.epochs}")
        job.end_epoch(epoch, _alive(learners))


class OneRun(Job):
    """A job of one run whose loss is `loss_of(idx)` (idx: positions in its training set, on the device)."""

    def __init__(self, loss_of: Callable[[torch.Tensor], torch.Tensor],
                 start_epoch: Callable[[int], None] = lambda epoch: None) -> None:
        self.loss_of, self._start = loss_of, start_epoch

    def start_epoch(self, epoch: int, live: list[Learner]) -> None:
        if live:
            self._start(epoch)

    def losses(self, live: list[Learner], idx: torch.Tensor) -> torch.Tensor:
        return self.loss_of(idx[0]).reshape(1)


def fit_one(loss_of: Callable[[torch.Tensor], torch.Tensor], n: int, spec: RunSpec, opt: torch.optim.Optimizer,
            device: torch.device, after_step: Callable[[], None] = lambda: None,
            lr_at: Optional[Callable[[int], float]] = None,
            start_epoch: Callable[[int], None] = lambda epoch: None) -> float:
    """`fit` for one run (LP, FF, reprogramming, CLIP prompting); returns the last epoch's mean loss and raises
    the run's error, if it failed."""
    learner = Learner(0, spec, opt, lr_at, after_step)
    fit(OneRun(loss_of, start_epoch), [learner], n, device)
    if learner.error is not None:
        raise learner.error
    return learner.loss


@torch.no_grad()
def _output_bytes(model: nn.Module, x: torch.Tensor) -> int:
    total = 0

    def count(module, args, out):
        nonlocal total
        total += sum(t.numel() * t.element_size() for t in (out if isinstance(out, (tuple, list)) else (out,))
                     if isinstance(t, torch.Tensor))

    hooks = [m.register_forward_hook(count) for m in model.modules() if not any(True for _ in m.children())]
    try:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return total


def step_bytes(model: nn.Module, canvas: int, batch_size: int, device: torch.device) -> int:
    """An estimate of one run's training step in memory: the frozen model's layer outputs for one canvas-sized
    image (what autograd keeps for the input gradient), x batch_size, x 2 for the gradients in flight."""
    x = torch.zeros(1, 3, canvas, canvas, device=device, dtype=model_dtype(model))
    return 2 * batch_size * _output_bytes(model, x)


def memory_budget(device: torch.device, gpu_share: float | None = None) -> float:
    """Bytes the runs trained together may fill: 70% of this trial's share of the GPU's free memory; on the CPU,
    a quarter of the available memory (other trials run beside this one)."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return 0.7 * min(free, total * (gpu_share or 1.0))
    import psutil  # a dependency of ray[default]

    return 0.25 * psutil.virtual_memory().available


# On the CPU larger steps stop paying once a step's layer outputs pass ~150 MB. Measured with the demo CNN (one
# thread, 2-core machine; benchmarks/batching.py): 9-run cells of 1 shot (batch 8) ran 1.33x faster as one batch, of 10
# shots (batch 32, 45 MB) 1.1-1.3x in batches of 3, of 50 shots (batch 64, 90 MB) 0.84-0.94x in batches of 2.
CPU_STEP_BYTES = 144 * 2**20


def prompt_batch_cap(model: nn.Module, canvas: int, batch_size: int, device: torch.device,
                     gpu_share: float | None = None) -> int:
    """How many runs' steps to put through the model at once: what fits the memory budget; on the CPU, also
    no more than keeps a step near the fastest size."""
    per_run = max(step_bytes(model, canvas, batch_size, device), 1)
    budget = memory_budget(device, gpu_share)
    if device.type != "cuda":
        budget = min(budget, CPU_STEP_BYTES)
    return max(1, int(budget // per_run))
