"""CLIP (OpenAI ViT-B/32, ViT-L/14, ViT-L/14@336 via open_clip) as a frozen zero-shot ImageNet classifier, and
UPop structured-pruned CLIP checkpoints.

The source "classifier" is the image tower plus a zero-shot head (workers/models/clip_text.py): the class names'
text embeddings, logits = exp(logit_scale) * cos(image, class), with logit_scale clamped to [0, ln 100] as CLIP and
the paper's VP code do.

Weights (files read in workers/models/clip_weights.py):
- "pretrained": OpenAI's files, whose URLs (from open_clip's pretrained table) carry their sha256. They are
  TorchScript archives, read as tensors only (`workers.checkpoints.read_torchscript_tensors`: no code runs).
  Offline, give the file as `weights: {path: .../ViT-B-32.pt, sha256: ...}` (a "state_dict" checkpoint accepts
  it too).
- "state_dict": an open_clip or OpenAI CLIP state dict (or the official TorchScript file); strict.
- "upop": a checkpoint of UPop (Shi et al., ICML 2023; github.com/sdc17/UPop), weights under `model`, its pruned
  widths rebuilt block by block (clip_weights.py says what was verified against UPop's code).

`input_size` rebuilds the ViT on another patch grid (a multiple of the patch size); loaded weights then get their
position embeddings resized as open_clip does (bicubic), and the row says so.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from workers.core import schemas
from workers.checkpoints import load_state_dict, load_strict, read_checkpoint
from workers.models import Built, Checkpoint, MODELS
from workers.models.clip_text import CLASSES, TEMPLATES, TextTower, ZeroShotHead, cached_head
from workers.models.clip_weights import (apply_upop_shapes, checkpoint_filter_fn, openai_weights,
                                         resize_position_embeddings, upop_checkpoint_filter_fn)

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps logit_scale to [0, ln 100]: scale <= 100
RANDOM_SEED = 0


class ClipClassifier(nn.Module):
    """model(x) -> logits over the source classes; `features(x)` -> normalised image embedding;
    `encode_text(texts)` -> normalised text embeddings (to build other heads, e.g. templates x target classes)."""

    def __init__(self, clip: nn.Module, tokenizer: Callable, num_classes: int) -> None:
        super().__init__()
        self.visual = clip.visual
        self.text = TextTower(clip)
        self.logit_scale = clip.logit_scale
        self.tokenizer = tokenizer
        self.head: nn.Module = ZeroShotHead(torch.zeros(num_classes, self.embed_dim), self.scale.item())

    @property
    def embed_dim(self) -> int:
        return self.text.text_projection.shape[1]

    @property
    def scale(self) -> torch.Tensor:
        return self.logit_scale.detach().clamp(0, MAX_LOGIT_SCALE).exp()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(x), dim=-1)

    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        tokens = self.tokenizer(list(texts))
        device = self.text.positional_embedding.device
        order = tokens.argmax(dim=-1).argsort()  # batches of similar length: less padding to run
        out = torch.empty(len(tokens), self.embed_dim, device=device)
        for i in range(0, len(tokens), batch_size):
            idx = order[i:i + batch_size]
            out[idx.to(device)] = self.text(tokens[idx].to(device)).float()
        return F.normalize(out, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def compression_targets(self) -> list:
        """What built-in pruning and quantisation act on and sparsity is measured over: the image tower's weights,
        all that run (attention's in_proj and the output projection included). The text tower is not the
        classifier that is compressed: the zero-shot head was computed from it before, and it stays dense."""
        from workers.compression.base import Target, module_targets

        targets = module_targets(self.visual, "visual.")
        if isinstance(getattr(self.visual, "proj", None), nn.Parameter):
            targets.append(Target("visual.proj", self.visual.proj.T, None))  # x @ proj: outputs are its columns
        return targets


def _check_args(name: str, args: dict) -> dict:
    args = {**{k: v for k, v in schemas.MODELS[name].defaults().items() if k != "input_size"}, **args}
    for arg, table in (("templates", TEMPLATES), ("classes", CLASSES)):
        if args[arg] not in table:
            raise ValueError(f"{name}: {arg} {args[arg]!r} is not one of {sorted(table)}")
    return args


def _open_clip_model(oc_name: str, image_size: int) -> nn.Module:
    """open_clip's CLIP architecture with QuickGELU (as OpenAI trained it and UPop runs it), seeded random init."""
    import open_clip

    cfg = open_clip.get_model_config(oc_name)
    cfg["vision_cfg"]["image_size"] = image_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        return open_clip.CLIP(**cfg, quick_gelu=True).eval()


def _create_clip(name: str, oc_name: str, weights: str | Checkpoint, args: dict, cache_dir: Path) -> Built:
    import open_clip

    args = _check_args(name, args)
    cfg = open_clip.get_model_config(oc_name)["vision_cfg"]
    patch, size = cfg["patch_size"], args.get("input_size", cfg["image_size"])
    if isinstance(size, bool) or not isinstance(size, int) or size < patch or size % patch:
        raise ValueError(f"{name}: input_size must be a multiple of the ViT patch size {patch} "
                         f"(open_clip builds the model on a grid of {patch}-px patches), got {size!r}")

    # Resolve the weights before building: a missing file fails fast, and never falls back to random weights.
    fmt = weights.format if isinstance(weights, Checkpoint) else weights
    state, source, where = None, "", ""
    if fmt == "pretrained":
        path, source = openai_weights(name, oc_name, cache_dir)
        state, where = checkpoint_filter_fn(read_checkpoint(path)), str(path)
    elif fmt == "random":
        source = f"random init (seed {RANDOM_SEED}); not pre-trained"
    elif fmt in ("state_dict", "upop"):
        path, source, where = weights.files["weights"], weights.source, str(weights.files["weights"])
        state = (upop_checkpoint_filter_fn(load_state_dict(path, key="model")) if fmt == "upop"
                 else checkpoint_filter_fn(read_checkpoint(path)))
    else:
        raise ValueError(f"{name}: weights must be 'pretrained', 'random' or a state_dict/upop checkpoint, "
                         f"got {weights!r}")

    clip = _open_clip_model(oc_name, size)
    if state is not None:
        if fmt == "upop":
            source += "; " + apply_upop_shapes(clip, state, where)
        if "input_size" in args:  # only when asked: a file made for another resolution must not load silently
            source += resize_position_embeddings(state, clip)
        load_strict(clip, state, where)

    model = ClipClassifier(clip, open_clip.get_tokenizer(oc_name), len(CLASSES[args["classes"]]()))

    def fill_head() -> None:
        model.head.weight.copy_(cached_head(model, oc_name, args, Path(cache_dir)))

    return Built(model, source, fill_head)


# ---------------------------------------------------------------- registered models

@MODELS.register("clip_vit_b32")
def clip_vit_b32(weights: str | Checkpoint, args: dict, cache_dir: Path) -> Built:
    """OpenAI CLIP ViT-B/32 (open_clip "ViT-B-32") at 224 px."""
    return _create_clip("clip_vit_b32", "ViT-B-32", weights, args, cache_dir)


@MODELS.register("clip_vit_l14")
def clip_vit_l14(weights: str | Checkpoint, args: dict, cache_dir: Path) -> Built:
    """OpenAI CLIP ViT-L/14 (open_clip "ViT-L-14") at 224 px."""
    return _create_clip("clip_vit_l14", "ViT-L-14", weights, args, cache_dir)


@MODELS.register("clip_vit_l14_336")
def clip_vit_l14_336(weights: str | Checkpoint, args: dict, cache_dir: Path) -> Built:
    """OpenAI CLIP ViT-L/14@336px (open_clip "ViT-L-14-336"): the model UPop pruned and the paper prompted."""
    return _create_clip("clip_vit_l14_336", "ViT-L-14-336", weights, args, cache_dir)
