"""What a grid will cost before it runs: image-passes through the frozen model, and hours on a measured card.

Per run: epochs x training images forward + backward, label-mapping remaps (no-grad forwards of the training
subset), the final test evaluation and any `train.eval_every` evaluations. The same grid under the reference
scripts' protocol: a test evaluation every epoch (the last is the final one) and one run per process, so every
run pays the start-up (interpreter, imports, model build) that vpgrid pays once per trial at most.
Torch-free: sizes and passes come from the cards (workers/core/schemas/), throughputs from a JSON table
(`vpgrid bench train --json`).
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from orchestrator.grid import Grid, expand
from orchestrator.plan import pack
from workers.core.schemas import METHODS, MODELS
from workers.core.schemas.datasets import dataset_sizes
from workers.core.errors import UsageError
from workers.core.spec import RunSpec

DEFAULT_TABLE = Path(__file__).parent / "throughput" / "cpu-amd-epyc.json"
TABLE_FIELDS = {"machine": str, "device": str, "card": str, "dtype": str, "measured_at": str, "models": dict}
MODEL_FIELDS = {"input_size": int, "batch": int, "train_images_per_s": float, "forward_images_per_s": float,
                "startup_s": float}
CHOICES = {"device": ("cpu", "cuda"), "dtype": ("float32", "bfloat16")}


class TableError(UsageError, ValueError):
    """A throughput table that cannot be used; the message names the file and the field."""


@dataclass
class Throughput:
    input_size: int
    batch: int
    train_images_per_s: float
    forward_images_per_s: float
    startup_s: float


@dataclass
class Table:
    path: str
    machine: str
    device: str
    card: str
    dtype: str
    measured_at: str
    models: dict[str, Throughput]

    def get(self, model: str) -> Throughput:
        if model not in self.models:
            raise TableError(f"{self.path}: models: no entry for model {model!r} (the table has: "
                             f"{', '.join(sorted(self.models)) or 'none'}); measure it on that card with "
                             f"`vpgrid bench train --models {model} --json > TABLE`")
        return self.models[model]


def _check(path: str, where: str, value, kind: type):
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    elif kind is int:
        ok = ok and value > 0
    if not ok:
        want = {str: "a string", dict: "a mapping", int: "an integer > 0", float: "a number > 0"}[kind]
        raise TableError(f"{path}: {where}: must be {want} (got {value!r})")
    return float(value) if kind is float else value


def parse_table(data, path: str) -> Table:
    """A validated throughput table; TableError naming the file and the field otherwise."""
    if not isinstance(data, dict):
        raise TableError(f"{path}: a throughput table is a JSON object with keys {', '.join(TABLE_FIELDS)}")
    top = {}
    for k, kind in TABLE_FIELDS.items():
        if k not in data:
            raise TableError(f"{path}: {k}: missing (a throughput table has {', '.join(TABLE_FIELDS)})")
        top[k] = _check(path, k, data[k], kind)
        if k in CHOICES and top[k] not in CHOICES[k]:
            raise TableError(f"{path}: {k}: {top[k]!r} is not one of {', '.join(CHOICES[k])}")
    models = {}
    for name, entry in top.pop("models").items():
        if not isinstance(entry, dict):
            raise TableError(f"{path}: models.{name}: must be a mapping with {', '.join(MODEL_FIELDS)}")
        unknown = sorted(set(entry) - set(MODEL_FIELDS))
        if unknown:
            raise TableError(f"{path}: models.{name}.{unknown[0]}: unknown field (valid: {', '.join(MODEL_FIELDS)})")
        for k in MODEL_FIELDS:
            if k not in entry:
                raise TableError(f"{path}: models.{name}.{k}: missing")
        models[name] = Throughput(**{k: _check(path, f"models.{name}.{k}", entry[k], kind)
                                     for k, kind in MODEL_FIELDS.items()})
    return Table(path, models=models, **top)


def load_table(path: str | Path) -> Table:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise TableError(f"{path}: cannot read the throughput table ({e.strerror or e})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise TableError(f"{path}: not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    return parse_table(data, str(path))


@dataclass(frozen=True)
class RunPasses:
    train: int  # images forward + backward
    forward: int  # images forward without gradients (remaps, evaluations)
    exact: bool  # False: capped shots on a dataset whose per-class counts are not recorded (an upper bound)
    fails: bool  # a class has fewer images than shots and cap_shots is off: the run fails at once


def run_passes(spec: RunSpec, reference: bool = False) -> Optional[RunPasses]:
    """Image-passes of one run under vpgrid's loop, or (reference=True) under the reference scripts' protocol.
    None when the dataset's sizes are unknown (none on its card) or the method has no card."""
    sizes = dataset_sizes(spec.dataset, spec.dataset_args)
    how = METHODS[spec.method].passes if spec.method in METHODS else None
    if sizes is None or how is None:
        return None
    cap = bool(spec.dataset_args.get("cap_shots"))
    if sizes.fails(spec.shots, cap):
        return RunPasses(0, 0, True, True)
    n = sizes.train_images(spec.shots, cap)
    epochs, test = spec.train.epochs, sizes.test
    remaps = {"none": 0, "once": 1, "every_epoch": epochs}[how.remap]
    if how.train == "features":  # LP: one forward of the training set for features, one of the test split
        return RunPasses(0, n.images + test, n.exact, False)
    if reference:
        evals = epochs * test  # a test evaluation after every epoch; the last one is the final result
    else:
        every = spec.train.eval_every if how.eval_every else None
        evals = test + (epochs // every * test if every else 0)
    return RunPasses(epochs * n.images, remaps * n.images + evals, n.exact, False)


def canvas(spec: RunSpec) -> int:
    """The side of the image the model sees: the model's `input_size` arg, else its schema default."""
    size = spec.model_args.get("input_size")
    return int(size) if size is not None else int(MODELS[spec.model].args["input_size"].default)


@dataclass
class Part:
    """One study's (or the whole grid's) counts and hours."""

    name: str
    runs: int = 0
    trials: int = 0
    train: int = 0
    forward: int = 0
    ref_forward: int = 0
    hours: Optional[float] = 0.0
    ref_hours: Optional[float] = 0.0
    exact: bool = True
    failing: int = 0
    unknown: dict[str, int] = field(default_factory=dict)  # dataset or method -> runs without sizes
    no_throughput: set[str] = field(default_factory=set)
    scaled: set[str] = field(default_factory=set)  # models timed at another canvas, scaled by pixels

    def add(self, other: "Part") -> None:
        for k in ("runs", "trials", "train", "forward", "ref_forward", "failing"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.hours = None if self.hours is None or other.hours is None else self.hours + other.hours
        self.ref_hours = None if self.ref_hours is None or other.ref_hours is None else self.ref_hours + other.ref_hours
        self.exact &= other.exact
        for k, v in other.unknown.items():
            self.unknown[k] = self.unknown.get(k, 0) + v
        self.no_throughput |= other.no_throughput
        self.scaled |= other.scaled

    def to_dict(self) -> dict:
        ratio = self.ref_hours / self.hours if self.hours and self.ref_hours is not None else None
        return {"study": self.name, "runs": self.runs, "trials": self.trials, "train_passes": self.train,
                "forward_passes": self.forward, "reference_forward_passes": self.ref_forward,
                "hours": self.hours, "reference_hours": self.ref_hours, "reference_over_vpgrid": ratio,
                "passes_exact": self.exact, "failing_runs": self.failing,
                "runs_with_unknown_sizes": dict(self.unknown), "models_without_throughput": sorted(self.no_throughput),
                "models_scaled_to_canvas": sorted(self.scaled)}


def _seconds(tp: Throughput, size: int, train: int, forward: int) -> float:
    scale = (size / tp.input_size) ** 2  # images of another canvas: time in proportion to the pixels
    return scale * (train / tp.train_images_per_s + forward / tp.forward_images_per_s)


def estimate_part(name: str, grid: Grid, runs: list[RunSpec], table: Optional[Table], strict: bool) -> Part:
    """Counts and hours of `runs` (one study). strict: a model missing from the table is an error (TableError),
    else its hours are unknown."""
    part = Part(name, runs=len(runs))
    trials = pack(grid, runs)
    part.trials = len(trials)
    per_model: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])  # train, fwd, ref fwd, runs, trials
    for t in trials:
        per_model[(t.runs[0].model, canvas(t.runs[0]))][4] += 1
    for r in runs:
        ours, ref = run_passes(r), run_passes(r, reference=True)
        if ours is None:
            key = r.dataset if dataset_sizes(r.dataset, r.dataset_args) is None else f"method {r.method}"
            part.unknown[key] = part.unknown.get(key, 0) + 1
            continue
        part.failing += ours.fails
        part.exact &= ours.exact
        acc = per_model[(r.model, canvas(r))]
        acc[0] += ours.train
        acc[1] += ours.forward
        acc[2] += ref.forward
        acc[3] += 1
    for (model, size), (train, fwd, ref_fwd, n_runs, n_trials) in per_model.items():
        part.train += train
        part.forward += fwd
        part.ref_forward += ref_fwd
        if table is None or (model not in table.models and not strict):
            part.no_throughput.add(model)
            part.hours = part.ref_hours = None
            continue
        tp = table.get(model)
        if size != tp.input_size:
            part.scaled.add(f"{model}@{size}")
        if part.hours is not None:
            # vpgrid: the model is built once per trial at most (reused actors keep it across trials)
            part.hours += (_seconds(tp, size, train, fwd) + n_trials * tp.startup_s) / 3600
            # reference: one process per run, each starting up
            part.ref_hours += (_seconds(tp, size, train, ref_fwd) + n_runs * tp.startup_s) / 3600
    if part.unknown:
        part.hours = part.ref_hours = None
    return part


