"""scikit-learn's bundled 8x8 handwritten digits: a small target task that needs no download."""
from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from workers.data.base import DATASETS, Crop, Splits, resize

# Fixed, independent of the run seed: every run of a grid must see the same test set.
SPLIT_SEED = 0


@DATASETS.register("digits")
def digits(size: int, root: str | None, test_fraction: float, crop: Crop | None = None) -> Splits:
    d = load_digits()
    x = torch.from_numpy((d.images / 16.0).astype(np.float32))[:, None].expand(-1, 3, -1, -1)
    y = torch.from_numpy(d.target.astype(np.int64))
    idx = np.arange(len(y))
    train_idx, test_idx = train_test_split(
        idx, test_size=test_fraction, stratify=d.target, random_state=SPLIT_SEED
    )
    x = resize(x.contiguous(), size, crop)
    tr, te = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    return Splits(x[tr], y[tr], x[te], y[te], [str(c) for c in range(10)])
