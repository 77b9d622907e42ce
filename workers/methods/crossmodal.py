"""Cross-modal adversarial reprogramming (Neekhara et al., WACV 2022): classify text or DNA with a frozen vision model.

A learned embedding turns each token into a 16x16x3 patch; the tokens tile the model's canvas row by row and the
frozen model's logits are reduced to the target classes by a fixed many-to-one label mapping. Only the embedding
trains. Registered as the method "reprogram" (kind "crossmodal"); it needs a token dataset (workers/data/text.py).

The transform, as in the original `ReprogrammingFuntion.forward` (reprogramming_model.py of
paarthneekhara/multimodal_rerprogramming):
    z = tanh(embedding[token])                          per patch, viewed as (3, 16, 16), in [-1, 1]
    patch i -> rows 16*(i // n)..+16, cols 16*(i % n)..+16, n = canvas // 16; the first n*n tokens are used and,
    when the sequence is shorter, the last token fills the remaining patches
    x = clamp(z * std + mean, 0, 1)                     z is read as an image in the model's NORMALISED space,
                                                        un-normalised, clipped to the valid pixel range ...
    input = (x - mean) / std                            ... and normalised again for the frozen model
So it is neither (tanh+1)/2 nor clamp(tanh, 0, 1): with the original ViT's mean = std = 0.5 it equals
(tanh + 1)/2 in pixel space; with ImageNet statistics the pixels span [mean - std, mean + std] and the clamp
only acts where that leaves [0, 1].

Label mapping (`create_label_mapping` + `get_mapped_logits`, reduction "max"): target class k reads source
classes k, k + K, k + 2K, ... (m of them, m = min(10, S // K)), and its logit is the max over those.
Differences from the original, on purpose: the original orders the source classes by the frozen model's logits
on a seeded random image before dealing them out (we deal them in index order, 0..S-1), and it adds an L2
penalty 1e-4 * ||tanh canvas||_2 / batch to the loss (we train on cross-entropy alone).

TrainOutput.mapping is None: the many-to-one mapping is not a per-target source index (the `label_mapping`
column), and it is fully determined by (S, K) through `round_robin_sources`.
"""
from __future__ import annotations

import time
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from workers.methods.base import METHODS
from workers.metrics import run_metrics
from workers.models import ModelCard
from workers.core.spec import RunSpec
from workers.train import Task, TrainOutput, fit_one, model_dtype, prompt_tensors, upcast

PATCH = 16
SOURCES_PER_CLASS = 10


class Reprogrammer(nn.Module):
    """Token ids (N, L) -> normalised model inputs (N, 3, canvas, canvas)."""

    def __init__(self, vocab: int, canvas: int, mean: Sequence[float], std: Sequence[float], patch: int = PATCH):
        super().__init__()
        if canvas % patch:
            raise ValueError(f"canvas {canvas} is not a multiple of the {patch} px patch")
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 channels, got {len(mean)} and {len(std)}")
        self.patch, self.canvas, self.per_row = patch, canvas, canvas // patch
        self.embedding = nn.Embedding(vocab, 3 * patch * patch)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    @property
    def num_patches(self) -> int:
        return self.per_row * self.per_row

    def tile(self, tokens: torch.Tensor) -> torch.Tensor:
        """The tanh canvas (N, 3, canvas, canvas) in [-1, 1], before the pixel-range clamp."""
        n, length = tokens.shape
        p, r = self.patch, self.per_row
        if length >= self.num_patches:
            tokens = tokens[:, :self.num_patches]
        else:  # the original repeats the last token over the patches past the sequence
            tokens = torch.cat([tokens, tokens[:, -1:].expand(n, self.num_patches - length)], dim=1)
        z = torch.tanh(self.embedding(tokens))  # (N, P, 3*p*p)
        # (N, row, col, c, y, x) -> (N, c, row, y, col, x): patch i at row i // r, column i % r
        return z.view(n, r, r, 3, p, p).permute(0, 3, 1, 4, 2, 5).reshape(n, 3, r * p, r * p)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pixels = (self.tile(tokens) * self.std + self.mean).clamp(0, 1)
        return (pixels - self.mean) / self.std


