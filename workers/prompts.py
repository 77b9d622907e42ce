"""Visual prompts: learnable inputs wrapped around a target image before the frozen source model.

Only the "expansive" pad prompt of the reference ILM-VP recipe for now; a new prompt kind is one
`PROMPTS.register` away.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from workers.data.base import as_float
from workers.core.registry import Registry

PROMPTS: Registry[type[torch.nn.Module]] = Registry("prompt")


def prompt_file(tensors: dict[str, Tensor]) -> bytes:
    """A learned prompt's tensors as one safetensors file (the store publishes it beside the rows)."""
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})


def read_prompt_file(data: bytes) -> dict[str, Tensor]:
    from safetensors.torch import load

    return load(data)


@PROMPTS.register("pad")
class PadPrompter(torch.nn.Module):
    """Place an image (uint8, or float in [0,1]) in the centre of a `canvas` square and learn the border around it.

    forward: pad with zeros -> add sigmoid(prompt) on the border only -> normalise with mean/std.
    The prompt is added before normalising, as in the reference code, so the border stays in [0,1]
    pixel space. With image_size == canvas there is no border (mask all zero) and the prompt is inert.
    """

    def __init__(self, canvas: int, image_size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if image_size > canvas:
            raise ValueError(f"image_size {image_size} is larger than canvas {canvas}")
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 channels, got {len(mean)} and {len(std)}")
        self.canvas = canvas
        self.image_size = image_size
        # The reference rounding: an odd margin puts the extra pixel on the left/top.
        self.l_pad = int((canvas - image_size + 1) / 2)
        self.r_pad = int((canvas - image_size) / 2)
        self.prompt = torch.nn.Parameter(torch.zeros(3, canvas, canvas))
        mask = torch.ones(1, canvas, canvas)
        mask[:, self.l_pad : self.l_pad + image_size, self.l_pad : self.l_pad + image_size] = 0
        self.register_buffer("mask", mask)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    @property
    def border(self) -> int:
        """Width of the left/top border (the right/bottom one may be one pixel narrower)."""
        return self.l_pad

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"expected images of side {self.image_size}, got shape {tuple(x.shape)}")
        x = F.pad(as_float(x), (self.l_pad, self.r_pad, self.l_pad, self.r_pad), value=0)
        x = x + torch.sigmoid(self.prompt) * self.mask
        return (x - self.mean) / self.std
