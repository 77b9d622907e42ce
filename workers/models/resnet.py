"""torchvision ResNet-18/34/50 as source models, and the foreign checkpoint layouts of the compressed ones.

The paper's code builds torchvision's definitions and loads compressed ImageNet weights into them: GMP ResNet-18/34,
lottery tickets (a checkpoint plus a separate mask), and the ResNet-50s of Iofinova et al. ("How well do sparse
ImageNet models transfer?": GMP, AC/DC, RigL, STR). Each layout has its `checkpoint_filter_fn` at the end of this
file; every one ends in a strict load, so a key that does not map is an error that names it.
"""
from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torchvision
from torch import nn

from workers.checkpoints import CheckpointError, cache_path, fetch, load_state_dict, load_strict
from workers.models import Built, Checkpoint, MODELS

# torchvision's IMAGENET1K_V1 weights (torchvision.models.ResNet{18,34,50}_Weights.IMAGENET1K_V1.url); the hex in
# the file name is the sha256 prefix torchvision itself checks.
PUBLISHED: dict[str, dict[str, str]] = {
    "resnet18": {"url": "https://download.pytorch.org/models/resnet18-f37072fd.pth", "sha256": "f37072fd"},
    "resnet34": {"url": "https://download.pytorch.org/models/resnet34-b627a593.pth", "sha256": "b627a593"},
    "resnet50": {"url": "https://download.pytorch.org/models/resnet50-0676ba61.pth", "sha256": "0676ba61"},
}

# `input_size` (the canvas) is the only arg: the network is size-agnostic (adaptive average pooling).

# model_config['arch'] values of Iofinova et al.'s checkpoints (sparse-imagenet-transfer models/__init__.py) that
# are each registered model's weights: their own ResNet (same keys as torchvision), torchvision's, STR's, RigL's.
SPARSE_TRANSFER_ARCHS: dict[str, tuple[str, ...]] = {
    "resnet18": ("resnet18",),
    "resnet34": ("resnet34",),
    "resnet50": ("resnet50", "resnet50_torch", "resnet50_str", "resnet50_rigl"),
}


# --- building blocks -------------------------------------------------------------------------------------------

@dataclass
class Mapped:
    """A foreign checkpoint mapped onto torchvision's keys, ready for a strict load."""

    state: dict
    note: str = ""  # what the mapping did, for the row's provenance
    tf_same_maxpool: bool = False  # the weights were trained behind TensorFlow's 'SAME' stem max-pool


def _tf_same_maxpool() -> nn.Module:
    # TensorFlow's 'SAME' 3x3/2 max-pool puts the extra padding bottom/right (none on top/left for even sizes);
    # torchvision pads one pixel on every side, which shifts every window by a pixel. Parameter-free, so the
    # state dict and the head are unchanged.
    from timm.layers import create_pool2d

    return create_pool2d("max", 3, stride=2, padding="same")


def _bare_key(key: str, prefixes: tuple[str, ...] = ("module.", "model.")) -> str:
    """Drop leading wrapper prefixes (DataParallel's 'module.', wrappers' 'model.'); torchvision has neither."""
    stripped = True
    while stripped:
        stripped = False
        for p in prefixes:
            if key.startswith(p):
                key, stripped = key[len(p):], True
    return key


def _rekey(state: dict, fn: Callable[[str], str], where: str) -> dict:
    out: dict = {}
    for k, v in state.items():
        new = fn(k)
        if new in out:
            raise CheckpointError(f"{where}: two entries map to {new!r} (one is {k!r})")
        out[new] = v
    return out


