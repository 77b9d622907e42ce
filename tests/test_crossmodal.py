"""Cross-modal reprogramming: the text/DNA loaders (workers/data/text.py) and the `reprogram` method."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import workers.methods.crossmodal as cm
import workers.data.text as text  # noqa: F401  (registers the text and DNA datasets)
from workers.data import DATASETS, load_dataset
from workers.methods import METHODS
from workers.models import build_model
from workers.run import Context, run
from workers.core.spec import RunSpec, TrainConfig
from workers.train import Task


pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_thread")]


def write(path: Path, content: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    return path


# ---- word tasks: tokenisation and vocabulary, worked by hand ----

# Zhang layout (no header, label 1-based), quotes doubled, a comma inside a quoted field, an empty text.
YELP_TRAIN = '"1","The cat sat, the cat ran."\n"2","A dog\'s day: the DOG ran!"\n"1",""\n'
# Test words never enter the vocabulary, however frequent (zebra would rank first if they did);
# a literal backslash-n (Zhang's newline) separates two words.
YELP_TEST = '"2","zebra zebra zebra zebra cat\\nthe"\n'


def test_word_vocabulary_ids_padding_and_truncation(tmp_path):
    write(tmp_path / "yelp_polarity" / "train.csv", YELP_TRAIN)
    write(tmp_path / "yelp_polarity" / "test.csv", YELP_TEST)
    # Train counts: the 3, cat 2, ran 2, then a, day, dog, dog's, sat once each (ties: by string).
    # max_vocab 4 -> the 1, cat 2, ran 3, a 4; everything else is <unk> 0.
    s = load_dataset("yelp_polarity", size=8, root=str(tmp_path), max_vocab=4)
    assert s.train_x.dtype == torch.int64 and s.train_y.dtype == torch.int64
    assert s.train_x.tolist() == [
        [1, 2, 0, 1, 2, 3, 3, 3],  # the cat sat the cat ran, then the last token repeated
        [4, 0, 0, 1, 0, 3, 3, 3],  # a dog's day the dog ran
        [0] * 8,  # empty text: all <unk>
    ]
    assert s.train_y.tolist() == [0, 1, 0] and s.classes == ["negative", "positive"]
    assert s.test_x.tolist() == [[0, 0, 0, 0, 2, 1, 1, 1]] and s.test_y.tolist() == [1]
    short = load_dataset("yelp_polarity", size=4, root=str(tmp_path), max_vocab=4)
    assert short.train_x.tolist() == [[1, 2, 0, 1], [4, 0, 0, 1], [0] * 4]  # truncated
    # A larger vocabulary keeps the same order: a 4, day 5, dog 6, dog's 7, sat 8.
    full = load_dataset("yelp_polarity", size=6, root=str(tmp_path))
    assert full.train_x[:2].tolist() == [[1, 2, 8, 1, 2, 3], [4, 7, 5, 1, 6, 3]]


def test_ag_news_joins_title_and_description(tmp_path):
    write(tmp_path / "ag_news" / "train.csv",
          '3,"Stocks, bonds","Markets ""rally"" today"\n1,War,Peace talks\n')
    write(tmp_path / "ag_news" / "test.csv", '4,"Chips","stocks"\n')
    s = load_dataset("ag_news", size=5, root=str(tmp_path), max_vocab=100)
    # Tokens: [stocks bonds markets rally today] [war peace talks]; all counts 1 -> alphabetical ids:
    # bonds 1, markets 2, peace 3, rally 4, stocks 5, talks 6, today 7, war 8.
    assert s.train_x.tolist() == [[5, 1, 2, 4, 7], [8, 3, 6, 6, 6]]
    assert s.train_y.tolist() == [2, 0] and s.test_y.tolist() == [3]
    assert s.test_x.tolist() == [[0, 5, 5, 5, 5]]
    assert s.classes == ["World", "Sports", "Business", "Sci/Tech"]


IMDB_ROWS = [{"text": "Great, great film", "label": 1}, {"text": "bad film", "label": 0},
             {"text": "", "label": 0}]


@pytest.mark.parametrize("ext", ["csv", "parquet", "jsonl"])
def test_imdb_reads_csv_parquet_and_json_lines(tmp_path, ext):
    d = tmp_path / "imdb"
    d.mkdir()
    for split in ("train", "test"):
        df = pd.DataFrame(IMDB_ROWS)
        if ext == "csv":
            df.to_csv(d / f"{split}.csv", index=False)
        elif ext == "parquet":
            df.to_parquet(d / f"{split}.parquet")
        else:
            (d / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in IMDB_ROWS))
    s = load_dataset("imdb", size=4, root=str(tmp_path))
    # film 2, great 2 -> film 1, great 2 (tie by string); bad 3
    assert s.train_x.tolist() == [[2, 2, 1, 1], [3, 1, 1, 1], [0, 0, 0, 0]]
    assert s.train_y.tolist() == [1, 0, 0] and torch.equal(s.test_x, s.train_x)


def test_imdb_accepts_neg_pos_labels_and_rejects_two_formats(tmp_path):
    write(tmp_path / "imdb" / "train.csv", 'text,label\n"good, fine",pos\nawful,neg\n')
    write(tmp_path / "imdb" / "test.csv", "text,label\nfine,positive\n")
    s = load_dataset("imdb", size=2, root=str(tmp_path))
    assert s.train_y.tolist() == [1, 0] and s.test_y.tolist() == [1]
    pd.DataFrame(IMDB_ROWS).to_parquet(tmp_path / "imdb" / "train.parquet")
    with pytest.raises(ValueError, match="several train files"):
        load_dataset("imdb", size=2, root=str(tmp_path))


def test_missing_files_name_the_task_root_and_expected_layout(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_dataset("ag_news", root=str(tmp_path))
    msg = str(e.value)
    assert "'ag_news'" in msg and str(tmp_path / "ag_news" / "train.csv") in msg and "title" in msg
    with pytest.raises(FileNotFoundError, match="splice.data"):
        load_dataset("splice", root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="'imdb'.*no data root.*text,label"):
        load_dataset("imdb")
    write(tmp_path / "dbpedia14" / "train.csv", '1,"t","c"\n')
    with pytest.raises(FileNotFoundError, match=r"dbpedia14/test\.csv"):
        load_dataset("dbpedia14", root=str(tmp_path))


def test_registered_metas():
    assert {n: (DATASETS.card(n).input_size, DATASETS.card(n).num_classes) for n in
            ("yelp_polarity", "imdb", "ag_news", "dbpedia14", "splice")} == {
        "yelp_polarity": (576, 2), "imdb": (576, 2), "ag_news": (576, 4), "dbpedia14": (576, 14), "splice": (60, 3)}
    assert METHODS.card("reprogram").kind == "crossmodal"


# ---- splice: character tokens and the seeded stratified split ----

def _splice_file(root: Path, counts=(30, 30, 40)) -> list[tuple[str, str]]:
    g = torch.Generator().manual_seed(5)
    rows = []
    for cls, n in zip(("EI", "IE", "N"), counts):
        for i in range(n):
            seq = "".join("ACGT"[j] for j in torch.randint(0, 4, (60,), generator=g).tolist())
            rows.append((cls, seq))
    rows[0] = ("EI", "ACGTDNSRXA" + rows[0][1][10:])  # ambiguity codes and one unknown character
    lines = [f"{c},SEQ-{i},       {s}" for i, (c, s) in enumerate(rows)]
    write(root / "splice" / "splice.data", "\n".join(lines) + "\n")
    return rows


def test_splice_characters_and_stratified_seeded_split(tmp_path):
    rows = _splice_file(tmp_path)
    s = load_dataset("splice", root=str(tmp_path))
    assert s.classes == ["EI", "IE", "N"] and s.train_x.shape[1] == 60
    # Counts stratified: 20% of 30/30/40 in the test split.
    assert torch.bincount(s.test_y, minlength=3).tolist() == [6, 6, 8]
    assert torch.bincount(s.train_y, minlength=3).tolist() == [24, 24, 32]
    ids = {c: i + 1 for i, c in enumerate("ACGTDNSR")}
    expected = {tuple(ids.get(ch, 0) for ch in seq): ["EI", "IE", "N"].index(c) for c, seq in rows}
    train = {tuple(r): int(y) for r, y in zip(s.train_x.tolist(), s.train_y.tolist())}
    test = {tuple(r): int(y) for r, y in zip(s.test_x.tolist(), s.test_y.tolist())}
    assert not set(train) & set(test)  # no overlap
    assert {**train, **test} == expected  # every line once, with its label
    assert (1, 2, 3, 4, 5, 6, 7, 8, 0, 1) in {r[:10] for r in {**train, **test}}  # ACGTDNSR, X unknown, A
    again = load_dataset("splice", root=str(tmp_path))
    assert torch.equal(again.test_x, s.test_x) and torch.equal(again.train_y, s.train_y)  # fixed split seed
    other = load_dataset("splice", root=str(tmp_path), test_fraction=0.5)
    assert len(other.test_y) == 50
    padded = load_dataset("splice", size=64, root=str(tmp_path))
    assert torch.equal(padded.train_x[:, :60], s.train_x)
    assert torch.equal(padded.train_x[:, 60:], s.train_x[:, 59:60].expand(-1, 4))  # last base repeated


def test_splice_rejects_malformed_lines(tmp_path):
    write(tmp_path / "splice" / "splice.data", "XX,ID-1,ACGT\n")
    with pytest.raises(ValueError, match=r"splice\.data:1"):
        load_dataset("splice", root=str(tmp_path))


# ---- the reprogrammer: tiling and the pixel transform ----

def _reference_canvas(weight: torch.Tensor, tokens: torch.Tensor, canvas: int) -> torch.Tensor:
    """Independent loop: patch i at row i // n, col i % n; past the sequence, the last token."""
    n = canvas // 16
    out = torch.zeros(len(tokens), 3, canvas, canvas)
    for b in range(len(tokens)):
        for i in range(n * n):
            tok = tokens[b, min(i, tokens.shape[1] - 1)]
            r, c = i // n, i % n
            out[b, :, r * 16:(r + 1) * 16, c * 16:(c + 1) * 16] = torch.tanh(weight[tok]).view(3, 16, 16)
    return out


