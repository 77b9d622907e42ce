"""CLIP (OpenAI ViT-B/32, ViT-L/14, ViT-L/14@336 via open_clip) as a frozen zero-shot ImageNet classifier, and
UPop structured-pruned CLIP checkpoints.

The source "classifier" is the image tower plus a zero-shot head: the L2-normalised text embeddings of the 1000
ImageNet class names, each averaged over prompt templates (80 OpenAI templates, or one "a photo of a {}." for fast
runs); logits = exp(logit_scale) * cos(image, class), with logit_scale clamped to [0, ln 100] as CLIP and the paper's
VP code do. The head is cached in `cache_dir/clip_heads`, keyed by the text tower's weights (a sha256 of its
tensors), the class names and the templates, so it is computed once per model, weights and prompt set.

Weights:
- "pretrained": OpenAI's files, whose URLs (from open_clip's pretrained table) carry their sha256. They are
  TorchScript archives; `torch.load(weights_only=True)` refuses those and `torch.jit.load` would run their code, so
  `read_torchscript_tensors` reads only the tensors: a restricted unpickler that builds inert stand-ins for the
  archive's module objects, allows no other globals, and reads storages straight from the zip. Offline, give the
  file as `weights: {path: .../ViT-B-32.pt, sha256: ...}` (a "state_dict" checkpoint accepts it too).
- "state_dict": an open_clip or OpenAI CLIP state dict (or the official TorchScript file); strict.
- "upop": a checkpoint of UPop (Shi et al., ICML 2023; github.com/sdc17/UPop), weights under `model`.
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
  strict load naming the keys. The TorchScript reader is tested on archives today's `torch.jit.save` writes and on
  the same archives re-packed in the records of the 2021/2022 torch.jit that wrote OpenAI's files (folder named
  after the file saved to, `version` first, no `byteorder`/`.data/`; torch.jit.load reads them), not on OpenAI's
  files themselves: anything unexpected in those (a global it does not allow, an extra tensor) fails loudly rather
  than loading wrong weights.

`input_size` rebuilds the ViT on another patch grid (a multiple of the patch size); loaded weights then get their
position embeddings resized as open_clip does (bicubic), and the row says so.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import pickle
import re
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from workers.core import schemas
from workers.checkpoints import cache_path, CheckpointError, fetch, load_state_dict, load_strict
from workers.models import Built, Checkpoint, MODELS
from workers.node_cache import once

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps logit_scale to [0, ln 100]: scale <= 100
RANDOM_SEED = 0


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


# ---------------------------------------------------------------- building blocks

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


def zero_shot_weights(model: ClipClassifier, classnames: Sequence[str],
                      templates: Sequence[Callable[[str], str]]) -> torch.Tensor:
    """(S, D): per class, the mean of its normalised template embeddings, normalised (CLIP's zero-shot recipe)."""
    with torch.no_grad():
        emb = model.encode_text([t(c) for c in classnames for t in templates])
    return F.normalize(emb.view(len(classnames), len(templates), -1).mean(dim=1), dim=-1)


def _cached_head(model: ClipClassifier, oc_name: str, args: dict, cache_dir: Path) -> torch.Tensor:
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


def _openai_weights(name: str, oc_name: str, cache_dir: Path) -> tuple[Path, str]:
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


def _resize_position_embeddings(state: dict, clip: nn.Module) -> str:
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
        path, source = _openai_weights(name, oc_name, cache_dir)
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
            source += _resize_position_embeddings(state, clip)
        load_strict(clip, state, where)

    model = ClipClassifier(clip, open_clip.get_tokenizer(oc_name), len(CLASSES[args["classes"]]()))
    model.head.weight.copy_(_cached_head(model, oc_name, args, Path(cache_dir)))
    return Built(model, source)


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


# ---------------------------------------------------------------- checkpoints

_STORAGES = {"FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
             "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
             "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
             "BoolStorage": torch.bool}


class _ScriptObject:
    """Inert stand-in for a TorchScript object in an archive: keeps the attributes it is given, runs nothing."""

    def __setstate__(self, state: object) -> None:
        self.attrs = state if isinstance(state, dict) else {}


class _StorageType:
    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: tuple, stride: tuple, *_: object) -> torch.Tensor:
    return storage.as_strided(size, stride, offset)


def _first(value: object, *_: object) -> object:
    return value


# The only callables an archive may name; TorchScript's typed-list builders are identities.
_SAFE_GLOBALS = {("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor, ("collections", "OrderedDict"): OrderedDict,
                 **{("torch.jit._pickle", n): _first for n in ("build_intlist", "build_doublelist", "build_boollist",
                                                               "build_tensorlist", "restore_type_tag")}}


class _TensorOnlyUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, zf: zipfile.ZipFile, prefix: str, where: str) -> None:
        super().__init__(io.BytesIO(data))
        self.zf, self.prefix, self.where, self.storages = zf, prefix, where, {}

    def find_class(self, module: str, name: str) -> object:
        if module == "__torch__" or module.startswith("__torch__."):
            return _ScriptObject
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[module, name]
        if module == "torch" and name in _STORAGES:
            return _StorageType(_STORAGES[name])
        raise CheckpointError(f"{self.where}: refusing to load {module}.{name} (only tensors are read)")

    def persistent_load(self, pid: object) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise CheckpointError(f"{self.where}: unexpected persistent id {pid!r}")
        _, kind, key, _location, numel = pid
        if key not in self.storages:
            raw = bytearray(self.zf.read(f"{self.prefix}data/{key}"))
            storage = torch.frombuffer(raw, dtype=kind.dtype) if raw else torch.empty(0, dtype=kind.dtype)
            if storage.numel() != numel:
                raise CheckpointError(f"{self.where}: storage {key} holds {storage.numel()} values, expected {numel}")
            self.storages[key] = storage
        return self.storages[key]


def is_torchscript_archive(path: str | Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in zf.namelist())


def read_torchscript_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor attribute of a TorchScript archive's module tree, by dotted name, without running its code."""
    where = str(path)
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        data = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
        if len(data) != 1:
            raise CheckpointError(f"{where}: not a TorchScript archive (found {len(data)} data.pkl records)")
        prefix = data[0][:-len("data.pkl")]
        if f"{prefix}byteorder" in names and zf.read(f"{prefix}byteorder").strip() not in (b"", b"little"):
            raise CheckpointError(f"{where}: big-endian archives are not supported")
        root = _TensorOnlyUnpickler(zf.read(data[0]), zf, prefix, where).load()

    out: dict[str, torch.Tensor] = {}

    def walk(obj: object, at: str) -> None:
        for k, v in getattr(obj, "attrs", {}).items():
            if isinstance(v, torch.Tensor):
                out[at + k] = v
            elif isinstance(v, _ScriptObject):
                walk(v, f"{at}{k}.")

    walk(root, "")
    if not out:
        raise CheckpointError(f"{where}: no tensors found in the TorchScript archive")
    return out


def read_checkpoint(path: str | Path) -> dict:
    """A state dict from a torch/safetensors file (weights_only), or the tensors of a TorchScript archive."""
    return read_torchscript_tensors(path) if is_torchscript_archive(path) else load_state_dict(path)


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
