"""CLIP's weight files: OpenAI's (a state dict, or the TorchScript archive it publishes, read by
`workers.checkpoints.read_checkpoint`), open_clip's state dicts, and UPop's structured-pruned checkpoints.

UPop (Shi et al., ICML 2023; github.com/sdc17/UPop): weights under `model`.
Verified against UPop's `clip/model.py` (`compress`, `prune_if_compressed`, `build_model`), `clip/mock.py` (its
patch of torch 1.11's MultiheadAttention) and `compress_retrieval_clip.py` (what is saved):
* OpenAI CLIP's key layout (`visual.transformer.resblocks.N.attn.in_proj_weight`, `.attn.out_proj`,
  `.mlp.c_fc`, `.mlp.c_proj`, ...), QuickGELU, 1024-wide vision tower with 16 heads, 768-wide text tower with
  12 heads for ViT-L/14; the retrieval models run at 336 px (577 position embeddings).
* Both towers are pruned, every block separately. MLP: `c_fc` keeps h' of the 4d hidden rows, `c_proj` the same
  h' columns. Attention: one mask over the 64 dims of a head, shared by every head and by q, k and v, so the
  number of heads stays; the fused `in_proj_weight` keeps 3·H·d' rows and `out_proj` H·d' columns.
* Forward (mock.py): `in_proj` output chunked into equal q, k, v; head_dim = q width // num_heads (= d');
  softmax(q kᵀ / √d') v (torch 1.11's `_scaled_dot_product_attention` divides by √ of the pruned width).
* Also saved, used only in training and dropped here: the momentum encoder (`visual_m.*`, `transformer_m.*`,
  `token_embedding_m.*`, `ln_final_m.*`, `text_projection_m`, `positional_embedding_m`) and the queues
  (`image_queue`, `text_queue`, `idx_queue`, `ptr_queue`). Every other key must load strictly.
Not verified (no released file was opened): the exact key set of the published checkpoints; a mismatch fails the
strict load naming the keys.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from workers.checkpoints import cache_path, CheckpointError, fetch


def openai_weights(name: str, oc_name: str, cache_dir: Path) -> tuple[Path, str]:
    import open_clip

    url = (open_clip.get_pretrained_cfg(oc_name, "openai") or {}).get("url", "")
    match = re.search(r"/([0-9a-f]{64})/([^/]+)$", url)
    if not match:
        raise CheckpointError(f"{name}: open_clip {open_clip.__version__} lists no OpenAI URL with a sha256 for "
                              f"{oc_name!r} (got {url!r}); give the weights as {{path: ..., sha256: ...}}")
    sha, file = match.groups()
    try:
        path, digest = fetch(url, sha, cache_dir)
    except CheckpointError as e:
        raise CheckpointError(
            f"{name} 'pretrained': could not get OpenAI's {file} ({e}). Without network, download {url} elsewhere "
            f"and give it as `weights: {{path: /path/to/{file}, sha256: {sha}}}`, or put it at "
            f"{cache_path(url, cache_dir)}") from None
    return path, f"OpenAI CLIP {oc_name}: {url} sha256:{digest[:16]}"


def resize_position_embeddings(state: dict, clip: nn.Module) -> str:
    """Interpolate the file's image position embeddings to the model's patch grid (bicubic, as open_clip does)."""
    from open_clip.model import resize_pos_embed

    old = state.get("visual.positional_embedding")
    new = clip.visual.positional_embedding
    if old is None or old.shape == new.shape:
        return ""
    state["visual.positional_embedding"] = old.float()
    resize_pos_embed(state, clip)
    return (f"; position embeddings resized from {old.shape[0] - 1} to {new.shape[0] - 1} patches (bicubic) "
            f"for input_size {clip.visual.image_size[0]}")


def _uninitialised_linear(n_in: int, n_out: int, dtype: torch.dtype | None) -> nn.Linear:
    """A Linear whose weights a strict checkpoint load fills (no init; a width pruned to 0 is allowed)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Initializing zero-element tensors is a no-op")
        return nn.utils.skip_init(nn.Linear, n_in, n_out, dtype=dtype)


