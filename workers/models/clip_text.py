"""CLIP's text side: the text tower, run only as far as the longest prompt, and the zero-shot head computed from it.

The head holds the L2-normalised text embeddings of the source classes (the 1000 ImageNet class names), each
averaged over prompt templates (80 OpenAI templates, or one "a photo of a {}." for fast runs). It is cached in
`cache_dir/clip_heads`, keyed by the text tower's weights (a sha256 of its tensors), the class names and the
templates, so it is computed once per model, weights and prompt set.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from workers.node_cache import once


def _openai_templates() -> tuple[Callable[[str], str], ...]:
    import open_clip

    return tuple(open_clip.OPENAI_IMAGENET_TEMPLATES)  # the 80 prompts of CLIP's ImageNet notebook


def _simple_templates() -> tuple[Callable[[str], str], ...]:
    return (lambda c: f"a photo of a {c}.",)


def _imagenet_classes() -> tuple[str, ...]:
    import open_clip

    return tuple(open_clip.IMAGENET_CLASSNAMES)


TEMPLATES = {"openai": _openai_templates, "simple": _simple_templates}
CLASSES = {"imagenet": _imagenet_classes}


class TextTower(nn.Module):
    """open_clip's CLIP text encoder (same modules and weights), run only up to the longest prompt.

    The causal mask makes the end-of-text feature depend only on the tokens before it, so cutting the
    77-token context after the last end-of-text token of a batch gives the same embedding, several times faster.
    """

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        if clip.text_pool_type != "argmax" or not isinstance(clip.text_projection, nn.Parameter):
            raise ValueError("TextTower expects OpenAI CLIP's text tower (argmax pooling, a projection matrix)")
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.transformer = clip.transformer
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        eot = tokens.argmax(dim=-1)  # the end-of-text token has the highest id
        n = int(eot.max()) + 1
        x = self.token_embedding(tokens[:, :n]) + self.positional_embedding[:n]
        x = self.ln_final(self.transformer(x, attn_mask=self.attn_mask[:n, :n]))
        return x[torch.arange(len(x), device=x.device), eot] @ self.text_projection

    def digest(self) -> str:
        """sha256 over the tower's tensors (names, dtypes, shapes, bytes): the weights the head depends on."""
        h = hashlib.sha256()
        for name, t in sorted(self.state_dict().items()):
            t = t.detach().cpu().contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()


class ZeroShotHead(nn.Module):
    """logits = scale * x @ weight.T; `weight` (S, D) holds L2-normalised class text embeddings."""

    def __init__(self, weight: torch.Tensor, scale: float) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("scale", torch.tensor(float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x @ self.weight.T

    def extra_repr(self) -> str:
        return f"classes={self.weight.shape[0]}, dim={self.weight.shape[1]}, scale={float(self.scale):.4g}"


def zero_shot_weights(model: nn.Module, classnames: Sequence[str],
                      templates: Sequence[Callable[[str], str]]) -> torch.Tensor:
    """(S, D): per class, the mean of its normalised template embeddings, normalised (CLIP's zero-shot recipe)."""
    with torch.no_grad():
        emb = model.encode_text([t(c) for c in classnames for t in templates])
    return F.normalize(emb.view(len(classnames), len(templates), -1).mean(dim=1), dim=-1)


def cached_head(model: nn.Module, oc_name: str, args: dict, cache_dir: Path) -> torch.Tensor:
    classnames, templates = CLASSES[args["classes"]](), TEMPLATES[args["templates"]]()
    key = hashlib.sha256(json.dumps({
        "model": oc_name, "text_tower": model.text.digest(), "classes": list(classnames),
        "templates": [t("{}") for t in templates]}).encode()).hexdigest()
    path = cache_dir / "clip_heads" / f"{oc_name}-{args['classes']}-{args['templates']}-{key[:16]}.pt"
    shape = (len(classnames), model.embed_dim)

    def valid(p: Path) -> bool:
        head = torch.load(p, map_location="cpu", weights_only=True)
        return isinstance(head, torch.Tensor) and tuple(head.shape) == shape and head.dtype == torch.float32

    def compute(tmp: Path) -> None:
        device = "cuda" if torch.cuda.is_available() else "cpu"  # 80 templates x 1000 classes: use the GPU if any
        model.text.to(device)
        try:
            torch.save(zero_shot_weights(model, classnames, templates).cpu(), tmp)
        finally:
            model.text.to("cpu")

    # One process computes; trials starting together wait on the lock, then load the file.
    return torch.load(once(path, compute, valid), map_location="cpu", weights_only=True)
