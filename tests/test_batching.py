"""Prompt batching: K runs of one cell trained in one pass of the frozen model give what each run gives alone.

The reference is the one-at-a-time path (`train_prompt`, each run alone). In float64 the two agree to ~1e-12, so
any mixing of runs (a prompt seeing another run's gradient, mapping, samples or data order) would show.
"""
import dataclasses
import math

import pytest
import torch

from workers.data import load_dataset
from workers.data.fewshot import few_shot_indices
from workers.mapping import LABEL_MAPPINGS
from workers.methods.vp import train_prompt, train_prompts
from workers.models import build_model
from workers.core.spec import RunSpec, TrainConfig
from workers.train import Task

pytestmark = pytest.mark.unit

CPU = torch.device("cpu")
METRICS = ("accuracy", "ece", "nll", "conf_correct", "kl_incorrect", "ece_paper")


@pytest.fixture(scope="module")
def frozen64(tmp_path_factory):
    """A random demo CNN in float64, with BatchNorm statistics that are not the identity (eval mode)."""
    built, meta = build_model("demo_cnn", "random", {"width": 4}, tmp_path_factory.mktemp("m"))
    g = torch.Generator().manual_seed(0)
    for m in built.model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return built.model.double().eval(), meta


def specs_for(train: TrainConfig, shots: int = 2) -> list[RunSpec]:
    return [RunSpec(model="demo_cnn", method=m, dataset="digits", shots=shots, seed=s, weights="random",
                    model_args={"width": 4}, train=train) for m in ("rlm", "flm", "ilm") for s in (1, 2)]


def tasks_for(specs: list[RunSpec], size: int = 8, shared: bool = True) -> list[Task]:
    data = load_dataset("digits", size=size)
    out = []
    for s in specs:
        idx = few_shot_indices(data.train_y, s.shots, s.seed)
        extra = dict(split_x=data.train_x, rows=idx) if shared else {}
        out.append(Task(data.train_x[idx], data.train_y[idx], data.test_x, data.test_y, list(data.classes), **extra))
    return out


def assert_same(batched, alone, rtol: float, atol: float) -> None:
    assert batched.mapping == alone.mapping
    for k in METRICS:
        assert batched.metrics[k] == pytest.approx(alone.metrics[k], rel=rtol, abs=atol), k
    assert batched.metrics["per_class_accuracy"] == pytest.approx(alone.metrics["per_class_accuracy"], abs=atol)
    assert batched.final_train_loss == pytest.approx(alone.final_train_loss, rel=rtol, abs=atol)
    torch.testing.assert_close(batched.prompt["prompt"], alone.prompt["prompt"], rtol=rtol, atol=atol)
    assert batched.epoch_accuracy == alone.epoch_accuracy


