"""Visual prompting on CLIP (clip_vp, clip_ilm), checked against hand computations.

The real model is a random-weight ViT-B/32 at a 64-px canvas (2x2 patches), built once for the module; each of its
forward/backward passes still costs about a second on 2 cores, so the tests that need many steps (the learning
rate schedule) or exact wiring checks use `TinyClip`, a stand-in with CLIP's interface.
"""
from __future__ import annotations

import math
import zlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import workers.methods.clip_prompting as cp  # registers clip_vp and clip_ilm
from workers.mapping import greedy_mapping
from workers.methods import METHODS
from workers.metrics import classification_metrics
from workers.models import build_model
from workers.core.schemas.models import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from workers.run import Context, run
from workers.core.spec import RunSpec, TrainConfig
from workers.train import Task

pytestmark = pytest.mark.unit

open_clip = pytest.importorskip("open_clip")
ARGS = {"templates": "simple", "input_size": 64}
CPU = torch.device("cpu")
CLASSES = ["Sea_Turtle", "dog-house", "cat"]
NAMES = ["sea turtle", "dog house", "cat"]  # as the reference code refines them: lower case, _ and - to spaces
LR_TINY = 1.0  # small enough for plain descent on the stand-in (its loss is not smooth at large steps)
VP_TEXTS = [f"This is a photo of a {c}" for c in NAMES]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    cache = tmp_path_factory.mktemp("clip_cache")
    built, meta = build_model("clip_vit_b32", "random", ARGS, cache)
    return built.model, meta, cache


def colour_task(per_class: int = 3, size: int = 16, seed: int = 0) -> Task:
    """3 classes of noisy images, each tinted towards its own colour channel."""
    g = torch.Generator().manual_seed(seed)

    def make(n):
        y = torch.arange(3).repeat_interleave(n)
        x = 0.5 * torch.rand(len(y), 3, size, size, generator=g)
        x[torch.arange(len(y)), y] += 0.5
        return x, y

    (tx, ty), (vx, vy) = make(per_class), make(2)
    return Task(tx, ty, vx, vy, list(CLASSES))


def spec_for(method: str, **train) -> RunSpec:
    cfg = dict(epochs=1, lr=40.0, batch_size=9, eval_batch_size=64)
    cfg.update(train)
    return RunSpec(model="clip_vit_b32", method=method, dataset="colours", shots=None, seed=3, weights="random",
                   model_args=ARGS, train=TrainConfig(**cfg))


def hand_canvas(x: torch.Tensor, canvas: int) -> torch.Tensor:
    x = F.interpolate(x, size=(canvas, canvas), mode="bilinear", align_corners=False)
    return (x - torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)


def hand_border(canvas: int, pad: int) -> torch.Tensor:
    m = torch.zeros(canvas, canvas)
    for i in range(canvas):
        for j in range(canvas):
            m[i, j] = float(min(i, j, canvas - 1 - i, canvas - 1 - j) < pad)
    return m


@torch.no_grad()
def hand_features(visual, x: torch.Tensor, prompt: torch.Tensor | None = None, canvas: int = 64) -> torch.Tensor:
    """Unit image embeddings of [0,1] images resized to the canvas, normalised, plus the prompt on the border."""
    x = hand_canvas(x, canvas)
    if prompt is not None:
        x = x + prompt * hand_border(canvas, cp.pad_width(canvas))
    v = visual(x).float()
    return v / v.norm(dim=-1, keepdim=True)


def clip_scale(model) -> torch.Tensor:
    return model.logit_scale.detach().exp().clamp(max=100.0)


def same_metrics(got: dict, expected: dict) -> bool:
    assert got["n"] == expected["n"] and got["per_class_accuracy"] == pytest.approx(expected["per_class_accuracy"])
    return all(got[k] == pytest.approx(expected[k], rel=1e-5) for k in ("accuracy", "ece", "nll"))


