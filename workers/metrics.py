"""Accuracy and calibration metrics from mapped target logits (all computed in float64).

Two definitions where the paper's code differs from the textbook one: `ece` / `ece_paper` and
`kl_incorrect` / `kl_incorrect_paper` (docs/methods-and-metrics.md).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor

PAPER_TEST_BATCH = 128  # the paper's test loader; datasets that differ say so in their card's paper_test_batch


def _mean_or_none(values: Tensor) -> Optional[float]:
    return float(values.mean()) if values.numel() else None


def reliability_bins(conf: Tensor, correct: Tensor, n_bins: int = 15) -> dict[str, list]:
    """Equal-width bins over (0, 1]; c goes to bin b when lower < c <= upper (0 goes to the first).

    Returns {"count": [int], "confidence": [mean conf or None], "accuracy": [mean correct or None]}, one entry
    per bin. Edges are torch.linspace(0, 1, n_bins + 1) in float64, compared against float64 confidences.
    """
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    # bucketize(right=False) gives the first i with c <= edges[i]: bin (edges[i-1], edges[i]] is index i-1.
    bins = (torch.bucketize(conf, edges, right=False) - 1).clamp(0, n_bins - 1)
    out: dict[str, list] = {"count": [], "confidence": [], "accuracy": []}
    for b in range(n_bins):
        in_bin = bins == b
        out["count"].append(int(in_bin.sum()))
        out["confidence"].append(_mean_or_none(conf[in_bin]))
        out["accuracy"].append(_mean_or_none(correct[in_bin].double()))
    return out


def expected_calibration_error(conf: Tensor, correct: Tensor, n_bins: int = 15) -> float:
    """Top-label ECE over `reliability_bins`: sum over bins of count/N * |accuracy - confidence|."""
    return _ece_of(reliability_bins(conf, correct, n_bins))


def _ece_of(r: dict[str, list]) -> float:
    n = sum(r["count"])
    return sum(c / n * abs(a - f) for c, f, a in zip(r["count"], r["confidence"], r["accuracy"]) if c)


def paper_ece(logits: Tensor, labels: Tensor, batch_size: int, n_bins: int = 15) -> float:
    """ECE as the paper's code computed it: `calibration.get_ece(mapped_logits, y)` (uncertainty-calibration,
    15 bins, top-label) on each test batch in order, summed over batches, divided by N.

    The package bins the top *logit* as if it were a probability: upper edges i / n_bins, c to the first edge
    >= c (so every c <= 1/n_bins, negatives included, falls in the first bin), and everything above the
    second-to-last edge, logits > 1 included, shares the last bin. Each batch's value is weighted by the batch's
    own size, so the sum over batches / N is about a batch's ECE / batch size.
    """
    logits = logits.detach().cpu().double()
    labels = labels.detach().cpu().long()
    upper = torch.tensor([i * 1.0 / n_bins for i in range(1, n_bins + 1)], dtype=torch.float64)  # as the package
    total = 0.0
    for s in range(0, len(labels), batch_size):
        z, y = logits[s:s + batch_size], labels[s:s + batch_size]
        pred = z.argmax(dim=1)  # ties: the first maximum, as np.argmax
        top = z.gather(1, pred[:, None]).squeeze(1)
        correct = (pred == y).double()
        bins = torch.searchsorted(upper, top, side="left").clamp(max=n_bins - 1)
        for b in bins.unique().tolist():
            in_bin = bins == b
            total += float(in_bin.sum()) / len(y) * abs(float(top[in_bin].mean() - correct[in_bin].mean()))
    return total / len(labels)


def classification_metrics(logits: Tensor, labels: Tensor, n_bins: int = 15,
                           paper_batch: int = PAPER_TEST_BATCH) -> dict[str, Any]:
    """Metrics of (N, K) target logits against (N,) labels, as JSON-able Python values.

    Keys: accuracy, ece (top-label, `n_bins` equal-width bins), ece_paper (`paper_ece` with test batches of
    `paper_batch`), conf_correct (mean true-class probability over correct samples, None if none),
    kl_incorrect (mean KL(p || U) = log K - H(p) over incorrect samples, None if none), kl_incorrect_paper
    (mean F.kl_div(log p, U, reduction='mean') = KL(U || p) / K over incorrect samples, None if none), nll,
    per_class_accuracy and per_class_confidence (mean top-label probability over the test images of each true
    class; None for a class absent from labels), reliability (`reliability_bins` of the softmax), n.
    """
    if logits.ndim != 2 or labels.ndim != 1 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"need (N, K) logits and (N,) labels, got {tuple(logits.shape)} and {tuple(labels.shape)}")
    n, k = logits.shape
    if n == 0:
        raise ValueError("no samples: metrics are undefined for N = 0")
    logits = logits.detach().cpu().double()
    labels = labels.detach().cpu().long()
    if int(labels.min()) < 0 or int(labels.max()) >= k:
        raise ValueError(f"labels outside [0, {k})")

    log_p = torch.log_softmax(logits, dim=1)
    p = log_p.exp()
    conf = p.max(dim=1).values
    pred = p.argmax(dim=1)  # ties: the first maximum, as documented for argmax
    correct = pred == labels
    true_log_p = log_p.gather(1, labels[:, None]).squeeze(1)

    # KL(p || U) = sum_k p_k (log p_k + log K); 0 * log 0 counts as 0.
    kl = torch.special.xlogy(p, p).sum(dim=1) + math.log(k)
    # The paper's F.kl_div(log p, U, 'mean') = mean_k U_k (log U_k - log p_k) = (-log K - mean_k log p_k) / K.
    kl_paper = (-math.log(k) - log_p.mean(dim=1)) / k

    per_class: list[Optional[float]] = []
    per_class_conf: list[Optional[float]] = []
    for c in range(k):
        of_c = labels == c
        per_class.append(_mean_or_none(correct[of_c].double()))
        per_class_conf.append(_mean_or_none(conf[of_c]))

    reliability = reliability_bins(conf, correct, n_bins)
    return {
        "accuracy": float(correct.double().mean()),
        "ece": _ece_of(reliability),
        "ece_paper": paper_ece(logits, labels, paper_batch, n_bins),
        "conf_correct": _mean_or_none(true_log_p[correct].exp()),
        "kl_incorrect": _mean_or_none(kl[~correct]),
        "kl_incorrect_paper": _mean_or_none(kl_paper[~correct]),
        "nll": float(-true_log_p.mean()),
        "per_class_accuracy": per_class,
        "per_class_confidence": per_class_conf,
        "reliability": reliability,
        "n": int(n),
    }


def run_metrics(logits: Tensor, labels: Tensor, spec) -> dict[str, Any]:
    """`classification_metrics` of a run's test split, with the paper's test batch size for its dataset (the
    default for a hand-made task that is no registered dataset)."""
    from workers.data import DATASETS

    batch = DATASETS.card(spec.dataset).paper_test_batch if spec.dataset in DATASETS else PAPER_TEST_BATCH
    return classification_metrics(logits, labels, paper_batch=batch)
