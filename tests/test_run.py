"""The worker as a plain function: no Ray."""
import dataclasses
import re
import math

import pytest
import torch

from orchestrator.grid import expand, parse_grid
from tests.conftest import TINY
from workers.models import MODELS, Built, ModelCard
from workers.run import Context, run, run_pack

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def runs():
    return expand(parse_grid(TINY))


def test_run_pack_produces_complete_rows(runs, tmp_path):
    rows = list(run_pack(runs[:6], tmp_path, trial="t"))
    assert sorted(r.run_key for r in rows) == sorted(r.run_key for r in runs[:6])  # in the order batches finish
    for r in rows:
        assert r.status == "ok", r.error
        assert 0 <= r.accuracy <= 1 and 0 <= r.ece <= 1 and r.nll > 0
        assert sorted(r.label_mapping) == sorted(set(r.label_mapping)) and len(r.label_mapping) == 10
        assert len(r.per_class_accuracy) == 10
        assert r.n_train == 10 * r.shots and r.n_test == 540
        assert r.weights_source.startswith("random init") and r.trial == "t" and r.versions
        assert r.sparsity == pytest.approx(0.0, abs=1e-6) and r.weight_bits is None


def test_rlm_mapping_is_the_seeded_random_one(runs, tmp_path):
    from workers.mapping import random_mapping

    spec = next(r for r in runs if r.method == "rlm" and r.compression == "dense")
    row = run(spec, Context(tmp_path, torch.device("cpu")))
    assert row.label_mapping == random_mapping(20, 10, spec.seed).tolist()


def test_flm_mapping_matches_the_frequency_mapping_of_the_zero_prompt(runs, tmp_path):
    """FLM binds labels once, before training: recompute it independently from the untrained prompt."""
    from workers.data import load_dataset
    from workers.data.fewshot import few_shot_indices
    from workers.mapping import frequency_matrix, greedy_mapping
    from workers.models import build_model
    from workers.prompts import PadPrompter

    spec = next(r for r in runs if r.method == "flm" and r.compression == "dense")
    row = run(spec, Context(tmp_path, torch.device("cpu")))
    built, meta = build_model(spec.model, spec.weights, spec.model_args, tmp_path)
    data = load_dataset("digits", size=8)
    idx = few_shot_indices(data.train_y, spec.shots, spec.seed)
    with torch.no_grad():
        pred = built.model(PadPrompter(32, 8, meta.mean, meta.std)(data.train_x[idx])).argmax(1)
    assert row.label_mapping == greedy_mapping(frequency_matrix(pred, data.train_y[idx], 20, 10)).tolist()


def test_compression_is_measured_in_the_row(runs, tmp_path):
    spec = next(r for r in runs if r.compression == "magnitude")
    row = run(spec, Context(tmp_path, torch.device("cpu")))
    assert row.status == "ok" and row.compression_level == 0.5
    assert row.sparsity == pytest.approx(0.5, abs=0.01)
    # demo_cnn's source task is shapes: its upstream accuracy is measured on the held-out shapes split, per variant
    from workers.upstream import shapes_accuracy

    ctx = Context(tmp_path / "again", torch.device("cpu"))
    v = ctx.variant(spec)
    assert row.upstream_accuracy == pytest.approx(shapes_accuracy(v.frozen, v.meta, torch.device("cpu")))


def test_a_failing_run_becomes_a_failed_row_and_the_pack_goes_on(runs, tmp_path):
    bad = dataclasses.replace(runs[0], compression="magnitude", compression_args={"sparsity": 1.5})
    rows = list(run_pack([bad, runs[1]], tmp_path))
    assert rows[0].status == "failed" and "sparsity" in rows[0].error and rows[0].accuracy is None
    assert rows[1].status == "ok"


class _NaNNet(torch.nn.Module):
    def forward(self, x):
        return torch.full((x.shape[0], 20), float("nan")) + x.sum() * 0


def test_nan_loss_fails_the_run(runs, tmp_path, monkeypatch):
    card = ModelCard("a model whose loss is NaN", input_size=32, num_classes=20, source="test")
    monkeypatch.setitem(MODELS._entries, "nan_net", type(MODELS.entry("demo_cnn"))(
        "nan_net", lambda w, a, c: Built(_NaNNet(), "test"), card))
    spec = dataclasses.replace(runs[0], model="nan_net", method="rlm", model_args={})
    row = run(spec, Context(tmp_path, torch.device("cpu")))
    assert row.status == "failed" and row.error.startswith("FloatingPointError: training loss is not finite")


def test_training_reduces_the_loss(runs, tmp_path):
    """The prompt learns: the mapped loss after training is below the loss of the zero prompt."""
    from workers.data import load_dataset
    from workers.mapping import map_logits
    from workers.models import build_model
    from workers.methods.vp import train_prompt
    from workers.train import Task

    spec = next(r for r in runs if r.method == "rlm" and r.compression == "dense" and r.shots == 2)
    spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, epochs=30, lr=0.05))
    built, meta = build_model(spec.model, "random", {"width": 4}, tmp_path)
    data = load_dataset("digits", size=8)
    x, y = data.train_x[:20], data.train_y[:20]
    from workers.prompts import PadPrompter

    out = train_prompt(built.model, meta, Task(x, y, x, y, [str(i) for i in range(10)]), spec, torch.device("cpu"))
    mapping = torch.tensor(out.mapping)
    with torch.no_grad():
        zero = torch.nn.functional.cross_entropy(map_logits(built.model(PadPrompter(32, 8, meta.mean, meta.std)(x)), mapping), y)
    assert out.metrics["nll"] < zero.item()
    assert math.isfinite(out.final_train_loss)


