"""The compression registry, its argument checking and the measured report.

Kept apart from __init__ so prune.py / quant.py can import it without a cycle.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from workers.registry import Registry

# The layers every method acts on and every report measures: one definition keeps them in step.
TARGETS: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)

_REQUIRED = object()


@dataclass(frozen=True)
class Arg:
    """One accepted argument: default (or required), a check, and the words shown when it fails."""

    check: Callable[[Any], bool]
    valid: str
    default: Any = _REQUIRED

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED


@dataclass(frozen=True)
class CompressionReport:
    sparsity: float  # measured global fraction of exactly-zero weights over all Conv/Linear weight tensors
    layer_sparsity: dict[str, float]  # per layer (module name -> fraction zero)
    weight_bits: int | None  # None = float
    act_bits: int | None


COMPRESSIONS: Registry[Callable[..., nn.Module]] = Registry("compression")


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


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
    spec: dict[str, Arg] = COMPRESSIONS.meta(method) or {}
    for key in args:
        if key not in spec:
            valid = ", ".join(sorted(spec)) or "none"
            raise ValueError(f"compression {method!r}: unknown arg {key!r} (valid args: {valid})")
    out = {}
    for key, arg in spec.items():
        if key not in args:
            if arg.required:
                raise ValueError(f"compression {method!r}: arg {key!r} is required ({arg.valid})")
            out[key] = arg.default
            continue
        if not arg.check(args[key]):
            raise ValueError(f"compression {method!r}: bad {key}={args[key]!r}; valid: {arg.valid}")
        out[key] = args[key]
    return out


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


@COMPRESSIONS.register("dense", meta={})
def dense(model: nn.Module, calib: Tensor | None) -> nn.Module:
    return model
