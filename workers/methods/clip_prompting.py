"""Visual prompting on CLIP: Bahng et al.'s VP ("clip_vp") and ILM-VP on CLIP ("clip_ilm").

Both see the target image as CLIP's reference preprocessing makes it (`native_input`): decoded from the original
file, short side resized bicubically to the model's resolution (224 or 336), centre crop, then CLIP's mean/std
(`workers.data.Crop`, from ModelCard's interpolation and crop_pct; `train.input_size` does not apply). Onto that
whole image they ADD a learnable border prompt after the normalisation (`BorderPrompt`: a (3, H, W) parameter, zero init, masked to
a border `pad` pixels wide on every side, no sigmoid). The classifier is text: logits = model.scale x cos(image
embedding, text embeddings), the text embeddings computed once per run without gradients. SGD with momentum 0.9,
weight decay 0, learning rate set before every step by `lr_at` (linear warm-up, then cosine to 0).

- clip_vp (Bahng et al., hjbahng/visual_prompting `main_clip.py`): one text per target class,
  "This is a photo of a {class}" (no full stop, as Bahng's `template`). Warm-up: Bahng used 1000 steps of a
  1000-epoch run; our runs are far shorter, so warm-up = min(1000, total_steps // 10) steps. Bahng initialised
  the pad with randn; here it starts at zero (as ILM-VP's AdditiveVisualPrompt), so the first step sees plain CLIP.
  The output has no label mapping (None).
- clip_ilm (OPTML-Group/ILM-VP `experiments/clip/ilm_tp_vp.py`; landskape-ai/model-transferability
  `experiments/ilm_clip.py` for the paper's UPop runs): the "source classes" are the 81 x K texts
  `ILM_TEMPLATES[t].format(class k)`, row t * K + k (template-major, as ILM-VP's `torch.cat` of per-template
  embeddings). At the start of every epoch the argmax over those 81·K logits of every training image (current
  prompt, no grad) gives the frequency matrix, and the greedy rule binds one row per target class; training and
  evaluation then use logits = scale x cos over the K bound rows. No warm-up: per-step cosine from lr to 0, as
  ILM-VP's CosineAnnealingLR(T_max = epochs x steps per epoch). The output mapping is the K row indices.

Class names are refined as both reference repos do: lower case, '_' and '-' become spaces.
Pad width (`pad_width`): 30 on canvases of 224 px or more (Bahng and ILM-VP used 30 at 224, the paper's UPop runs
30 at 336); smaller canvases (CPU tests) scale it, max(1, round(30 H / 224)).
Images given at another side (a Task built by hand) are resized with `workers.train.to_canvas` (bilinear).
bf16 autocast on CUDA only, as `train_prompt`.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from workers.mapping import frequency_matrix, greedy_mapping
from workers.methods.base import METHODS
from workers.metrics import run_metrics
from workers.models import ModelCard
from workers.core.spec import RunSpec
from workers.train import Task, TrainOutput, fit_one, prompt_tensors, to_canvas

VP_TEMPLATE = "This is a photo of a {}"  # Bahng et al.'s main_clip.py
DEFAULT_TEMPLATE = "This is a photo of a {}."  # ILM-VP's tools/clip/templates.py
# ILM-VP's ENSEMBLE_TEMPLATES: the 80 templates of CLIP's ImageNet notebook, in that order.
ENSEMBLE_TEMPLATES = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
    "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.",
)
ILM_TEMPLATES = (DEFAULT_TEMPLATE,) + ENSEMBLE_TEMPLATES  # 81: ILM-VP's `[DEFAULT_TEMPLATE] + ENSEMBLE_TEMPLATES`
PAD = 30  # border width at 224 px
MAX_WARMUP = 1000  # Bahng's warm-up steps


def pad_width(canvas: int) -> int:
    return PAD if canvas >= 224 else max(1, round(PAD * canvas / 224))


def refine_classname(name: str) -> str:
    return name.lower().replace("_", " ").replace("-", " ")


def lr_at(step: int, base_lr: float, warmup: int, total: int) -> float:
    """Bahng's `cosine_lr` for 0-based `step`: base·(step+1)/warmup during warm-up, then half a cosine to 0 over the
    remaining steps. With warmup 0 it is CosineAnnealingLR's value at `step` (ILM-VP)."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1))) * base_lr


class BorderPrompt(nn.Module):
    """x (normalised, canvas-sized) -> x + prompt on a border `pad` pixels wide; the centre is left as it is."""

    def __init__(self, canvas: int, pad: int) -> None:
        super().__init__()
        if not 0 < 2 * pad <= canvas:
            raise ValueError(f"pad {pad} must be positive and at most half the canvas {canvas}")
        self.prompt = nn.Parameter(torch.zeros(3, canvas, canvas))
        mask = torch.ones(1, canvas, canvas)
        mask[:, pad:canvas - pad, pad:canvas - pad] = 0
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.prompt * self.mask


