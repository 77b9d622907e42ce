"""Upstream accuracy on ImageNet val: a tiny val set in torchvision's layout and a model whose answers are known."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from workers import upstream
from workers.models import ModelCard
from workers.core.spec import RunResult

pytestmark = pytest.mark.unit

WNIDS = ["n01440764", "n01443537", "n15075141"]  # ImageNet-1k indices 0, 1 and 999
COLOURS = {0: (230, 20, 20), 1: (20, 230, 20), 2: (20, 20, 230)}  # red, green, blue
META = ModelCard("a test model", input_size=16, num_classes=1000, source="ImageNet-1k")


class ColourOracle(nn.Module):
    """Predicts index 0 for a reddest image, 1 for a greenest, 999 for a bluest."""

    def forward(self, x):
        logits = torch.full((len(x), 1000), -1.0)
        logits[torch.arange(len(x)), torch.tensor([0, 1, 999])[x.mean(dim=(2, 3)).argmax(1)]] = 1.0
        return logits


def write_val(root, layout):
    """layout: {wnid: [colour of each image]}; odd sizes, so the crop runs."""
    for wnid, colours in layout.items():
        (root / "imagenet" / "val" / wnid).mkdir(parents=True, exist_ok=True)
        for j, c in enumerate(colours):
            a = np.full((23 + j, 41, 3), COLOURS[c], dtype=np.uint8)
            Image.fromarray(a).save(root / "imagenet" / "val" / wnid / f"ILSVRC2012_val_{j:08d}.JPEG")


def test_accuracy_counts_by_hand(tmp_path):
    # 10 images: 3 red in tench (right), 2 green + 1 blue in goldfish (2 right), 3 blue + 1 red in toilet tissue.
    write_val(tmp_path, {WNIDS[0]: [0, 0, 0], WNIDS[1]: [1, 1, 2], WNIDS[2]: [2, 2, 2, 0]})
    files = upstream.imagenet_val(str(tmp_path))
    assert [y for _, y in files] == [0] * 3 + [1] * 3 + [999] * 4
    acc = upstream.upstream_accuracy(ColourOracle(), META, "v1", str(tmp_path), tmp_path / "cache", torch.device("cpu"))
    assert acc == pytest.approx((3 + 2 + 3) / 10)


def test_cached_per_variant_and_val_set(tmp_path, monkeypatch):
    write_val(tmp_path, {WNIDS[0]: [0, 1]})
    cpu, cache = torch.device("cpu"), tmp_path / "cache"
    assert upstream.upstream_accuracy(ColourOracle(), META, "v1", str(tmp_path), cache, cpu) == 0.5
    monkeypatch.setattr(upstream, "accuracy", lambda *a, **k: pytest.fail("evaluated again"))
    assert upstream.upstream_accuracy(ColourOracle(), META, "v1", str(tmp_path), cache, cpu) == 0.5
    with pytest.raises(pytest.fail.Exception):  # another variant is evaluated
        upstream.upstream_accuracy(ColourOracle(), META, "v2", str(tmp_path), cache, cpu)
    write_val(tmp_path, {WNIDS[1]: [1]})  # another val set is evaluated
    with pytest.raises(pytest.fail.Exception):
        upstream.upstream_accuracy(ColourOracle(), META, "v1", str(tmp_path), cache, cpu)


def test_null_without_val_set_or_imagenet_source(tmp_path):
    cpu = torch.device("cpu")
    assert upstream.upstream_accuracy(ColourOracle(), META, "v", str(tmp_path), tmp_path, cpu) is None
    assert upstream.upstream_accuracy(ColourOracle(), META, "v", None, tmp_path, cpu) is None
    write_val(tmp_path, {WNIDS[0]: [0]})
    shapes = ModelCard("a test model", input_size=16, num_classes=20, source="procedural shape classes")
    assert upstream.upstream_accuracy(ColourOracle(), shapes, "v", str(tmp_path), tmp_path, cpu) is None
    (tmp_path / "imagenet" / "val" / "cats").mkdir()
    with pytest.raises(ValueError, match="cats.*wnid"):
        upstream.imagenet_val(str(tmp_path))


def test_model_preprocessing_is_torchvisions_eval_transform(tmp_path):
    """The val images reach the model as torchvision's Resize(floor(s/0.875)) + CenterCrop(s) + Normalize."""
    from torchvision import transforms as T

    (tmp_path / "imagenet" / "val" / WNIDS[0]).mkdir(parents=True)
    path = tmp_path / "imagenet" / "val" / WNIDS[0] / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (29, 51, 3), dtype=np.uint8)).save(path)
    seen = []

    class Spy(nn.Module):
        def forward(self, x):
            seen.append(x)
            return torch.zeros(len(x), 1000)

    upstream.accuracy(Spy(), META, [(path, 0)], torch.device("cpu"))
    ref = T.Compose([T.Resize(18), T.CenterCrop(16), T.ToTensor(), T.Normalize(META.mean, META.std)])
    torch.testing.assert_close(seen[0][0], ref(Image.open(path)), rtol=0, atol=1e-6)


