"""`vpgrid launch` end to end on CPU over a grid that mixes, per family, dense, built-in compressed and
checkpoint-compressed variants, with VP and the LP/FF baselines. Checkpoints are files this test writes in
each published layout; weights are random (and each row says so)."""
import pandas as pd
import pytest
import torch
import yaml

from tests.test_launch import finish, start

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    from workers.compression import compress
    from workers.models.resnet import _torchvision_resnet

    # GMP ResNet-18 at 90% in GraNet's layout: {'state_dict': {'module.' + key}}
    model, _ = compress(_torchvision_resnet("resnet18"), "magnitude", {"sparsity": 0.9})
    torch.save({"epoch": 1, "state_dict": {"module." + k: v for k, v in model.state_dict().items()}},
               d / "gmp_0.9.pth")
    # UPop CLIP ViT-B/32: the random model with two blocks' MLP and attention shrunk as UPop does, under 'model'
    from tests.test_clip import upop_prune
    from workers.models.clip import _open_clip_model

    sd = {k: v.clone() for k, v in _open_clip_model("ViT-B-32", 224).state_dict().items()}
    g = torch.Generator().manual_seed(0)
    for block in (0, 7):
        upop_prune(sd, f"visual.transformer.resblocks.{block}.", 12, keep_dims=32, keep_hidden=1536, g=g)
    torch.save({"model": sd}, d / "upop_2x.pth")
    # VVTQ DeiT-T at 4 bits, as train_VVTQ.py saves it
    from tests.test_vit import _calibrate, _save_vvtq
    from workers.models import vvtq

    _save_vvtq(_calibrate(vvtq.create("deit_tiny", 4, 224), seed=0).state_dict(), d / "vvtq_4bit.pth")
    return d


def grid(d) -> str:
    return yaml.safe_dump({
        "name": "mix",
        "models": [
            {"name": "resnet18", "weights": "random", "args": {"input_size": 32},
             "compressions": ["dense", {"method": "magnitude", "sparsity": 0.5}, {"method": "fakequant", "bits": 4},
                              {"method": "channel", "ratio": 0.5},
                              {"method": "gmp", "sparsity": 0.9,
                               "checkpoint": {"format": "gmp", "path": str(d / "gmp_{sparsity}.pth")}}]},
            {"name": "clip_vit_b32", "weights": "random", "args": {"input_size": 32, "templates": "simple"},
             "compressions": ["dense", {"method": "magnitude", "sparsity": 0.5}, {"method": "fakequant", "bits": 4},
                              {"method": "upop", "ratio": 2,
                               "checkpoint": {"format": "upop", "path": str(d / "upop_{ratio}x.pth")}}]},
            {"name": "deit_tiny", "weights": "random", "args": {"input_size": 32},
             "compressions": ["dense", {"method": "magnitude", "sparsity": 0.5}, {"method": "fakequant", "bits": 4},
                              {"method": "vvtq", "bits": 4,
                               "checkpoint": {"format": "vvtq", "path": str(d / "vvtq_{bits}bit.pth")}}]},
        ],
        "methods": ["ilm", "lp", "ff"], "datasets": ["digits"], "shots": [1], "seeds": [1],
        "train": {"epochs": 1, "batch_size": 8, "input_size": 16},
        "overrides": [{"match": {"method": "ff"}, "set": {"lr": 0.001}}],
        "resources": {"cpu": 1}, "pack_size": 8})


def test_a_mixed_grid_runs_end_to_end(tmp_path, checkpoints, ray_head):
    g = tmp_path / "mix.yaml"
    g.write_text(grid(checkpoints))
    finish(start(["launch", str(g), "--store", "s", "-q", "--address", ray_head.address], tmp_path), timeout=600)
    df = pd.read_parquet(tmp_path / "s")
    assert (df["status"] == "ok").all(), df.loc[df["status"] != "ok", "error"].tolist()
    v = df.groupby(["model", "compression"]).agg(sparsity=("sparsity", "first"), params=("params", "first"),
                                                  bits=("weight_bits", "first"), src=("weights_source", "first"))
    r18 = v.loc["resnet18"]
    assert r18.loc["dense", "sparsity"] < 0.01 and abs(r18.loc["magnitude", "sparsity"] - 0.5) < 0.01
    assert abs(r18.loc["gmp", "sparsity"] - 0.9) < 0.01 and "gmp_0.9.pth sha256:" in r18.loc["gmp", "src"]
    assert r18.loc["fakequant", "bits"] == 4 and pd.isna(r18.loc["dense", "bits"])
    assert r18.loc["channel", "params"] < 0.4 * r18.loc["dense", "params"]
    assert "random init" in r18.loc["dense", "src"]
    clip = v.loc["clip_vit_b32"]
    assert clip.loc["upop", "params"] < clip.loc["dense", "params"] and "upop_2x.pth sha256:" in clip.loc["upop", "src"]
    assert abs(clip.loc["magnitude", "sparsity"] - 0.5) < 0.01 and clip.loc["fakequant", "bits"] == 4
    deit = v.loc["deit_tiny"]
    assert deit.loc["vvtq", "bits"] == 4 and "vvtq_4bit.pth sha256:" in deit.loc["vvtq", "src"]
    assert deit.loc["fakequant", "bits"] == 4 and abs(deit.loc["magnitude", "sparsity"] - 0.5) < 0.01
    assert set(df["method"]) == {"ilm", "lp", "ff"} and len(df) == (5 + 4 + 4) * 3
