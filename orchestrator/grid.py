"""The grid file: a validated YAML schema and its expansion into RunSpecs.

No torch, no Ray: `vpgrid plan` must start fast. Names and arguments (models, compressions, datasets,
methods) are checked against their declared schemas by `orchestrator.validate`.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt, ValidationError,
                      field_validator, model_validator)

from workers.core.errors import VpgridError
from workers.core.spec import AXES, RunSpec, TrainConfig


class GridError(VpgridError, ValueError):
    """A grid file that cannot be used; the message names the file and the field."""


Shots = Union[PositiveInt, Literal["full"]]
Scalar = Union[str, int, float, bool, None]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Resources(_Strict):
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)

    @field_validator("gpu")
    @classmethod
    def _fraction_or_whole(cls, v: float) -> float:
        if v > 1 and v != int(v):
            raise ValueError("a trial uses a fraction of one GPU (0 < gpu <= 1) or a whole number of GPUs")
        return v


class Train(_Strict):
    epochs: PositiveInt = 100
    lr: PositiveFloat = 0.01
    batch_size: Union[PositiveInt, dict[Shots, PositiveInt]] = 128
    milestones: list[float] = [0.5, 0.72]
    gamma: PositiveFloat = 0.1
    eval_batch_size: PositiveInt = 256
    input_size: Optional[PositiveInt] = None
    eval_every: Optional[NonNegativeInt] = None  # VP: test accuracy every N epochs; None or 0 = off
    prompt_batch: Union[int, str] = "auto"  # runs of one cell trained in one pass of the frozen model; not in keys

    @field_validator("prompt_batch", mode="before")
    @classmethod
    def _prompt_batch(cls, v: Any) -> Union[int, str]:
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            return v
        raise ValueError("prompt_batch is a positive int or 'auto'")

    @field_validator("milestones")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if any(not 0 < f <= 1 for f in v) or v != sorted(v):
            raise ValueError("milestones are increasing fractions of the epochs in (0, 1]")
        return v


class Compression(BaseModel):
    """`{method: magnitude, sparsity: [0.8, 0.9]}`: list values expand into one variant each."""

    model_config = ConfigDict(extra="allow")
    method: str

    def variants(self) -> list[tuple[str, dict]]:
        extra = dict(self.model_extra or {})
        checkpoint = extra.pop("checkpoint", None)
        keys = sorted(extra)
        values = [v if isinstance(v, list) else [v] for v in (extra[k] for k in keys)]
        out = []
        for combo in itertools.product(*values):
            args = dict(zip(keys, combo))
            if checkpoint is not None:  # "/ckpt/acdc_{sparsity}.pth": one file per level
                args["checkpoint"] = _fill(checkpoint, args, self.method)
            out.append((self.method, args))
        return out


def _fill(template: Any, values: dict, method: str) -> Any:
    if isinstance(template, dict):
        return {k: _fill(v, values, method) for k, v in template.items()}
    if not isinstance(template, str):
        return template
    try:
        return template.format(**values)
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"compression {method!r}: checkpoint {template!r} names {e} but the compression's "
                         f"args are {sorted(values)}") from None


class Model(_Strict):
    name: str
    weights: Union[str, dict[str, Any]] = "pretrained"
    args: dict[str, Any] = {}
    compressions: list[Union[str, Compression]] = ["dense"]
    resources: Optional[Resources] = None

    def variants(self) -> list[tuple[str, dict]]:
        out = []
        for c in self.compressions:
            out += [(c, {})] if isinstance(c, str) else c.variants()
        return out


class Dataset(_Strict):
    name: str
    args: dict[str, Any] = {}


MATCH_AXES = AXES


class Match(_Strict):
    model: Union[Scalar, list[Scalar]] = None
    compression: Union[Scalar, list[Scalar]] = None
    level: Union[Scalar, list[Scalar]] = None
    method: Union[Scalar, list[Scalar]] = None
    dataset: Union[Scalar, list[Scalar]] = None
    shots: Union[Scalar, list[Scalar]] = None
    seed: Union[Scalar, list[Scalar]] = None

    def matches(self, spec: RunSpec) -> bool:
        values = {"model": spec.model, "compression": spec.compression, "level": spec.compression_level,
                  "method": spec.method, "dataset": spec.dataset,
                  "shots": "full" if spec.shots is None else spec.shots, "seed": spec.seed}
        for axis in self.model_fields_set:
            want = getattr(self, axis)
            want = want if isinstance(want, list) else [want]
            if values[axis] not in want:
                return False
        return True


def _training_fields(v: dict) -> dict:
    unknown = set(v) - set(Train.model_fields)
    if unknown:
        raise ValueError(f"unknown training field(s) {sorted(unknown)}; valid: {sorted(Train.model_fields)}")
    return v


class Override(_Strict):
    match: Match = Match()
    set: dict[str, Any]

    _known = field_validator("set")(classmethod(lambda cls, v: _training_fields(v)))


def _unique(v: Optional[list]) -> Optional[list]:
    dup = [x for i, x in enumerate(v or []) if x in v[:i]]
    if dup:
        raise ValueError(f"duplicate value {dup[0]!r}")
    return v


class Study(_Strict):
    """A sub-grid: its own axes; shots, seeds, train, resources default to the grid's."""

    name: str
    models: list[Model] = Field(min_length=1)
    methods: list[str] = Field(min_length=1)
    datasets: list[Union[str, Dataset]] = Field(min_length=1)
    shots: Optional[list[Shots]] = Field(None, min_length=1)
    seeds: Optional[list[int]] = Field(None, min_length=1)
    train: dict[str, Any] = {}  # merged over the grid's train
    overrides: list[Override] = []  # applied after the grid's
    include: list[Match] = []
    exclude: list[Match] = []  # with the grid's
    resources: Optional[Resources] = None

    _unique_axes = field_validator("methods", "shots", "seeds")(classmethod(lambda cls, v: _unique(v)))

    _known = field_validator("train")(classmethod(lambda cls, v: _training_fields(v)))


