"""RunSpec (one fully resolved run) and RunResult (its row in the store).

Pure Python, no torch: the control plane builds RunSpecs and the store derives its Parquet schema from
RunResult's annotations, so the two planes share one definition.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Union


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=list)


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _remember(memo: dict, values: tuple, make):
    """`make(values)`, remembered. Keyed by the values' types and repr, which differ for any two values whose
    JSON differs (1, 1.0 and True; dict key order aside, which only costs a miss); plain names and numbers key
    as themselves, faster. A value json cannot encode raises in `make` and is not remembered. Bounded: a
    long-lived worker sees many grids."""
    types = tuple(map(type, values))
    key = (types, values if _HASHABLE.issuperset(types) else repr(values))
    out = memo.get(key)
    if out is None:
        if len(memo) >= 65536:
            memo.clear()
        out = memo[key] = make(values)
    return out


_HASHABLE = frozenset({str, int, float, bool, type(None)})


class _cached:
    """functools.cached_property without its lock (Python 3.11 takes one on every first access, a third of
    what keying a spec costs). Two threads racing on one spec would compute the same value twice: harmless."""

    def __init__(self, fn) -> None:
        self.fn, self.name, self.__doc__ = fn, fn.__name__, fn.__doc__

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        value = obj.__dict__[self.name] = self.fn(obj)  # found there from now on: this is a non-data descriptor
        return value


# A grid repeats each (variant, dataset) across its methods, shots and seeds, hundreds of runs, and
# json.dumps costs ~20 µs a call: the canonical JSON of those fields is made once per distinct value.
_VARIANT_FIELDS = ("compression", "compression_args", "model", "model_args", "weights")
_SHARED_FIELDS = _VARIANT_FIELDS + ("dataset", "dataset_args")
_SHARED: dict = {}
_SCALARS: dict = {}


def _shared_json(values: tuple) -> tuple[dict[str, str], str]:
    """({field: canonical JSON} for _SHARED_FIELDS, the variant key)."""
    js = {k: _canonical(v) for k, v in zip(_SHARED_FIELDS, values)}
    return js, _short_hash("{" + ",".join(f'"{k}":{js[k]}' for k in _VARIANT_FIELDS) + "}")


# The axes of a grid, in one order everywhere: `match:` rules, `status` per axis, `report --select`, the figures.
AXES = ("model", "compression", "level", "method", "dataset", "shots", "seed")


def variant_tag(compression: str, level: Any) -> str:
    """A model's variant in one word, 'magnitude@0.6' ('dense' at no level): `vpgrid plan`'s breakdown, the rows
    of `vpgrid report`'s tables and the golden slice's labels. A level read back from a table may be NaN: none."""
    if level is None or (isinstance(level, float) and math.isnan(level)):
        return compression
    return f"{compression}@{level:g}"


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one prompt-training run (reference ILM-VP recipe by default)."""

    epochs: int = 100
    lr: float = 0.01
    batch_size: int = 128
    milestones: tuple[float, ...] = (0.5, 0.72)  # fractions of `epochs` where lr *= gamma
    gamma: float = 0.1
    eval_batch_size: int = 256
    input_size: Optional[int] = None  # target image side inside the canvas; None = dataset default
    eval_every: Optional[int] = None  # VP: test accuracy every N epochs into the row; None or 0 = off
    # How many runs of one (variant, dataset, shots, schedule) cell train in one pass of the frozen model: an int,
    # or "auto" (all of the pack's, capped by a memory estimate). How a run executes, not what it computes:
    # never in the run key.
    prompt_batch: Union[int, str] = "auto"

    def key_fields(self) -> dict:
        """The fields that make the run key. `eval_every` joins only when on: stores made before it keep their keys;
        `prompt_batch` never does."""
        d = dataclasses.asdict(self)
        del d["prompt_batch"]
        if not d["eval_every"]:
            del d["eval_every"]
        return d

    @_cached
    def canonical(self) -> str:
        """Canonical JSON of the key fields, computed once per config (a grid's runs share a few configs)."""
        return _canonical(self.key_fields())


