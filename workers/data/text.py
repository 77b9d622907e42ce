"""Text and DNA target tasks for cross-modal reprogramming (Neekhara et al., WACV 2022), read from local files.

Each loader returns token ids, not images: `Splits.train_x`/`test_x` are int64 (N, L), where L is the `size`
passed by `load_dataset` (the sequence length; the card's `input_size` is its default). Only the
`reprogram` method (workers/crossmodal.py) consumes them.

File layouts under `root` (the run's `data_root`), one per task:

  yelp_polarity  root/yelp_polarity/train.csv, test.csv   Zhang et al. (2015) CSV, no header: label, text
                                                           (label 1 = negative, 2 = positive)
  ag_news        root/ag_news/train.csv, test.csv         Zhang CSV, no header: class, title, description
                                                           (1 World, 2 Sports, 3 Business, 4 Sci/Tech)
  dbpedia14      root/dbpedia14/train.csv, test.csv       Zhang CSV, no header: class, title, content (1..14)
  imdb           root/imdb/train.<ext>, test.<ext>        header `text,label`; ext csv, parquet, or jsonl/json
                                                           (JSON lines); label 0/1 or neg/pos (negative/positive)
  splice         root/splice/splice.data                  UCI "Molecular Biology (Splice-junction Gene
                                                           Sequences)": `class, id, sequence` lines,
                                                           class EI/IE/N; split here (seeded, stratified)

Zhang CSVs are standard CSV (quotes doubled) with newlines written as a literal backslash-n, turned back into a
space here. Title and body are joined with a space.

Tokenisation:
  words (text tasks)  lowercase, tokens = regex `[a-z0-9']+`. The vocabulary comes from the TRAINING split only:
                      the `max_vocab` most frequent tokens, ties by the token string (ascending), get ids
                      1..max_vocab in that order; id 0 is <unk> (every other token, in either split).
  characters (DNA)    A C G T D N S R -> 1..8 (ambiguity codes D N S R as in the UCI file); any other
                      character -> 0 (unknown).
Sequences are truncated to L; a shorter one is filled to L by repeating its last token (as the reprogrammer
repeats the last token over the patches past the sequence); an empty text is all <unk> (0).

Size: ids are int64, so Yelp/DBpedia's 560k training texts at L = 576 take 2.6 GB in
the dataset cache; a model whose canvas holds fewer patches (224 px: 196) only ever reads the first P tokens, so
a grid can set `train.input_size` to P.

Known differences from the original code: it tokenised with BERT's word-piece tokenizer (bert-base-cased,
28,996 ids) padded with [PAD] to 512 and repeated position 511 over patches 512..575; we use the simple word
vocabulary above and repeat the last real token.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from workers.core.schemas.layouts import ZHANG_COLUMNS, text_file
from workers.data.base import DATASETS, Splits

# Fixed, independent of the run seed: every run of a grid must see the same splice test set.
SPLIT_SEED = 0

WORD_RE = re.compile(r"[a-z0-9']+")
DNA_ALPHABET = "ACGTDNSR"  # ids 1..8; 0 = unknown
_DNA_IDS = {c: i + 1 for i, c in enumerate(DNA_ALPHABET)}

AG_NEWS_CLASSES = ["World", "Sports", "Business", "Sci/Tech"]
DBPEDIA_CLASSES = ["Company", "EducationalInstitution", "Artist", "Athlete", "OfficeHolder", "MeanOfTransportation",
                   "Building", "NaturalPlace", "Village", "Animal", "Plant", "Album", "Film", "WrittenWork"]
SPLICE_CLASSES = ["EI", "IE", "N"]


# ---- tokenisation ----

def word_tokens(text: str) -> list[str]:
    return WORD_RE.findall(text.lower())


def build_vocab(token_lists: Iterable[list[str]], max_vocab: int) -> dict[str, int]:
    """token -> id in 1..max_vocab: most frequent first, ties by the token string; 0 is left for <unk>."""
    if not isinstance(max_vocab, int) or isinstance(max_vocab, bool) or max_vocab < 1:
        raise ValueError(f"max_vocab must be a positive int, got {max_vocab!r}")
    counts: Counter[str] = Counter()
    for toks in token_lists:  # a generator is fine: 560k Yelp reviews' tokens are never all held at once
        counts.update(toks)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:max_vocab]
    return {tok: i + 1 for i, (tok, _) in enumerate(ranked)}


def to_ids(seqs: Sequence[Sequence[int]], length: int) -> torch.Tensor:
    """(N, length) int64: each sequence truncated, or filled by repeating its last id; empty -> all 0."""
    out = np.zeros((len(seqs), length), dtype=np.int64)
    for i, s in enumerate(seqs):
        s = list(s[:length])
        if s:
            out[i, :len(s)] = s
            out[i, len(s):] = s[-1]
    return torch.from_numpy(out)


def dna_ids(seq: str) -> list[int]:
    return [_DNA_IDS.get(c, 0) for c in seq.upper()]


# ---- file reading ----

def _read_zhang(name: str, root: str | None, split: str):
    columns, num_classes = ZHANG_COLUMNS[name]
    path = text_file(name, root, split)
    import pandas as pd

    df = pd.read_csv(path, header=None, dtype=str, keep_default_na=False)
    if df.shape[1] != len(columns):
        raise ValueError(f"dataset {name!r}: {path} has {df.shape[1]} columns, expected {len(columns)} "
                         f"({', '.join(columns)})")
    try:
        labels = np.array([int(v) for v in df[0]], dtype=np.int64) - 1
    except ValueError as e:
        raise ValueError(f"dataset {name!r}: {path}: non-integer label ({e}); expected 1..{num_classes}") from None
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"dataset {name!r}: {path}: labels outside 1..{num_classes}")
    texts = df[1].astype(str)
    for c in range(2, df.shape[1]):
        texts = texts + " " + df[c].astype(str)
    return [t.replace("\\n", " ") for t in texts], labels


_IMDB_LABELS = {"0": 0, "1": 1, "neg": 0, "pos": 1, "negative": 0, "positive": 1}


def _read_imdb(root: str | None, split: str):
    path = text_file("imdb", root, split)
    import pandas as pd

    if path.suffix == ".csv":
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    elif path.suffix == ".parquet":
        df = pd.read_parquet(path)
    else:
        df = pd.read_json(path, lines=True, dtype=False)
    if not {"text", "label"} <= set(df.columns):
        raise ValueError(f"dataset 'imdb': {path} has columns {list(df.columns)}; expected text,label")
    try:
        labels = np.array([_IMDB_LABELS[str(v).strip().lower()] for v in df["label"]], dtype=np.int64)
    except KeyError as e:
        raise ValueError(f"dataset 'imdb': {path}: label {e.args[0]!r} is not 0/1/neg/pos") from None
    return ["" if t is None else str(t) for t in df["text"]], labels


def _word_splits(name: str, read, classes: list[str], size: int, max_vocab: int) -> Splits:
    train_texts, train_y = read("train")
    test_texts, test_y = read("test")
    vocab = build_vocab((word_tokens(t) for t in train_texts), max_vocab)  # training split only

    def encode(texts: list[str]) -> torch.Tensor:  # tokenised again rather than kept: memory, not time, binds
        return to_ids([[vocab.get(w, 0) for w in word_tokens(t)[:size]] for t in texts], size)

    return Splits(encode(train_texts), torch.from_numpy(train_y), encode(test_texts), torch.from_numpy(test_y),
                  list(classes))


# ---- registered tasks ----

@DATASETS.register("yelp_polarity")
def yelp_polarity(size: int, root: str | None, max_vocab: int) -> Splits:
    read = lambda split: _read_zhang("yelp_polarity", root, split)  # noqa: E731
    return _word_splits("yelp_polarity", read, ["negative", "positive"], size, max_vocab)


@DATASETS.register("imdb")
def imdb(size: int, root: str | None, max_vocab: int) -> Splits:
    return _word_splits("imdb", lambda split: _read_imdb(root, split), ["negative", "positive"], size, max_vocab)


@DATASETS.register("ag_news")
def ag_news(size: int, root: str | None, max_vocab: int) -> Splits:
    read = lambda split: _read_zhang("ag_news", root, split)  # noqa: E731
    return _word_splits("ag_news", read, AG_NEWS_CLASSES, size, max_vocab)


@DATASETS.register("dbpedia14")
def dbpedia14(size: int, root: str | None, max_vocab: int) -> Splits:
    read = lambda split: _read_zhang("dbpedia14", root, split)  # noqa: E731
    return _word_splits("dbpedia14", read, DBPEDIA_CLASSES, size, max_vocab)


@DATASETS.register("splice")
def splice(size: int, root: str | None, test_fraction: float) -> Splits:
    """No `max_vocab`: the character vocabulary is fixed. UCI lists a few identical sequences under different
    ids; the split is by line, as every published split of the file is."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"dataset 'splice': test_fraction must be in (0, 1), got {test_fraction!r}")
    path = text_file("splice", root, "train")
    seqs, labels = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 3 or parts[0] not in SPLICE_CLASSES:
            raise ValueError(f"dataset 'splice': {path}:{n}: expected `class, id, sequence` with class in "
                             f"{'/'.join(SPLICE_CLASSES)}, got {line.strip()[:80]!r}")
        labels.append(SPLICE_CLASSES.index(parts[0]))
        seqs.append(dna_ids(parts[2]))
    from sklearn.model_selection import train_test_split

    y = np.array(labels, dtype=np.int64)
    train_idx, test_idx = train_test_split(np.arange(len(y)), test_size=test_fraction, stratify=y,
                                           random_state=SPLIT_SEED)
    x = to_ids(seqs, size)
    tr, te = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    yt = torch.from_numpy(y)
    return Splits(x[tr], yt[tr], x[te], yt[te], list(SPLICE_CLASSES))
