"""Dataset cards: one per registered dataset, with its help, its arguments (`datasets[].args`; every dataset
takes `cap_shots`), its split sizes, its layout under the data root and what a run needs to know of it. The
loaders live in workers/data/<family>.py."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from workers.core.schema import Arg, Schema, resolve
from workers.core.schemas.sizes import (CALTECH101, EUROSAT, SVHN, Sizes, balanced, digits_sizes, splice_sizes,
                                        stratified)


@dataclass(frozen=True, kw_only=True)
class DatasetCard(Schema):
    """Help and arguments (the Schema), then the metadata."""

    input_size: int  # default side the target images are resized to inside the canvas; tokens per text
    num_classes: int
    description: str
    # "image": (N,3,s,s) uint8 or float in [0,1] (workers.data.Splits); "text"/"dna": int64 token ids (N, L)
    modality: str = "image"
    bundled: bool = False  # needs no files (generated or shipped with a package)
    paper_test_batch: int = 128  # the paper's test batch size, which its ECE depends on (`metrics.paper_ece`)
    # Split sizes from the resolved args (workers/core/schemas/sizes.py); None: unknown, `plan --estimate` says so
    sizes: Optional[Callable[[dict], Sizes]] = None
    # What torchvision looks for under the data root ({arg} placeholders filled from the args), checked before
    # it is called (workers/core/schemas/layouts.py); empty: the loader checks its own files
    layout: tuple[str, ...] = ()


_CAP = Arg("bool", False, "take every image of a class with fewer than `shots` instead of failing the run")
_DOWNLOAD = Arg("bool", False, "let torchvision download the files into the data root")
_TEST_FRACTION = Arg("float", 0.2, "fraction of each class held out for test (seeded, stratified)", lo=0, hi=1,
                     closed="()")
_VOCAB = Arg("int", 20000, "most frequent training words kept (others are token 0)", lo=1)
TEXT_LENGTH = 576  # 24 x 24 patches of 16 px: the original 384 px canvas
SPLICE_LENGTH = 60  # UCI splice sequences are 60 bases; the reprogrammer repeats the last over the rest


def _args(**args: Arg) -> dict[str, Arg]:
    return {**args, "cap_shots": _CAP}


def _vision(help: str, input_size: int, num_classes: int, description: str, sizes, layout: list[str],
            args: Optional[dict] = None, **meta) -> DatasetCard:
    """A torchvision dataset: `download` and the given args, read from torchvision's layout under the root."""
    return DatasetCard(help, _args(download=_DOWNLOAD, **(args or {})), input_size=input_size,
                       num_classes=num_classes, description=description, sizes=sizes, layout=tuple(layout), **meta)


def _text(help: str, num_classes: int, description: str, sizes: Sizes) -> DatasetCard:
    return DatasetCard(help, _args(max_vocab=_VOCAB), input_size=TEXT_LENGTH, num_classes=num_classes,
                       description=description + ", word tokens; input_size = sequence length", modality="text",
                       sizes=lambda a: sizes)


def _cifar(f: str) -> str:
    return f"cifar-10-batches-py/{f}"