# 20 training images, batches of 8: the last mini-batch of every epoch is short; lr decays after epoch 2 of 4.
TRAIN = TrainConfig(epochs=4, lr=0.5, batch_size=8, milestones=(0.5,), gamma=0.1, eval_batch_size=128,
                    input_size=8, eval_every=2)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny models: one torch thread is faster than two contending ones."""


@pytest.mark.integration  # seconds to tens of seconds: a full-size model, training or rendering
@pytest.mark.parametrize("shared", [True, False], ids=["one-device-copy", "per-run-copies"])
def test_batched_runs_match_each_run_alone_in_float64(frozen64, shared):
    model, meta = frozen64
    specs = specs_for(TRAIN)
    tasks = tasks_for(specs, shared=shared)
    batched = train_prompts(model, meta, tasks, specs, CPU)
    alone = [train_prompt(model, meta, t, s, CPU) for t, s in zip(tasks, specs)]
    for b, a in zip(batched, alone):
        assert_same(b, a, rtol=1e-10, atol=1e-12)
    # Not a vacuous equality: the runs trained, and runs of different seeds or mappings differ in prompt.
    prompts = [b.prompt["prompt"] for b in batched]
    assert all(p.abs().max() > 1e-3 for p in prompts)
    assert not torch.equal(prompts[0], prompts[1]) and not torch.equal(prompts[0], prompts[2])
    assert len({tuple(b.mapping) for b in batched}) > 1
    assert all(b.prompt["prompt"].dtype == torch.float64 for b in batched)


@pytest.mark.integration  # seconds to tens of seconds: a full-size model, training or rendering
def test_batched_ilm_remaps_every_epoch_flm_once_rlm_never(frozen64, monkeypatch):
    import workers.methods.vp as vp

    calls, real = [], vp.compute_mapping
    monkeypatch.setattr(vp, "compute_mapping", lambda name, **kw: calls.append((name, kw["seed"])) or real(name, **kw))
    model, meta = frozen64
    specs = specs_for(TRAIN)
    train_prompts(model, meta, tasks_for(specs), specs, CPU)
    per = {(m, s): calls.count((m, s)) for m in ("rlm", "flm", "ilm") for s in (1, 2)}
    assert per == {("rlm", 1): 1, ("rlm", 2): 1, ("flm", 1): 1, ("flm", 2): 1, ("ilm", 1): 4, ("ilm", 2): 4}


@pytest.mark.integration  # seconds to tens of seconds: a full-size model, training or rendering
def test_a_run_that_fails_in_a_batch_fails_alone(frozen64, monkeypatch):
    """One run's mapping raises at its second remap (a bad mapping); another's prompt turns NaN in its first
    epoch. Each fails with its own error; the others give exactly what they give alone."""
    import workers.methods.vp as vp

    model, meta = frozen64
    specs = specs_for(TRAIN)  # rlm 1, rlm 2, flm 1, flm 2, ilm 1, ilm 2
    tasks = tasks_for(specs)
    real_map, remaps = vp.compute_mapping, []

    def compute_mapping(name, **kw):
        if (name, kw["seed"]) == ("ilm", 2):
            remaps.append(1)
            if len(remaps) == 2:
                raise ValueError("no mapping for you")
        return real_map(name, **kw)

    real_step, real_learners, poisoned = torch.optim.Adam.step, vp.PromptJob.learners, {}

    def step(self, *a, **k):  # the flm seed-1 prompt is NaN from its second step on (of 3 in the epoch)
        out = real_step(self, *a, **k)
        p = self.param_groups[0]["params"][0]
        if self is poisoned["opt"] and int(self.state[p]["step"]) == 1:
            with torch.no_grad():
                p.fill_(float("nan"))
        return out

    def learners(job):
        out = real_learners(job)
        poisoned["opt"] = out[2].opt
        return out

    monkeypatch.setattr(vp, "compute_mapping", compute_mapping)
    monkeypatch.setattr(torch.optim.Adam, "step", step)
    monkeypatch.setattr(vp.PromptJob, "learners", learners)
    outs = train_prompts(model, meta, tasks, specs, CPU)
    monkeypatch.undo()
    assert isinstance(outs[5], ValueError) and "no mapping for you" in str(outs[5])
    assert isinstance(outs[2], FloatingPointError) and "epoch 1/4" in str(outs[2])
    for k in (0, 1, 3, 4):
        assert_same(outs[k], train_prompt(model, meta, tasks[k], specs[k], CPU), rtol=1e-10, atol=1e-12)


@pytest.mark.integration  # seconds to tens of seconds: a full-size model, training or rendering
def test_runs_of_different_schedules_are_refused_together(frozen64):
    model, meta = frozen64
    specs = specs_for(TRAIN)[:2]
    specs[1] = dataclasses.replace(specs[1], train=dataclasses.replace(TRAIN, lr=0.1))
    with pytest.raises(ValueError, match="one training schedule"):
        train_prompts(model, meta, tasks_for(specs), specs, CPU)


@pytest.mark.integration  # seconds to tens of seconds: a full-size model, training or rendering
def test_demo_setting_batched_is_close_to_alone_in_float32(tmp_path):
    """The demo's setting: the shipped demo CNN pre-trained on shapes, digits at 16 px in the 32 px canvas, a
    10-shot cell of the demo grid (rlm/flm/ilm x 2 seeds, batch 32), in float32."""
    built, meta = build_model("demo_cnn", "pretrained", {}, tmp_path)
    model = built.model.eval()
    train = TrainConfig(epochs=6, lr=0.01, batch_size=32, input_size=16)
    specs = [dataclasses.replace(s, weights="pretrained", model_args={}) for s in specs_for(train, shots=10)]
    tasks = tasks_for(specs, size=16)
    batched = train_prompts(model, meta, tasks, specs, CPU)
    alone = [train_prompt(model, meta, t, s, CPU) for t, s in zip(tasks, specs)]
    for b, a in zip(batched, alone):
        assert b.mapping == a.mapping
        assert b.metrics["accuracy"] == pytest.approx(a.metrics["accuracy"], abs=2 / len(tasks[0].test_y))
        assert b.metrics["nll"] == pytest.approx(a.metrics["nll"], rel=1e-3)
        assert b.final_train_loss == pytest.approx(a.final_train_loss, rel=1e-4)
        torch.testing.assert_close(b.prompt["prompt"], a.prompt["prompt"], rtol=1e-3, atol=1e-4)
    assert all(math.isfinite(b.final_train_loss) for b in batched)
    assert LABEL_MAPPINGS.card("ilm").schedule == "every_epoch"


def test_batches_group_a_cells_vp_runs_and_honour_prompt_batch():
    from orchestrator.grid import expand, parse_grid
    from tests.conftest import TINY
    from workers.run import batch_key, batches

    runs = expand(parse_grid(TINY.replace("methods: [rlm, flm, ilm]", "methods: [rlm, flm, ilm, lp]")))
    groups = batches(runs)
    assert sorted(r.run_key for g in groups for r in g) == sorted(r.run_key for r in runs)
    for g in groups:
        assert len({batch_key(r) for r in g}) == 1
        assert all(r.method == "lp" for r in g) == (len(g) == 1 and g[0].method == "lp")
    # 2 variants x 2 shots: cells of 6 VP runs (3 mappings x 2 seeds), and every lp run alone
    assert sorted(len(g) for g in groups) == [1] * 8 + [6] * 4
    assert sorted(len(g) for g in batches(runs, cap=lambda spec: 4)) == [1] * 8 + [3] * 8  # even pieces
    two = [dataclasses.replace(r, train=dataclasses.replace(r.train, prompt_batch=2)) for r in runs]
    assert sorted(len(g) for g in batches(two)) == [1] * 8 + [2] * 12
    assert [r.run_key for r in two] == [r.run_key for r in runs]  # how runs execute is not in their key
    back = RunSpec.from_dict(two[0].to_dict())
    assert back.train.prompt_batch == 2 and back == two[0] and back.run_key == runs[0].run_key


@pytest.mark.integration  # seconds to tens of seconds: a full-size model, training or rendering
def test_a_pack_trained_in_batches_gives_the_rows_of_its_runs_alone(tmp_path, monkeypatch):
    """Through the worker's whole path (few-shot subsets, shared device copies, rows): a pack of two cells."""
    from orchestrator.grid import expand, parse_grid
    from tests.conftest import TINY
    from workers.run import Context, run, run_pack
    import workers.run as wr

    runs = [r for r in expand(parse_grid(TINY)) if r.compression == "dense"]
    sizes = []
    real = wr.run_group
    monkeypatch.setattr(wr, "run_group", lambda specs, ctx: sizes.append(len(specs)) or real(specs, ctx))
    rows = {r.run_key: r for r in run_pack(runs, tmp_path)}
    assert sorted(sizes) == [6, 6]
    ctx = Context(tmp_path, CPU)
    for spec in runs:
        alone, batched = run(spec, ctx), rows[spec.run_key]
        assert batched.status == alone.status == "ok", (batched.error, alone.error)
        assert batched.label_mapping == alone.label_mapping and batched.n_train == alone.n_train
        assert batched.accuracy == pytest.approx(alone.accuracy, abs=1.5 / alone.n_test)
        assert batched.final_train_loss == pytest.approx(alone.final_train_loss, rel=1e-4)
