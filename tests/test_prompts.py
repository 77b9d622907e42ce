"""PadPrompter against hand computations of the reference ILM-VP pad prompt."""
import pytest
import torch

from workers.prompts import PROMPTS, PadPrompter

pytestmark = pytest.mark.unit

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _norm(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


@pytest.mark.parametrize(
    "canvas, image, l_pad, r_pad",
    [
        (6, 2, 2, 2),  # margin 4: int(5/2)=2 left, int(4/2)=2 right
        (5, 2, 2, 1),  # margin 3: int(4/2)=2 left, int(3/2)=1 right (extra pixel left/top)
        (224, 128, 48, 48),
        (224, 32, 96, 96),
        (4, 4, 0, 0),
    ],
)
def test_pad_sizes(canvas, image, l_pad, r_pad):
    p = PadPrompter(canvas, image, MEAN, STD)
    assert (p.l_pad, p.r_pad, p.border) == (l_pad, r_pad, l_pad)
    assert l_pad + image + r_pad == canvas
    assert p.mask.sum().item() == canvas * canvas - image * image
    out = p(torch.rand(2, 3, image, image))
    assert out.shape == (2, 3, canvas, canvas)


def test_image_region_and_border_by_hand():
    torch.manual_seed(0)
    p = PadPrompter(5, 2, MEAN, STD)
    with torch.no_grad():
        p.prompt.copy_(torch.randn(3, 5, 5))
    x = torch.rand(3, 3, 2, 2)
    out = p(x)
    # Independent build: canvas of sigmoid(prompt), image pasted at rows/cols 2..3 (l_pad 2, r_pad 1).
    expected = torch.sigmoid(p.prompt.detach()).expand(3, 3, 5, 5).clone()
    expected[:, :, 2:4, 2:4] = x
    torch.testing.assert_close(out, _norm(expected))
    # The image region is exactly the normalised image: no prompt leaks in.
    assert torch.equal(out[:, :, 2:4, 2:4], _norm(x))
    border = torch.ones(5, 5, dtype=torch.bool)
    border[2:4, 2:4] = False
    prompt_n = _norm(torch.sigmoid(p.prompt.detach())[None])
    torch.testing.assert_close(out[:, :, border], prompt_n[:, :, border].expand(3, 3, -1))


def test_zero_prompt_border_is_normalised_half():
    p = PadPrompter(6, 2, MEAN, STD)
    out = p(torch.zeros(1, 3, 2, 2))
    for c in range(3):
        assert out[0, c, 0, 0].item() == pytest.approx((0.5 - MEAN[c]) / STD[c])
        assert out[0, c, 5, 5].item() == pytest.approx((0.5 - MEAN[c]) / STD[c])
        assert out[0, c, 2, 2].item() == pytest.approx((0.0 - MEAN[c]) / STD[c])


def test_gradient_only_on_border():
    p = PadPrompter(6, 2, MEAN, STD)
    p(torch.rand(4, 3, 2, 2)).sum().backward()
    grad = p.prompt.grad
    assert torch.all(grad[:, 2:4, 2:4] == 0)
    border = torch.ones(6, 6, dtype=torch.bool)
    border[2:4, 2:4] = False
    # d/dprompt of sum over 4 images of (sigmoid(prompt) - mean) / std = 4 * 0.25 / std at prompt 0.
    expected = (4 * 0.25 / torch.tensor(STD)).view(3, 1).expand(3, int(border.sum()))
    torch.testing.assert_close(grad[:, border], expected)


def test_full_canvas_has_no_border():
    p = PadPrompter(4, 4, MEAN, STD)
    x = torch.rand(1, 3, 4, 4)
    assert p.mask.sum().item() == 0
    torch.testing.assert_close(p(x), _norm(x))


def test_image_larger_than_canvas():
    with pytest.raises(ValueError, match="image_size 10.*canvas 8"):
        PadPrompter(8, 10, MEAN, STD)


def test_registry():
    assert PROMPTS.get("pad") is PadPrompter
    assert PROMPTS.card("pad") is None
    assert "pad" in PROMPTS.names()
