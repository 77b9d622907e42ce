"""run(spec) -> RunResult, and run_pack: many runs sharing one model variant and dataset, those that can trained
together in one pass of the frozen model (`batches`, `run_group`).

Plain functions, no Ray: the Ray adapter and the tests call the same code.
"""
from __future__ import annotations

import functools
import json
import os
import socket
import time
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Iterable, Iterator

import torch

from workers.checkpoints import resolve
from workers.compression import data_dependent
from workers.data import Crop, Splits, cached_dataset
from workers.data.fewshot import few_shot_indices
from workers.frozen import prepare_frozen
from workers.models import ModelCard
from workers.methods import BATCHED, METHODS
from workers.core.spec import RunResult, RunSpec
from workers.train import Task, TrainOutput
from workers.upstream import upstream_accuracy

_PACKAGES = ("vpgrid", "torch", "torchvision", "timm", "open_clip_torch", "ray", "numpy")


@functools.lru_cache(maxsize=1)  # ~20 ms a call, once per run before; packages do not change under a worker
def versions() -> str:
    out = {}
    for p in _PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    return json.dumps(out, sort_keys=True)


@dataclass
class Variant:
    model: torch.nn.Module
    meta: ModelCard
    weights_source: str
    sparsity: float
    layer_sparsity: str
    params: int
    weight_bits: int | None
    act_bits: int | None
    setup_seconds: float
    upstream_accuracy: float | None = None
    frozen: torch.nn.Module | None = None  # `model` with BatchNorm folded in, for the methods that do not train it

    def model_for(self, method: str) -> torch.nn.Module:
        """Full fine-tuning trains the model as compressed; every other method reads the folded copy."""
        return self.model if METHODS.card(method).kind == "ff" or self.frozen is None else self.frozen


@dataclass
class Context:
    """What runs in one pack share: the cache folder, the device, and loaded variants and datasets."""

    cache_dir: Path
    device: torch.device
    trial: str = ""
    data_root: str | None = None  # where datasets live on this cluster; not part of any run key
    variants: dict = field(default_factory=dict)
    datasets: dict = field(default_factory=dict)

    def dataset(self, spec: RunSpec, size: int, crop: Crop | None = None) -> Splits:
        key = (spec.dataset, size, crop, json.dumps(_loader_args(spec), sort_keys=True), self.data_root)
        if key not in self.datasets:
            self.datasets.clear()  # packs are grouped by dataset: keep one in memory (memory-mapped pages)
            self.datasets[key] = cached_dataset(spec.dataset, size, self.data_root, _loader_args(spec), self.cache_dir,
                                                crop)
        return self.datasets[key]

    def _variant_key(self, spec: RunSpec) -> tuple:
        """Everything the variant is built from. A compression that calibrates on the run's data (fakequant's
        act_bits) also depends on the dataset, its args and the input size (the calibration batch's canvas): a
        reused actor's next pack, on another dataset, must not get this one's ranges."""
        if not data_dependent(spec.compression, spec.compression_args):
            return (spec.variant_key,)
        native = spec.method in METHODS and METHODS.card(spec.method).native_input  # calibrated at the model's size
        return (spec.variant_key, spec.dataset, json.dumps(_loader_args(spec), sort_keys=True), spec.train.input_size,
                native, self.data_root)

    def variant(self, spec: RunSpec) -> Variant:
        key = self._variant_key(spec)
        if key not in self.variants:
            self.variants.clear()
            t0 = time.perf_counter()
            args = dict(spec.compression_args)
            checkpoint = args.pop("checkpoint", None)
            # A compression from a published checkpoint (lth, acdc, vvtq, ...) replaces the model's weights.
            weights = resolve(checkpoint if checkpoint is not None else spec.weights, args, self.cache_dir)
            if checkpoint is not None:
                args["checkpoint"] = checkpoint  # the file-backed entries check it is there
            # the calibration batch: act_bits ranges; channel pruning traces with it
            f = prepare_frozen(spec.model, weights, spec.model_args, self.cache_dir, self.device, spec.compression,
                               args, calib=lambda meta: self._calibration_batch(spec, meta))
            upstream = upstream_accuracy(f.frozen, f.meta, hash_json([str(k) for k in key]), self.data_root,
                                         self.cache_dir, self.device, spec.model)
            r = f.report
            self.variants[key] = Variant(f.model, f.meta, f.weights_source, r.sparsity, json.dumps(r.layer_sparsity),
                                         sum(p.numel() for p in f.model.parameters()), r.weight_bits, r.act_bits,
                                         time.perf_counter() - t0, upstream, f.frozen)
        return self.variants[key]

    def _calibration_batch(self, spec: RunSpec, meta: ModelCard) -> torch.Tensor:
        """Activation ranges come from target training images on the zero prompt, as the run will see them."""
        from workers.prompts import PadPrompter

        data = self.dataset(spec, *data_input(spec, meta))
        x = data.train_x[torch.randperm(len(data.train_x), generator=torch.Generator().manual_seed(0))[:64]]
        if x.ndim != 4:  # token ids: the canvases reprogramming starts from
            from workers.methods.crossmodal import calibration_inputs

            return calibration_inputs(x, meta)
        with torch.no_grad():
            return PadPrompter(meta.input_size, x.shape[-1], meta.mean, meta.std)(x)