class Grid(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    models: list[Model] = []
    methods: list[str] = []
    datasets: list[Union[str, Dataset]] = []
    shots: list[Shots] = []
    seeds: list[int] = []
    train: Train = Train()
    overrides: list[Override] = []
    include: list[Match] = []
    exclude: list[Match] = []
    resources: Optional[Resources] = None  # for models without their own; else each model's registered default
    pack_size: PositiveInt = 32
    max_failures: int = Field(3, ge=-1)  # retries of a trial whose worker or node died (-1: without end)
    callbacks: list[str] = []  # Tune logger callbacks: csv, json, tensorboard, wandb, mlflow or module:Class
    data_root: Optional[str] = None  # default dataset root; --data-root or $VPGRID_DATA win (not in run keys)
    studies: list[Study] = []  # sub-grids; the grid is then the union of its studies

    _unique_axes = field_validator("methods", "shots", "seeds")(classmethod(lambda cls, v: _unique(v)))

    @model_validator(mode="after")
    def _axes_present(self) -> "Grid":
        if self.studies:
            if self.models or self.methods or self.datasets:
                raise ValueError("give models, methods and datasets either at the top level or in `studies`, not both")
            for i, st in enumerate(self.studies):
                for axis in ("shots", "seeds"):
                    if getattr(st, axis) is None and not getattr(self, axis):
                        raise ValueError(f"studies.{i} ({st.name}): no {axis}, and the grid gives none to inherit")
            names = [st.name for st in self.studies]
            if len(set(names)) != len(names):
                raise ValueError(f"studies: duplicate study name in {names}")
            return self
        missing = [a for a in ("models", "methods", "datasets", "shots", "seeds") if not getattr(self, a)]
        if missing:
            raise ValueError(f"missing or empty: {', '.join(missing)} (each needs at least one entry, "
                             "or give them per study under `studies`)")
        return self

    def parts(self) -> list["Grid"]:
        """The grid as plain grids: itself, or one per study with the shared settings filled in."""
        if not self.studies:
            return [self]
        out = []
        for st in self.studies:
            out.append(self.model_copy(update={
                "models": st.models, "methods": st.methods, "datasets": st.datasets,
                "shots": st.shots or self.shots, "seeds": st.seeds or self.seeds,
                "train": Train.model_validate({**self.train.model_dump(), **st.train}),
                "overrides": self.overrides + st.overrides, "include": st.include,
                "exclude": self.exclude + st.exclude, "resources": st.resources or self.resources, "studies": []}))
        return out

    def dataset_list(self) -> list[Dataset]:
        return [Dataset(name=d) if isinstance(d, str) else d for d in self.datasets]

    def resources_for(self, model: str, defaults: Optional[dict] = None) -> Optional[Resources]:
        """The model's own entry, else the grid-level value, else the model's registered default (`defaults`,
        resolved by the launcher, which imports the registries); None if still unknown (`vpgrid plan`)."""
        for part in self.parts():
            for m in part.models:
                if m.name == model and m.resources is not None:
                    return m.resources
        if self.resources is not None:
            return self.resources
        if defaults is not None and model in defaults:
            return Resources(**defaults[model])
        return None


def _format(e: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid grid ({e.error_count()} problem{'s' * (e.error_count() > 1)})"]
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("function-", "union[", "literal[")))
        lines.append(f"  {loc or '(top level)'}: {err['msg']}" + (f" (got {err['input']!r})"
                                                                  if not isinstance(err["input"], dict) else ""))
    return "\n".join(lines)