@torch.no_grad()
def text_classifier(model: nn.Module, templates, classes) -> torch.Tensor:
    """(T·K, D) normalised text embeddings; row t·K + k is templates[t] with class k."""
    names = [refine_classname(c) for c in classes]
    return model.encode_text([t.format(c) for t in templates for c in names]).float()


def clip_logits(model: nn.Module, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """scale x cos(image, text) for canvas-sized, normalised, prompted images x; the cosine in float32 even under
    autocast (bf16 keeps ~3 digits: +-0.1 on a logit at scale 100)."""
    features = model.features(x).float()
    with torch.autocast(x.device.type, enabled=False):
        return model.scale * features @ text.T


def check_clip(model: nn.Module) -> None:
    if not (callable(getattr(model, "encode_text", None)) and callable(getattr(model, "features", None))):
        raise TypeError(f"clip_vp and clip_ilm need a CLIP model (a ClipClassifier with encode_text and features); "
                        f"got {type(model).__name__}")


@torch.no_grad()
def prompted_logits(model, meta, prompter, text, x, bs, device) -> torch.Tensor:
    """(N, rows of text) logits of [0,1] images x under the prompt, in batches of bs, no grad, float32."""
    return torch.cat([clip_logits(model, prompter(to_canvas(x[i:i + bs].to(device), meta)), text).cpu()
                      for i in range(0, len(x), bs)])


def ilm_mapping(model, meta, prompter, text, x, y, num_target, bs, device) -> torch.Tensor:
    """Greedy one-per-target binding of the 81·K template-class rows from the current prompt's argmax counts."""
    pred = prompted_logits(model, meta, prompter, text, x, bs, device).argmax(1)
    return greedy_mapping(frequency_matrix(pred, y, len(text), num_target))


def train_clip_prompt(model: nn.Module, meta: ModelCard, task: Task, spec: RunSpec, device: torch.device,
                      ilm: bool) -> TrainOutput:
    check_clip(model)
    cfg = spec.train
    train_x, train_y, num_target = task.train_x, task.train_y, task.num_classes
    torch.manual_seed(spec.seed)
    t0 = time.perf_counter()
    text = text_classifier(model, ILM_TEMPLATES if ilm else (VP_TEMPLATE,), task.classes).to(device)
    prompter = BorderPrompt(meta.input_size, pad_width(meta.input_size)).to(device)
    opt = torch.optim.SGD(prompter.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=0)
    total = cfg.epochs * math.ceil(len(train_x) / cfg.batch_size)
    warmup = 0 if ilm else min(MAX_WARMUP, total // 10)
    state = {"mapping": torch.arange(num_target)}  # clip_vp: class k reads text row k
    if ilm and cfg.epochs == 0:
        state["mapping"] = ilm_mapping(model, meta, prompter, text, train_x, train_y, num_target,
                                       cfg.eval_batch_size, device)
    state["mapped"] = text[state["mapping"].to(device)]
    amp = device.type == "cuda"  # bf16 autocast on GPU, as the VP loop
    x_dev, y_dev = train_x.to(device), train_y.to(device)  # on the device once, not per step

    def start_epoch(epoch: int) -> None:
        if ilm:
            state["mapping"] = ilm_mapping(model, meta, prompter, text, train_x, train_y, num_target,
                                           cfg.eval_batch_size, device)
            state["mapped"] = text[state["mapping"].to(device)]

    def loss_of(idx):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = clip_logits(model, prompter(to_canvas(x_dev[idx], meta)), state["mapped"])
        return F.cross_entropy(logits.float(), y_dev[idx])

    loss = fit_one(loss_of, len(train_x), spec, opt, device, lr_at=lambda step: lr_at(step, cfg.lr, warmup, total),
                   start_epoch=start_epoch)
    train_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    mapping = state["mapping"]
    logits = prompted_logits(model, meta, prompter, text[mapping.to(device)], task.test_x, cfg.eval_batch_size, device)
    metrics = run_metrics(logits, task.test_y, spec)
    return TrainOutput(metrics, mapping.tolist() if ilm else None, loss, train_seconds,
                       time.perf_counter() - t0, prompt=prompt_tensors(prompter))


@METHODS.register("clip_vp")
def clip_vp(model: nn.Module, meta: ModelCard, task: Task, spec: RunSpec, device: torch.device) -> TrainOutput:
    return train_clip_prompt(model, meta, task, spec, device, ilm=False)


@METHODS.register("clip_ilm")
def clip_ilm(model: nn.Module, meta: ModelCard, task: Task, spec: RunSpec, device: torch.device) -> TrainOutput:
    return train_clip_prompt(model, meta, task, spec, device, ilm=True)
