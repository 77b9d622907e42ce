"""Datasets (digits, shapes), the registry front door, and few-shot subsampling."""
from __future__ import annotations

import hashlib
from collections import Counter

import pytest
import torch

from workers.core.schemas.datasets import DatasetCard
from workers.data import DATASETS, Splits, few_shot_indices, load_dataset
from workers.core.registry import UnknownName

pytestmark = pytest.mark.unit

# Small args per dataset, so the every-dataset test stays quick; absent = the dataset's defaults.
FAST_ARGS: dict[str, dict] = {"shapes": {"n_train": 400, "n_test": 200}}


def row_hashes(x: torch.Tensor) -> set[str]:
    return {hashlib.sha1(r.numpy().tobytes()).hexdigest() for r in x.reshape(len(x), -1)}


@pytest.fixture(scope="module")
def digits() -> Splits:
    return load_dataset("digits")


# ---- every registered dataset ----

BUNDLED = [n for n in DATASETS.names() if DATASETS.card(n).bundled]


@pytest.mark.parametrize("name", [n for n in DATASETS.names() if not DATASETS.card(n).bundled])
def test_every_file_backed_dataset_says_what_is_missing(name, tmp_path):
    """Without its files, every dataset fails with an error naming itself (its own tests load real layouts)."""
    for root in (None, str(tmp_path)):
        with pytest.raises((FileNotFoundError, ValueError)) as e:
            load_dataset(name, root=root)
        assert name in str(e.value)


@pytest.mark.parametrize("name", BUNDLED)
@pytest.mark.parametrize("size", [None, 12])
def test_load_every_dataset(name, size):
    meta = DATASETS.card(name)
    assert isinstance(meta, DatasetCard)
    s = load_dataset(name, size=size, **FAST_ARGS.get(name, {}))
    side = size or meta.input_size
    for x, y in ((s.train_x, s.train_y), (s.test_x, s.test_y)):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape[1:] == (3, side, side) and x.shape[0] == y.shape[0] > 0
        assert 0 <= x.min() and x.max() <= 1
        assert 0 <= y.min() and y.max() < meta.num_classes
    assert len(s.classes) == meta.num_classes == len(set(s.classes))


def test_unknown_dataset_and_arg():
    with pytest.raises(UnknownName, match="did you mean 'digits'"):
        load_dataset("digit")
    with pytest.raises(ValueError, match="'digits'.*'test_frac'.*test_fraction"):
        load_dataset("digits", test_frac=0.2)


# ---- digits ----

def test_digits_contents(digits):
    assert len(digits.train_y) + len(digits.test_y) == 1797
    assert digits.classes == [str(i) for i in range(10)]
    assert digits.train_x.shape[1:] == (3, 16, 16)
    assert torch.equal(digits.train_x[:, 0], digits.train_x[:, 2])  # grayscale copied to 3 channels
    raw = load_dataset("digits", size=8)  # native size: exactly the sklearn values / 16
    assert set(torch.unique(raw.train_x * 16).round().tolist()) <= set(range(17))
    assert raw.train_x.max() == 1.0


def test_digits_split_is_stratified_and_disjoint(digits):
    train, test = Counter(digits.train_y.tolist()), Counter(digits.test_y.tolist())
    for c in range(10):
        assert abs(test[c] - 0.3 * (train[c] + test[c])) <= 1
    assert not row_hashes(load_dataset("digits", size=8).train_x) & row_hashes(load_dataset("digits", size=8).test_x)
    assert len(row_hashes(digits.train_x)) == len(digits.train_x)  # no duplicate within a split either


def test_digits_split_is_deterministic_and_configurable(digits):
    again = load_dataset("digits")
    assert torch.equal(digits.test_x, again.test_x) and torch.equal(digits.train_y, again.train_y)
    half = load_dataset("digits", test_fraction=0.5)
    assert abs(len(half.test_y) - 1797 / 2) <= 1


# ---- shapes ----

def test_shapes_deterministic_by_seed_and_balanced():
    a = load_dataset("shapes", n_train=200, n_test=100, seed=1)
    b = load_dataset("shapes", n_train=200, n_test=100, seed=1)
    c = load_dataset("shapes", n_train=200, n_test=100, seed=2)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.train_x, c.train_x) and not torch.equal(a.test_x, c.test_x)
    assert len(a.classes) >= 16
    for y in (a.train_y, a.test_y):
        counts = torch.bincount(y, minlength=len(a.classes))
        assert counts.min() > 0 and counts.max() - counts.min() <= 1
    assert not row_hashes(a.train_x) & row_hashes(a.test_x)
    # the test set does not depend on how many training images were asked for
    assert torch.equal(load_dataset("shapes", n_train=50, n_test=100, seed=1).test_x, a.test_x)


# ---- few-shot ----

LABELS = torch.tensor([0] * 10 + [1] * 7 + [3] * 5)  # class 2 absent


def test_few_shot_exact_per_class_and_subset():
    idx = few_shot_indices(LABELS, 4, seed=0)
    assert idx.dtype == torch.int64 and len(set(idx.tolist())) == len(idx) == 12
    assert Counter(LABELS[idx].tolist()) == {0: 4, 1: 4, 3: 4}
    # shuffled across classes, not grouped
    assert LABELS[idx].tolist() != sorted(LABELS[idx].tolist())


def test_few_shot_seed_behaviour():
    a = few_shot_indices(LABELS.tolist(), 3, seed=5)  # a plain list works too
    assert torch.equal(a, few_shot_indices(LABELS, 3, seed=5))
    assert any(set(few_shot_indices(LABELS, 3, seed=s).tolist()) != set(a.tolist()) for s in range(6, 9))
    # nested: more shots keeps the fewer-shot picks
    assert set(a.tolist()) <= set(few_shot_indices(LABELS, 4, seed=5).tolist())


def test_few_shot_too_many_shots():
    with pytest.raises(ValueError) as e:
        few_shot_indices(LABELS, 6, seed=0)
    msg = str(e.value)
    assert "class 3" in msg and "5" in msg and "6" in msg
    capped = few_shot_indices(LABELS, 6, seed=0, cap=True)
    assert Counter(LABELS[capped].tolist()) == {0: 6, 1: 6, 3: 5}
    with pytest.raises(ValueError):
        few_shot_indices(LABELS, 0, seed=0)


def test_few_shot_none_is_a_seeded_permutation():
    a = few_shot_indices(LABELS, None, seed=1)
    assert sorted(a.tolist()) == list(range(len(LABELS)))
    assert torch.equal(a, few_shot_indices(LABELS, None, seed=1))
    assert not torch.equal(a, few_shot_indices(LABELS, None, seed=2))
