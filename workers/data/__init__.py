"""Target and source datasets behind one registry, plus few-shot subsampling.

Importing the dataset modules here is what registers them.
"""
from workers.data.base import DATASETS, Crop, Splits, as_float, cached_dataset, load_dataset
from workers.data.fewshot import few_shot_indices
from workers.data import digits, shapes, text, vision  # noqa: F401  (registration side effects)

__all__ = ["DATASETS", "Crop", "Splits", "as_float", "cached_dataset", "load_dataset",
           "few_shot_indices"]