class PrunedAttention(nn.Module):
    """Self-attention with UPop's pruned inner width: `num_heads` heads of `head_dim` (< d_model / heads) dims.

    Same parameter names as nn.MultiheadAttention (`in_proj_weight` (3·H·d', D), `in_proj_bias`, `out_proj`
    (D, H·d')) and the call open_clip's blocks make: `attn(x, x, x, need_weights=False, attn_mask=m)[0]`.
    """

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, batch_first: bool = True,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim, self.batch_first = embed_dim, num_heads, head_dim, batch_first
        inner = num_heads * head_dim
        self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, embed_dim, dtype=dtype))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * inner, dtype=dtype))
        self.out_proj = _uninitialised_linear(inner, embed_dim, dtype)  # the checkpoint fills them

    def forward(self, query: torch.Tensor, key: torch.Tensor | None = None, value: torch.Tensor | None = None,
                need_weights: bool = False, attn_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        if (key is not None and key is not query) or (value is not None and value is not query) or need_weights:
            raise NotImplementedError("PrunedAttention is CLIP's self-attention: attn(x, x, x, need_weights=False)")
        x = query if self.batch_first else query.transpose(0, 1)
        n, length, _ = x.shape
        h, d = self.num_heads, self.head_dim
        if d == 0:  # every dim pruned: the block adds only out_proj's bias
            out = x.new_zeros(n, length, 0)
        else:
            # rows of in_proj: [q | k | v], each head after head, d' rows a head (torch's packed layout)
            qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
            q, k, v = qkv.view(n, length, 3, h, d).permute(2, 0, 3, 1, 4)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # scale 1/sqrt(d'), as UPop's
            out = out.transpose(1, 2).reshape(n, length, h * d)
        out = self.out_proj(out)
        return (out if self.batch_first else out.transpose(0, 1)), None

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}"


# In OpenAI's archives: metadata tensors, and the causal mask each text block keeps as a plain attribute.
_OPENAI_EXTRA = re.compile(r"^(input_resolution|context_length|vocab_size|attn_mask"
                           r"|(visual\.)?transformer\.resblocks\.\d+\.attn_mask)$")
# In UPop's: the momentum encoder and feature queues of its retrieval training (ALBEF-style).
_UPOP_TRAINING_ONLY = re.compile(r"^((visual_m|transformer_m|token_embedding_m|ln_final_m)\..*"
                                 r"|text_projection_m|positional_embedding_m"
                                 r"|image_queue|text_queue|idx_queue|ptr_queue)$")


def checkpoint_filter_fn(state: dict) -> dict:
    """OpenAI CLIP (state dict or TorchScript tensors) or open_clip state dict -> open_clip CLIP keys."""
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return {k: v for k, v in state.items() if not _OPENAI_EXTRA.match(k)}


def upop_checkpoint_filter_fn(state: dict) -> dict:
    """UPop's `model` state dict -> open_clip CLIP keys (the pruned shapes are built by `apply_upop_shapes`)."""
    return checkpoint_filter_fn({k: v for k, v in state.items() if not _UPOP_TRAINING_ONLY.match(k)})


def apply_upop_shapes(clip: nn.Module, state: dict, where: str) -> str:
    """Rebuild every block whose MLP or attention width differs in `state` at the checkpoint's shapes."""
    pruned, total = 0, 0
    for prefix, tower in (("visual.transformer.resblocks.", clip.visual.transformer),
                          ("transformer.resblocks.", clip.transformer)):
        for i, block in enumerate(tower.resblocks):
            d_model = block.ln_1.normalized_shape[0]
            w = state.get(f"{prefix}{i}.mlp.c_fc.weight")
            if w is not None and w.ndim == 2 and w.shape[0] != block.mlp.c_fc.out_features:
                dtype = block.mlp.c_fc.weight.dtype
                block.mlp.c_fc = _uninitialised_linear(d_model, w.shape[0], dtype)
                block.mlp.c_proj = _uninitialised_linear(w.shape[0], d_model, dtype)
                pruned += 1
            key = f"{prefix}{i}.attn.in_proj_weight"
            w = state.get(key)
            if w is not None and w.ndim == 2 and w.shape[0] != block.attn.in_proj_weight.shape[0]:
                heads = block.attn.num_heads
                if w.shape[0] % (3 * heads):
                    raise CheckpointError(
                        f"{where}: {key} has {w.shape[0]} rows; UPop keeps all {heads} heads and prunes the same "
                        f"dims in each of q, k and v, so the rows must be a multiple of 3 x {heads}")
                block.attn = PrunedAttention(d_model, heads, w.shape[0] // (3 * heads), block.attn.batch_first,
                                             dtype=block.attn.in_proj_weight.dtype)
                pruned += 1
            total += 2
    kept = sum(v.numel() for k, v in state.items() if ".resblocks." in k)
    return (f"UPop structured-pruned: {pruned} of {total} attention/MLP layers narrowed, "
            f"{kept / 1e6:.1f}M transformer params")
