"""Every transfer method (VP label mappings, LP, FF) as a plain function."""
import dataclasses

import pytest
import torch

from orchestrator.grid import expand, parse_grid
from tests.conftest import TINY
from workers.methods import METHODS
from workers.run import Context, run

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def runs():
    return expand(parse_grid(TINY))


@pytest.mark.parametrize("method", [m for m in METHODS.names() if METHODS.card(m).kind in ("vp", "lp", "ff")])
def test_every_method_runs_and_reports(method, runs, tmp_path):
    """Image methods on a CNN; CLIP and cross-modal methods have their own end-to-end tests."""
    spec = dataclasses.replace(next(r for r in runs if r.compression == "magnitude" and r.shots == 2), method=method)
    row = run(spec, Context(tmp_path, torch.device("cpu")))
    assert row.status == "ok", row.error
    assert 0 <= row.accuracy <= 1 and row.n_train == 20 and len(row.per_class_accuracy) == 10
    assert (row.label_mapping is None) == (METHODS.card(method).kind != "vp")


def test_linear_probe_trains_on_the_frozen_pre_logit_features(runs, tmp_path):
    """LP's features are the classifier's input, recomputed here by hand from the demo CNN's layers."""
    from workers.methods.baselines import _features
    from workers.train import to_canvas
    from workers.models import build_model

    built, meta = build_model("demo_cnn", "random", {"width": 4}, tmp_path)
    x = torch.rand(5, 3, 8, 8)
    with torch.no_grad():
        z = built.model.features(to_canvas(x, meta))
        expected = z.mean(dim=(2, 3))  # adaptive average pooling to 1x1, flattened
    got = _features(built.model, meta, x, 2, torch.device("cpu"))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert not built.model.fc._forward_hooks  # the hook is removed


def test_full_finetuning_keeps_pruned_zeros_and_leaves_the_shared_model_alone(runs, tmp_path):
    spec = next(r for r in runs if r.compression == "magnitude" and r.shots == 2)
    spec = dataclasses.replace(spec, method="ff", train=dataclasses.replace(spec.train, epochs=3, lr=0.05))
    ctx = Context(tmp_path, torch.device("cpu"))
    variant = ctx.variant(spec)
    before = {k: v.clone() for k, v in variant.model.state_dict().items()}
    import workers.methods.baselines as b

    trained = {}
    real = b.fit_one

    def spy(loss_of, n, spec_, opt, device, after_step=lambda: None):
        out = real(loss_of, n, spec_, opt, device, after_step)
        trained["params"] = [p.detach().clone() for g in opt.param_groups for p in g["params"]]
        return out

    b.fit_one = spy
    try:
        row = run(spec, ctx)
    finally:
        b.fit_one = real
    assert row.status == "ok", row.error
    assert all(torch.equal(before[k], v) for k, v in variant.model.state_dict().items())  # a copy was trained
    convs = [w for w in trained["params"] if w.dim() == 4]
    zero_frac = sum(int((w == 0).sum()) for w in convs) / sum(w.numel() for w in convs)
    assert zero_frac >= 0.5 - 0.02  # magnitude 0.5 pruned them; fine-tuning kept them at zero
    orig = [v for k, v in before.items() if v.dim() == 4]
    assert any(not torch.equal(a, b_) for a, b_ in zip(orig, convs))  # and it did train the rest


def test_lp_names_a_missing_head(runs, tmp_path, monkeypatch):
    from workers.models import MODELS

    entry = MODELS.entry("demo_cnn")
    monkeypatch.setitem(MODELS._entries, "demo_cnn", dataclasses.replace(entry, card=dataclasses.replace(entry.card, head="classifier")))
    spec = dataclasses.replace(runs[0], method="lp")
    row = run(spec, Context(tmp_path, torch.device("cpu")))
    assert row.status == "failed" and "no classifier module `classifier`" in row.error


