"""The compression registry, its argument checking and the measured report (cards: workers/core/schemas/).

Kept apart from __init__ so prune.py / quant.py can import it without a cycle.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from workers.core import schemas
from workers.core.registry import Registry
from workers.core.schema import resolve

# The layers every method acts on and every report measures: one definition keeps them in step.
TARGETS: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class Target:
    """One weight that compression acts on and sparsity is measured over.

    `weight` is the parameter itself or a view of it with output channels on dim 0 (per-channel quantisation
    reads rows); `module` is where its input enters (activation quantisation hooks there), None where no module
    call feeds it (e.g. `x @ proj`), or where the module is never called itself (MultiheadAttention's out_proj).
    """

    name: str
    weight: Tensor
    module: Optional[nn.Module]


def module_targets(model: nn.Module, prefix: str = "") -> list[Target]:
    """Conv2d/Linear weights, and attention's fused input projections (nn.MultiheadAttention and modules like it
    hold `in_proj_weight` as a bare parameter, so a Conv/Linear scan misses them)."""
    out = []
    for n, m in model.named_modules(prefix=prefix.rstrip(".")):
        if isinstance(m, TARGETS):
            out.append(Target(n, m.weight, m))
        elif isinstance(m._parameters.get("in_proj_weight"), nn.Parameter):
            out.append(Target(f"{n}.in_proj", m.in_proj_weight, m))
        elif isinstance(m, nn.MultiheadAttention):  # separate q/k/v projections (kdim/vdim != embed_dim)
            out += [Target(f"{n}.{p}_proj", getattr(m, f"{p}_proj_weight"), m) for p in "qkv"]
    return out


def compression_targets(model: nn.Module) -> list[Target]:
    """The weights that run: a model may say which (`model.compression_targets()`, e.g. CLIP's image tower
    only); otherwise every target module's."""
    own = getattr(model, "compression_targets", None)
    return own() if callable(own) else module_targets(model)


@dataclass(frozen=True)
class CompressionReport:
    sparsity: float  # measured global fraction of exactly-zero weights over the compression targets' weights
    layer_sparsity: dict[str, float]  # per target (module name, or e.g. `attn.in_proj`) -> fraction zero
    weight_bits: int | None  # None = float
    act_bits: int | None


COMPRESSIONS: Registry[Callable[..., nn.Module]] = Registry("compression", schemas.COMPRESSIONS)


def data_dependent(method: str, args: dict) -> bool:
    """Whether `method` with `args` (a checkpoint entry aside) builds a different model from different data."""
    arg = COMPRESSIONS.card(method).data_dependent_arg  # e.g. fakequant's act_bits: activation ranges
    return arg is not None and resolve_args(method, dict(args or {}))[arg] is not None


@torch.no_grad()
def measure_sparsity(model: nn.Module) -> tuple[float, dict[str, float]]:
    """Counts exact zeros, so it reports what the weights are, not what a method intended."""
    per: dict[str, float] = {}
    zeros = total = 0
    for t in compression_targets(model):
        z, n = int((t.weight == 0).sum()), t.weight.numel()
        per[t.name] = z / n if n else 0.0
        zeros, total = zeros + z, total + n
    return (zeros / total if total else 0.0), per


def resolve_args(method: str, args: dict) -> dict:
    """Fill defaults and check every value; a bad spec fails here, before any weight changes."""
    return resolve(COMPRESSIONS.card(method), args, f"compression {method!r}")


def compress(
    model: nn.Module, method: str, args: dict, calib: Tensor | None = None
) -> tuple[nn.Module, CompressionReport]:
    """Apply `method` in place (the caller owns, and has copied, `model`) and measure the result."""
    fn = COMPRESSIONS.get(method)
    resolved = resolve_args(method, dict(args or {}))
    model = fn(model, calib, **resolved)
    sparsity, per = measure_sparsity(model)
    bits = getattr(model, "quant_bits", None)  # a quantised architecture (VVTQ) states its own (weight, act) bits
    w_bits, a_bits = bits if bits else (resolved.get("bits"), resolved.get("act_bits"))
    return model, CompressionReport(sparsity, per, w_bits, a_bits)


@COMPRESSIONS.register("dense")
def dense(model: nn.Module, calib: Tensor | None) -> nn.Module:
    return model
