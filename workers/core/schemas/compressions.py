"""Compression cards: one per registered compression, with its help and its arguments (the extra keys of a
`compressions` entry). The compressions themselves live in workers/compression/<family>.py."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from workers.core.schema import REQUIRED, Arg, Schema


@dataclass(frozen=True, kw_only=True)
class CompressionCard(Schema):
    """Help and arguments (the Schema), then the metadata."""

    # The argument that, when set (not null), makes the result depend on the calibration batch's values, i.e. on
    # the run's dataset (fakequant's act_bits: activation ranges); a model cache must then be keyed by that data too
    data_dependent_arg: Optional[str] = None

_SPARSITY = Arg("float", REQUIRED, "fraction of conv/linear weights set to zero", lo=0, hi=1,
                closed="[)")
_CHECKPOINT = Arg("checkpoint", help="the compressed weights: a path, or {format, path|url, sha256, mask, mask_sha256}")
_LEVEL = Arg("float", None, "the checkpoint's nominal sparsity (names the level)", lo=0, hi=1, closed="[)",
            nullable=True)
_SCOPE = Arg("str", "global", "one threshold over all layers, or one per layer", choices=("global", "layer"))


def _published(help: str, **extra: Arg) -> CompressionCard:
    return CompressionCard(help + " (from a published checkpoint)",
                           {"checkpoint": _CHECKPOINT, "sparsity": _LEVEL, **extra})


COMPRESSIONS = {
    "dense": CompressionCard("the model as loaded"),
    "magnitude": CompressionCard("one-shot magnitude pruning of conv/linear weights",
                                 {"sparsity": _SPARSITY, "scope": _SCOPE}),
    "random": CompressionCard("random unstructured pruning",
                              {"sparsity": _SPARSITY, "seed": Arg("int", 0, "which weights go")}),
    "channel": CompressionCard("structured channel pruning (torch-pruning): the model shrinks", {
        "ratio": Arg("float", REQUIRED, "fraction of channels to remove", lo=0, hi=1, closed="[)"),
        "importance": Arg("str", "l1", "channel score", choices=("l1", "l2", "random")),
        "scope": Arg("str", "layer", "one ranking over all layers, or per layer", choices=("global", "layer")),
        "seed": Arg("int", 0, "seed of random importance")}),
    "fakequant": CompressionCard("post-training per-channel symmetric weight fake quantisation", {
        "bits": Arg("int", REQUIRED, "weight bits", lo=2, hi=8),
        "act_bits": Arg("int", None, "activation bits (null: float activations)", lo=2, hi=8, nullable=True)},
        data_dependent_arg="act_bits"),
    "gmp": _published("gradual magnitude pruning"),
    "acdc": _published("AC/DC"),
    "rigl": _published("RigL"),
    "str": _published("soft threshold reparameterisation"),
    "lth": _published("lottery ticket (IMP rounds)", round=Arg("int", None, "the IMP round", lo=0, nullable=True),
                      apply_mask=Arg("bool", True, "weight = mask x weight; false loads the unmasked weights as the "
                                                   "paper's loader did (its masks were never applied)")),
    "upop": CompressionCard("UPop structured CLIP pruning (from a published checkpoint)", {
        "checkpoint": _CHECKPOINT,
        "ratio": Arg("float", None, "the compression ratio, e.g. 2 or 4", lo=1, nullable=True)}),
    "vvtq": CompressionCard("VVTQ quantised DeiT/Swin, WnAn (from a published checkpoint)", {
        "checkpoint": _CHECKPOINT, "bits": Arg("int", REQUIRED, "weight and activation bits (32 is the float model)",
                                              choices=(2, 3, 4))}),
}
