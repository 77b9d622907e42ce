"""VVTQ-quantised DeiT-Tiny and Swin-Tiny (Huang, Shen, Cheng, "Variation-aware Vision Transformer Quantization").

The published checkpoints (github.com/HuangOwen/Quantization-Variation, `quantization/DeiT_quant.py`,
`quantization/Swin_quant.py`, `quantization/lsq_layer.py`, `quantization/_quan_base.py`) were trained with timm 0.3.2
model code; this file rebuilds those models so their state dicts load with every key and shape as saved:

- every quantiser holds `nbits` (shape [1]: the bit width it runs at), `alpha` (shape [7]: one LSQ step size per bit
  width 2..8, used as alpha[nbits - 2]), `init_state` (shape [1], 1 once initialised) and, for the MLP's second
  activation quantiser only, an offset `beta` (shape [7]);
- attention has separate `proj_q`, `proj_k`, `proj_v` and quantisers `quant_input`, `quant_q`, `quant_k`, `quant_v`,
  `quant_attn` (unsigned), `quant_output` before `proj`; the MLP has `quant1`, `fc1`, `quant2` (unsigned, offset),
  `fc2`;
- the patch embedding (`patch_embed.quant`, `patch_embed.proj`), the classifier's input quantiser (`quant`) and the
  classifier (`head`), and Swin's patch-merging `reduction`, run at 8 bits; everything else at `bits` for weights and
  activations (the released models are WnAn: `--wbits n --abits n`, no `--use-offset`, `--head-wise`, `--mixpre`).

The quantisers (LSQ fake quantisation, their state and forward) are in workers/models/quantisers.py.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from workers.checkpoints import CheckpointError
from workers.models.quantisers import QUANTISERS, QuantAct, QuantConv2d, QuantLinear, effective_bits

HIGH_BITS = 8  # patch embedding, head (and Swin's patch merging) in the original
TRAINED_SIZE = 224


# ---------------------------------------------------------------- shared transformer blocks

class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, bits: int) -> None:
        super().__init__()
        self.quant1 = QuantAct(bits)
        self.fc1 = QuantLinear(dim, hidden, bits)
        self.act = nn.GELU()
        self.quant2 = QuantAct(bits, signed=False, offset=True)  # GELU output: unsigned with an offset
        self.fc2 = QuantLinear(hidden, dim, bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.quant2(self.act(self.fc1(self.quant1(x)))))


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, bits: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.quant_input = QuantAct(bits)
        self.proj_q = QuantLinear(dim, dim, bits)  # separate q/k/v: each gets its own step size
        self.proj_k = QuantLinear(dim, dim, bits)
        self.proj_v = QuantLinear(dim, dim, bits)
        self.quant_q, self.quant_k, self.quant_v = QuantAct(bits), QuantAct(bits), QuantAct(bits)
        self.quant_attn = QuantAct(bits, signed=False)
        self.quant_output = QuantAct(bits)
        self.proj = QuantLinear(dim, dim, bits)

    def _bias(self) -> torch.Tensor | None:
        return None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, N, C = x.shape
        x = self.quant_input(x)
        q, k, v = (p(x).reshape(B, N, self.num_heads, C // self.num_heads).permute(0, 2, 1, 3)
                   for p in (self.proj_q, self.proj_k, self.proj_v))
        q, k, v = self.quant_q(q), self.quant_k(k), self.quant_v(v)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        bias = self._bias()
        if bias is not None:
            attn = attn + bias
        if mask is not None:  # Swin's shifted windows: (nW, N, N) with 0 / -100
            nw = mask.shape[0]
            attn = (attn.view(B // nw, nw, self.num_heads, N, N) + mask[None, :, None]).view(B, self.num_heads, N, N)
        attn = self.quant_attn(attn.softmax(dim=-1))
        x = self.quant_output(attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


# ---------------------------------------------------------------- DeiT

class PatchEmbed(nn.Module):
    def __init__(self, img_size: int, patch: int, dim: int, norm: bool = False) -> None:
        super().__init__()
        self.img_size, self.grid = img_size, img_size // patch
        self.quant = QuantAct(HIGH_BITS)
        self.proj = QuantConv2d(3, dim, patch, patch, HIGH_BITS)
        self.norm = nn.LayerNorm(dim) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"input {tuple(x.shape[-2:])} does not match the model's {self.img_size}x{self.img_size}")
        if self.quant.used:
            x = self.quant(x)
        x = self.proj(x).flatten(2).transpose(1, 2)
        return x if self.norm is None else self.norm(x)


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, bits: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, bits)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim, bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class QuantDeiT(nn.Module):
    """`deit_tiny_patch16_224_quant`: class token read out through an 8-bit quantiser and an 8-bit head."""

    def __init__(self, bits: int, img_size: int = 224, dim: int = 192, depth: int = 12, heads: int = 3,
                 num_classes: int = 1000) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, 16, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.grid**2 + 1, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, bits) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.quant = QuantAct(HIGH_BITS)
        self.head = QuantLinear(dim, num_classes, HIGH_BITS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.quant(self.norm(x)[:, 0]))


# ---------------------------------------------------------------- Swin

def relative_position_index(w: int) -> torch.Tensor:
    coords = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")).flatten(1)  # 2, w*w
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (w - 1)  # w*w, w*w, 2; from 0
    return rel[..., 0] * (2 * w - 1) + rel[..., 1]


def window_partition(x: torch.Tensor, w: int) -> torch.Tensor:
    B, H, W, C = x.shape
    return x.view(B, H // w, w, W // w, w, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, C)


def window_reverse(windows: torch.Tensor, w: int, H: int, W: int) -> torch.Tensor:
    C = windows.shape[-1]
    return windows.view(-1, H // w, W // w, w, w, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)


def shifted_window_mask(res: int, w: int, shift: int) -> torch.Tensor:
    img = torch.zeros(1, res, res, 1)
    cuts = (slice(0, -w), slice(-w, -shift), slice(-shift, None))
    for i, (h, v) in enumerate((h, v) for h in cuts for v in cuts):
        img[:, h, v, :] = i
    win = window_partition(img, w).squeeze(-1)  # nW, w*w
    mask = win[:, None, :] - win[:, :, None]
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


class WindowAttention(Attention):
    def __init__(self, dim: int, window: int, num_heads: int, bits: int) -> None:
        super().__init__(dim, num_heads, bits)
        self.window = window
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(window))  # persistent, as saved

    def _bias(self) -> torch.Tensor:
        n = self.window**2
        return self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1).permute(2, 0, 1)


class SwinBlock(nn.Module):
    def __init__(self, dim: int, res: int, num_heads: int, window: int, shift: int, bits: int) -> None:
        super().__init__()
        if res <= window:  # the window covers the whole map: no partition, no shift
            window, shift = res, 0
        self.res, self.window, self.shift = res, window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads, bits)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 4 * dim, bits)
        self.register_buffer("attn_mask", shifted_window_mask(res, window, shift) if shift else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        H = W = self.res
        h = self.norm1(x).view(B, H, W, C)
        if self.shift:
            h = torch.roll(h, (-self.shift, -self.shift), dims=(1, 2))
        h = window_reverse(self.attn(window_partition(h, self.window), mask=self.attn_mask), self.window, H, W)
        if self.shift:
            h = torch.roll(h, (self.shift, self.shift), dims=(1, 2))
        x = x + h.reshape(B, L, C)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    def __init__(self, res: int, dim: int) -> None:
        super().__init__()
        self.res = res
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = QuantLinear(4 * dim, 2 * dim, HIGH_BITS, bias=False)
        # The original builds it as QuantLinear(nbits=8) with the default mixpre=True: its nbits is trained (mixed
        # precision), so a released file may hold 7.9987 or any other value the run reached.
        self.reduction.learned_bits = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        x = x.view(B, self.res, self.res, C)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(B, -1, 4 * C)))


class BasicLayer(nn.Module):
    """One stage; its patch merging comes at the end (original Swin layout, unlike timm >= 0.6)."""

    def __init__(self, dim: int, res: int, depth: int, num_heads: int, window: int, bits: int, merge: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, res, num_heads, window, 0 if i % 2 == 0 else window // 2, bits) for i in range(depth))
        self.downsample = PatchMerging(res, dim) if merge else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return x if self.downsample is None else self.downsample(x)


class ClassifierAt(nn.Module):
    """Holds the classifier as `head.fc` (the head path vpgrid uses for Swin, as in timm) while the state dict keeps
    the original file's `head.weight`, `head.alpha`, ... so checkpoints load with every key as saved."""

    def __init__(self, fc: nn.Module) -> None:
        super().__init__()
        self.fc = fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        return self.fc.state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:
        for k in [k for k in state_dict if k.startswith(prefix) and not k.startswith(prefix + "fc.")]:
            state_dict[prefix + "fc." + k[len(prefix):]] = state_dict.pop(k)
        super()._load_from_state_dict(state_dict, prefix, *args)


