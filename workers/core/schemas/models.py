"""Model arguments (`models[].args`), one entry per registered model. Every model takes `input_size`."""
from workers.core.schema import Arg, Schema


def _input_size(default: int, multiple_of: int | None = None, why: str = "") -> Arg:
    return Arg("int", default, "side of the canvas the prompt fills" + (f" ({why})" if why else ""), lo=1,
               multiple_of=multiple_of)


_CLIP = {"templates": Arg("str", "openai", "text templates of the zero-shot head", choices=("openai", "simple")),
         "classes": Arg("str", "imagenet", "source class names of the zero-shot head", choices=("imagenet",))}

MODELS = {
    "demo_cnn": Schema("vpgrid's small CNN, pre-trained on `shapes` (20 classes); the weights ship with vpgrid", {
        "input_size": _input_size(32),
        "width": Arg("int", 16, "channels of the first block (pretrained: the shipped 16 only)", lo=1),
        "seed": Arg("int", 0, "seed of the initial weights (pretrained: the shipped 0 only)")}),
    "resnet18": Schema("torchvision ResNet-18, ImageNet-1k", {"input_size": _input_size(224)}),
    "resnet34": Schema("torchvision ResNet-34, ImageNet-1k", {"input_size": _input_size(224)}),
    "resnet50": Schema("torchvision ResNet-50, ImageNet-1k", {"input_size": _input_size(224)}),
    "deit_tiny": Schema("timm DeiT-T (patch 16), ImageNet-1k", {"input_size": _input_size(224, 16, "the patch size")}),
    "swin_tiny": Schema("timm Swin-T (window 7), ImageNet-1k", {
        "input_size": _input_size(224, 224, "every stage's map must tile into 7x7 windows as in training")}),
    "clip_vit_b32": Schema("OpenAI CLIP ViT-B/32 + zero-shot ImageNet head",
                           {"input_size": _input_size(224, 32, "the ViT patch size"), **_CLIP}),
    "clip_vit_l14": Schema("OpenAI CLIP ViT-L/14 + zero-shot ImageNet head",
                           {"input_size": _input_size(224, 14, "the ViT patch size"), **_CLIP}),
    "clip_vit_l14_336": Schema("OpenAI CLIP ViT-L/14@336px + zero-shot ImageNet head",
                               {"input_size": _input_size(336, 14, "the ViT patch size"), **_CLIP}),
}