DATASETS = {
    "digits": DatasetCard("scikit-learn handwritten digits (bundled)", _args(test_fraction=Arg(
        "float", 0.3, "fraction of each class held out for test", lo=0, hi=1, closed="()")), input_size=16,
        num_classes=10, description="scikit-learn handwritten digits (1797 8x8 grayscale, 10 classes)", bundled=True,
        sizes=digits_sizes),
    "shapes": DatasetCard("procedural shapes, 20 classes (generated; the demo's source task)", _args(
        n_train=Arg("int", 8000, "training images", lo=1), n_test=Arg("int", 2000, "test images", lo=1),
        seed=Arg("int", 0, "generation seed")), input_size=32, num_classes=20,
        description="procedural shapes: 10 shapes x warm/cool colours, noisy background", bundled=True,
        sizes=lambda a: Sizes(a["n_train"], a["n_test"], 20, balanced(a["n_train"], 20))),
    # torchvision.datasets.CIFAR10: 50,000 train (5,000 per class) / 10,000 test
    "cifar10": _vision("CIFAR-10", 32, 10, "CIFAR-10 (50k train / 10k test, 32x32, 10 classes)",
                       lambda a: Sizes(50000, 10000, 10, (5000,) * 10),
                       [_cifar(f"data_batch_{i}") for i in range(1, 6)]
                       + [_cifar("test_batch"), _cifar("batches.meta")]),
    # torchvision.datasets.SVHN: train 73,257 / test 26,032 (extra unused)
    "svhn": _vision("SVHN digits", 32, 10, "SVHN digits (73k train / 26k test, 32x32, 10 classes)",
                    lambda a: Sizes(73257, 26032, 10, SVHN), ["train_32x32.mat", "test_32x32.mat"]),
    # torchvision.datasets.GTSRB: GTSRB-Training_fixed 26,640 / Final_Test 12,630; per class not recorded here
    "gtsrb": _vision("GTSRB traffic signs", 32, 43, "GTSRB traffic signs (26.6k train / 12.6k test, 43 classes)",
                     lambda a: Sizes(26640, 12630, 43),
                     ["gtsrb/GTSRB/Training", "gtsrb/GTSRB/Final_Test/Images", "gtsrb/GT-final_test.csv"]),
    # torchvision.datasets.DTD: each of the 10 partitions has 40 train / 40 val / 40 test images per class
    "dtd": _vision("Describable Textures", 128, 47, "Describable Textures, partition train/test (1880/1880, 47)",
                   lambda a: Sizes(1880, 1880, 47, (40,) * 47),
                   ["dtd/dtd/images", "dtd/dtd/labels/train{partition}.txt", "dtd/dtd/labels/test{partition}.txt"],
                   args={"partition": Arg("int", 1, "which of DTD's 10 train/test partitions", lo=1, hi=10)}),
    # torchvision.datasets.Flowers102: train 1,020 (10 per class) / test 6,149
    "flowers102": _vision("Oxford Flowers-102", 128, 102, "Oxford Flowers-102 train/test (10/class train, 6149 test)",
                          lambda a: Sizes(1020, 6149, 102, (10,) * 102),
                          ["flowers-102/jpg", "flowers-102/imagelabels.mat", "flowers-102/setid.mat"]),
    # torchvision.datasets.OxfordIIITPet: trainval 3,680 / test 3,669, 37 breeds; per class not recorded here
    "oxford_pets": _vision("Oxford-IIIT Pet breeds", 128, 37, "Oxford-IIIT Pet breeds, trainval/test (3680/3669, 37)",
                           lambda a: Sizes(3680, 3669, 37),
                           ["oxford-iiit-pet/images", "oxford-iiit-pet/annotations/trainval.txt",
                            "oxford-iiit-pet/annotations/test.txt"], paper_test_batch=64),
    "eurosat": _vision("EuroSAT RGB", 128, 10, "EuroSAT RGB (27k 64x64, 10 classes), seeded stratified split",
                       lambda a: stratified(tuple(EUROSAT.values()), a["test_fraction"]), ["eurosat/2750"],
                       args={"test_fraction": _TEST_FRACTION}),
    # torchvision drops BACKGROUND_Google from the classes, but fails if the folder is absent.
    "caltech101": _vision("Caltech-101", 128, 101, "Caltech-101 (8677 images, 101 classes without "
                          "BACKGROUND_Google), seeded stratified split",
                          lambda a: stratified(tuple(CALTECH101.values()), a["test_fraction"]),
                          ["caltech101/101_ObjectCategories", "caltech101/101_ObjectCategories/BACKGROUND_Google"],
                          args={"test_fraction": _TEST_FRACTION}),
    # Zhang et al. (2015), Table 1 (the CSVs the loaders read): train / test, balanced classes
    "yelp_polarity": _text("Yelp review polarity (text)", 2, "Yelp review polarity (Zhang CSVs, 560k/38k)",
                           Sizes(560000, 38000, 2, (280000,) * 2)),
    # Maas et al. (2011), the IMDB Large Movie Review set: 25,000 / 25,000, balanced
    "imdb": _text("IMDB movie reviews (text)", 2, "IMDB movie reviews (25k/25k; csv/parquet/jsonl)",
                  Sizes(25000, 25000, 2, (12500,) * 2)),
    "ag_news": _text("AG News topics (text)", 4, "AG News topics (Zhang CSVs, 120k/7.6k)",
                     Sizes(120000, 7600, 4, (30000,) * 4)),
    "dbpedia14": _text("DBpedia-14 ontology classes (text)", 14, "DBpedia-14 ontology classes (Zhang CSVs, 560k/70k)",
                       Sizes(560000, 70000, 14, (40000,) * 14)),
    "splice": DatasetCard("UCI splice junctions (DNA)", _args(test_fraction=_TEST_FRACTION), input_size=SPLICE_LENGTH,
                          num_classes=3, description="UCI splice junctions (3190 DNA sequences of 60 bases; EI/IE/N), "
                          "character tokens; seeded stratified split", modality="dna", sizes=splice_sizes),
}


def dataset_sizes(name: str, args: dict) -> Optional[Sizes]:
    """The split sizes of dataset `name` with `args`; None when unknown (no sizes on its card, or no card)."""
    card = DATASETS.get(name)
    if card is None or card.sizes is None:
        return None
    return card.sizes(resolve(card, args, f"dataset {name!r}"))
