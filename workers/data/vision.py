"""The paper's eight image target tasks, read from disk through torchvision.datasets.

Every dataset lives under one data root in torchvision's own folder layout (its card's `layout`). Nothing is
downloaded unless a grid asks for it (`download: true` in the dataset's args); a missing dataset is an error, never
replaced by other data. Images are decoded once: PIL → RGB → bilinear resize to (size, size) (what
transforms.Resize((s, s)) does in the reference recipe) → uint8 (N,3,s,s); `as_float` makes the same float32 in
[0,1] as ToTensor per batch. With a `Crop` (CLIP's own preprocessing) the short side is resized instead, keeping
the aspect ratio, and the centre s x s kept: from the original file, never from a small decoded copy.

Splits: the standard train/test of each dataset. DTD uses partition 1 train/test and Flowers102 train/test;
their val splits are left unused (Flowers102 train has 10 images per class, so more than 10 shots fails in
few_shot_indices). OxfordIIITPet uses trainval/test with the 37 breed labels. EuroSAT and Caltech101 have one
split in torchvision: we cut a stratified test split with a fixed seed, so train and test never share an
image (the paper's code trained and tested on the same EuroSAT images).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch
import torchvision.datasets as tv
from PIL import Image
from torch import Tensor

from workers.data.base import DATASETS, Crop, Splits
from workers.core.schemas.layouts import HOW, check_layout

# Fixed, independent of the run seed: every run of a grid must see the same EuroSAT/Caltech101 test set.
SPLIT_SEED = 0

# The 43 GTSRB sign names (the benchmark's signnames list), lower case for CLIP prompts; torchvision has none.
GTSRB_CLASSES = [
    "speed limit (20km/h)", "speed limit (30km/h)", "speed limit (50km/h)", "speed limit (60km/h)",
    "speed limit (70km/h)", "speed limit (80km/h)", "end of speed limit (80km/h)", "speed limit (100km/h)",
    "speed limit (120km/h)", "no passing", "no passing for vehicles over 3.5 metric tons",
    "right-of-way at the next intersection", "priority road", "yield", "stop", "no vehicles",
    "vehicles over 3.5 metric tons prohibited", "no entry", "general caution", "dangerous curve to the left",
    "dangerous curve to the right", "double curve", "bumpy road", "slippery road", "road narrows on the right",
    "road work", "traffic signals", "pedestrians", "children crossing", "bicycles crossing",
    "beware of ice/snow", "wild animals crossing", "end of all speed and passing limits", "turn right ahead",
    "turn left ahead", "ahead only", "go straight or right", "go straight or left", "keep right", "keep left",
    "roundabout mandatory", "end of no passing", "end of no passing by vehicles over 3.5 metric tons",
]
SVHN_CLASSES = [str(d) for d in range(10)]  # label d is digit d (torchvision maps the file's 10 to 0)
# EuroSAT folder names → the readable names CoOp uses for CLIP prompts (lower case).
EUROSAT_NAMES = {
    "AnnualCrop": "annual crop land", "Forest": "forest", "HerbaceousVegetation": "herbaceous vegetation land",
    "Highway": "highway or road", "Industrial": "industrial buildings", "Pasture": "pasture land",
    "PermanentCrop": "permanent crop land", "Residential": "residential buildings", "River": "river",
    "SeaLake": "sea or lake",
}
# Caltech101 folder names are plural or odd for a few classes (CoOp's renames); the rest: "_" → " ", lower.
CALTECH_NAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}

def open_dataset(name: str, root: str | None, download: bool, cls, fmt: dict | None = None, **kw):
    """torchvision's `cls` under `root`, or an error naming the dataset, the root and the missing paths."""
    needs = check_layout(name, root, download, fmt)
    root = os.path.expanduser(str(root))
    try:
        return cls(root, download=download, **kw)
    except (RuntimeError, FileNotFoundError) as e:  # md5 mismatch, empty class folders, failed download
        raise FileNotFoundError(f"dataset {name!r} under data root {root!r}: torchvision could not read it "
                                f"({e}); it expects {', '.join(needs)}. {HOW}") from e


RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def crop_image(img: Image.Image, size: int, crop: Crop) -> Image.Image:
    """`crop`'s short-side resize and centre crop of a PIL image (torchvision's Resize(int) + CenterCrop on PIL)."""
    nh, nw, top, left = crop.sizes(size, img.height, img.width)
    if (nh, nw) != (img.height, img.width):
        img = img.resize((nw, nh), RESAMPLE[crop.interpolation])
    return img.crop((left, top, left + size, top + size))


def decode(ds, size: int, crop: Crop | None = None) -> tuple[Tensor, Tensor]:
    """Every (image, label) of a torchvision dataset: uint8 (N,3,size,size) and int64 (N,).

    Labels come from __getitem__ rather than an attribute, whose name differs by dataset (targets, labels,
    _labels, y: the paper's Caltech101 few-shot crash). uint8 is 4x smaller than float32, in memory and cached.
    """
    x = torch.empty((len(ds), 3, size, size), dtype=torch.uint8)
    y = torch.empty(len(ds), dtype=torch.int64)
    xs = x.numpy()
    for i in range(len(ds)):
        img, label = ds[i]
        img = img.convert("RGB")
        img = img.resize((size, size), Image.Resampling.BILINEAR) if crop is None else crop_image(img, size, crop)
        np.copyto(xs[i], np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))  # ~7x faster than torch's strided copy
        y[i] = int(label)
    return x, y


def check_labels(name: str, classes: list[str], *ys: Tensor) -> None:
    for y in ys:
        if len(y) and not 0 <= int(y.min()) <= int(y.max()) < len(classes):
            raise ValueError(f"dataset {name!r}: labels {int(y.min())}..{int(y.max())} do not fit its "
                             f"{len(classes)} classes; the files do not match torchvision's layout")


def two_splits(name: str, train, test, size: int, classes: list[str], crop: Crop | None) -> Splits:
    (trx, tr_y), (tex, te_y) = decode(train, size, crop), decode(test, size, crop)
    check_labels(name, classes, tr_y, te_y)
    return Splits(trx, tr_y, tex, te_y, list(classes))