def hash_json(obj) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _loader_args(spec: RunSpec) -> dict:
    return {k: v for k, v in spec.dataset_args.items() if k != "cap_shots"}  # a sampling option, not the loader's


def _default_size(spec: RunSpec) -> int:
    from workers.data import DATASETS

    return DATASETS.card(spec.dataset).input_size


def data_input(spec: RunSpec, meta: ModelCard) -> tuple[int, Crop | None]:
    """(side, crop) the run's images are decoded at: the model's resolution and own preprocessing for methods that
    feed it whole images as its reference does (CLIP's), else the VP recipe's squash to train.input_size."""
    if METHODS.card(spec.method).native_input:
        return meta.input_size, Crop(meta.interpolation, meta.crop_pct)
    return spec.train.input_size or _default_size(spec), None


def _task(spec: RunSpec, data: Splits) -> Task:
    # cap_shots: take every image of a class that has fewer than `shots` (n_train records what was used)
    try:
        idx = few_shot_indices(data.train_y, spec.shots, spec.seed, cap=bool(spec.dataset_args.get("cap_shots")))
    except ValueError as e:
        raise ValueError(f"dataset {spec.dataset!r}: {e}; in the grid, `{{name: {spec.dataset}, args: "
                         f"{{cap_shots: true}}}}` takes all images of such classes instead") from None
    return Task(data.train_x[idx], data.train_y[idx], data.test_x, data.test_y, list(data.classes),
                split_x=data.train_x, rows=idx)


def _ok_row(spec: RunSpec, out: TrainOutput, task: Task, variant: Variant, common: dict) -> RunResult:
    m, r = out.metrics, out.metrics["reliability"]
    row = RunResult.for_spec(
        spec, "ok", accuracy=m["accuracy"], ece=m["ece"], conf_correct=m["conf_correct"],
        kl_incorrect=m["kl_incorrect"], nll=m["nll"], per_class_accuracy=m["per_class_accuracy"],
        ece_paper=m["ece_paper"], kl_incorrect_paper=m["kl_incorrect_paper"], reliability_count=r["count"],
        reliability_confidence=r["confidence"], reliability_accuracy=r["accuracy"],
        per_class_confidence=m["per_class_confidence"], epoch_accuracy=out.epoch_accuracy,
        label_mapping=out.mapping, final_train_loss=out.final_train_loss, n_train=len(task.train_y),
        n_test=len(task.test_y), train_seconds=out.train_seconds, eval_seconds=out.eval_seconds,
        finished_at=time.time(), **_variant_fields(variant), **common)
    row.prompt = out.prompt  # not a column: whoever publishes the row saves it and sets prompt_path (prompt_of)
    return row


