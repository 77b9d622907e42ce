"""Label mappings against hand-worked matrices and independent brute-force re-implementations."""
import itertools
import random

import numpy as np
import pytest
import torch

from workers.core.schemas.mappings import MappingCard
from workers.mapping import (
    LABEL_MAPPINGS,
    compute_mapping,
    frequency_matrix,
    greedy_mapping,
    hungarian_mapping,
    map_logits,
    random_mapping,
)

pytestmark = pytest.mark.unit


def _greedy_reference(counts: list[list[float]]) -> list[int]:
    """Pure-Python restatement of the reference rule: scan row-major, strict '>' keeps the first maximum."""
    work = [list(map(float, row)) for row in counts]
    k = len(work[0])
    mapping = [-1] * k
    for _ in range(k):
        best, bs, bt = None, -1, -1
        for s, row in enumerate(work):
            for t, v in enumerate(row):
                if best is None or v > best:
                    best, bs, bt = v, s, t
        mapping[bt] = bs
        work[bs] = [-1.0] * k
        for row in work:
            row[bt] = -1.0
    return mapping


def _total(counts, mapping) -> float:
    return float(sum(counts[s][t] for t, s in enumerate(mapping)))


def test_greedy_3x2_tie_across_rows():
    counts = torch.tensor([[3, 5], [5, 1], [0, 2]])
    # max 5 at (0,1) and (1,0): row-major first is (0,1) -> t1 <- s0; strike row 0, col 1.
    # left: col 0 over rows 1,2 = [5, 0] -> t0 <- s1.
    assert greedy_mapping(counts).tolist() == [1, 0]


def test_greedy_3x2_tie_within_row():
    counts = torch.tensor([[4, 4], [3, 0], [0, 0]])
    # max 4 at (0,0) and (0,1): lowest target wins -> t0 <- s0 (choosing t1 would give [1, 0]).
    # left: col 1 over rows 1,2 = [0, 0] -> tie, lowest row -> t1 <- s1.
    assert greedy_mapping(counts).tolist() == [0, 1]


def test_greedy_4x3_and_hungarian_beats_it():
    counts = torch.tensor([[2, 7, 7], [7, 0, 1], [1, 6, 3], [0, 6, 3]])
    # step 1: 7 at (0,1), (0,2), (1,0) -> (0,1): t1 <- s0; strike row 0, col 1.
    # step 2: left {s1: [7, _, 1], s2: [1, _, 3], s3: [0, _, 3]} -> 7 at (1,0): t0 <- s1.
    # step 3: col 2 over rows 2,3 = [3, 3] -> tie, row 2: t2 <- s2.  total 7 + 7 + 3 = 17.
    assert greedy_mapping(counts).tolist() == [1, 0, 2]
    # optimum: t0 <- s1 (7), t2 <- s0 (7), t1 <- s2 or s3 (6) = 20.
    h = hungarian_mapping(counts).tolist()
    assert h[0] == 1 and h[2] == 0 and h[1] in (2, 3)
    assert _total(counts.tolist(), h) == 20


def test_greedy_all_zero_column():
    counts = torch.tensor([[0, 5, 0], [0, 4, 0], [0, 0, 2], [0, 3, 0]])
    # t0 has no samples. step 1: 5 at (0,1) -> t1 <- s0. step 2: 2 at (2,2) -> t2 <- s2.
    # step 3: rows 1,3 of col 0 are both 0 -> lowest free row: t0 <- s1.
    assert greedy_mapping(counts).tolist() == [1, 0, 2]


def test_greedy_all_zero_matrix():
    assert greedy_mapping(torch.zeros(5, 3)).tolist() == [0, 1, 2]
    assert greedy_mapping(torch.zeros(3, 3, dtype=torch.long)).tolist() == [0, 1, 2]


def test_greedy_does_not_modify_input():
    counts = torch.tensor([[3, 5], [5, 1], [0, 2]])
    before = counts.clone()
    greedy_mapping(counts)
    hungarian_mapping(counts)
    assert torch.equal(counts, before)


@pytest.mark.parametrize("fn", [greedy_mapping, hungarian_mapping])
def test_fewer_sources_than_targets(fn):
    with pytest.raises(ValueError, match=r"\(2\).*\(3\)"):
        fn(torch.zeros(2, 3))


def test_random_fewer_sources_than_targets():
    with pytest.raises(ValueError):
        random_mapping(2, 3, seed=0)


