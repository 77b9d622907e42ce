"""What each image dataset needs under the data root (torchvision's layout), checked without torch: by the
loader before torchvision is called, and by a rehearsal on every node (docs/scale.md)."""
from __future__ import annotations

import os
from pathlib import Path

# What torchvision looks for under the root, checked before it is called (Caltech101 would otherwise create
# folders under a wrong root, and torchvision's own message does not say where it looked).
NEEDS = {
    "cifar10": [f"cifar-10-batches-py/{f}" for f in
                ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta")],
    "svhn": ["train_32x32.mat", "test_32x32.mat"],
    "gtsrb": ["gtsrb/GTSRB/Training", "gtsrb/GTSRB/Final_Test/Images", "gtsrb/GT-final_test.csv"],
    "dtd": ["dtd/dtd/images", "dtd/dtd/labels/train{partition}.txt", "dtd/dtd/labels/test{partition}.txt"],
    "flowers102": ["flowers-102/jpg", "flowers-102/imagelabels.mat", "flowers-102/setid.mat"],
    "oxford_pets": ["oxford-iiit-pet/images", "oxford-iiit-pet/annotations/trainval.txt",
                    "oxford-iiit-pet/annotations/test.txt"],
    "eurosat": ["eurosat/2750"],
    # torchvision drops BACKGROUND_Google from the classes, but fails if the folder is absent.
    "caltech101": ["caltech101/101_ObjectCategories", "caltech101/101_ObjectCategories/BACKGROUND_Google"],
}


HOW = ("Set the data root with --data-root, $VPGRID_DATA or the grid's data_root; "
       "`download: true` in the dataset's args fetches it there where network is available.")


def check_layout(name: str, root: str | None, download: bool = False, fmt: dict | None = None) -> list[str]:
    """The paths `name` needs under `root` (torchvision's layout); FileNotFoundError naming the dataset, the root
    and what is missing when there is no root or (unless it is to be downloaded) a path is absent."""
    needs = [p.format(**(fmt or {})) for p in NEEDS[name]]
    if root is None:
        raise FileNotFoundError(f"dataset {name!r}: no data root is set; it expects torchvision's layout "
                                f"<root>/{', <root>/'.join(needs)}. {HOW}")
    root = os.path.expanduser(str(root))
    missing = [str(Path(root) / p) for p in needs if not (Path(root) / p).exists()]
    if missing and not download:
        raise FileNotFoundError(f"dataset {name!r} not found under data root {root!r}: missing "
                                f"{', '.join(missing)} (torchvision's layout). {HOW}")
    return needs