def _failed_row(spec: RunSpec, e: BaseException, variant: Variant | None, common: dict) -> RunResult:
    if isinstance(e, torch.cuda.OutOfMemoryError):
        torch.cuda.empty_cache()
    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__, limit=-3))
    return RunResult.for_spec(spec, "failed", error=f"{type(e).__name__}: {e}\n{tb}", finished_at=time.time(),
                              **_variant_fields(variant), **common)


def _train(specs: list[RunSpec], tasks: list[Task], variant: Variant, device) -> list:
    """Each run's TrainOutput or exception. Several runs go through their method's batched form; if that fails
    as a whole (not one run alone: e.g. out of memory), each run is trained alone, so a failure stays its own."""
    if len(specs) > 1:
        try:
            return BATCHED.get(specs[0].method)(variant.model_for(specs[0].method), variant.meta, tasks, specs, device)
        except Exception as e:
            if isinstance(e, torch.cuda.OutOfMemoryError):
                torch.cuda.empty_cache()
    outs = []
    for spec, task in zip(specs, tasks):
        try:
            outs.append(METHODS.get(spec.method)(variant.model_for(spec.method), variant.meta, task, spec, device))
        except Exception as e:  # one failing run must not take down the others
            outs.append(e)
    return outs


def run_group(specs: list[RunSpec], ctx: Context) -> list[RunResult]:
    """Runs of one batch (`batches`), trained together; one run is the group of one. Never raises: a failure
    becomes that run's failed row carrying the error; a failure of the shared setup fails every run."""
    started = time.time()
    common = [dict(started_at=started, trial=ctx.trial, host=socket.gethostname(), pid=os.getpid(),
                   device=str(ctx.device), versions=versions(), prompt_kind=_prompt_kind(s.method)) for s in specs]
    rows: list[RunResult | None] = [None] * len(specs)
    variant = None
    try:
        variant = ctx.variant(specs[0])
        data = ctx.dataset(specs[0], *data_input(specs[0], variant.meta))
    except Exception as e:
        return [_failed_row(s, e, variant, c) for s, c in zip(specs, common)]
    tasks: dict[int, Task] = {}
    for i, spec in enumerate(specs):
        try:
            tasks[i] = _task(spec, data)
        except Exception as e:
            rows[i] = _failed_row(spec, e, variant, common[i])
    todo = list(tasks)
    # cap_shots can give seeds training sets of different sizes: only runs of one size step together
    by_size: dict[int, list[int]] = {}
    for i in todo:
        by_size.setdefault(len(tasks[i].train_y), []).append(i)
    for part in by_size.values():
        outs = _train([specs[i] for i in part], [tasks[i] for i in part], variant, ctx.device)
        for i, out in zip(part, outs):
            try:
                if isinstance(out, BaseException):
                    raise out
                rows[i] = _ok_row(specs[i], out, tasks[i], variant, common[i])
            except Exception as e:
                rows[i] = _failed_row(specs[i], e, variant, common[i])
    return rows


def run(spec: RunSpec, ctx: Context) -> RunResult:
    """One run alone; never raises: a failure becomes a failed row carrying the error."""
    return run_group([spec], ctx)[0]


def _prompt_kind(method: str) -> str | None:
    return METHODS.card(method).prompt if method in METHODS else None  # an unknown method fails in the run


def prompt_of(result: RunResult) -> dict[str, torch.Tensor] | None:
    """The learned prompt tensors `run` returned with a VP run's row; None for other methods and failed runs."""
    return getattr(result, "prompt", None)