class QuantSwin(nn.Module):
    """`swin_tiny_patch4_window7_224_quant`. Input sizes: multiples of 224, so every stage's map (size/4 ... size/32)
    tiles into 7x7 windows as in training."""

    def __init__(self, bits: int, img_size: int = 224, dim: int = 96, depths=(2, 2, 6, 2), heads=(3, 6, 12, 24),
                 window: int = 7, num_classes: int = 1000) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, 4, dim, norm=True)
        self.patch_embed.quant.used = False  # created but never called in the original's forward
        res = self.patch_embed.grid
        self.layers = nn.ModuleList(
            BasicLayer(dim * 2**i, res // 2**i, d, h, window, bits, merge=i < len(depths) - 1)
            for i, (d, h) in enumerate(zip(depths, heads)))
        self.norm = nn.LayerNorm(dim * 2 ** (len(depths) - 1))
        self.quant = QuantAct(HIGH_BITS)
        self.head = ClassifierAt(QuantLinear(self.norm.normalized_shape[0], num_classes, HIGH_BITS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.head(self.quant(self.norm(x).mean(dim=1)))


# ---------------------------------------------------------------- creation and checkpoints

VALID_BITS = (2, 3, 4)  # the released VVTQ checkpoints: W4A4, W3A3, W2A2


def check_bits(bits) -> int:
    if bits == 32:
        raise ValueError("vvtq: bits 32 is the float model; load 32-bit baselines into the float model with "
                         "checkpoint format state_dict")
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in VALID_BITS:
        raise ValueError(f"vvtq: bits must be one of {VALID_BITS} (weights and activations), got {bits!r}")
    return bits


def create(arch: str, bits: int, img_size: int = 224) -> nn.Module:
    """An uninitialised quantised model ("deit_tiny" or "swin_tiny"); load a checkpoint before running it."""
    bits = check_bits(bits)
    if arch == "deit_tiny":
        return QuantDeiT(bits, img_size)
    if arch == "swin_tiny":
        return QuantSwin(bits, img_size)
    raise ValueError(f"vvtq: no quantised model for {arch!r} (valid: deit_tiny, swin_tiny)")


def bit_widths(model: nn.Module) -> dict[str, int]:
    """Module name -> bit width, for every quantiser."""
    return {n: m.bit_width for n, m in model.named_modules() if isinstance(m, QUANTISERS)}


def checkpoint_filter_fn(state: dict, model: nn.Module) -> dict:
    """A VVTQ file's state dict (`module.`-prefixed, as DistributedDataParallel saved it) -> this model's keys.

    Refuses a file whose bit widths differ from the model's or that leaves a running quantiser uninitialised.
    Derived buffers (Swin's relative_position_index, attn_mask) must equal this model's at the trained size (224) and
    are this model's own at other sizes; DeiT's pos_embed is resampled to another input size.
    """
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    own = model.state_dict()
    out = {}
    for k, v in state.items():
        mine = own.get(k)
        if mine is None:
            out[k] = v  # load_strict names it
            continue
        if k.endswith(".nbits") and v.shape == mine.shape:
            # As the original: a quantiser runs at round(clamp(nbits, 2, 8)), so 7.9987 is 8 bits. Where nbits was
            # fixed in training (mixpre=False), that width must be the model's: another one means the file was
            # trained at another bit width than the one requested. Where it was learned (Swin's patch merging), the
            # file's width is the one it runs at. NaN has no width: the original fails on it, so does this.
            try:
                got = effective_bits(v)
            except ValueError:
                raise CheckpointError(f"vvtq: {k} is {v.tolist()} in the file; the original code cannot run it "
                                      f"either (int(nan)): the file is damaged, re-download it") from None
            want = effective_bits(mine)
            if got != want and not getattr(model.get_submodule(k[:-len(".nbits")]), "learned_bits", False):
                raise CheckpointError(f"vvtq: {k} is {v.tolist()} in the file ({got} bits) but the model runs it at "
                                      f"{want} bits; the file was trained at another bit width than the one requested")
        if k.endswith(".init_state") and getattr(model.get_submodule(k[:-len(".init_state")]), "used", True) \
                and not bool((v == 1).all()):
            raise CheckpointError(f"vvtq: {k} is {v.tolist()}: that quantiser was never initialised in the file")
        if k.endswith(("relative_position_index", "attn_mask")):
            if v.shape == mine.shape and not torch.equal(v.to(mine.dtype), mine):
                raise CheckpointError(f"vvtq: derived buffer {k} in the file differs from the one this model computes")
            v = mine  # deterministic from the input size: the model's own
        if k == "pos_embed" and v.shape != mine.shape:
            from timm.layers import resample_abs_pos_embed

            old = int(math.isqrt(v.shape[1] - 1))
            v = resample_abs_pos_embed(v, new_size=[model.patch_embed.grid] * 2, old_size=[old, old], num_prefix_tokens=1)
        out[k] = v
    if model.patch_embed.img_size != TRAINED_SIZE:  # other sizes shift other stages: masks come and go
        derived = ("relative_position_index", "attn_mask")
        out = {k: v for k, v in out.items() if k in own or not k.endswith(derived)}
        out.update({k: v for k, v in own.items() if k.endswith(derived)})
    return out