def estimate(grid: Grid, source: str, table: Optional[Table], strict: bool) -> tuple[list[Part], Part]:
    """Per study (the grid itself when it has none) and the total."""
    names = [s.name for s in grid.studies] or [grid.name]
    parts = [estimate_part(n, g, expand(g, source), table, strict) for n, g in zip(names, grid.parts())]
    total = Part("total", hours=0.0, ref_hours=0.0)
    for p in parts:
        total.add(p)
    return parts, total


def _si(n: int) -> str:
    for div, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return str(n)


def _hours(h: Optional[float]) -> str:
    return "unknown" if h is None else (f"{h:,.1f} h" if h >= 1 else f"{h * 60:.1f} min")


def render(parts: list[Part], total: Part, table: Optional[Table]) -> list[str]:
    """The estimate as lines of text for `vpgrid plan --estimate`."""
    where = (f"{table.card} ({table.device}, {table.dtype}; {table.path})" if table else "no throughput table")
    out = [f"estimate: image-passes through the frozen model, hours on {where}",
           f"  {'study':<12}{'runs':>7}{'fwd+bwd':>11}{'forward':>11}{'hours':>15}"
           f"{'ref. forward':>14}{'ref. hours':>15}{'ref/vpgrid':>11}"]
    for p in parts + ([total] if len(parts) > 1 else []):
        d = p.to_dict()
        le = "" if p.exact else "<="
        ratio = f"{d['reference_over_vpgrid']:.2f}x" if d["reference_over_vpgrid"] else "-"
        out.append(f"  {p.name:<12}{p.runs:>7}{le + _si(p.train):>11}{le + _si(p.forward):>11}{_hours(p.hours):>15}"
                   f"{le + _si(p.ref_forward):>14}{_hours(p.ref_hours):>15}{ratio:>11}")
    out.append("  vpgrid: test split once at the end (+ every train.eval_every epochs); model built once per trial "
               "at most")
    out.append("  reference protocol: test split after every epoch; one process per run, each paying the start-up")
    if not total.exact:
        out.append("  <=: capped shots on a dataset without per-class counts (its card's sizes, "
                   "workers/core/schemas/datasets.py): an upper bound")
    if total.failing:
        out.append(f"  {total.failing} runs will fail at once (a class has fewer images than shots; cap_shots is off)")
    for k, v in total.unknown.items():
        out.append(f"  {v} runs have unknown sizes ({k}: no sizes or passes on its card, workers/core/schemas/): "
                   "not counted, hours unknown")
    if total.no_throughput:
        out.append(f"  no throughput for {', '.join(sorted(total.no_throughput))}: hours unknown; measure with "
                   f"`vpgrid bench train --models {','.join(sorted(total.no_throughput))} --json > TABLE` and pass "
                   "--throughput TABLE")
    if total.scaled:
        out.append(f"  {', '.join(sorted(total.scaled))}: timed at another canvas, scaled by the pixel count")
    if table and table.device == "cpu":
        out.append("  a CPU table: hours on this CPU, not on a GPU (no data-centre GPU table is measured yet)")
    return out


