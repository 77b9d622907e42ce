"""The classic transfers the paper sets VP against: linear probing (LP) and full fine-tuning (FF).

Both see the target image resized to the model's canvas (no prompt) and replace the source classifier
(`ModelCard.head`) with a new K-way linear layer. Same optimiser schedule as VP: `train.lr`, multi-step
decay at `train.milestones`; LP uses Adam on the head, FF uses SGD with momentum 0.9 on every weight.
"""
from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F
from torch import nn

from workers.methods.base import METHODS
from workers.metrics import run_metrics
from workers.models import ModelCard, get_module, set_module
from workers.core.spec import RunSpec
from workers.train import Task, TrainOutput, fit_one, model_dtype, require_images, to_canvas, upcast


def _head(model: nn.Module, meta: ModelCard) -> nn.Module:
    try:
        return get_module(model, meta.head)
    except AttributeError:
        raise TypeError(f"the model has no classifier module `{meta.head}` (ModelCard.head) for LP/FF to replace") from None


@torch.no_grad()
def _features(model: nn.Module, meta: ModelCard, x: torch.Tensor, bs: int, device) -> torch.Tensor:
    """The head's input (pre-logits features) on the device, captured by a hook so any family works unchanged."""
    out = []
    hook = _head(model, meta).register_forward_hook(lambda m, args, y: out.append(upcast(args[0])))
    dtype = model_dtype(model)
    try:
        for i in range(0, len(x), bs):
            model(to_canvas(x[i:i + bs].to(device), meta, dtype))
    finally:
        hook.remove()
    return torch.cat(out)


@METHODS.register("lp")
def linear_probe(model: nn.Module, meta: ModelCard, task: Task, spec: RunSpec, device: torch.device) -> TrainOutput:
    require_images(task, spec.method)
    train_x, train_y, test_x, test_y, num_target = task.train_x, task.train_y, task.test_x, task.test_y, task.num_classes
    torch.manual_seed(spec.seed)
    t0 = time.perf_counter()
    f_train = _features(model, meta, train_x, spec.train.eval_batch_size, device)
    y_train = train_y.to(device)
    clf = nn.Linear(f_train.shape[1], num_target).to(device=device, dtype=f_train.dtype)
    opt = torch.optim.Adam(clf.parameters(), lr=spec.train.lr)
    loss = fit_one(lambda idx: F.cross_entropy(clf(f_train[idx]), y_train[idx]), len(f_train), spec, opt, device)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.no_grad():
        logits = clf(_features(model, meta, test_x, spec.train.eval_batch_size, device)).cpu()
    return TrainOutput(run_metrics(logits, test_y, spec), None, loss, train_s, time.perf_counter() - t0)


@METHODS.register("ff")
def full_finetune(model: nn.Module, meta: ModelCard, task: Task, spec: RunSpec, device: torch.device) -> TrainOutput:
    require_images(task, spec.method)
    train_x, train_y, test_x, test_y, num_target = task.train_x, task.train_y, task.test_x, task.test_y, task.num_classes
    torch.manual_seed(spec.seed)
    net = copy.deepcopy(model)  # the variant is shared by the pack: train a copy
    width = _features(net, meta, train_x[:1], 1, device).shape[1]
    dtype = model_dtype(net)
    set_module(net, meta.head, nn.Linear(width, num_target).to(device=device, dtype=dtype))
    net.requires_grad_(True)
    net.eval()  # BatchNorm keeps its statistics: few-shot batches are too small to estimate new ones
    # A pruned model stays pruned: zeros of conv/linear weights are restored after every step.
    masks = [(m.weight, m.weight != 0) for n, m in net.named_modules()
             if isinstance(m, (nn.Conv2d, nn.Linear)) and n != meta.head and bool((m.weight == 0).any())]
    opt = torch.optim.SGD(net.parameters(), lr=spec.train.lr, momentum=0.9)
    amp = device.type == "cuda"

    x_dev, y_dev = train_x.to(device), train_y.to(device)  # on the device once, not per step

    def loss_of(idx):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = net(to_canvas(x_dev[idx], meta, dtype))
        return F.cross_entropy(upcast(out), y_dev[idx])

    @torch.no_grad()
    def keep_pruned():
        for w, keep in masks:
            w.mul_(keep)

    t0 = time.perf_counter()
    loss = fit_one(loss_of, len(train_x), spec, opt, device, keep_pruned)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.no_grad():
        bs = spec.train.eval_batch_size
        logits = torch.cat([upcast(net(to_canvas(test_x[i:i + bs].to(device), meta, dtype)))
                            for i in range(0, len(test_x), bs)]).cpu()
    return TrainOutput(run_metrics(logits, test_y, spec), None, loss, train_s, time.perf_counter() - t0)
