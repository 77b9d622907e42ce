"""Post-training fake quantisation: per-output-channel symmetric weights, optional per-tensor activations.

"Fake": values are rounded to the quantisation grid but kept in float, which is what accuracy
measures need. Activations are quantised by forward pre-hooks rather than wrapper modules, so the
module tree and state_dict keys stay those of the float model.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from workers.compression.base import COMPRESSIONS, compression_targets


def quantise_weight(w: Tensor, bits: int) -> Tensor:
    """Symmetric per-output-channel grid; computed in float64 so the rounding matches a reference."""
    qmax = 2 ** (bits - 1) - 1
    flat = w.detach().double().flatten(1)
    amax = flat.abs().amax(dim=1, keepdim=True)
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))  # all-zero channel: stays zero
    q = torch.clamp(torch.round(flat / scale), -qmax, qmax) * scale
    return q.view_as(w).to(w.dtype)


class QuantAct:
    """Forward pre-hook: fake-quantises a layer's input to a fixed, calibrated per-tensor range.

    Unsigned grid when the calibration saw no negative values (e.g. after ReLU), so no level is
    wasted on the negative half; symmetric signed grid otherwise.
    """

    def __init__(self, lo: float, hi: float, bits: int) -> None:
        self.bits = bits
        self.signed = lo < 0
        if self.signed:
            self.qmin, self.qmax = -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
            bound = max(-lo, hi)
        else:
            self.qmin, self.qmax = 0, 2**bits - 1
            bound = hi
        self.scale = bound / self.qmax if bound > 0 else 1.0

    def quantise(self, x: Tensor) -> Tensor:
        return torch.clamp(torch.round(x / self.scale), self.qmin, self.qmax) * self.scale

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        # Self-attention is called attn(x, x, x): its key and value are the same input, quantised the same
        # (and still the same object, so MultiheadAttention keeps its self-attention path).
        x = args[0]
        q = self.quantise(x)
        same = lambda a: q if a is x else a  # noqa: E731
        return (q,) + tuple(map(same, args[1:])), {k: same(v) for k, v in kwargs.items()}


@torch.no_grad()
def _calibrate(model: nn.Module, layers: list[nn.Module], calib: Tensor) -> list[tuple[float, float]]:
    """Min/max of every layer's input over `calib`, observed in eval mode (BatchNorm stats untouched)."""
    ranges = [[float("inf"), float("-inf")] for _ in layers]

    def observer(i: int):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0]
            ranges[i][0] = min(ranges[i][0], float(x.min()))
            ranges[i][1] = max(ranges[i][1], float(x.max()))

        return hook

    handles = [m.register_forward_pre_hook(observer(i)) for i, m in enumerate(layers)]
    was_training = model.training
    try:
        model.eval()
        param = next(model.parameters(), None)
        model(calib.to(param.device) if param is not None else calib)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return [(lo, hi) for lo, hi in ranges]


@COMPRESSIONS.register("fakequant")
@torch.no_grad()
def fakequant(model: nn.Module, calib: Tensor | None, bits: int, act_bits: int | None) -> nn.Module:
    if act_bits is not None and calib is None:
        raise ValueError("compression 'fakequant': act_bits needs a calibration batch (calib)")
    targets = compression_targets(model)
    for t in targets:
        t.weight.copy_(quantise_weight(t.weight, bits))
    if act_bits is not None:
        # Activations are quantised where they enter a module (q/k/v projections' included); a weight no module
        # call feeds (CLIP's `x @ proj`, MultiheadAttention's out_proj) is quantised but its input is not.
        layers = list({id(t.module): t.module for t in targets if t.module is not None}.values())
        # Calibrate after weight quantisation: the ranges are those the quantised model produces.
        for m, (lo, hi) in zip(layers, _calibrate(model, layers, calib)):
            if lo <= hi:  # a layer the calibration never reached keeps float inputs
                m.register_forward_pre_hook(QuantAct(lo, hi, act_bits), with_kwargs=True)
    return model