def round_robin_sources(num_source: int, num_target: int, per_class: int = SOURCES_PER_CLASS) -> torch.Tensor:
    """(K, m) source classes per target: sources[k, j] = j * K + k, m = min(per_class, S // K)."""
    m = min(per_class, num_source // num_target) if num_target > 0 else 0
    if m < 1:
        raise ValueError(f"need at least as many source classes ({num_source}) as target classes ({num_target})")
    return torch.arange(m * num_target).view(m, num_target).t().contiguous()


def max_mapped_logits(source_logits: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
    """(N, S) -> (N, K): each target's logit is the max over its source classes."""
    return source_logits[:, sources].amax(dim=-1)


def _check_tokens(task: Task) -> int:
    """The embedding's size: 1 + the largest token id in either split."""
    for name, x in (("train_x", task.train_x), ("test_x", task.test_x)):
        if x.is_floating_point() or x.dtype == torch.bool or x.ndim != 2:
            raise TypeError(f"method 'reprogram' needs token ids (N, L) from a text/DNA dataset "
                            f"(workers/data/text.py); got {name} {x.dtype} {tuple(x.shape)} (image data?)")
        if x.numel() and int(x.min()) < 0:
            raise ValueError(f"method 'reprogram': negative token ids in {name}")
    return 1 + max(int(x.max()) if x.numel() else 0 for x in (task.train_x, task.test_x))


@torch.no_grad()
def _source_logits(model: nn.Module, prog: Reprogrammer, x: torch.Tensor, bs: int, device) -> torch.Tensor:
    return torch.cat([upcast(model(prog(x[i:i + bs].to(device)))) for i in range(0, len(x), bs)]).cpu()


@torch.no_grad()
def calibration_inputs(tokens: torch.Tensor, meta: ModelCard, seed: int = 0) -> torch.Tensor:
    """Model inputs for activation-range calibration: the tokens through a freshly initialised (seeded) embedding,
    i.e. what the frozen model sees at the start of reprogramming."""
    g = torch.Generator().manual_seed(seed)
    prog = Reprogrammer(1 + int(tokens.max()), meta.input_size, meta.mean, meta.std)
    nn.init.normal_(prog.embedding.weight, generator=g)  # nn.Embedding's own init, from a local generator
    return prog(tokens.long())


@METHODS.register("reprogram")
def reprogram(model: nn.Module, meta: ModelCard, task: Task, spec: RunSpec, device: torch.device) -> TrainOutput:
    cfg = spec.train
    vocab = _check_tokens(task)
    sources = round_robin_sources(meta.num_classes, task.num_classes).to(device)
    torch.manual_seed(spec.seed)
    prog = Reprogrammer(vocab, meta.input_size, meta.mean, meta.std).to(device=device, dtype=model_dtype(model))
    opt = torch.optim.Adam(prog.parameters(), lr=cfg.lr)
    amp = device.type == "cuda"  # bf16 autocast on GPU only, as in the VP loop
    x_dev, y_dev = task.train_x.to(device), task.train_y.to(device)  # on the device once, not per step

    def loss_of(idx):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(prog(x_dev[idx]))
        return F.cross_entropy(max_mapped_logits(upcast(out), sources), y_dev[idx])

    t0 = time.perf_counter()
    loss = fit_one(loss_of, len(task.train_x), spec, opt, device)
    train_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    logits = max_mapped_logits(_source_logits(model, prog, task.test_x, cfg.eval_batch_size, device), sources.cpu())
    metrics = run_metrics(logits, task.test_y, spec)
    return TrainOutput(metrics, None, loss, train_seconds, time.perf_counter() - t0, prompt=prompt_tensors(prog))
