"""The compression registry, its argument checking and the measured report (arguments: workers/schemas).

Kept apart from __init__ so prune.py / quant.py can import it without a cycle.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from workers import schemas
from workers.registry import Registry
from workers.schema import resolve

# The layers every method acts on and every report measures: one definition keeps them in step.
TARGETS: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)

@dataclass(frozen=True)
class CompressionReport:
    sparsity: float  # measured global fraction of exactly-zero weights over all Conv/Linear weight tensors
    layer_sparsity: dict[str, float]  # per layer (module name -> fraction zero)
    weight_bits: int | None  # None = float
    act_bits: int | None


COMPRESSIONS: Registry[Callable[..., nn.Module]] = Registry("compression", schemas.COMPRESSIONS)


def target_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, TARGETS)]


@torch.no_grad()
def measure_sparsity(model: nn.Module) -> tuple[float, dict[str, float]]:
    """Counts exact zeros, so it reports what the weights are, not what a method intended."""
    per: dict[str, float] = {}
    zeros = total = 0
    for name, m in target_layers(model):
        z, n = int((m.weight == 0).sum()), m.weight.numel()
        per[name] = z / n if n else 0.0
        zeros, total = zeros + z, total + n
    return (zeros / total if total else 0.0), per


def resolve_args(method: str, args: dict) -> dict:
    """Fill defaults and check every value; a bad spec fails here, before any weight changes."""
    return resolve(COMPRESSIONS.schema(method), args, f"compression {method!r}")


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