def hand_mapping(logits: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """Argmax over the 81 x K template-class texts, counted per target class, greedy binding."""
    counts = torch.zeros(logits.shape[1], k, dtype=torch.long)
    for p, t in zip(logits.argmax(1).tolist(), y.tolist()):
        counts[p, t] += 1
    return greedy_mapping(counts)


# ---------------------------------------------------------------- pieces


def test_templates_are_the_default_plus_openais_80():
    assert len(cp.ILM_TEMPLATES) == 81 and len(set(cp.ILM_TEMPLATES)) == 81
    assert cp.ILM_TEMPLATES[0] == "This is a photo of a {}."
    assert list(cp.ILM_TEMPLATES[1:]) == [t("{}") for t in open_clip.OPENAI_IMAGENET_TEMPLATES]
    assert all(t.count("{}") == 1 for t in cp.ILM_TEMPLATES)


def test_pad_width_and_class_names():
    assert [cp.pad_width(s) for s in (224, 336, 64, 32)] == [30, 30, 9, 4]
    assert [cp.refine_classname(c) for c in CLASSES] == NAMES


def test_lr_schedule_formula():
    base, w, total = 40.0, 10, 100
    assert cp.lr_at(0, base, w, total) == pytest.approx(4.0)
    assert cp.lr_at(9, base, w, total) == pytest.approx(40.0)
    assert cp.lr_at(10, base, w, total) == pytest.approx(40.0)
    assert cp.lr_at(55, base, w, total) == pytest.approx(20.0)
    assert cp.lr_at(99, base, w, total) == pytest.approx(20 * (1 + math.cos(math.pi * 89 / 90)))
    assert cp.lr_at(5, base, 0, 20) == pytest.approx(20 * (1 + math.cos(math.pi / 4)))


@pytest.mark.integration  # seconds to tens of seconds: a full-size model, training or rendering
def test_border_prompt_is_added_after_normalisation_on_the_border_only(clip):
    _, meta, _ = clip
    from workers.train import to_canvas

    pad = cp.pad_width(meta.input_size)
    prompter = cp.BorderPrompt(meta.input_size, pad)
    assert (prompter.prompt == 0).all()  # zero init
    torch.manual_seed(1)
    with torch.no_grad():
        prompter.prompt.normal_()
    x = torch.rand(2, 3, 16, 16)
    out = prompter(to_canvas(x, meta))
    ref = hand_canvas(x, meta.input_size)
    border = hand_border(meta.input_size, pad).bool()
    assert border.sum() == 64 * 64 - (64 - 2 * 9) ** 2
    torch.testing.assert_close(out[:, :, ~border], ref[:, :, ~border], rtol=0, atol=1e-6)  # image untouched
    torch.testing.assert_close(out[:, :, border], (ref + prompter.prompt)[:, :, border], rtol=0, atol=1e-6)
    out.sum().backward()  # only the border learns
    assert (prompter.prompt.grad[:, ~border] == 0).all() and (prompter.prompt.grad[:, border] == 2).all()


@pytest.fixture(scope="module")
def vp_text(clip):
    return clip[0].encode_text(VP_TEXTS)


@pytest.fixture(scope="module")
def ilm_text(clip):
    """The method's 81 x 3 template-class embeddings (rows checked against explicit strings below)."""
    return cp.text_classifier(clip[0], cp.ILM_TEMPLATES, CLASSES)


@pytest.mark.integration  # seconds to tens of seconds: a full-size model, training or rendering
def test_vp_text_rows_are_the_expected_prompts(clip, vp_text):
    torch.testing.assert_close(cp.text_classifier(clip[0], (cp.VP_TEMPLATE,), CLASSES), vp_text, rtol=0, atol=1e-5)


@pytest.mark.integration  # seconds to tens of seconds: a full-size model, training or rendering
def test_ilm_text_rows_are_template_major(clip, ilm_text):
    model, _, _ = clip
    assert ilm_text.shape == (81 * 3, model.embed_dim)
    rows = {0: "This is a photo of a sea turtle.", 2: "This is a photo of a cat.", 3 + 1: "a bad photo of a dog house.",
            3 * 40 + 0: "a photo of a sea turtle.", 3 * 80 + 2: "a tattoo of the cat."}
    torch.testing.assert_close(ilm_text[list(rows)], model.encode_text(list(rows.values())), rtol=0, atol=1e-5)
    assert torch.allclose(ilm_text.norm(dim=1), torch.ones(len(ilm_text)), atol=1e-5)


def test_non_clip_model_is_refused(tmp_path):
    built, meta = build_model("demo_cnn", "random", {"width": 4}, tmp_path)
    for method in ("clip_vp", "clip_ilm"):
        with pytest.raises(TypeError) as e:
            METHODS.get(method)(built.model, meta, colour_task(), spec_for(method), CPU)
        assert "CLIP" in str(e.value) and "DemoCNN" in str(e.value)


# ---------------------------------------------------------------- training wiring, on a cheap stand-in


class TinyClip(nn.Module):
    """CLIP's interface at no cost: a linear image tower and unit text embeddings drawn from a generator seeded by
    each string's crc32 (so a wrong template, class name or row order gives other rows)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.visual = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64 * 64, 16)).requires_grad_(False)
        self.scale = torch.tensor(10.0)

    def features(self, x):
        return F.normalize(self.visual(x), dim=-1)

    def encode_text(self, texts):
        g = [torch.Generator().manual_seed(zlib.crc32(t.encode())) for t in texts]
        return F.normalize(torch.stack([torch.randn(16, generator=gi) for gi in g]), dim=-1)


@pytest.mark.integration  # seconds to tens of seconds: a full-size model, training or rendering
def test_untrained_runs_give_the_hand_computed_loss_mapping_and_metrics(clip):
    _, meta, _ = clip
    tiny, task = TinyClip(), colour_task()
    v_train, v_test = hand_features(tiny.visual, task.train_x), hand_features(tiny.visual, task.test_x)

    out = cp.clip_vp(tiny, meta, task, spec_for("clip_vp", lr=0.0), CPU)
    text = tiny.encode_text(VP_TEXTS)
    assert out.mapping is None
    assert out.final_train_loss == pytest.approx(float(F.cross_entropy(10 * v_train @ text.T, task.train_y)), rel=1e-5)
    assert same_metrics(out.metrics, classification_metrics(10 * v_test @ text.T, task.test_y))

    out = cp.clip_ilm(tiny, meta, task, spec_for("clip_ilm", lr=0.0), CPU)
    text = tiny.encode_text([t.format(c) for t in cp.ILM_TEMPLATES for c in NAMES])
    mapping = hand_mapping(10 * v_train @ text.T, task.train_y, 3)
    assert out.mapping == mapping.tolist()
    rows = text[mapping]
    assert out.final_train_loss == pytest.approx(float(F.cross_entropy(10 * v_train @ rows.T, task.train_y)), rel=1e-5)
    assert same_metrics(out.metrics, classification_metrics(10 * v_test @ rows.T, task.test_y))


def record_lrs(monkeypatch) -> list:
    lrs, step = [], torch.optim.SGD.step

    def spy(self, *a, **k):
        group = self.param_groups[0]
        assert group["momentum"] == 0.9 and group["weight_decay"] == 0
        lrs.append(group["lr"])
        return step(self, *a, **k)

    monkeypatch.setattr(torch.optim.SGD, "step", spy)
    return lrs


@pytest.mark.integration  # seconds to tens of seconds: a full-size model, training or rendering
def test_clip_vp_steps_with_warmup_then_cosine(clip, monkeypatch):
    _, meta, _ = clip
    lrs = record_lrs(monkeypatch)
    cp.clip_vp(TinyClip(), meta, colour_task(per_class=6), spec_for("clip_vp", epochs=5, batch_size=4, lr=2.0), CPU)
    total, warmup = 5 * 5, 2  # 18 images / 4 -> 5 steps an epoch; warm-up min(1000, 25 // 10)
    expected = [2.0 * (s + 1) / warmup if s < warmup else
                0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup))) * 2.0 for s in range(total)]
    assert lrs == pytest.approx(expected)


@pytest.mark.integration  # seconds to tens of seconds: a full-size model, training or rendering
def test_clip_ilm_steps_like_per_step_cosine_annealing(clip, monkeypatch):
    _, meta, _ = clip
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2.0, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)  # ILM-VP's scheduler, stepped per batch
    expected = []
    for _ in range(10):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    lrs = record_lrs(monkeypatch)
    cp.clip_ilm(TinyClip(), meta, colour_task(per_class=6), spec_for("clip_ilm", epochs=2, batch_size=4, lr=2.0), CPU)
    assert lrs == pytest.approx(expected)


@pytest.mark.integration  # seconds to tens of seconds: a full-size model, training or rendering
def test_clip_vp_training_reduces_the_loss(clip):
    """A few steps on the stand-in (the random CLIP learns in the clip_ilm test below)."""
    _, meta, _ = clip
    task = colour_task(per_class=6)
    start = cp.clip_vp(TinyClip(), meta, task, spec_for("clip_vp", lr=0.0, batch_size=18), CPU).final_train_loss
    out = cp.clip_vp(TinyClip(), meta, task, spec_for("clip_vp", epochs=4, lr=LR_TINY, batch_size=18), CPU)
    assert out.final_train_loss < 0.98 * start, (start, out.final_train_loss)


@pytest.mark.integration  # seconds to tens of seconds: a full-size model, training or rendering
@pytest.mark.parametrize("method", ["clip_vp", "clip_ilm"])
def test_non_finite_loss_fails_the_run(clip, method):
    _, meta, _ = clip
    task = colour_task()
    task.train_x[0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError):
        METHODS.get(method)(TinyClip(), meta, task, spec_for(method), CPU)


# ---------------------------------------------------------------- on the random CLIP: remapping and learning


@pytest.fixture(scope="module")
def zero_prompt(clip, vp_text, ilm_text):
    """Hand-computed start of training on the colour task: ILM's first mapping and both losses."""
    model, meta, _ = clip
    task = colour_task()
    v = hand_features(model.visual, task.train_x)
    scale = clip_scale(model)
    mapping = hand_mapping(scale * v @ ilm_text.T, task.train_y, 3)
    return dict(v=v, mapping=mapping, ilm_loss=float(F.cross_entropy(scale * v @ ilm_text[mapping].T, task.train_y)))


@pytest.mark.integration  # seconds to tens of seconds: a full-size model, training or rendering
def test_logits_are_scale_times_cosine(clip, vp_text, zero_prompt):
    model, meta, _ = clip
    x = hand_canvas(colour_task().train_x, meta.input_size)
    expected = clip_scale(model) * zero_prompt["v"] @ vp_text.T  # the fixture's unit embeddings of the same images
    torch.testing.assert_close(cp.clip_logits(model, x, vp_text), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.integration  # seconds to tens of seconds: a full-size model, training or rendering
def test_clip_ilm_remaps_every_epoch_with_the_current_prompt_and_learns(clip, ilm_text, zero_prompt, monkeypatch):
    model, meta, _ = clip
    task = colour_task()
    monkeypatch.setattr(cp, "text_classifier", lambda *a: ilm_text)  # the fixture's rows: no second encoding
    calls, real = [], cp.ilm_mapping

    def spy(m, mt, prompter, *a):
        mapping = real(m, mt, prompter, *a)
        calls.append((prompter.prompt.detach().clone(), mapping.clone()))
        return mapping

    monkeypatch.setattr(cp, "ilm_mapping", spy)
    out = cp.clip_ilm(model, meta, task, spec_for("clip_ilm", epochs=2, lr=2000.0), CPU)
    assert len(calls) == 2
    assert (calls[0][0] == 0).all() and calls[0][1].tolist() == zero_prompt["mapping"].tolist()
    prompt, mapping = calls[1]
    assert prompt.abs().sum() > 0  # the second mapping sees the trained prompt
    v = hand_features(model.visual, task.train_x, prompt)
    assert mapping.tolist() == hand_mapping(clip_scale(model) * v @ ilm_text.T, task.train_y, 3).tolist()
    assert out.mapping == mapping.tolist()
    assert out.final_train_loss < 0.9 * zero_prompt["ilm_loss"], (zero_prompt["ilm_loss"], out.final_train_loss)


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def context(clip):
    """One Context for both runs (one variant build); the same cache, so the zero-shot head is reused."""
    return Context(clip[2], CPU)


@pytest.mark.integration  # seconds to tens of seconds: a full-size model, training or rendering
@pytest.mark.parametrize("method", ["clip_vp", "clip_ilm"])
def test_end_to_end_run_row(context, method):
    spec = RunSpec(model="clip_vit_b32", method=method, dataset="digits", shots=1, seed=0, weights="random",
                   model_args=ARGS, dataset_args={"test_fraction": 0.05},  # 90 test images: fast on CPU
                   train=TrainConfig(epochs=1, batch_size=16, lr=40.0, input_size=16))
    row = run(spec, context)
    assert row.status == "ok", row.error
    assert 0 <= row.accuracy <= 1 and row.n_train == 10 and row.n_test == 90 and len(row.per_class_accuracy) == 10
    assert math.isfinite(row.final_train_loss) and row.weights_source.startswith("random init")
    if method == "clip_vp":
        assert row.label_mapping is None
    else:
        assert len(row.label_mapping) == 10 and len(set(row.label_mapping)) == 10
        assert all(0 <= s < 81 * 10 for s in row.label_mapping)


@pytest.mark.integration  # seconds to tens of seconds: a full-size model, training or rendering
def test_runs_feed_clip_its_own_preprocessing_of_the_original_files(context, monkeypatch, tmp_path):
    """clip_vp and clip_ilm get the dataset decoded at the model's side (64 here) by bicubic short side + centre
    crop from the files, as open_clip's transform makes it; the VP methods keep their input_size squash."""
    from PIL import Image
    import numpy as np
    from workers.data import Crop
    from workers.run import data_input

    for c, cls in enumerate(["AnnualCrop", "Forest"]):  # a EuroSAT layout, odd aspect ratios
        for j, (h, w) in enumerate([(40, 90), (70, 31), (20, 20), (64, 65), (33, 50)]):
            path = tmp_path / "data" / "eurosat" / "2750" / cls / f"{cls}_{j}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.random.default_rng(10 * c + j).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    ref = open_clip.image_transform(64, is_train=False, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    want = {(ref(Image.open(p)) * 255).round().to(torch.uint8).numpy().tobytes()
            for p in (tmp_path / "data").rglob("*.jpg")}
    seen = []
    monkeypatch.setattr(cp, "train_clip_prompt", lambda model, meta, task, *a, **k: seen.append(task) or
                        cp.TrainOutput({}, None, 0.0, 0.0, 0.0))
    ctx = Context(context.cache_dir, CPU, data_root=str(tmp_path / "data"))
    ctx.variants = context.variants  # the module's CLIP build
    for method in ("clip_vp", "clip_ilm"):
        spec = RunSpec(model="clip_vit_b32", method=method, dataset="eurosat", shots=2, seed=0, weights="random",
                       model_args=ARGS, train=TrainConfig(epochs=1, input_size=16))
        run(spec, ctx)
        task = seen[-1]
        assert data_input(spec, ctx.variant(spec).meta) == (64, Crop("bicubic", 1.0))
        assert task.train_x.shape[1:] == (3, 64, 64) and task.test_x.dtype == torch.uint8
        got = {x.numpy().tobytes() for x in torch.cat([task.train_x, task.test_x])}
        assert len(got) == 2 * 2 + 2 and got <= want  # 2 shots a class, 1 test image a class; all open_clip's
    vp = RunSpec(model="clip_vit_b32", method="ilm", dataset="eurosat", shots=2, seed=0, weights="random",
                 model_args=ARGS, train=TrainConfig(epochs=1, input_size=16))
    assert data_input(vp, ctx.variant(vp).meta) == (16, None)