@pytest.mark.parametrize("length", [5, 16, 23])
def test_tiling_matches_an_independent_loop(length):
    g = torch.Generator().manual_seed(0)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    prog = cm.Reprogrammer(30, 64, mean, std)
    with torch.no_grad():
        prog.embedding.weight.copy_(torch.randn(30, 768, generator=g) * 2)
    tokens = torch.randint(0, 30, (3, length), generator=g)
    z = _reference_canvas(prog.embedding.weight.detach(), tokens, 64)
    torch.testing.assert_close(prog.tile(tokens), z)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(prog(tokens), ((z * s + m).clamp(0, 1) - m) / s)


def test_pixel_transform_unnormalises_clamps_and_normalises():
    """tanh is read in the model's normalised space: pixel = clamp(tanh * std + mean, 0, 1)."""
    prog = cm.Reprogrammer(3, 16, (0.5, 0.5, 0.5), (1.0, 1.0, 1.0))
    with torch.no_grad():
        prog.embedding.weight.copy_(torch.tensor([[20.0], [-20.0], [0.2]]).expand(3, 768))
    out = prog(torch.tensor([[0], [1], [2]]))
    assert torch.allclose(out[0], torch.tensor(0.5))  # tanh 1 -> pixel 1.5 clamped to 1 -> (1 - 0.5) / 1
    assert torch.allclose(out[1], torch.tensor(-0.5))  # tanh -1 -> pixel -0.5 clamped to 0
    assert torch.allclose(out[2], torch.tanh(torch.tensor(0.2)))  # inside [0, 1]: unchanged
    vit = cm.Reprogrammer(3, 16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # the original ViT: pixel = (tanh + 1) / 2
    with torch.no_grad():
        vit.embedding.weight.copy_(prog.embedding.weight)
    pixels = vit(torch.tensor([[0], [1], [2]])) * 0.5 + 0.5
    tanh = torch.tanh(prog.embedding.weight[:, 0]).view(3, 1, 1, 1)
    torch.testing.assert_close(pixels, ((tanh + 1) / 2).expand(3, 3, 16, 16))
    with pytest.raises(ValueError, match="multiple of the 16"):
        cm.Reprogrammer(3, 40, (0.5,) * 3, (0.5,) * 3)


# ---- label mapping ----

def test_round_robin_max_mapping_by_hand():
    assert cm.round_robin_sources(6, 2, per_class=3).tolist() == [[0, 2, 4], [1, 3, 5]]
    assert cm.round_robin_sources(1000, 2).tolist() == [list(range(0, 20, 2)), list(range(1, 20, 2))]
    assert cm.round_robin_sources(25, 3).tolist() == [[0, 3, 6, 9, 12, 15, 18, 21], [1, 4, 7, 10, 13, 16, 19, 22],
                                                     [2, 5, 8, 11, 14, 17, 20, 23]]  # floor(25/3) = 8 each
    logits = torch.tensor([[0.0, 5.0, 1.0, 2.0, 3.0, -1.0], [9.0, -2.0, 0.0, -3.0, 0.0, -4.0]])
    mapped = cm.max_mapped_logits(logits, cm.round_robin_sources(6, 2, per_class=3))
    assert mapped.tolist() == [[3.0, 5.0], [9.0, -2.0]]
    with pytest.raises(ValueError, match="at least as many source classes"):
        cm.round_robin_sources(3, 4)


# ---- training ----

@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    built, meta = build_model("demo_cnn", "random", {"width": 4, "input_size": 64}, tmp_path_factory.mktemp("m"))
    return built.model, meta


def _toy(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0 uses words 1..5, class 1 words 6..10: separable by any single token."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    return torch.randint(1, 6, (n, 12), generator=g) + 5 * y[:, None], y


def test_training_on_a_separable_toy_task_lowers_the_loss(demo):
    model, meta = demo
    x, y = _toy(16, 0)
    tx, ty = _toy(16, 1)
    spec = RunSpec(model="demo_cnn", method="reprogram", dataset="toy", shots=None, seed=1,
                   train=TrainConfig(epochs=20, lr=0.1, batch_size=4))
    torch.manual_seed(spec.seed)  # the method's own initial embedding
    prog = cm.Reprogrammer(11, meta.input_size, meta.mean, meta.std)
    with torch.no_grad():
        before = F.cross_entropy(cm.max_mapped_logits(model(prog(x)), cm.round_robin_sources(20, 2)), y).item()
    out = cm.reprogram(model, meta, Task(x, y, tx, ty, ["a", "b"]), spec, torch.device("cpu"))
    # The random frozen CNN barely reacts to its input (logits move by ~1e-3), so the drop is small but real:
    # a method that did not train the embedding would stay at the initial loss.
    assert math.isfinite(out.final_train_loss) and out.final_train_loss < before - 0.005
    assert out.metrics["accuracy"] == 1.0 and out.metrics["n"] == 16  # held-out texts, same words
    assert out.mapping is None


def test_reprogram_refuses_image_data(demo):
    model, meta = demo
    x = torch.rand(4, 3, 8, 8)
    task = Task(x, torch.tensor([0, 1, 0, 1]), x, torch.tensor([0, 1, 0, 1]), ["a", "b"])
    spec = RunSpec(model="demo_cnn", method="reprogram", dataset="digits", shots=None, seed=0)
    with pytest.raises(TypeError, match="token ids"):
        cm.reprogram(model, meta, task, spec, torch.device("cpu"))


def test_calibration_inputs_are_normalised_canvases(demo):
    _, meta = demo
    tokens, _ = _toy(5, 0)
    a = cm.calibration_inputs(tokens, meta)
    assert a.shape == (5, 3, 64, 64) and torch.equal(a, cm.calibration_inputs(tokens, meta))
    pixels = a * 0.25 + 0.5  # demo_cnn: mean 0.5, std 0.25
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6


@pytest.mark.parametrize("compression,args", [("dense", {}), ("fakequant", {"bits": 8, "act_bits": 8}),
                                              ("channel", {"ratio": 0.25})])
def test_end_to_end_run_on_tiny_ag_news(tmp_path, compression, args):
    """Through workers.run: the variant's calibration batch (activation ranges, channel tracing) sees token data."""
    words = [["war", "army", "peace", "treaty"], ["goal", "match", "team", "cup"],
             ["stocks", "bank", "market", "profit"], ["chip", "robot", "software", "space"]]
    g = torch.Generator().manual_seed(0)

    def rows(n_per_class: int) -> str:
        out = []
        for c, ws in enumerate(words):
            for _ in range(n_per_class):
                pick = [ws[i] for i in torch.randint(0, 4, (6,), generator=g).tolist()]
                out.append(f'{c + 1},"{pick[0].title()}, {pick[1]}","{" ".join(pick[2:])}"')
        return "\n".join(out) + "\n"

    root = tmp_path / "data"
    write(root / "ag_news" / "train.csv", rows(3))
    write(root / "ag_news" / "test.csv", rows(2))
    spec = RunSpec(model="demo_cnn", weights="random", model_args={"width": 4, "input_size": 64}, method="reprogram",
                   compression=compression, compression_args=args, dataset="ag_news", shots=2, seed=1,
                   train=TrainConfig(epochs=2, lr=1e-3, batch_size=4, input_size=16))
    row = run(spec, Context(tmp_path / "cache", torch.device("cpu"), data_root=str(root)))
    assert row.status == "ok", row.error
    assert row.n_train == 8 and row.n_test == 8 and len(row.per_class_accuracy) == 4
    assert 0 <= row.accuracy <= 1 and math.isfinite(row.final_train_loss) and row.label_mapping is None