# -- the schedule: the same per-run seconds feed `plan --estimate --gpus`, a rehearsal's sleeps and its makespan

def run_seconds(spec: RunSpec, table: Table) -> float:
    """Estimated seconds of one run on the table's card (startup excluded: a trial pays it once).
    TableError when the table lacks the model or the run's sizes are unknown."""
    passes = run_passes(spec)
    if passes is None:
        raise TableError(f"run {spec.run_key} ({spec.dataset}, {spec.method}): no sizes or passes recorded "
                         "(on the cards, workers/core/schemas/), so no time can be estimated")
    return _seconds(table.get(spec.model), canvas(spec), passes.train, passes.forward)


def trial_seconds(trial, table: Table) -> tuple[float, list[float]]:
    """(the trial's start-up, each run's seconds): what a rehearsal sleeps and the schedule adds up."""
    return table.get(trial.runs[0].model).startup_s, [run_seconds(r, table) for r in trial.runs]


@dataclass
class Makespan:
    gpus: int
    wall_s: float  # predicted wall time: the last trial's end
    busy_s: float  # GPU-seconds the trials hold (share x seconds)
    utilisation: float  # busy_s / (gpus x wall_s)
    longest_s: float  # the longest trial: no schedule ends sooner (the straggler bound)
    longest_trial: str
    trials: int
    shares: dict  # GPU share per trial -> trials asking it

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def schedule(trials: list, seconds: list[float], gpus: int) -> Makespan:
    """Trials on `gpus` GPUs as the launch hands them to Ray Tune: whenever a trial ends (and at the start), the
    waiting trials are tried in launch order (plan.pack's, largest first) and each one that fits starts, on the
    lowest-numbered GPU with room for its share; a trial too large for the room left waits while smaller later
    ones start (Tune asks Ray for many pending trials at once). CPUs are assumed not to bind."""
    import heapq

    bad = next((t for t in trials if not t.gpu or t.gpu > 1), None)
    if bad is not None:
        raise TableError(f"--gpus: trial {bad.trial_id} asks for gpu {bad.gpu!r}; a schedule on GPUs needs "
                         "every trial's share in (0, 1] (set resources.gpu in the grid)")
    shares = [t.gpu for t in trials]
    smallest = min(shares, default=1.0)
    free = [1.0] * gpus
    ends: list[tuple[float, int, float]] = []  # (end time, gpu, share) of running trials
    waiting = list(range(len(trials)))
    now = busy = 0.0
    while waiting:
        i = 0
        while i < len(waiting) and max(free) >= smallest - 1e-9:
            share = shares[waiting[i]]
            gpu = next((g for g in range(gpus) if free[g] >= share - 1e-9), None)
            if gpu is None:
                i += 1
                continue
            k = waiting.pop(i)
            free[gpu] -= share
            heapq.heappush(ends, (now + seconds[k], gpu, share))
            busy += share * seconds[k]
        if waiting:
            now = ends[0][0]  # the next trial to end frees its share (and any ending at the same moment)
            while ends and ends[0][0] <= now:
                _, g, s = heapq.heappop(ends)
                free[g] += s
    wall = max([now] + [e for e, _, _ in ends])
    longest = max(range(len(trials)), key=lambda i: seconds[i]) if trials else None
    return Makespan(gpus, wall, busy, busy / (gpus * wall) if wall else 0.0,
                    seconds[longest] if trials else 0.0, trials[longest].trial_id if trials else "", len(trials),
                    {f"{s:g}": shares.count(s) for s in sorted(set(shares))})


def makespan(grid: Grid, source: str, table: Table, gpus: int, defaults: dict) -> Makespan:
    """The grid's trials, packed as the launch packs them, scheduled on `gpus` GPUs."""
    trials = pack(grid, expand(grid, source), defaults)
    return schedule(trials, [sum((s := trial_seconds(t, table))[1]) + s[0] for t in trials], gpus)


def render_makespan(m: Makespan) -> list[str]:
    def hm(s: float) -> str:
        return f"{s / 3600:,.1f} h" if s >= 3600 else f"{s / 60:.1f} min"

    return [f"on {m.gpus} GPUs ({', '.join(f'{n} trials at {s} GPU' for s, n in m.shares.items())}, as the launch packs and orders them): "
            f"predicted wall {hm(m.wall_s)}, slot utilisation {100 * m.utilisation:.0f}%, "
            f"longest trial {hm(m.longest_s)} ({m.longest_trial}: no schedule ends sooner)"]
