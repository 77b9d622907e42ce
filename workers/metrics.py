"""Accuracy and calibration metrics from mapped target logits (all computed in float64)."""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor


def _mean_or_none(values: Tensor) -> Optional[float]:
    return float(values.mean()) if values.numel() else None


def expected_calibration_error(conf: Tensor, correct: Tensor, n_bins: int = 15) -> float:
    """Top-label ECE over equal-width bins; c goes to bin b when lower < c <= upper (0 goes to the first).

    Edges are torch.linspace(0, 1, n_bins + 1) in float64, compared against float64 confidences.
    """
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    # bucketize(right=False) gives the first i with c <= edges[i]: bin (edges[i-1], edges[i]] is index i-1.
    bins = (torch.bucketize(conf, edges, right=False) - 1).clamp(0, n_bins - 1)
    n = conf.numel()
    ece = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        count = int(in_bin.sum())
        if count:
            gap = correct[in_bin].double().mean() - conf[in_bin].mean()
            ece += count / n * abs(float(gap))
    return ece


def classification_metrics(logits: Tensor, labels: Tensor, n_bins: int = 15) -> dict[str, Any]:
    """Metrics of (N, K) target logits against (N,) labels, as JSON-able Python values.

    Keys: accuracy, ece (top-label, `n_bins` equal-width bins), conf_correct (mean true-class probability
    over correct samples, None if none), kl_incorrect (mean KL(p || uniform) = log K - H(p) over incorrect
    samples, None if none), nll, per_class_accuracy (None for a class absent from labels), n.

    The paper's code differs: it computed F.kl_div(log p, U, reduction='mean'), which is KL(U || p) / K,
    and fed ECE with logits averaged per batch. We store the proper per-sample quantities instead.
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

    per_class: list[Optional[float]] = []
    for c in range(k):
        of_c = labels == c
        per_class.append(float(correct[of_c].double().mean()) if of_c.any() else None)

    return {
        "accuracy": float(correct.double().mean()),
        "ece": expected_calibration_error(conf, correct, n_bins),
        "conf_correct": _mean_or_none(true_log_p[correct].exp()),
        "kl_incorrect": _mean_or_none(kl[~correct]),
        "nll": float(-true_log_p.mean()),
        "per_class_accuracy": per_class,
        "n": int(n),
    }