def test_greedy_matches_brute_force_on_random_tied_matrices():
    rng = random.Random(1234)
    for _ in range(200):
        k = rng.randint(1, 5)
        s = rng.randint(k, 7)
        counts = [[rng.randint(0, 3) for _ in range(k)] for _ in range(s)]
        got = greedy_mapping(torch.tensor(counts)).tolist()
        assert got == _greedy_reference(counts), counts
        assert len(set(got)) == k and all(0 <= g < s for g in got)


def test_hungarian_is_optimal_and_at_least_greedy():
    rng = random.Random(99)
    for _ in range(100):
        k = rng.randint(1, 4)
        s = rng.randint(k, 5)
        counts = [[rng.randint(0, 3) for _ in range(k)] for _ in range(s)]
        h = hungarian_mapping(torch.tensor(counts)).tolist()
        g = greedy_mapping(torch.tensor(counts)).tolist()
        assert len(set(h)) == k
        best = max(_total(counts, p) for p in itertools.permutations(range(s), k))
        assert _total(counts, h) == best
        assert _total(counts, h) >= _total(counts, g)
        assert hungarian_mapping(torch.tensor(counts)).tolist() == h  # deterministic


def test_random_mapping_seeded():
    a = random_mapping(1000, 10, seed=3)
    assert torch.equal(a, random_mapping(1000, 10, seed=3))
    assert not torch.equal(a, random_mapping(1000, 10, seed=4))
    assert len(set(a.tolist())) == 10 and a.dtype == torch.long
    expected = torch.randperm(1000, generator=torch.Generator().manual_seed(3))[:10]
    assert torch.equal(a, expected)


def test_frequency_matrix_against_numpy():
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 7, size=500)
    targets = rng.integers(0, 4, size=500)
    targets[targets == 2] = 3  # target class 2 absent: its column must be zeros
    expected = np.zeros((7, 4), dtype=np.int64)
    np.add.at(expected, (pred, targets), 1)
    got = frequency_matrix(torch.from_numpy(pred), torch.from_numpy(targets), 7, 4)
    assert got.shape == (7, 4)
    assert np.array_equal(got.numpy(), expected)
    assert got[:, 2].sum() == 0


def test_frequency_matrix_by_hand():
    # samples (source pred, target): (0,1) (0,1) (2,0) (1,1)
    got = frequency_matrix(torch.tensor([0, 0, 2, 1]), torch.tensor([1, 1, 0, 1]), 3, 2)
    assert got.tolist() == [[0, 2], [0, 1], [1, 0]]


def test_frequency_matrix_rejects_out_of_range():
    with pytest.raises(ValueError):
        frequency_matrix(torch.tensor([3]), torch.tensor([0]), 3, 2)
    with pytest.raises(ValueError):
        frequency_matrix(torch.tensor([0]), torch.tensor([2]), 3, 2)


def test_map_logits():
    logits = torch.arange(10.0).view(2, 5)
    assert map_logits(logits, torch.tensor([4, 0, 2])).tolist() == [[4, 0, 2], [9, 5, 7]]


def test_registry_cards():
    assert LABEL_MAPPINGS.names() == ["flm", "ilm", "ilm_hungarian", "rlm"]
    assert [LABEL_MAPPINGS.card(n).schedule for n in ("rlm", "flm", "ilm", "ilm_hungarian")] == [
        "fixed", "once", "every_epoch", "every_epoch"]
    with pytest.raises(ValueError, match="'sometimes' is not one of"):
        MappingCard("sometimes")


def test_compute_mapping_dispatch():
    # source preds for targets 0,0,1,1,1: target 0 -> s3 twice, target 1 -> s1 twice and s3 once.
    pred, targets = torch.tensor([3, 3, 1, 1, 3]), torch.tensor([0, 0, 1, 1, 1])
    # counts: s1 = [0, 2], s3 = [2, 1]; max 2 at (1,1) then (3,0) -> [3, 1].
    for name in ("flm", "ilm", "ilm_hungarian"):
        got = compute_mapping(name, source_pred=pred, targets=targets, num_source=5, num_target=2, seed=0)
        assert got.tolist() == [3, 1]
        assert LABEL_MAPPINGS.get(name)(
            source_pred=pred, targets=targets, num_source=5, num_target=2, seed=0
        ).tolist() == [3, 1]
    rlm = compute_mapping("rlm", num_source=5, num_target=2, seed=7)
    assert torch.equal(rlm, random_mapping(5, 2, seed=7))
    with pytest.raises(ValueError, match="ilm"):
        compute_mapping("ilm", num_source=5, num_target=2, seed=0)