def test_every_method_kind_is_covered():
    """A new kind of method needs an end-to-end test somewhere: fail here until it has one."""
    assert {METHODS.card(m).kind for m in METHODS.names()} <= {"vp", "lp", "ff", "crossmodal", "clip_vp", "clip_ilm"}


@pytest.mark.parametrize("method", ["ilm", "lp", "ff"])
def test_image_methods_refuse_token_data(method, runs, tmp_path):
    from workers.train import Task

    tokens = torch.randint(0, 9, (4, 16))
    task = Task(tokens, torch.tensor([0, 1, 0, 1]), tokens, torch.tensor([0, 1, 0, 1]), ["a", "b"])
    from workers.models import build_model

    built, meta = build_model("demo_cnn", "random", {"width": 4}, tmp_path)
    with pytest.raises(TypeError, match="needs images .* use method 'reprogram'"):
        METHODS.get(method)(built.model, meta, task, dataclasses.replace(runs[0], method=method), torch.device("cpu"))


def test_eval_every_records_what_shorter_runs_reach_and_changes_nothing_else(runs, tmp_path):
    """Test accuracy after epoch e (eval_every=1) equals the final accuracy of a run stopped after e epochs: with
    the lr decay at the very end (milestone 1.0), both runs see the same prompts, mappings and batches."""
    spec = next(r for r in runs if r.method == "ilm" and r.compression == "dense" and r.shots == 2)
    train = dataclasses.replace(spec.train, epochs=3, milestones=(1.0,), lr=0.05)
    ctx = Context(tmp_path, torch.device("cpu"))
    on = run(dataclasses.replace(spec, train=dataclasses.replace(train, eval_every=1)), ctx)
    off = run(dataclasses.replace(spec, train=train), ctx)
    assert on.status == off.status == "ok", (on.error, off.error)
    assert off.epoch_accuracy is None and off.eval_every is None and on.eval_every == 1
    assert len(on.epoch_accuracy) == 3 and on.epoch_accuracy[-1] == on.accuracy
    assert (on.accuracy, on.label_mapping, on.final_train_loss) == (off.accuracy, off.label_mapping, off.final_train_loss)
    for e in (1, 2):
        short = run(dataclasses.replace(spec, train=dataclasses.replace(train, epochs=e)), ctx)
        assert on.epoch_accuracy[e - 1] == short.accuracy
    every2 = run(dataclasses.replace(spec, train=dataclasses.replace(train, epochs=4, eval_every=2)), ctx)
    assert len(every2.epoch_accuracy) == 2 and every2.epoch_accuracy[-1] == every2.accuracy


def test_rows_say_what_ran(runs, tmp_path):
    spec = next(r for r in runs if r.method == "ilm" and r.shots == 1)
    spec = dataclasses.replace(spec, dataset_args={"cap_shots": True},
                               train=dataclasses.replace(spec.train, milestones=(0.5,), gamma=0.5, eval_batch_size=7))
    row = run(spec, Context(tmp_path, torch.device("cpu")))
    assert row.status == "ok", row.error
    assert (row.dataset_args, row.milestones, row.gamma, row.eval_batch_size, row.prompt_kind) == (
        '{"cap_shots":true}', [0.5], 0.5, 7, "pad")
    assert sum(row.reliability_count) == row.n_test and len(row.reliability_count) == 15
    assert len(row.per_class_confidence) == 10 and row.ece_paper is not None and row.kl_incorrect_paper is not None
    failed = run(dataclasses.replace(spec, method="nope"), Context(tmp_path, torch.device("cpu")))
    assert failed.status == "failed" and failed.dataset_args == '{"cap_shots":true}' and failed.prompt_kind is None


def test_every_method_declares_its_prompt():
    kinds = {m: METHODS.card(m).prompt for m in METHODS.names()}
    assert {kinds[m] for m in METHODS.names() if METHODS.card(m).kind == "vp"} == {"pad"}
    assert (kinds["lp"], kinds["ff"], kinds["clip_vp"], kinds["clip_ilm"], kinds["reprogram"]) == (
        None, None, "full_canvas_additive", "full_canvas_additive", "token_patches")
