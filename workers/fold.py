"""Fold eval-mode BatchNorm into the convolution before it, for models whose weights stay frozen.

A frozen model's BatchNorm is a fixed per-channel affine map, so `bn(conv(x))` is one convolution with scaled
weights and a bias: the same function, without the BatchNorm's forward and backward passes over every
activation. VP, linear probing, CLIP prompting and reprogramming only read the model, so they get the folded
copy; full fine-tuning trains the BatchNorm's affine parameters and gets the model as compressed.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def _pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv, bn) module paths where the BatchNorm reads only that convolution's output, each module called once.
    Found from the traced graph; a model that does not trace has none (it runs unfolded)."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:
        return []
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    modules = dict(model.named_modules())
    out = []
    for node in graph.nodes:
        if node.op != "call_module" or type(modules[node.target]) is not nn.BatchNorm2d:
            continue
        src = node.args[0] if node.args else None
        if (isinstance(src, torch.fx.Node) and src.op == "call_module" and type(modules[src.target]) is nn.Conv2d
                and len(src.users) == 1 and calls[src.target] == 1 and calls[node.target] == 1):
            out.append((src.target, node.target))
    return out


def _hooked(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks)


def _foldable(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> bool:
    return (not bn.training and bn.running_mean is not None and bn.running_var is not None
            and not _hooked(conv) and not _hooked(bn))


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of the eval-mode `model` with each foldable BatchNorm2d folded into its Conv2d (computed in float64,
    stored in the conv's dtype) and replaced by Identity; `model` itself when there is nothing to fold."""
    if not any(type(m) is nn.BatchNorm2d for m in model.modules()):
        return model
    pairs = [(c, b) for c, b in _pairs(model) if _foldable(model.get_submodule(c), model.get_submodule(b))]
    if not pairs:
        return model
    out = copy.deepcopy(model)
    for c, b in pairs:
        conv, bn = out.get_submodule(c), out.get_submodule(b)
        with torch.no_grad():
            scale = bn.running_var.double().add(bn.eps).rsqrt()
            if bn.weight is not None:
                scale = scale * bn.weight.double()
            shift = -bn.running_mean.double() * scale
            if bn.bias is not None:
                shift = shift + bn.bias.double()
            if conv.bias is not None:
                shift = shift + conv.bias.double() * scale
            w = conv.weight
            folded = (w.double() * scale.view(-1, 1, 1, 1)).to(w.dtype)  # keeps w's layout (channels-last)
            conv.weight = nn.Parameter(folded, requires_grad=w.requires_grad)
            conv.bias = nn.Parameter(shift.to(w.dtype), requires_grad=w.requires_grad)
        parent, _, name = b.rpartition(".")
        setattr(out.get_submodule(parent) if parent else out, name, nn.Identity())
    return out