def _check_mask(mask: torch.Tensor, target: torch.Tensor, mask_key: str, target_key: str, where: str) -> None:
    if tuple(mask.shape) != tuple(target.shape):
        raise CheckpointError(f"{where}: mask {mask_key!r} has shape {tuple(mask.shape)} but {target_key!r} "
                              f"has {tuple(target.shape)}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise CheckpointError(f"{where}: mask {mask_key!r} holds values other than 0 and 1; is it a mask?")


def _masked(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # where(), not weight * mask: exact zeros even where a pruned weight was stored as inf or nan
    return torch.where(mask != 0, weight, torch.zeros_like(weight))


def _fold_masks(state: dict, where: str) -> dict:
    """Multiply every mask buffer into the tensor it prunes, then drop the masks.

    Layouts: Iofinova et al.'s WrappedLayer (`x._layer.weight` + `x._weight_mask` / `x._bias_mask`) and
    torch.nn.utils.prune (`x.weight_orig` + `x.weight_mask`, or a plain `x.weight` + `x.weight_mask`).
    """
    def unwrap(k: str) -> str:
        return ".".join(p for p in k.split(".") if p != "_layer")

    def drop_orig(k: str) -> str:
        return k[: -len("_orig")] if k.endswith("_orig") else k

    tensors, masks = {}, {}
    for k, v in state.items():
        *path, leaf = unwrap(k).split(".")
        if not leaf.endswith("_mask"):
            tensors[k] = v
            continue
        target = ".".join(path + [leaf.removeprefix("_").removesuffix("_mask")])
        if target in masks:
            raise CheckpointError(f"{where}: two masks for {target!r}: {masks[target][0]!r} and {k!r}")
        masks[target] = (k, v)
    tensors = _rekey(tensors, lambda k: drop_orig(unwrap(k)), where)
    unknown = sorted(key for target, (key, _) in masks.items() if target not in tensors)
    if unknown:
        raise CheckpointError(f"{where}: mask entries with no tensor to prune: {', '.join(unknown)}")
    for target, (key, mask) in masks.items():
        _check_mask(mask, tensors[target], key, target, where)
        tensors[target] = _masked(tensors[target], mask)
    return tensors


def _fill_bn_counters(state: dict, model: nn.Module) -> dict:
    # Checkpoints saved before torch 0.4.1 have no BatchNorm `num_batches_tracked`; it only matters in training with
    # momentum=None, so fill it (as torch's own loader does) rather than call the file incomplete.
    state = dict(state)
    for k in model.state_dict():
        stem = k[: -len("num_batches_tracked")]
        if k.endswith(".num_batches_tracked") and k not in state and stem + "running_mean" in state:
            state[k] = torch.tensor(0, dtype=torch.long)
    return state


_RIGL_KEYS = [  # layer names of the RigL port (sparse-imagenet-transfer models/external/rigl/resnet.py)
    (re.compile(r"initial_conv\.conv\.(.+)"), r"conv1.\1"),
    (re.compile(r"initial_conv\.bn\.(.+)"), r"bn1.\1"),
    (re.compile(r"(layer\d)\.block\.(\d+)\.conv([123])\.conv\.(.+)"), r"\1.\2.conv\3.\4"),
    (re.compile(r"(layer\d)\.block\.(\d+)\.conv([123])\.bn\.(.+)"), r"\1.\2.bn\3.\4"),
    (re.compile(r"(layer\d)\.block\.(\d+)\.shortcut\.conv\.(.+)"), r"\1.\2.downsample.0.\3"),
    (re.compile(r"(layer\d)\.block\.(\d+)\.shortcut\.bn\.(.+)"), r"\1.\2.downsample.1.\3"),
    (re.compile(r"fc\.(weight|bias)"), r"fc.\1"),
]


_SPARSEML_KEYS = [  # SparseML's ResNet (sparseml/pytorch/models/classification/resnet.py), as SparseZoo's files hold it
    (re.compile(r"input\.conv\.(weight)"), r"conv1.\1"),
    (re.compile(r"input\.bn\.(.+)"), r"bn1.\1"),
    (re.compile(r"sections\.(\d+)\.(\d+)\.(conv[123]|bn[123])\.(.+)"), lambda m: f"layer{int(m[1]) + 1}.{m[2]}.{m[3]}.{m[4]}"),
    (re.compile(r"sections\.(\d+)\.(\d+)\.identity\.conv\.(weight)"), lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.0.{m[3]}"),
    (re.compile(r"sections\.(\d+)\.(\d+)\.identity\.bn\.(.+)"), lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.1.{m[3]}"),
    (re.compile(r"classifier\.fc\.(weight|bias)"), r"fc.\1"),
]


def is_sparseml_layout(state: dict) -> bool:
    return any(k.startswith(("input.", "sections.", "classifier.")) for k in state)


def _sparseml_to_torchvision(state: dict, where: str) -> dict:
    """SparseML names -> torchvision's; a key that maps to nothing is an error (load_strict then checks that every
    torchvision key was filled). SparseML's save_model stores every tensor as a float32 copy, BatchNorm's
    `num_batches_tracked` too: it goes back to torchvision's int64."""
    def rename(k: str) -> str | None:
        for pattern, repl in _SPARSEML_KEYS:
            if pattern.fullmatch(k):
                return pattern.sub(repl, k)
        return None

    unknown = sorted(k for k in state if rename(k) is None)
    if unknown:
        more = f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else ""
        raise CheckpointError(f"{where}: keys that are not SparseML ResNet names: {', '.join(unknown[:5])}{more}")
    out = _rekey(state, rename, where)
    return {k: v.round().long() if k.endswith("num_batches_tracked") else v for k, v in out.items()}


def _rigl_to_torchvision(state: dict, where: str) -> dict:
    def rename(k: str) -> str:
        for pattern, repl in _RIGL_KEYS:
            if pattern.fullmatch(k):
                return pattern.sub(repl, k)
        return k

    unknown = sorted(k for k in state if rename(k) == k and not k.startswith("fc."))
    if unknown:
        more = f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else ""
        raise CheckpointError(f"{where}: not RigL layer names: {', '.join(unknown[:5])}{more}")
    return _rekey(state, rename, where)


def _str_fc_to_linear(state: dict, where: str) -> dict:
    # STR's classifier is a 1x1 convolution after the average pool, without a bias (with one if it was trained with
    # last_layer_dense): the same map as a Linear whose bias is zero.
    w = state.get("fc.weight")
    if w is None or w.dim() != 4:
        return state
    if tuple(w.shape[2:]) != (1, 1):
        raise CheckpointError(f"{where}: STR classifier fc.weight has shape {tuple(w.shape)}; expected a 1x1 conv")
    state = dict(state)
    state["fc.weight"] = w.flatten(1)
    state.setdefault("fc.bias", torch.zeros(w.shape[0], dtype=w.dtype))
    return state


# --- model -----------------------------------------------------------------------------------------------------

def _torchvision_resnet(name: str) -> nn.Module:
    # Seeded in a forked RNG: the same random init every time, without moving the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return getattr(torchvision.models, name)(weights=None)


def _published(name: str, cache_dir: Path) -> Built:
    url, sha = PUBLISHED[name]["url"], PUBLISHED[name]["sha256"]
    file = Path(urllib.parse.urlparse(url).path).name
    try:
        path, digest = fetch(url, sha, cache_dir)
    except CheckpointError as e:
        cached = cache_path(url, cache_dir)
        raise CheckpointError(
            f"{name}: torchvision's ImageNet weights {file} are not in the cache and could not be fetched ({e}). "
            f"vpgrid looks for them at {cached}; download {url} (sha256 starts with {sha}) and put it there, "
            f"or give a local copy in the grid: `weights: /path/to/{file}`") from None
    model = _torchvision_resnet(name)
    load_strict(model, _fill_bn_counters(load_state_dict(path), model), str(path))
    return Built(model, f"torchvision {name} IMAGENET1K_V1: {url} sha256:{digest[:16]}")


def _create_resnet(name: str, weights: str | Checkpoint, args: dict, cache_dir: Path) -> Built:
    if weights == "random":
        return Built(_torchvision_resnet(name), "random init (seed 0); not pre-trained")
    if weights == "pretrained":
        return _published(name, cache_dir)
    if not isinstance(weights, Checkpoint):
        raise ValueError(f"{name}: weights must be 'pretrained', 'random' or a checkpoint, got {weights!r}")
    filter_fn = CHECKPOINT_FILTERS.get(weights.format)
    if filter_fn is None:
        raise CheckpointError(f"{name}: no loader for checkpoint format {weights.format!r}; "
                              f"known: {', '.join(CHECKPOINT_FILTERS)}")
    model = _torchvision_resnet(name)
    mapped = filter_fn(weights, name)
    if mapped.tf_same_maxpool:
        model.maxpool = _tf_same_maxpool()
    load_strict(model, _fill_bn_counters(mapped.state, model), str(weights.files["weights"]))
    note = f"; {mapped.note}" if mapped.note else ""
    return Built(model, f"{weights.source} ({weights.format}{note})")


# --- registered entry points -----------------------------------------------------------------------------------

@MODELS.register("resnet18")
def resnet18(weights: str | Checkpoint, args: dict, cache_dir: Path) -> Built:
    return _create_resnet("resnet18", weights, args, cache_dir)


@MODELS.register("resnet34")
def resnet34(weights: str | Checkpoint, args: dict, cache_dir: Path) -> Built:
    return _create_resnet("resnet34", weights, args, cache_dir)


@MODELS.register("resnet50")
def resnet50(weights: str | Checkpoint, args: dict, cache_dir: Path) -> Built:
    return _create_resnet("resnet50", weights, args, cache_dir)


# --- checkpoint_filter_fns: foreign layouts onto torchvision's keys -------------------------------------------

def state_dict_filter_fn(ckpt: Checkpoint, name: str) -> Mapped:
    """A torchvision state dict, raw or under 'state_dict', possibly saved from DataParallel ('module.')."""
    where = str(ckpt.files["weights"])
    return Mapped(_rekey(load_state_dict(ckpt.files["weights"]), lambda k: _bare_key(k, ("module.",)), where))


def gmp_filter_fn(ckpt: Checkpoint, name: str) -> Mapped:
    """GMP ResNet-18/34: SparseZoo's `resnet_v1-{18,34}/pytorch/sparseml/imagenet/pruned-conservative` files (the
    paper's upstream accuracies, 69.8% / 73.3%, are theirs), or a torchvision-named state dict (GraNet's layout).

    SparseZoo's files are what SparseML's `save_model` writes: {'state_dict': {SparseML name: float32 tensor}, and
    maybe 'optimizer', 'epoch', 'recipe', 'arch_key'}. SparseML's ResNet names (`input.conv/bn`,
    `sections.i.j.conv1/bn1/conv2/bn2[/conv3/bn3]`, `sections.i.j.identity.conv/bn`, `classifier.fc`) map one to one
    onto torchvision's (`conv1/bn1`, `layer{i+1}.j.*`, `downsample.0/1`, `fc`): the blocks compute the same thing.
    The paper's fork loaded these files with strict=False, which silently kept torchvision's random init for every
    key it did not recognise; here every key must map and every torchvision key must be filled.

    Pruned weights are stored as zeros; mask buffers next to the weights (WrappedLayer or torch.nn.utils.prune
    layout) are folded in if a checkpoint carries them.
    """
    where = str(ckpt.files["weights"])
    state = _rekey(load_state_dict(ckpt.files["weights"]), lambda k: _bare_key(k, ("module.",)), where)
    if is_sparseml_layout(state):
        return Mapped(_sparseml_to_torchvision(state, where), "SparseML layout")
    return Mapped(_fold_masks(state, where))


def lth_filter_fn(ckpt: Checkpoint, name: str) -> Mapped:
    """Lottery tickets: `resnet50_dyn4_{round}_checkpoint.pth` + `..._mask.pth`, weight = mask x weight.

    Both files are flat dicts keyed by parameter name with a 'model.' prefix (the paper's loader indexes the
    checkpoint with the mask's keys, then drops 'model.'); an unprefixed checkpoint is accepted too.

    The paper's loader then wrote the unmasked weights over the masked ones, so its "lottery tickets" ran dense.
    The compression arg `apply_mask: false` reproduces that (the mask is still read and checked); the default
    applies the masks. The row's `compression_args` and `weights_source` say which.
    """
    where = str(ckpt.files["weights"])
    if "mask" not in ckpt.files:
        raise CheckpointError(f"{where}: an lth checkpoint needs its mask file; add `mask: path/to/..._mask.pth`")
    state = _rekey(load_state_dict(ckpt.files["weights"]), _bare_key, where)
    mask_where = str(ckpt.files["mask"])
    masks = load_state_dict(ckpt.files["mask"])
    unknown = sorted(k for k in masks if _bare_key(k) not in state)
    if unknown:
        more = f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else ""
        raise CheckpointError(f"{mask_where}: mask keys with no weight in {where}: {', '.join(unknown[:5])}{more}")
    apply = ckpt.options.get("apply_mask", True)
    for k, mask in _rekey(masks, _bare_key, mask_where).items():
        _check_mask(mask, state[k], k, k, mask_where)
        if apply:
            state[k] = _masked(state[k], mask)
    return Mapped(state, "masks applied" if apply else "masks NOT applied (apply_mask: false, as the paper's loader)")


def sparse_transfer_filter_fn(ckpt: Checkpoint, name: str) -> Mapped:
    """Iofinova et al.: {'model_config': {'arch', 'dataset'}, 'model_state_dict'}, and AC/DC's original release.

    The state dict may come from DataParallel ('module.'), hold WrappedLayer names and masks (`x._layer.weight`,
    `x._weight_mask`), use RigL's layer names (`initial_conv`, `layerN.block.i.convK.conv`, `shortcut`) or STR's
    1x1-conv classifier.

    AC/DC's own files (IST-DASLab/ACDC `utils/checkpoints.py` `save_checkpoint`) add 'epoch', and 'optimizer' and
    'lr_scheduler' as {'type': type(optimizer), 'state_dict': ...}: classes pickled by reference (AC/DC's own
    `optimization.sgd.SGD`, torch's or its own schedulers), which weights_only refuses. They are read as inert
    stand-ins (`load_state_dict(stand_ins=True)`) and ignored; only 'model_state_dict', all tensors, is used.
    """
    where = str(ckpt.files["weights"])
    obj = load_state_dict(ckpt.files["weights"], stand_ins=True)
    if not isinstance(obj.get("model_config"), dict) or not isinstance(obj.get("model_state_dict"), dict):
        raise CheckpointError(f"{where}: a sparse_transfer checkpoint holds 'model_config' and 'model_state_dict'; "
                              f"found {sorted(map(str, obj))[:10]}")
    not_tensors = sorted(k for k, v in obj["model_state_dict"].items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise CheckpointError(f"{where}: model_state_dict holds entries that are not tensors: "
                              f"{', '.join(map(str, not_tensors[:5]))}; {_REDOWNLOAD}")
    arch, dataset = obj["model_config"].get("arch"), obj["model_config"].get("dataset")
    if arch not in SPARSE_TRANSFER_ARCHS[name]:
        raise CheckpointError(f"{where}: model_config arch is {arch!r}; model {name!r} loads "
                              f"{', '.join(SPARSE_TRANSFER_ARCHS[name])}")
    if dataset not in (None, "imagenet"):
        raise CheckpointError(f"{where}: model_config dataset is {dataset!r}; a source model must be ImageNet's")
    state = _rekey(obj["model_state_dict"], _bare_key, where)
    state = _fold_masks(state, where)
    if arch.endswith("_rigl"):
        state = _rigl_to_torchvision(state, where)
    if arch.endswith("_str"):
        state = _str_fc_to_linear(state, where)
    tf = arch.endswith("_rigl")
    return Mapped(state, f"arch {arch}" + ("; TensorFlow 'SAME' stem max-pool" if tf else ""), tf_same_maxpool=tf)


_REDOWNLOAD = "re-download the file, or check that the compression's checkpoint `format` is right"


CHECKPOINT_FILTERS: dict[str, Callable[[Checkpoint, str], Mapped]] = {
    "state_dict": state_dict_filter_fn,
    "gmp": gmp_filter_fn,
    "lth": lth_filter_fn,
    "sparse_transfer": sparse_transfer_filter_fn,
}