def _variant_fields(v: Variant | None) -> dict:
    if v is None:
        return {}
    return dict(sparsity=v.sparsity, layer_sparsity=v.layer_sparsity, params=v.params, weight_bits=v.weight_bits,
                act_bits=v.act_bits, upstream_accuracy=v.upstream_accuracy,
                weights_source=v.weights_source, setup_seconds=v.setup_seconds)


def run_alone(specs: Iterable[RunSpec], cache_dir: Path, threads: int = 1) -> list[RunResult]:
    """Each run by itself (no prompt batching) on the CPU at `threads` torch threads: the order of float sums is
    then the same on every machine of a kind, as the demo's golden values need."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ctx = Context(Path(cache_dir), torch.device("cpu"))
        return [run(spec, ctx) for spec in specs]
    finally:
        torch.set_num_threads(before)


def torch_threads(cpu: float) -> int:
    """Torch threads of a trial: $VPGRID_TORCH_THREADS if set (the order of float sums, so the last digits of
    every number, depends on it: the demo is checked at 1 and 2), else the trial's CPUs, at least 1."""
    text = os.environ.get("VPGRID_TORCH_THREADS", "").strip()
    if not text:
        return max(1, int(cpu))
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"VPGRID_TORCH_THREADS={text!r}: must be a positive integer (torch threads per trial)")
    return int(text)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def batch_key(spec: RunSpec) -> tuple | None:
    """Runs with one key can train together: one batched method, variant, dataset, shots and training schedule
    (spec.train's key fields: epochs, lr, batch sizes, milestones, gamma, input size, eval_every). None: alone."""
    if spec.method not in BATCHED:
        return None
    return (BATCHED.get(spec.method), *spec.cell_key)


def auto_prompt_batch(spec: RunSpec, ctx: Context, gpu_share: float | None) -> int | None:
    """How many of these runs `train.prompt_batch: auto` trains at once (`train.prompt_batch_cap`)."""
    from workers.train import prompt_batch_cap

    try:
        v = ctx.variant(spec)
    except Exception:
        return None  # the runs meet the error themselves, each with its row
    return prompt_batch_cap(v.model, v.meta.input_size, spec.train.batch_size, ctx.device, gpu_share)


def batches(specs: list[RunSpec], cap=lambda spec: None) -> list[list[RunSpec]]:
    """The pack's runs as groups to train together, in order of first appearance: runs of one batch key, in
    even chunks of at most `train.prompt_batch` (auto: all of them, at most `cap(spec)`, a memory estimate);
    others alone."""
    groups: dict = {}
    for i, spec in enumerate(specs):
        groups.setdefault(batch_key(spec) or ("alone", i), []).append(spec)
    out = []
    for key, members in groups.items():
        k = members[0].train.prompt_batch if key[0] != "alone" else 1
        if k == "auto":
            k = min(len(members), cap(members[0]) or len(members)) if len(members) > 1 else 1
        n = -(-len(members) // max(1, k))
        out += [members[len(members) * j // n:len(members) * (j + 1) // n] for j in range(n)]
    return out


_LAST: Context | None = None  # Ray reuses actors: the next pack often wants the same variant and dataset


def run_pack(specs: Iterable[RunSpec], cache_dir: Path, trial: str = "", device: torch.device | None = None,
             data_root: str | None = None, gpu_share: float | None = None) -> Iterator[RunResult]:
    """Every run of the pack, batched where it can be (`batches`); results in the order their groups finish.
    `gpu_share`: the trial's fraction of the GPU, for the memory estimate of `train.prompt_batch: auto`."""
    global _LAST
    ctx = Context(Path(cache_dir), device or default_device(), trial, data_root)
    if _LAST is not None and (_LAST.cache_dir, _LAST.device, _LAST.data_root) == (ctx.cache_dir, ctx.device, data_root):
        ctx.variants, ctx.datasets = _LAST.variants, _LAST.datasets
    _LAST = ctx
    specs = list(specs)
    for group in batches(specs, lambda spec: auto_prompt_batch(spec, ctx, gpu_share)):
        yield from run_group(group, ctx)
