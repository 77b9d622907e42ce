"""DeiT-Tiny and Swin-Tiny ImageNet-1k classifiers: the float models from timm, and their VVTQ-quantised versions
(checkpoint format "vvtq", built in workers/models/vvtq.py).

Input sizes: DeiT-T takes any multiple of its 16-px patch (a checkpoint's position embedding is resampled to it);
Swin-T takes multiples of 224, the sizes at which every stage's map (size/4, /8, /16, /32) tiles into the 7x7
windows it was trained with (other sizes would need padded or shrunken windows).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from workers.checkpoints import CheckpointError, fetch, load_state_dict, load_strict, strip_prefix
from workers.models import Built, Checkpoint, MODELS
from workers.models import vvtq

TIMM_NAMES = {"deit_tiny": "deit_tiny_patch16_224", "swin_tiny": "swin_tiny_patch4_window7_224"}

# The published float ImageNet-1k weights (timm's pretrained cfg url): (url, sha256 or its prefix); None where no
# public source gives a hash. DeiT's file name carries torch.hub's sha256 prefix; Swin's release file carries none.
PRETRAINED = {
    "deit_tiny": ("https://dl.fbaipublicfiles.com/deit/deit_tiny_patch16_224-a1311bcf.pth", "a1311bcf"),
    "swin_tiny": ("https://github.com/SwinTransformer/storage/releases/download/v1.0.0/"
                  "swin_tiny_patch4_window7_224.pth", None),
}

SEED = 0


def _input_size(name: str, args: dict) -> int:
    # checked against workers/core/schemas/models.py by build_model: deit a multiple of 16, swin of 224
    return args.get("input_size", 224)


def _timm_model(name: str, size: int) -> nn.Module:
    import timm

    with torch.random.fork_rng(devices=[]):  # seeded without disturbing the caller's generator
        torch.manual_seed(SEED)
        return timm.create_model(TIMM_NAMES[name], pretrained=False, img_size=size)  # never the hub


def _fetch_pretrained(name: str, cache_dir: Path) -> tuple[Path, str]:
    url, sha256 = PRETRAINED[name]
    hint = f"download {url} yourself and pass weights: {{path: <file>, sha256: <its sha256>}}"
    if sha256 is None:
        raise CheckpointError(f"{name}: no published sha256 is known for {url}, so vpgrid will not fetch it "
                              f"unverified; {hint}")
    try:
        path, digest = fetch(url, sha256, cache_dir)
    except CheckpointError as e:
        raise CheckpointError(f"{name}: {e}; if offline, {hint}") from None
    return path, f"{url} sha256:{digest[:16]}"


def _quantised(name: str, ckpt: Checkpoint, size: int) -> nn.Module:
    bits = vvtq.check_bits(ckpt.options.get("bits"))
    if ckpt.options.get("act_bits") not in (None, bits):
        raise ValueError(f"vvtq: the checkpoints quantise weights and activations alike (WnAn); "
                         f"got bits={bits}, act_bits={ckpt.options['act_bits']}")
    model = vvtq.create(name, bits, size)
    path = ckpt.files["weights"]
    load_strict(model, vvtq.checkpoint_filter_fn(load_state_dict(path), model), str(path))
    model.quant_bits = (bits, bits)  # the row's weight_bits/act_bits (patch embedding and head stay at 8)
    return model


def _create_vit(name: str, weights: str | Checkpoint, args: dict, cache_dir: Path) -> Built:
    size = _input_size(name, args)
    if weights == "random":
        return Built(_timm_model(name, size), f"random init (seed {SEED}); not pre-trained")
    if isinstance(weights, Checkpoint) and weights.format == "vvtq":
        model = _quantised(name, weights, size)
        return Built(model, f"{weights.source} (VVTQ W{weights.options['bits']}A{weights.options['bits']})")
    if weights == "pretrained":
        path, source = _fetch_pretrained(name, cache_dir)
    elif isinstance(weights, Checkpoint):
        path, source = weights.files["weights"], weights.source
    else:
        raise ValueError(f"{name}: weights must be 'pretrained', 'random' or a checkpoint, got {weights!r}")
    model = _timm_model(name, size)
    load_strict(model, checkpoint_filter_fn(load_state_dict(path), model), str(path))
    return Built(model, source)


@MODELS.register("deit_tiny")
def deit_tiny(weights: str | Checkpoint, args: dict, cache_dir: Path) -> Built:
    """timm deit_tiny_patch16_224; format "vvtq" loads VVTQ's W{bits}A{bits} DeiT-T."""
    return _create_vit("deit_tiny", weights, args, cache_dir)


@MODELS.register("swin_tiny")
def swin_tiny(weights: str | Checkpoint, args: dict, cache_dir: Path) -> Built:
    """timm swin_tiny_patch4_window7_224; format "vvtq" loads VVTQ's W{bits}A{bits} Swin-T."""
    return _create_vit("swin_tiny", weights, args, cache_dir)


def checkpoint_filter_fn(state: dict, model: nn.Module) -> dict:
    """Official DeiT / Swin files ({'model': ...}), DataParallel's 'module.' keys and timm's own layout -> timm keys.

    timm's filters do the mapping: Swin's original stage-end patch merging and `head.` -> timm's, derived buffers
    dropped; DeiT's position embedding resampled to another input size.
    """
    from timm.models import deit, swin_transformer

    if isinstance(state.get("model"), dict):
        state = state["model"]
    state = strip_prefix(state, "module.")
    if isinstance(model, swin_transformer.SwinTransformer):
        return swin_transformer.checkpoint_filter_fn(state, model)
    return deit.checkpoint_filter_fn(state, model, adapt_layer_scale=True)
