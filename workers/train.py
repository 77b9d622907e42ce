"""Train one visual prompt with a label mapping on a frozen model (the reference ILM-VP recipe)."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from workers.data.base import as_float
from workers.mapping import LABEL_MAPPINGS, compute_mapping, map_logits
from workers.metrics import run_metrics
from workers.models import ModelMeta
from workers.prompts import PadPrompter
from workers.spec import RunSpec


def to_canvas(x: torch.Tensor, meta: ModelMeta) -> torch.Tensor:
    """Target images (uint8, or float in [0,1]) -> normalised model inputs at the model's canvas size."""
    x = as_float(x)
    if x.shape[-1] != meta.input_size:
        x = F.interpolate(x, size=(meta.input_size, meta.input_size), mode="bilinear", align_corners=False)
    mean = torch.tensor(meta.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(meta.std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


@dataclass
class Task:
    """One run's data: the few-shot training subset and the whole test split, with the target class names."""

    train_x: torch.Tensor  # images (N, 3, s, s), uint8 or float in [0, 1]; or token ids (N, L) for cross-modal tasks
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass
class TrainOutput:
    metrics: dict
    mapping: list[int] | None  # VP: label_mapping[target] = source; None for LP/FF
    final_train_loss: float
    train_seconds: float
    eval_seconds: float
    epoch_accuracy: list[float] | None = None  # test accuracy after epochs N, 2N, ... (train.eval_every = N)
    prompt: dict[str, torch.Tensor] | None = None  # VP: the learned prompt's tensors, saved beside the store


@torch.no_grad()
def _source_logits(model: nn.Module, prompter: PadPrompter, x: torch.Tensor, bs: int, device) -> torch.Tensor:
    out = [model(prompter(x[i:i + bs].to(device))).float().cpu() for i in range(0, len(x), bs)]
    return torch.cat(out)


def _test_accuracy(model: nn.Module, prompter: PadPrompter, task: Task, mapping: torch.Tensor, bs: int,
                   device) -> float:
    pred = map_logits(_source_logits(model, prompter, task.test_x, bs, device), mapping.cpu()).argmax(1)
    return float((pred == task.test_y).double().mean())


def prompt_tensors(prompt: nn.Module) -> dict[str, torch.Tensor]:
    """The learned parameters of a prompt, by name, on the CPU."""
    return {n: p.detach().cpu().contiguous() for n, p in prompt.named_parameters()}


def require_images(task: Task, method: str) -> None:
    """Image methods on token data would fail deep inside with a shape error; say what is wrong instead."""
    if task.train_x.ndim != 4:
        raise TypeError(f"method {method!r} needs images (N, 3, H, W); this dataset gives token ids "
                        f"{tuple(task.train_x.shape)}: use method 'reprogram' for text and DNA tasks")


def train_prompt(model: nn.Module, meta: ModelMeta, task: Task, spec: RunSpec, device: torch.device) -> TrainOutput:
    require_images(task, spec.method)
    cfg = spec.train
    train_x, train_y, num_target = task.train_x, task.train_y, task.num_classes
    torch.manual_seed(spec.seed)
    prompter = PadPrompter(meta.input_size, train_x.shape[-1], meta.mean, meta.std).to(device)
    opt = torch.optim.Adam(prompter.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(
        opt, milestones=[int(f * cfg.epochs) for f in cfg.milestones], gamma=cfg.gamma)
    schedule = LABEL_MAPPINGS.meta(spec.method).schedule

    def remap() -> torch.Tensor:  # frequency mapping under the current prompt (no grad)
        pred = _source_logits(model, prompter, train_x, cfg.eval_batch_size, device).argmax(1)
        return compute_mapping(spec.method, source_pred=pred, targets=train_y,
                               num_source=meta.num_classes, num_target=num_target, seed=spec.seed).to(device)

    mapping = None
    if schedule == "fixed":
        mapping = compute_mapping(spec.method, num_source=meta.num_classes, num_target=num_target,
                                  seed=spec.seed).to(device)
    gen = torch.Generator().manual_seed(spec.seed)
    amp = device.type == "cuda"  # bf16 autocast on GPU, as the reference used AMP
    t0 = time.perf_counter()
    loss_sum, n_seen = 0.0, 0
    epoch_acc = [] if cfg.eval_every else None
    for epoch in range(cfg.epochs):
        if schedule == "every_epoch" or (schedule == "once" and epoch == 0):
            mapping = remap()
        perm = torch.randperm(len(train_x), generator=gen)
        loss_sum, n_seen = 0.0, 0
        for i in range(0, len(perm), cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            x, y = train_x[idx].to(device, non_blocking=True), train_y[idx].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = F.cross_entropy(map_logits(model(prompter(x)), mapping).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)  # .item() syncs the GPU; one per step is cheap next to the step
            n_seen += len(idx)
        sched.step()
        if not math.isfinite(loss_sum):
            raise FloatingPointError(f"training loss is not finite at epoch {epoch + 1}/{cfg.epochs}")
        if cfg.eval_every and (epoch + 1) % cfg.eval_every == 0:  # no grad, no RNG: training is unchanged
            epoch_acc.append(_test_accuracy(model, prompter, task, mapping, cfg.eval_batch_size, device))
    train_seconds = time.perf_counter() - t0  # includes the per-epoch evaluations, if any

    t0 = time.perf_counter()
    logits = map_logits(_source_logits(model, prompter, task.test_x, cfg.eval_batch_size, device), mapping.cpu())
    metrics = run_metrics(logits, task.test_y, spec)
    return TrainOutput(metrics, mapping.cpu().tolist(), loss_sum / max(n_seen, 1), train_seconds,
                       time.perf_counter() - t0, epoch_accuracy=epoch_acc, prompt=prompt_tensors(prompter))


def multistep(opt, spec: RunSpec):
    cfg = spec.train
    return torch.optim.lr_scheduler.MultiStepLR(opt, [int(f * cfg.epochs) for f in cfg.milestones], cfg.gamma)


def fit(loss_of, n: int, spec: RunSpec, opt, after_step=lambda: None) -> float:
    """The epoch loop LP, FF and reprogramming share: shuffled mini-batches, the multi-step schedule, and a
    non-finite loss fails the run. Returns the last epoch's mean loss."""
    sched = multistep(opt, spec)
    gen = torch.Generator().manual_seed(spec.seed)
    loss_sum = 0.0
    for epoch in range(spec.train.epochs):
        perm = torch.randperm(n, generator=gen)
        loss_sum = 0.0
        for i in range(0, n, spec.train.batch_size):
            idx = perm[i:i + spec.train.batch_size]
            loss = loss_of(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            after_step()
            loss_sum += loss.item() * len(idx)
        sched.step()
        if not math.isfinite(loss_sum):
            raise FloatingPointError(f"training loss is not finite at epoch {epoch + 1}/{spec.train.epochs}")
    return loss_sum / max(n, 1)
