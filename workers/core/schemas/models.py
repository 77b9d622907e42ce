"""Model cards: one per registered model, with its help, its arguments (`models[].args`; every model takes
`input_size`) and what a run needs to know of it. The builders live in workers/models/<family>.py."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from workers.core.schema import Arg, Schema
from workers.core.schemas.datasets import DATASETS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SHAPES_MEAN = (0.5, 0.5, 0.5)  # demo_cnn's pre-training on `shapes`
SHAPES_STD = (0.25, 0.25, 0.25)


@dataclass(frozen=True, kw_only=True)
class ModelCard(Schema):
    """Help and arguments (the Schema), then the metadata. `build_model` hands the run its card with
    `input_size` set to the run's `args.input_size`."""

    input_size: int  # side of the square canvas the prompt fills
    num_classes: int  # source classes the label mapping chooses from
    source: str  # what the source classes are
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    resources: dict = field(default_factory=lambda: {"cpu": 1, "gpu": 0})  # per trial, grid may override
    head: str = "fc"  # attribute path of the final classifier (linear probing and fine-tuning replace it)
    formats: tuple[str, ...] = ("state_dict",)  # checkpoint formats the builder accepts
    # The model's own evaluation preprocessing: short side to floor(input_size / crop_pct) with this
    # interpolation, centre crop (torchvision's ImageNet eval: bilinear, 224/256; CLIP: bicubic, 1.0)
    interpolation: str = "bilinear"
    crop_pct: float = 0.875


def _card(help: str, input_size: int, multiple_of: Optional[int] = None, why: str = "", args: Optional[dict] = None,
          **meta) -> ModelCard:
    """A card whose `input_size` argument defaults to its canvas (the number is written once)."""
    size = Arg("int", input_size, "side of the canvas the prompt fills" + (f" ({why})" if why else ""), lo=1,
               multiple_of=multiple_of)
    return ModelCard(help, {"input_size": size, **(args or {})}, input_size=input_size, **meta)


def _resnet(help: str) -> ModelCard:
    return _card(help, 224, num_classes=1000, source="ImageNet-1k", head="fc", resources={"cpu": 2, "gpu": 0.25},
                 formats=("state_dict", "gmp", "lth", "sparse_transfer"))


def _timm(help: str, head: str, multiple_of: int, why: str) -> ModelCard:  # timm's pretrained_cfg for both
    return _card(help, 224, multiple_of, why, num_classes=1000, source="ImageNet-1k", head=head,
                 resources={"cpu": 2, "gpu": 0.25}, formats=("state_dict", "vvtq"), interpolation="bicubic",
                 crop_pct=0.9)


def _clip(help: str, input_size: int, patch: int, gpu: float) -> ModelCard:
    args = {"templates": Arg("str", "openai", "text templates of the zero-shot head", choices=("openai", "simple")),
            "classes": Arg("str", "imagenet", "source class names of the zero-shot head", choices=("imagenet",))}
    return _card(help, input_size, patch, "the ViT patch size", args, num_classes=1000,
                 source="ImageNet-1k class names via CLIP text embeddings", mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD,
                 resources={"cpu": 2, "gpu": gpu}, head="head", formats=("state_dict", "upop"),
                 interpolation="bicubic", crop_pct=1.0)


MODELS = {
    "demo_cnn": _card(
        "vpgrid's small CNN, pre-trained on `shapes` (20 classes); the weights ship with vpgrid", 32, args={
            "width": Arg("int", 16, "channels of the first block (pretrained: the shipped 16 only)", lo=1),
            "seed": Arg("int", 0, "seed of the initial weights (pretrained: the shipped 0 only)")},
        num_classes=DATASETS["shapes"].num_classes, source="procedural shape classes", mean=SHAPES_MEAN,
        std=SHAPES_STD, head="fc"),
    "resnet18": _resnet("torchvision ResNet-18, ImageNet-1k"),
    "resnet34": _resnet("torchvision ResNet-34, ImageNet-1k"),
    "resnet50": _resnet("torchvision ResNet-50, ImageNet-1k"),
    "deit_tiny": _timm("timm DeiT-T (patch 16), ImageNet-1k", "head", 16, "the patch size"),
    "swin_tiny": _timm("timm Swin-T (window 7), ImageNet-1k", "head.fc", 224,
                       "every stage's map must tile into 7x7 windows as in training"),
    "clip_vit_b32": _clip("OpenAI CLIP ViT-B/32 + zero-shot ImageNet head", 224, 32, 0.25),
    "clip_vit_l14": _clip("OpenAI CLIP ViT-L/14 + zero-shot ImageNet head", 224, 14, 0.5),
    "clip_vit_l14_336": _clip("OpenAI CLIP ViT-L/14@336px + zero-shot ImageNet head", 336, 14, 0.5),
}


def default_resources(models) -> dict[str, dict]:
    """Each carded model's default per-trial resources ({cpu, gpu})."""
    return {m: dict(MODELS[m].resources) for m in models if m in MODELS}


def cannot_load(spec) -> Optional[str]:
    """Why a run's model cannot read the checkpoint format its weights need (a compression's `checkpoint` or the
    model's `weights`), or None."""
    weights = spec.compression_args.get("checkpoint", spec.weights)
    if isinstance(weights, dict):
        fmt = weights.get("format", "state_dict")
    else:
        fmt = None if weights in ("pretrained", "random") else "state_dict"
    card = MODELS.get(spec.model)
    if card is None or fmt is None or fmt in card.formats:
        return None
    return f"model {spec.model!r} cannot load checkpoint format {fmt!r} (it loads: {', '.join(card.formats)})"