@dataclass(frozen=True)
class RunSpec:
    """Everything one run needs. Its hash of the semantic fields is the run_key."""

    model: str
    method: str
    dataset: str
    shots: Optional[int]  # None = the full training split
    seed: int
    weights: Union[str, dict] = "pretrained"  # "pretrained" | "random" | path | {format, path|url, sha256, ...}
    model_args: dict = field(default_factory=dict)
    compression: str = "dense"
    compression_args: dict = field(default_factory=dict)
    dataset_args: dict = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    grid: str = ""  # the grid's name; bookkeeping, not part of the key

    def semantic(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("grid")
        d["train"] = self.train.key_fields()
        return d

    # The keys are computed once per spec (status and plan ask for them several times per run; recomputing them
    # through dataclasses.asdict was 92% of `vpgrid status`). Caching is sound because a spec is frozen and
    # nothing mutates its dicts; dataclasses.replace makes a new spec with an empty cache.
    @_cached
    def _shared(self) -> tuple[dict[str, str], str]:
        return _remember(_SHARED, (self.compression, self.compression_args, self.model, self.model_args, self.weights,
                                    self.dataset, self.dataset_args), _shared_json)

    @_cached
    def canonical(self) -> str:
        """`_canonical(self.semantic())`, byte for byte: json.dumps with sort_keys writes the top-level keys in
        this order and each value as it would alone (tests compare the two)."""
        js = self._shared[0]
        method, seed, shots = _remember(_SCALARS, (self.method, self.seed, self.shots),
                                        lambda v: tuple(map(_canonical, v)))
        return (f'{{"compression":{js["compression"]},"compression_args":{js["compression_args"]},'
                f'"dataset":{js["dataset"]},"dataset_args":{js["dataset_args"]},"method":{method},'
                f'"model":{js["model"]},"model_args":{js["model_args"]},"seed":{seed},"shots":{shots},'
                f'"train":{self.train.canonical},"weights":{js["weights"]}}}')

    @_cached
    def run_key(self) -> str:
        return _short_hash(self.canonical)

    @property
    def variant_key(self) -> str:
        """Identifies the (model, weights, compression) variant: runs sharing it share one model. The hash of
        the canonical JSON of {model, weights, model_args, compression, compression_args}."""
        return self._shared[1]

    @property
    def cell_key(self) -> tuple:
        """Runs that can train together: one variant, dataset (with its args), data budget and training config.
        The plan keeps a cell whole in one trial; the worker batches a cell's prompts (per kind of method)."""
        return (self.variant_key, self.dataset, self._shared[0]["dataset_args"], self.shots, self.train.canonical)

    @_cached
    def compression_level(self) -> Optional[float]:
        """The nominal level on one axis: sparsity for pruning, bits for quantisation."""
        for k in ("sparsity", "bits", "ratio", "round"):
            if k in self.compression_args:
                return float(self.compression_args[k])
        return None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["train"] = self.train.key_fields()  # eval_every only when on, as in the key; from_dict restores it
        if self.train.prompt_batch != "auto":  # not in the key, but the worker needs it
            d["train"]["prompt_batch"] = self.train.prompt_batch
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunSpec":
        d = dict(d)
        t = dict(d.pop("train", {}))
        if "milestones" in t:
            t["milestones"] = tuple(t["milestones"])
        return cls(train=TrainConfig(**t), **d)


@dataclass
class RunResult:
    """One row of the store. Field order and annotations define the Parquet schema."""

    run_key: str
    grid: str
    status: str  # "ok" | "failed"
    error: Optional[str]
    # axes
    model: str
    weights: str  # as in the grid; a mapping as canonical JSON
    model_args: str  # canonical JSON
    compression: str
    compression_level: Optional[float]
    compression_args: str  # canonical JSON
    method: str
    dataset: str
    shots: Optional[int]  # null = full training split
    seed: int
    # hyper-parameters
    epochs: int
    lr: float
    batch_size: int
    input_size: Optional[int]
    # metrics on the test split (softmax over the mapped target logits)
    accuracy: Optional[float] = None
    ece: Optional[float] = None
    conf_correct: Optional[float] = None
    kl_incorrect: Optional[float] = None
    nll: Optional[float] = None
    per_class_accuracy: Optional[list[float]] = None
    label_mapping: Optional[list[int]] = None  # label_mapping[target class] = source class
    final_train_loss: Optional[float] = None
    n_train: Optional[int] = None
    n_test: Optional[int] = None
    # the paper's definitions, reliability data and every setting that changes a run (issue 8)
    ece_paper: Optional[float] = None  # the paper code's ECE: per-batch package ECE on mapped logits, / N
    kl_incorrect_paper: Optional[float] = None  # F.kl_div(log p, U, 'mean') = KL(U || p) / K, over incorrect
    reliability_count: Optional[list[int]] = None  # per 15 equal-width confidence bins over (0, 1]
    reliability_confidence: Optional[list[Optional[float]]] = None  # mean confidence per bin; null when empty
    reliability_accuracy: Optional[list[Optional[float]]] = None  # accuracy per bin; null when empty
    per_class_confidence: Optional[list[Optional[float]]] = None  # mean top probability per true class
    epoch_accuracy: Optional[list[float]] = None  # test accuracy after epochs N, 2N, ... (N = eval_every)
    dataset_args: Optional[str] = None  # canonical JSON
    milestones: Optional[list[float]] = None  # fractions of the epochs where lr *= gamma
    gamma: Optional[float] = None
    eval_batch_size: Optional[int] = None
    eval_every: Optional[int] = None  # null = off
    prompt_kind: Optional[str] = None  # the method's prompt (its card's `prompt`); null for lp, ff
    prompt_path: Optional[str] = None  # the learned prompt (safetensors) of a VP run, beside the store
    upstream_accuracy: Optional[float] = None  # the variant's top-1 on ImageNet val; null: no val set under the root
    # the loaded model, as measured
    sparsity: Optional[float] = None  # fraction of zero weights in conv/linear layers
    layer_sparsity: Optional[str] = None  # JSON {layer name: fraction of zero weights}
    params: Optional[int] = None  # parameters of the compressed model (structured pruning shrinks it)
    weight_bits: Optional[int] = None
    act_bits: Optional[int] = None
    weights_source: Optional[str] = None  # where the weights came from, with checksum
    # timings and provenance
    train_seconds: Optional[float] = None
    eval_seconds: Optional[float] = None
    setup_seconds: Optional[float] = None  # model/dataset load + compression, shared across a pack
    started_at: Optional[float] = None  # unix seconds
    finished_at: Optional[float] = None
    trial: Optional[str] = None
    host: Optional[str] = None
    node: Optional[str] = None  # the Ray node that ran it
    pid: Optional[int] = None
    device: Optional[str] = None
    versions: Optional[str] = None  # JSON {package: version}

    @classmethod
    def for_spec(cls, spec: RunSpec, status: str, error: Optional[str] = None, **kw: Any) -> "RunResult":
        return cls(
            run_key=spec.run_key,
            grid=spec.grid,
            status=status,
            error=error,
            model=spec.model,
            weights=spec.weights if isinstance(spec.weights, str) else _canonical(spec.weights),
            model_args=_canonical(spec.model_args),
            compression=spec.compression,
            compression_level=spec.compression_level,
            compression_args=_canonical(spec.compression_args),
            method=spec.method,
            dataset=spec.dataset,
            shots=spec.shots,
            seed=spec.seed,
            epochs=spec.train.epochs,
            lr=spec.train.lr,
            batch_size=spec.train.batch_size,
            input_size=spec.train.input_size,
            dataset_args=_canonical(spec.dataset_args),
            milestones=list(spec.train.milestones),
            gamma=spec.train.gamma,
            eval_batch_size=spec.train.eval_batch_size,
            eval_every=spec.train.eval_every or None,
            **kw,
        )

    def to_row(self) -> dict:
        return dataclasses.asdict(self)