def stratified_split(y: Tensor, test_fraction: float) -> tuple[Tensor, Tensor]:
    """Disjoint sorted (train, test) indices: round(test_fraction * n) of each class's n images to test
    (at least 1 and at most n - 1 when n >= 2), drawn with SPLIT_SEED."""
    g = torch.Generator().manual_seed(SPLIT_SEED)
    train, test = [], []
    for c in torch.unique(y).tolist():  # sorted, so the draws are reproducible
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = min(max(round(test_fraction * len(idx)), 1), len(idx) - 1)
        test.append(idx[:k])
        train.append(idx[k:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def permute_rows_(x: Tensor, order: Tensor) -> Tensor:
    """x[order] written into x itself, one row of scratch (following the permutation's cycles): EuroSAT at 336 px
    is 9 GB of uint8, and x[tr], x[te] would hold a second copy while they are made."""
    order, done = order.tolist(), bytearray(len(order))
    for i in range(len(order)):
        if done[i]:
            continue
        first, j = x[i].clone(), i
        while True:
            done[j] = 1
            k = order[j]
            if k == i:
                x[j] = first
                break
            x[j] = x[k]
            j = k
    return x


def one_split(name: str, ds, size: int, classes: list[str], test_fraction: float, crop: Crop | None) -> Splits:
    if not 0 < test_fraction < 1:
        raise ValueError(f"dataset {name!r}: test_fraction must be in (0, 1), got {test_fraction!r}")
    x, y = decode(ds, size, crop)
    check_labels(name, classes, y)
    tr, te = stratified_split(y, test_fraction)
    permute_rows_(x, torch.cat([tr, te]))  # train rows then test rows: two views of one tensor, saved once
    return Splits(x[:len(tr)], y[tr], x[len(tr):], y[te], list(classes))


def same_classes(name: str, train, test) -> list[str]:
    # DTD and OxfordIIITPet derive classes from each split's file; differing lists would mean differing labels.
    if list(train.classes) != list(test.classes):
        raise ValueError(f"dataset {name!r}: train and test splits list different classes")
    return list(train.classes)


@DATASETS.register("cifar10")
def cifar10(size: int, root: str | None, download: bool, crop: Crop | None = None) -> Splits:
    train = open_dataset("cifar10", root, download, tv.CIFAR10, train=True)
    test = open_dataset("cifar10", root, download, tv.CIFAR10, train=False)
    return two_splits("cifar10", train, test, size, train.classes, crop)


@DATASETS.register("svhn")
def svhn(size: int, root: str | None, download: bool, crop: Crop | None = None) -> Splits:
    train = open_dataset("svhn", root, download, tv.SVHN, split="train")
    test = open_dataset("svhn", root, download, tv.SVHN, split="test")
    return two_splits("svhn", train, test, size, SVHN_CLASSES, crop)


@DATASETS.register("gtsrb")
def gtsrb(size: int, root: str | None, download: bool, crop: Crop | None = None) -> Splits:
    # Train labels are the sorted index of the class folders, so all 43 (00000..00042) must be present.
    train = open_dataset("gtsrb", root, download, tv.GTSRB, split="train")
    test = open_dataset("gtsrb", root, download, tv.GTSRB, split="test")
    return two_splits("gtsrb", train, test, size, GTSRB_CLASSES, crop)


@DATASETS.register("dtd")
def dtd(size: int, root: str | None, download: bool, partition: int, crop: Crop | None = None) -> Splits:
    fmt = {"partition": partition}
    train = open_dataset("dtd", root, download, tv.DTD, fmt, split="train", partition=partition)
    test = open_dataset("dtd", root, download, tv.DTD, fmt, split="test", partition=partition)
    return two_splits("dtd", train, test, size, same_classes("dtd", train, test), crop)


@DATASETS.register("flowers102")
def flowers102(size: int, root: str | None, download: bool, crop: Crop | None = None) -> Splits:
    train = open_dataset("flowers102", root, download, tv.Flowers102, split="train")
    test = open_dataset("flowers102", root, download, tv.Flowers102, split="test")
    return two_splits("flowers102", train, test, size, tv.Flowers102.classes, crop)


@DATASETS.register("oxford_pets")
def oxford_pets(size: int, root: str | None, download: bool, crop: Crop | None = None) -> Splits:
    kw = {"target_types": "category"}
    train = open_dataset("oxford_pets", root, download, tv.OxfordIIITPet, split="trainval", **kw)
    test = open_dataset("oxford_pets", root, download, tv.OxfordIIITPet, split="test", **kw)
    return two_splits("oxford_pets", train, test, size, same_classes("oxford_pets", train, test), crop)


@DATASETS.register("eurosat")
def eurosat(size: int, root: str | None, download: bool, test_fraction: float, crop: Crop | None = None) -> Splits:
    ds = open_dataset("eurosat", root, download, tv.EuroSAT)
    # Unknown folder names (not the real ten) fall back to splitting CamelCase.
    classes = [EUROSAT_NAMES.get(c) or re.sub(r"(?<!^)(?=[A-Z])", " ", c).lower() for c in ds.classes]
    return one_split("eurosat", ds, size, classes, test_fraction, crop)


@DATASETS.register("caltech101")
def caltech101(size: int, root: str | None, download: bool, test_fraction: float, crop: Crop | None = None) -> Splits:
    # torchvision drops the BACKGROUND_Google clutter folder: 101 object classes, Faces and Faces_easy both kept.
    ds = open_dataset("caltech101", root, download, tv.Caltech101, target_type="category")
    classes = [CALTECH_NAMES.get(c, c.replace("_", " ").lower()) for c in ds.categories]
    return one_split("caltech101", ds, size, classes, test_fraction, crop)
