"""The report's vocabulary, read without pandas (the CLI builds its options from it): the metrics, figure families,
the columns that name a configuration, the settings, and the one place a variant, a budget and a setting are
spelled."""
from __future__ import annotations

import math
from typing import Any

from workers.core.spec import AXES, variant_tag  # variant_tag: 'magnitude@0.6'

# Scalar metrics: axis label, the factor that turns the stored value into that unit, and what it measures.
METRIC_INFO = {
    "accuracy": ("test accuracy (%)", 100.0, "top-1 accuracy on the target test split"),
    "ece": ("ECE (%)", 100.0, "expected calibration error, 15 equal-width bins of the top probability"),
    "ece_paper": ("ECE, paper's code (logit units / batch)", 1.0,
                  "the paper code's ECE (per-batch package ECE on logits, / N); not a probability error"),
    "conf_correct": ("mean confidence of the true class (%)", 100.0,
                     "mean probability of the true class over correctly classified test images"),
    "kl_incorrect": ("KL(p ‖ uniform) on errors (nats)", 1.0,
                     "mean KL divergence of the prediction to the uniform distribution over misclassified test images"),
    "kl_incorrect_paper": ("paper's KL(U ‖ p)/K on errors (nats)", 1.0,
                           "the paper code's F.kl_div(log p, U, 'mean') over misclassified test images"),
}
METRICS = tuple(METRIC_INFO)
# `vpgrid report --out DIR`: its figure and table families (in the index's order), vector formats, metric variants
FAMILY_TITLES = {
    "accuracy": "Transfer accuracy vs data budget (the paper's Figs. 2–6)",
    "ece": "Calibration error vs compression level (Figs. 7–9)",
    "confidence": "Mean confidence of the true class vs compression level (Figs. 10, 12)",
    "kl": "Distance to uniform on incorrect predictions vs compression level (Figs. 11, 13)",
    "reliability": "Reliability diagrams, dense vs compressed",
    "mapping": "Label mapping, dense vs compressed (Fig. 1)",
    "classwise": "Class-wise impact: per-class accuracy, compressed − dense",
    "lottery": "Lottery-ticket Δ heat-map: accuracy cost per level and dataset",
    "prompts": "Learned prompts, dense vs compressed",
    "best_epoch": "Best-epoch accuracy beside the last epoch's",
    "table1": "Table 1: accuracy drop per architecture and compression",
    "table2": "Table 2: accuracy at the largest data budget, dense vs compressed, per method",
    "table3": "Tables 3–4: accuracy across models (per study and method, largest data budget)",
}
FAMILIES = tuple(FAMILY_TITLES)
VECTOR_FORMATS = ("svg", "pdf")
VARIANTS = ("proper", "paper")
SELECT_KEYS = AXES  # `--select KEY=VALUE`: the grid's axes, as its `match`
# The columns that name a configuration of the figures, tables and the paired cost.
KEYS = ["study", "model", "setup", "compression", "level", "method", "dataset", "shots"]
# Every setting that changes a run besides the summary's axes: runs that differ in any of them are never averaged
# as seeds of one configuration. (compression and its level are in `variant`; seed is what is averaged over.)
SETTINGS = ("weights", "model_args", "compression_args", "dataset_args", "epochs", "lr", "batch_size", "input_size",
            "milestones", "gamma", "eval_batch_size", "eval_every", "prompt_kind")
# A compression's level is the first of these keys in its args (as RunSpec.compression_level); `True`: a
# smaller value compresses more (bits), so the order dense -> most compressed is descending.
LEVEL_KEYS = {"sparsity": False, "bits": True, "ratio": False, "round": False}
LEVEL_NAMES = {"sparsity": "sparsity (% of conv/linear weights zeroed)", "bits": "weight bits",
               "ratio": "compression ratio (×)", "round": "IMP round (sparsity 1 − 0.8^round)"}
LEVEL_SHORT = {"sparsity": "sparsity", "bits": "weight bits", "ratio": "compression ratio", "round": "IMP round"}


def missing(v: Any) -> bool:
    """A null cell: None, or NaN (pandas reads a null number as NaN)."""
    return v is None or (isinstance(v, float) and math.isnan(v))


def shots_text(shots: Any) -> str:
    """'full' for the whole training split, else the integer (pandas reads a nullable int column as float)."""
    return "full" if missing(shots) else str(int(shots))


def budget_text(shots: Any) -> str:
    """A data budget as the report writes it: 'full' or '10-shot'."""
    return "full" if missing(shots) else f"{int(shots)}-shot"


def variant_text(compression: str, level: Any) -> str:
    """A variant of a model as the figures, tables, captions and CSVs name it: 'dense', 'magnitude 0.6'."""
    if compression == "dense" or missing(level):
        return compression
    return f"{compression} {level:g}"


def name_of(study: str, model: str, setup: str) -> str:
    """A model as the report's titles name it: '[study] model (setup)', each part only where it is set."""
    return " ".join(p for p in (f"[{study}]" if study else "", model, f"({setup})" if setup else "") if p)


def setting_text(v: Any) -> str:
    """A hashable, readable form of one setting: '' for null, numbers as written, lists comma-joined."""
    if missing(v):
        return ""
    if isinstance(v, float):
        return f"{v:g}"
    if hasattr(v, "__len__") and not isinstance(v, str):  # a list column reads as a numpy array
        return ",".join(setting_text(x) for x in v)
    return str(v)