def test_the_column_is_in_the_store_and_reports_show_it():
    import pandas as pd
    import pyarrow as pa

    from orchestrator.report.runs import run_table
    from orchestrator.report.summary import markdown, summary
    from workers.core.store import SCHEMA

    assert SCHEMA.field("upstream_accuracy").type == pa.float64()
    empty = {f: None for f in RunResult.__dataclass_fields__}  # a row of an older store: settings unknown
    rows = [empty | dict(run_key=str(a), seed=int(10 * a), status="ok", model="resnet18", compression="gmp", compression_level=0.9, shots=None,
                 dataset="dtd", method="ilm", accuracy=a, ece=0.1, conf_correct=0.5, kl_incorrect=1.0,
                 upstream_accuracy=0.698) for a in (0.4, 0.6)]
    table = summary(run_table(pd.DataFrame(rows)))
    assert table["upstream_accuracy"].tolist() == [0.698]
    assert "resnet18 gmp@0.9 (ImageNet-1k 69.8)" in markdown(table)


class ColourFamily(nn.Module):
    """A shapes 'classifier' that only sees colour: warm images -> class 0 (warm_disc), cool -> 10 (cool_disc);
    right on exactly the held-out images of those two classes."""

    def __init__(self, meta):
        super().__init__()
        self.mean, self.std = torch.tensor(meta.mean).view(1, 3, 1, 1), torch.tensor(meta.std).view(1, 3, 1, 1)

    def forward(self, x):
        x = x * self.std + self.mean  # back to [0, 1] pixels
        warm = x[:, 0].amax(dim=(1, 2)) > x[:, 2].amax(dim=(1, 2))
        logits = torch.zeros(len(x), 20)
        logits[torch.arange(len(x)), torch.where(warm, 0, 10)] = 1.0
        return logits


def test_a_shapes_model_is_scored_on_a_held_out_shapes_split(tmp_path):
    from workers.data.shapes import _split
    from workers.models import MODELS

    meta = MODELS.card("demo_cnn")
    model = ColourFamily(meta)
    got = upstream.upstream_accuracy(model, meta, "v", None, tmp_path, torch.device("cpu"), "demo_cnn")
    # independently: the held-out split rendered straight from its generation stream (seed 2s + 1), scored by hand
    x, y = _split(upstream.SHAPES_HELD_OUT["n_test"], meta.input_size, 2 * upstream.SHAPES_HELD_OUT["seed"] + 1)
    warm = x[:, 0].amax(dim=(1, 2)) > x[:, 2].amax(dim=(1, 2))
    expect = float(((torch.where(warm, 0, 10) == y)).double().mean())
    assert got == pytest.approx(expect) and 0.02 < got < 0.2  # two classes of 20 right, nearly all of their images
    assert len(list((tmp_path / "upstream").glob("v-*.json"))) == 1
    # another model name (an ImageNet one, no val set): null, not the shapes number
    assert upstream.upstream_accuracy(model, meta, "w", None, tmp_path, torch.device("cpu"), "resnet18") is None
