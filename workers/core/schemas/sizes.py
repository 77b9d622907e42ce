"""Train/test split sizes, torch-free: `vpgrid plan --estimate` counts image-passes from them without loading
anything. Each dataset card's `sizes` (workers/core/schemas/datasets.py) is a function of the dataset's resolved
args (defaults filled in), since some splits depend on them (`test_fraction`, `n_train`); this module holds the
split rules and the per-class counts those functions use.

tests/test_estimate.py checks the cards' sizes against the loaders that run offline (digits, shapes) and against
the split rules of the loaders that cut their own test split (EuroSAT, Caltech101); the others are the split
sizes torchvision and the datasets' authors document (cited per card).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Count:
    images: int
    exact: bool  # False: an upper bound (capped shots on a dataset whose per-class counts are not known)


@dataclass(frozen=True)
class Sizes:
    train: int
    test: int
    classes: int
    train_per_class: Optional[tuple[int, ...]] = None  # exact training images per class, where known

    def train_images(self, shots: Optional[int], cap: bool) -> Count:
        """Images one run trains on: the whole split (shots None), `shots` per class, or with `cap_shots` every
        image of a class that has fewer (workers.data.fewshot.few_shot_indices)."""
        if shots is None:
            return Count(self.train, True)
        if not cap:
            return Count(shots * self.classes, True)  # or the run fails at once: see `fails`
        if self.train_per_class is not None:
            return Count(sum(min(shots, n) for n in self.train_per_class), True)
        return Count(min(shots * self.classes, self.train), False)

    def fails(self, shots: Optional[int], cap: bool) -> bool:
        """True where a run is known to fail: a class has fewer than `shots` images and cap_shots is off."""
        return (shots is not None and not cap and self.train_per_class is not None
                and min(self.train_per_class) < shots)


def stratified(totals: tuple[int, ...], test_fraction: float) -> Sizes:
    """workers.data.vision.stratified_split's rule: round(f * n) of each class to test, at least 1, at most n - 1."""
    test = [min(max(round(test_fraction * n), 1), n - 1) for n in totals]
    train = tuple(n - k for n, k in zip(totals, test))
    return Sizes(sum(train), sum(test), len(totals), train)


def sklearn_split(total: int, classes: int, test_fraction: float) -> tuple[int, int]:
    """sklearn's train_test_split(test_size=f): ceil(f * n) test, the rest train (digits, splice)."""
    n_test = math.ceil(test_fraction * total)
    return total - n_test, n_test


def balanced(n: int, classes: int) -> tuple[int, ...]:
    """workers.data.shapes: n // C per class, the remainder to the first classes."""
    return tuple(n // classes + (c < n % classes) for c in range(classes))


# EuroSAT RGB class folder sizes (Helber et al. 2019; 27,000 images; torchvision.datasets.EuroSAT).
EUROSAT = {"AnnualCrop": 3000, "Forest": 3000, "HerbaceousVegetation": 3000, "Highway": 2500, "Industrial": 2500,
           "Pasture": 2000, "PermanentCrop": 2500, "Residential": 3000, "River": 2500, "SeaLake": 3000}
# Caltech-101 images per category folder without BACKGROUND_Google (Fei-Fei et al. 2004: 8,677 images in 101
# object categories, 31 to 800 each; torchvision.datasets.Caltech101 drops the background folder).
CALTECH101 = {
    "Faces": 435, "Faces_easy": 435, "Leopards": 200, "Motorbikes": 798, "accordion": 55, "airplanes": 800,
    "anchor": 42, "ant": 42, "barrel": 47, "bass": 54, "beaver": 46, "binocular": 33, "bonsai": 128, "brain": 98,
    "brontosaurus": 43, "buddha": 85, "butterfly": 91, "camera": 50, "cannon": 43, "car_side": 123,
    "ceiling_fan": 47, "cellphone": 59, "chair": 62, "chandelier": 107, "cougar_body": 47, "cougar_face": 69,
    "crab": 73, "crayfish": 70, "crocodile": 50, "crocodile_head": 51, "cup": 57, "dalmatian": 67, "dollar_bill": 52,
    "dolphin": 65, "dragonfly": 68, "electric_guitar": 75, "elephant": 64, "emu": 53, "euphonium": 64, "ewer": 85,
    "ferry": 67, "flamingo": 67, "flamingo_head": 45, "garfield": 34, "gerenuk": 34, "gramophone": 51,
    "grand_piano": 99, "hawksbill": 100, "headphone": 42, "hedgehog": 54, "helicopter": 88, "ibis": 80,
    "inline_skate": 31, "joshua_tree": 64, "kangaroo": 86, "ketch": 114, "lamp": 61, "laptop": 81, "llama": 78,
    "lobster": 41, "lotus": 66, "mandolin": 43, "mayfly": 40, "menorah": 87, "metronome": 32, "minaret": 76,
    "nautilus": 55, "octopus": 35, "okapi": 39, "pagoda": 47, "panda": 38, "pigeon": 45, "pizza": 53, "platypus": 34,
    "pyramid": 57, "revolver": 82, "rhino": 59, "rooster": 49, "saxophone": 40, "schooner": 63, "scissors": 39,
    "scorpion": 84, "sea_horse": 57, "snoopy": 35, "soccer_ball": 64, "stapler": 45, "starfish": 86,
    "stegosaurus": 59, "stop_sign": 64, "strawberry": 35, "sunflower": 85, "tick": 49, "trilobite": 86,
    "umbrella": 75, "watch": 239, "water_lilly": 37, "wheelchair": 59, "wild_cat": 34, "windsor_chair": 56,
    "wrench": 39, "yin_yang": 60}
# SVHN training digits 0..9 (73,257 in train_32x32.mat; Netzer et al. 2011; torchvision maps the file's 10 to 0).
SVHN = (4948, 13861, 10585, 8497, 7458, 6882, 5727, 5595, 5045, 4659)
# scikit-learn's digits per class (1,797: load_digits().target), and the training split at the default
# test_fraction 0.3 (SPLIT_SEED 0): the allocation of sklearn's stratified split, checked against the loader.
DIGITS_TRAIN_AT_0_3 = (124, 127, 124, 128, 127, 127, 127, 125, 122, 126)


def digits_sizes(a: dict) -> Sizes:
    train, test = sklearn_split(1797, 10, a["test_fraction"])
    return Sizes(train, test, 10, DIGITS_TRAIN_AT_0_3 if a["test_fraction"] == 0.3 else None)


def splice_sizes(a: dict) -> Sizes:  # UCI splice.data: 3,190 sequences, EI 767 / IE 768 / N 1655
    train, test = sklearn_split(3190, 3, a["test_fraction"])
    return Sizes(train, test, 3)