def parse_grid(text: str, source: str = "<grid>") -> Grid:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise GridError(f"{source}: not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(data, dict):
        raise GridError(f"{source}: a grid is a YAML mapping with keys name, models, methods, datasets, shots, seeds")
    try:
        return Grid.model_validate(data)
    except ValidationError as e:
        raise GridError(_format(e, source)) from None


def load_grid(path: str | Path) -> tuple[Grid, str]:
    path = Path(path)
    if not path.is_file():
        raise GridError(f"grid file not found: {path}")
    text = path.read_text()
    return parse_grid(text, str(path)), text


def _train_for(grid: Grid, overrides: tuple[int, ...], shots: Optional[int], source: str) -> TrainConfig:
    """The training config after the overrides at these indices of `grid.overrides`, for these shots."""
    fields = grid.train.model_dump()
    for i in overrides:
        fields.update(grid.overrides[i].set)
    try:
        t = Train.model_validate(fields)
    except ValidationError as e:
        raise GridError(_format(e, f"{source} (after overrides)")) from None
    bs = t.batch_size
    if isinstance(bs, dict):
        key = "full" if shots is None else shots
        if key not in bs:
            raise GridError(f"{source}: train.batch_size has no entry for shots {key!r} "
                            f"(entries: {sorted(map(str, bs))})")
        bs = bs[key]
    return TrainConfig(epochs=t.epochs, lr=t.lr, batch_size=bs, milestones=tuple(t.milestones), gamma=t.gamma,
                       eval_batch_size=t.eval_batch_size, input_size=t.input_size, eval_every=t.eval_every or None,
                       prompt_batch=t.prompt_batch)


def expand(grid: Grid, source: str = "<grid>") -> list[RunSpec]:
    """Every run of the grid (of each study, in order), after include/exclude. Duplicates are an error."""
    runs: list[RunSpec] = []
    for i, part in enumerate(grid.parts()):
        found = _expand_one(part, source)
        if not found:  # a launch would create a store and report "all 0 runs are in the store"
            where = f"studies.{i} ({grid.studies[i].name}): " if grid.studies else ""
            raise GridError(f"{source}: {where}no runs: the include/exclude rules exclude every run")
        runs += found
    seen: dict[str, RunSpec] = {}
    for r in runs:
        if r.run_key in seen:
            raise GridError(f"{source}: the same run appears twice (model {r.model}, compression {r.compression} "
                            f"{r.compression_args}, method {r.method}, dataset {r.dataset}, shots {r.shots}, "
                            f"seed {r.seed}); remove the repeated model, compression, dataset or study entry")
        seen[r.run_key] = r
    return runs


def _expand_one(grid: Grid, source: str) -> list[RunSpec]:
    runs: list[RunSpec] = []
    # A run's training config depends only on which overrides match it and on its shots: validate each such
    # combination once, not once per run (thousands of runs share a handful of them).
    trains: dict[tuple, TrainConfig] = {}
    matching = bool(grid.include or grid.exclude or grid.overrides)  # else no run needs a spec to match on
    for i, m in enumerate(grid.models):
        try:
            variants = m.variants()
        except ValueError as e:
            raise GridError(f"{source}: models.{i}: {e}") from None
        for (comp, comp_args), d, method, shots, seed in itertools.product(
                variants, grid.dataset_list(), grid.methods, grid.shots, grid.seeds):
            fields = dict(model=m.name, weights=m.weights, model_args=dict(m.args), compression=comp,
                          compression_args=comp_args, method=method, dataset=d.name, dataset_args=dict(d.args),
                          shots=None if shots == "full" else shots, seed=seed, grid=grid.name)
            overrides: tuple[int, ...] = ()
            if matching:
                spec = RunSpec(**fields)  # matched on its axes; its training config comes after
                if grid.include and not any(r.matches(spec) for r in grid.include):
                    continue
                if any(r.matches(spec) for r in grid.exclude):
                    continue
                overrides = tuple(i for i, o in enumerate(grid.overrides) if o.match.matches(spec))
            key = (overrides, fields["shots"])
            if key not in trains:
                trains[key] = _train_for(grid, *key, source)
            runs.append(RunSpec(**fields, train=trains[key]))
    return runs
