"""VVTQ's quantisers (github.com/HuangOwen/Quantization-Variation, `quantization/lsq_layer.py`,
`quantization/_quan_base.py`), under the original names so the released state dicts load as saved.

Forward of a quantiser: alpha[n - 2] clamped to >= 1e-4, q = round(clamp((x - beta) / alpha, Qn, Qp)) with the
straight-through estimator, out = q * alpha + beta; weights and signed activations use [-2^(n-1), 2^(n-1) - 1],
unsigned activations [0, 2^n - 1]. The original asserts `init_state == 1` in weight quantisers and calibrates an
activation quantiser from the first batch it sees; a frozen source model must not change with the data, so here every
quantiser that runs refuses to run uninitialised, and vvtq's `checkpoint_filter_fn` refuses a file that leaves one so.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

N_STEPS = 7  # alpha/beta hold one entry per bit width 2..8


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    if not x.requires_grad:
        return x.round()
    return (x.round() - x).detach() + x  # round forward, identity gradient (straight-through estimator)


def lsq(x: torch.Tensor, alpha: torch.Tensor, qn: int, qp: int, beta: torch.Tensor | None = None) -> torch.Tensor:
    """clamp(round((x - beta) / alpha), qn, qp) * alpha + beta, rounding with the straight-through estimator."""
    alpha = alpha.clamp(min=1e-4)  # the original clamps alpha.data in place before every use
    if beta is None:
        return _round_ste(torch.clamp(x / alpha, qn, qp)) * alpha
    return _round_ste(torch.clamp((x - beta) / alpha, qn, qp)) * alpha + beta


def _levels(bits: int, signed: bool) -> tuple[int, int]:
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def effective_bits(nbits: torch.Tensor) -> int:
    """The bit width the original runs a quantiser at: its `bit_pass` clamps nbits to [2, 8] and rounds, and
    `int(nbits)` indexes alpha. NaN has no width (the original's int() raises on it)."""
    value = float(nbits.detach().reshape(-1)[0])
    if math.isnan(value):
        raise ValueError("nbits is NaN")
    return int(round(min(max(value, 2.0), 8.0)))


class _Quantiser:
    """The state every VVTQ quantiser carries, under the original names."""

    learned_bits = False  # the original's `mixpre`: True where its nbits is a trained parameter

    def _init_quantiser(self, bits: int, offset: bool = False) -> None:
        self.nbits = nn.Parameter(torch.tensor([float(bits)]), requires_grad=False)
        self.alpha = nn.Parameter(torch.zeros(N_STEPS))
        if offset:
            self.beta = nn.Parameter(torch.zeros(N_STEPS))
        self.register_buffer("init_state", torch.zeros(1))
        self.used = True  # Swin's patch_embed.quant exists in the checkpoints but never runs
        self._bits, self._ready = bits, False  # python copies: no device sync per forward

    @property
    def bit_width(self) -> int:
        return self._bits

    def _load_from_state_dict(self, *args) -> None:
        super()._load_from_state_dict(*args)
        self._bits = effective_bits(self.nbits)
        self._ready = False  # read init_state again at the next forward

    def _step(self, name: str) -> torch.Tensor:
        if not self._ready:
            if not bool((self.init_state == 1).all()):
                raise RuntimeError(f"{type(self).__name__}: quantiser not initialised (init_state 0); "
                                   f"load a VVTQ checkpoint before the first forward")
            self._ready = True
        return getattr(self, name)[self._bits - 2]


class QuantAct(_Quantiser, nn.Module):
    def __init__(self, bits: int, signed: bool = True, offset: bool = False) -> None:
        super().__init__()
        self.signed, self.offset = signed, offset
        self._init_quantiser(bits, offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self._step("alpha")
        beta = self._step("beta") if self.offset else None
        return lsq(x, alpha, *_levels(self.bit_width, self.signed), beta)

    def extra_repr(self) -> str:
        return f"bits={self.bit_width}, signed={self.signed}, offset={self.offset}"


class QuantLinear(_Quantiser, nn.Linear):
    def __init__(self, in_features: int, out_features: int, bits: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self._init_quantiser(bits)

    def quantised_weight(self) -> torch.Tensor:
        return lsq(self.weight, self._step("alpha"), *_levels(self.bit_width, True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.quantised_weight(), self.bias)


class QuantConv2d(_Quantiser, nn.Conv2d):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, bits: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride)
        self._init_quantiser(bits)

    def quantised_weight(self) -> torch.Tensor:
        return lsq(self.weight, self._step("alpha"), *_levels(self.bit_width, True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.quantised_weight(), self.bias)


QUANTISERS = (QuantAct, QuantLinear, QuantConv2d)
