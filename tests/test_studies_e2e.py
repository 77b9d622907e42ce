"""`vpgrid launch` end to end on CPU over a grid of studies, as grids/paper.yaml is built: a torchvision dataset
read from a data root (EuroSAT's real folder layout, tiny), CLIP ViT-B/32 prompting (Bahng VP and ILM-VP), and
cross-modal reprogramming of a CNN to a text task. Weights are random, and each row says so."""
import pandas as pd
import pytest
import yaml

from tests.test_launch import finish, start
from tests.test_vision_data import build_eurosat

pytestmark = pytest.mark.integration


def write_ag_news(root) -> None:
    d = root / "ag_news"
    d.mkdir(parents=True)
    rows = [(1, "war talks", "troops border peace"), (2, "match won", "goal team league"),
            (3, "stocks rally", "markets shares bank"), (4, "new chips", "software cloud robot")]
    for split, n in (("train", 3), ("test", 2)):
        lines = [f'{c},"{t} {i}","{b}"' for c, t, b in rows for i in range(n)]
        (d / f"{split}.csv").write_text("\n".join(lines) + "\n")


def test_studies_with_clip_and_crossmodal_run_end_to_end(tmp_path, ray_head):
    data = tmp_path / "data"
    build_eurosat(data)
    write_ag_news(data)
    grid = {
        "name": "studies", "shots": [2], "seeds": [1], "pack_size": 8, "resources": {"cpu": 1},
        "train": {"epochs": 1, "batch_size": 4, "input_size": 16},
        "studies": [
            {"name": "vision", "models": [{"name": "demo_cnn", "weights": "random", "args": {"width": 4}}],
             "methods": ["ilm"], "datasets": ["eurosat"]},
            {"name": "clip",
             "models": [{"name": "clip_vit_b32", "weights": "random", "args": {"templates": "simple", "input_size": 64},
                         "compressions": ["dense", {"method": "magnitude", "sparsity": 0.5}]}],
             "methods": ["clip_vp", "clip_ilm"], "datasets": ["eurosat"], "train": {"lr": 40}},
            {"name": "crossmodal",
             "models": [{"name": "demo_cnn", "weights": "random", "args": {"width": 4, "input_size": 64}}],
             "methods": ["reprogram"], "datasets": ["ag_news"], "shots": ["full"],
             "train": {"lr": 0.001, "input_size": 16}},
        ]}
    g = tmp_path / "studies.yaml"
    g.write_text(yaml.safe_dump(grid))
    finish(start(["launch", str(g), "--store", "s", "-q", "--data-root", str(data), "--address", ray_head.address],
                 tmp_path), timeout=600)
    df = pd.read_parquet(tmp_path / "s")
    assert (df["status"] == "ok").all(), df.loc[df["status"] != "ok", "error"].tolist()
    assert sorted(df["method"]) == ["clip_ilm", "clip_ilm", "clip_vp", "clip_vp", "ilm", "reprogram"]
    assert (df["weights_source"].str.contains("random init")).all()
    eurosat = df[df["dataset"] == "eurosat"]
    # 2 shots x 3 classes; 20% of each class held out: round(0.2 x 10, 10, 6) = 2 + 2 + 1
    assert (eurosat["n_train"] == 6).all() and (eurosat["n_test"] == 5).all()
    text = df[df["dataset"] == "ag_news"].iloc[0]
    assert (text["n_train"], text["n_test"]) == (12, 8) and len(text["per_class_accuracy"]) == 4
    clip = df[df["model"] == "clip_vit_b32"]
    assert set(clip["compression"]) == {"dense", "magnitude"}
    ilm = clip[clip["method"] == "clip_ilm"]
    assert all(len(m) == 3 for m in ilm["label_mapping"])  # one (template, class) per EuroSAT class