@pytest.mark.integration  # seconds to tens of seconds: a full-size model, training or rendering
def test_more_shots_than_a_class_has_fails_unless_capped(runs, tmp_path):
    spec = dataclasses.replace(runs[0], shots=200)  # digits has ~125 training images per class
    row = run(spec, Context(tmp_path, torch.device("cpu")))
    assert row.status == "failed" and "shots" in row.error and "cap_shots: true" in row.error
    capped = run(dataclasses.replace(spec, dataset_args={"cap_shots": True}), Context(tmp_path, torch.device("cpu")))
    assert capped.status == "ok" and capped.n_train == 1257  # every training image of every class


def _act_quant_pack(dataset: str, args: dict) -> list:
    from workers.core.spec import RunSpec, TrainConfig

    # 3-bit activations: the calibrated ranges matter, so a variant calibrated on other data gives other numbers
    return [RunSpec("demo_cnn", method, dataset, shots=2, seed=1, weights="random", model_args={"width": 4},
                    compression="fakequant", compression_args={"bits": 8, "act_bits": 3}, dataset_args=args,
                    train=TrainConfig(epochs=2, batch_size=8, input_size=8)) for method in ("rlm", "ilm")]


def test_act_calibrated_variants_do_not_leak_between_datasets_through_a_reused_context(tmp_path, monkeypatch):
    """A reused Ray actor keeps its Context (run_pack's _LAST): the second dataset's pack must give the numbers
    it gives in a fresh context, not those of a variant calibrated on the first dataset."""
    import workers.run as wr

    digits = _act_quant_pack("digits", {})
    shapes = _act_quant_pack("shapes", {"n_train": 40, "n_test": 60})

    def fresh(specs):
        monkeypatch.setattr(wr, "_LAST", None)
        return list(run_pack(specs, tmp_path))

    alone = {r.run_key: r for r in fresh(digits) + fresh(shapes)}
    monkeypatch.setattr(wr, "_LAST", None)
    reused = list(run_pack(digits, tmp_path)) + list(run_pack(shapes, tmp_path))  # one actor, two packs
    assert wr._LAST.variants is not None and all(r.status == "ok" for r in reused), [r.error for r in reused]
    for r in reused:
        a = alone[r.run_key]
        assert (r.accuracy, r.nll, r.label_mapping) == (a.accuracy, a.nll, a.label_mapping), r.dataset

    # The check can fail: the shapes pack run on the digits-calibrated variant gives other numbers.
    ctx = Context(tmp_path, torch.device("cpu"))
    stale = ctx.variant(digits[0])
    monkeypatch.setattr(Context, "variant", lambda self, spec: stale)
    leaked = run(shapes[0], ctx)
    assert leaked.status == "ok" and leaked.nll != alone[shapes[0].run_key].nll


def test_variants_without_data_dependence_are_reused_across_datasets(tmp_path, monkeypatch):
    """Dense and weight-only variants do not depend on the data: a second dataset reuses the loaded model."""
    import workers.run as wr
    from workers.core.spec import RunSpec, TrainConfig

    specs = [RunSpec("demo_cnn", "rlm", d, shots=1, seed=1, weights="random", model_args={"width": 4},
                     compression="fakequant", compression_args={"bits": 8}, dataset_args=a,
                     train=TrainConfig(epochs=1, batch_size=8, input_size=8))
             for d, a in (("digits", {}), ("shapes", {"n_train": 40, "n_test": 40}))]
    monkeypatch.setattr(wr, "_LAST", None)
    ctx = Context(tmp_path, torch.device("cpu"))
    first, second = ctx.variant(specs[0]), ctx.variant(specs[1])
    assert first is second


def test_a_vp_run_returns_its_learned_prompt(runs, tmp_path):
    from workers.run import prompt_of

    spec = next(r for r in runs if r.method == "ilm" and r.compression == "dense")
    row = run(spec, Context(tmp_path, torch.device("cpu")))
    (prompt,) = prompt_of(row).values()
    assert row.status == "ok" and row.prompt_path is None  # the publisher sets it
    assert prompt.shape == (3, 32, 32)
    inner = torch.zeros(32, 32, dtype=torch.bool)
    inner[12:20, 12:20] = True  # the 8-px image in the centre of the 32-px canvas: no gradient reaches it
    assert (prompt[:, inner] == 0).all() and (prompt[:, ~inner] != 0).any()  # the border learned
    failed = run(dataclasses.replace(spec, shots=500), Context(tmp_path, torch.device("cpu")))
    assert failed.status == "failed" and prompt_of(failed) is None


def test_a_trial_given_a_gpu_it_cannot_use_fails_instead_of_training_on_the_cpu(monkeypatch):
    import torch

    from workers.trial import run_trial

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    pack = {"trial_id": "t1", "cpu": 1, "gpu": 0.5, "store": "/nonexistent", "cache": None}
    with pytest.raises(RuntimeError, match="given 0.5 GPU but this worker cannot use CUDA.*refusing to train on the CPU"):
        run_trial(pack, "n1", lambda metrics: None, {"t1": b'{"runs": []}'})


def test_torch_threads_are_the_trials_cpus_or_the_environments(monkeypatch):
    from workers.run import torch_threads

    monkeypatch.delenv("VPGRID_TORCH_THREADS", raising=False)
    assert (torch_threads(1), torch_threads(2.0), torch_threads(0.5)) == (1, 2, 1)
    monkeypatch.setenv("VPGRID_TORCH_THREADS", "2")
    assert torch_threads(1) == 2
    for bad in ("0", "two", "-1", "1.5"):
        monkeypatch.setenv("VPGRID_TORCH_THREADS", bad)
        with pytest.raises(ValueError, match=f"VPGRID_TORCH_THREADS='{re.escape(bad)}': must be a positive integer"):
            torch_threads(1)
