"""The eight torchvision target datasets, read from tiny copies of each real on-disk layout (no network).

Every image is a solid colour that encodes (image id, label), so a decoded image tells which file it came from:
labels, splits and overlaps are checked against what was written, not against the loader's own attributes.
"""
from __future__ import annotations

import csv
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import torchvision.datasets as tv
from PIL import Image

import workers.data.vision as vision
from workers.data import DATASETS, Crop, as_float, cached_dataset, few_shot_indices, load_dataset

pytestmark = pytest.mark.unit

NAMES = ["cifar10", "svhn", "gtsrb", "dtd", "flowers102", "oxford_pets", "eurosat", "caltech101"]
ONE_SPLIT = ["eurosat", "caltech101"]  # torchvision gives one split; we cut train/test


def colour(k: int, label: int) -> tuple[int, int, int]:
    return 40 + 70 * label, 16 + 14 * (k % 16), 16 + 14 * (k // 16)


def identify(x: torch.Tensor) -> list[tuple[int, int]]:
    """(image id, label) of each decoded solid-colour image."""
    out = []
    for r, g, b in (as_float(x).mean(dim=(2, 3)) * 255).tolist():
        label, k = round((r - 40) / 70), round((g - 16) / 14) + 16 * round((b - 16) / 14)
        assert max(abs(v - w) for v, w in zip((r, g, b), colour(k, label))) < 6, "not a written image"
        out.append((k, label))
    return out


class Writer:
    """Hands out ids and writes solid-colour image files (odd sizes, so loading must resize)."""

    def __init__(self, noise: bool = False) -> None:
        self.k, self.noise, self.written = 0, noise, {}

    def pixels(self, label: int, h: int = 32, w: int = 32) -> tuple[int, np.ndarray]:
        k, self.k = self.k, self.k + 1
        a = np.full((h, w, 3), colour(k, label), dtype=np.uint8)
        if self.noise:  # random pixels instead, to check values and orientation exactly
            a = np.random.default_rng(k).integers(0, 256, (h, w, 3), dtype=np.uint8)
        self.written[k] = a
        return k, a

    def image(self, path: Path, label: int) -> int:
        k, a = self.pixels(label, 29, 37)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(path, quality=95) if path.suffix == ".jpg" else Image.fromarray(a).save(path)
        return k


# ---- builders: each writes one real layout and returns {"train": [(id, label)], "test": [...]} ----

def build_cifar10(root: Path, w: Writer | None = None) -> dict:
    base, w, exp = root / "cifar-10-batches-py", w or Writer(), {"train": [], "test": []}
    base.mkdir(parents=True)
    batches = [(f"data_batch_{i}", "train", [(i + j) % 3 for j in range(2)]) for i in range(1, 6)]
    for fname, split, labels in batches + [("test_batch", "test", [0, 1, 2, 2])]:
        rows = []
        for label in labels:
            k, a = w.pixels(label)
            rows.append(a.transpose(2, 0, 1).reshape(-1))  # the real rows: R plane, G plane, B plane
            exp[split].append((k, label))
        entry = {"batch_label": fname, "labels": labels, "data": np.stack(rows), "filenames": [""] * len(rows)}
        (base / fname).write_bytes(pickle.dumps(entry))
    meta = {"label_names": ["airplane", "automobile", "bird"], "num_cases_per_batch": 2, "num_vis": 3072}
    (base / "batches.meta").write_bytes(pickle.dumps(meta))
    return exp


def build_svhn(root: Path, w: Writer | None = None) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    w, exp = w or Writer(), {}
    for split, digits in (("train", [0, 1, 2, 0, 1, 2, 0]), ("test", [2, 1, 0])):
        imgs = []
        for d in digits:
            k, a = w.pixels(d)
            imgs.append(a)
            exp.setdefault(split, []).append((k, d))
        y = np.array([[10 if d == 0 else d] for d in digits], dtype=np.uint8)  # the file's label 10 is digit 0
        scipy.io.savemat(root / f"{split}_32x32.mat", {"X": np.stack(imgs, axis=3), "y": y})
    return exp


def build_gtsrb(root: Path) -> dict:
    base, w, exp = root / "gtsrb", Writer(), {"train": [], "test": []}
    for c in range(3):
        folder = base / "GTSRB" / "Training" / f"{c:05d}"
        for j in range(3):
            exp["train"].append((w.image(folder / f"00000_{j:05d}.ppm", c), c))
        (folder / f"GT-{c:05d}.csv").write_text("Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n")
    rows = []
    for j, c in enumerate([2, 0, 1, 1]):
        exp["test"].append((w.image(base / "GTSRB" / "Final_Test" / "Images" / f"{j:05d}.ppm", c), c))
        rows.append([f"{j:05d}.ppm", 37, 29, 1, 1, 36, 28, c])
    with open(base / "GT-final_test.csv", "w", newline="") as f:
        out = csv.writer(f, delimiter=";")
        out.writerow(["Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"])
        out.writerows(rows)
    return exp


def build_dtd(root: Path) -> dict:
    base, w, exp = root / "dtd" / "dtd", Writer(), {}
    (base / "labels").mkdir(parents=True)
    for split, n in (("train", 2), ("val", 1), ("test", 2)):
        lines = []
        for c, cls in enumerate(["banded", "blotchy", "braided"]):
            for _ in range(n):
                name = f"{cls}_{w.k:04d}.jpg"
                exp.setdefault(split, []).append((w.image(base / "images" / cls / name, c), c))
                lines.append(f"{cls}/{name}\n")
        (base / "labels" / f"{split}1.txt").write_text("".join(lines))
    exp.pop("val")  # written but unused
    return exp


def build_flowers102(root: Path) -> dict:
    base, w, exp = root / "flowers-102", Writer(), {}
    labels, ids = [], {}
    for split, key, n in (("train", "trnid", 2), ("val", "valid", 1), ("test", "tstid", 2)):
        for c in range(3):
            for _ in range(n):
                image_id = len(labels) + 1  # 1-based, as in the real files
                exp.setdefault(split, []).append((w.image(base / "jpg" / f"image_{image_id:05d}.jpg", c), c))
                labels.append(c + 1)
                ids.setdefault(key, []).append(image_id)
    scipy.io.savemat(base / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    scipy.io.savemat(base / "setid.mat", {k: np.array([v], dtype=np.uint16) for k, v in ids.items()})
    exp.pop("val")
    return exp


PETS = [("Abyssinian", 1), ("american_bulldog", 2), ("american_pit_bull_terrier", 2)]  # (breed, species)


def build_oxford_pets(root: Path) -> dict:
    base, w, exp = root / "oxford-iiit-pet", Writer(), {}
    (base / "annotations").mkdir(parents=True)
    for split, n in (("trainval", 3), ("test", 2)):
        lines = []
        for c, (breed, species) in enumerate(PETS):
            for _ in range(n):
                image_id = f"{breed}_{w.k + 1}"
                exp.setdefault(split, []).append((w.image(base / "images" / f"{image_id}.jpg", c), c))
                lines.append(f"{image_id} {c + 1} {species} {w.k}\n")
        (base / "annotations" / f"{split}.txt").write_text("".join(lines))
    return {"train": exp["trainval"], "test": exp["test"]}


def build_eurosat(root: Path) -> dict:
    w, written = Writer(), []
    for c, cls in enumerate(["AnnualCrop", "Forest", "SeaLake"]):
        for j in range(10 if c < 2 else 6):
            written.append((w.image(root / "eurosat" / "2750" / cls / f"{cls}_{j + 1}.jpg", c), c))
    return {"all": written}


def build_caltech101(root: Path, grey: bool = False) -> dict:
    base, w, written = root / "caltech101" / "101_ObjectCategories", Writer(), []
    w.image(base / "BACKGROUND_Google" / "image_0001.jpg", 2)  # torchvision drops this class
    for c, cls in enumerate(["Faces_easy", "accordion", "airplanes"]):  # sorted: upper case first
        for j in range(5 if c else 8):
            written.append((w.image(base / cls / f"image_{j + 1:04d}.jpg", c), c))
    if grey:
        Image.new("L", (31, 23), 77).save(base / "accordion" / "image_0006.jpg")
    return {"all": written}


CLASSES = {  # what each tiny copy's classes must be: label order, readable names
    "cifar10": ["airplane", "automobile", "bird"],
    "svhn": [str(d) for d in range(10)],
    "gtsrb": vision.GTSRB_CLASSES,
    "dtd": ["banded", "blotchy", "braided"],
    "flowers102": tv.Flowers102.classes,
    "oxford_pets": ["Abyssinian", "American Bulldog", "American Pit Bull Terrier"],
    "eurosat": ["annual crop land", "forest", "sea or lake"],
    "caltech101": ["faces easy", "accordion", "airplane"],
}
BUILD = {name: globals()[f"build_{name}"] for name in NAMES}


@pytest.fixture(autouse=True)
def skip_md5(monkeypatch):
    # CIFAR-10, SVHN and Flowers102 compare their files' md5 with the real downloads, which tiny copies cannot
    # match. Only that check is replaced (a file must still exist); the loaders themselves run unchanged.
    for module in (tv.cifar, tv.svhn, tv.flowers102):
        monkeypatch.setattr(module, "check_integrity", lambda fpath, md5=None: Path(fpath).is_file())


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    out = {}
    for name in NAMES:
        root = tmp_path_factory.mktemp(name)
        out[name] = (root, BUILD[name](root))
    return out


# ---- every dataset ----

def test_registered_with_paper_sizes():
    sizes = {n: DATASETS.card(n).input_size for n in NAMES}
    assert sizes == {n: 32 if n in ("cifar10", "svhn", "gtsrb") else 128 for n in NAMES}
    assert [DATASETS.card(n).num_classes for n in NAMES] == [10, 10, 43, 47, 102, 37, 10, 101]
    assert [len(CLASSES[n]) for n in ("svhn", "gtsrb", "flowers102")] == [10, 43, 102]


@pytest.mark.parametrize("size", [None, 20])
@pytest.mark.parametrize("name", NAMES)
def test_loads_real_layout(roots, name, size):
    root, exp = roots[name]
    s = load_dataset(name, size=size, root=str(root))
    side = size or DATASETS.card(name).input_size
    for x, y in ((s.train_x, s.train_y), (s.test_x, s.test_y)):
        assert x.dtype == torch.uint8 and y.dtype == torch.int64 and x.is_contiguous()  # 4x smaller than float
        assert x.shape == (len(y), 3, side, side) and len(y) > 0
    train, test = identify(s.train_x), identify(s.test_x)
    assert [lab for _, lab in train] == s.train_y.tolist() and [lab for _, lab in test] == s.test_y.tolist()
    if name in ONE_SPLIT:
        assert not {k for k, _ in train} & {k for k, _ in test}  # never the same image in both
        assert sorted(train + test) == sorted(exp["all"])
    else:
        assert sorted(train) == sorted(exp["train"]) and sorted(test) == sorted(exp["test"])  # no val images
    assert s.classes == CLASSES[name]
    idx = few_shot_indices(s.train_y, 1, seed=3)
    assert sorted(s.train_y[idx].tolist()) == sorted(set(s.train_y.tolist()))


@pytest.mark.parametrize("name", ONE_SPLIT)
def test_one_split_datasets_get_stratified_seeded_split(roots, name):
    root, exp = roots[name]
    s = load_dataset(name, size=8, root=str(root))
    per_class = Counter(lab for _, lab in exp["all"])
    assert Counter(s.test_y.tolist()) == {c: round(0.2 * n) for c, n in per_class.items()}
    again = load_dataset(name, size=8, root=str(root))
    assert identify(again.test_x) == identify(s.test_x) and torch.equal(again.train_x, s.train_x)
    half = load_dataset(name, size=8, root=str(root), test_fraction=0.5)
    assert Counter(half.test_y.tolist()) == {c: round(0.5 * n) for c, n in per_class.items()}
    with pytest.raises(ValueError, match=f"{name}.*test_fraction"):
        load_dataset(name, size=8, root=str(root), test_fraction=1.0)


def test_stratified_split_mixes_within_class():
    y = torch.tensor([0] * 10 + [1] * 10)
    tr, te = vision.stratified_split(y, 0.2)
    assert sorted(tr.tolist() + te.tolist()) == list(range(20)) and len(te) == 4
    assert te.tolist() != [0, 1, 10, 11]  # shuffled, not the first files of each class
    assert torch.equal(vision.stratified_split(y, 0.2)[1], te)


def test_flowers_few_shot_beyond_train_images_fails(roots):
    s = load_dataset("flowers102", size=8, root=str(roots["flowers102"][0]))
    assert len(few_shot_indices(s.train_y, 2, seed=1)) == 6
    with pytest.raises(ValueError, match="only 2 samples but 3 shots"):
        few_shot_indices(s.train_y, 3, seed=1)


@pytest.mark.parametrize("name", ["cifar10", "svhn"])
def test_native_size_keeps_pixels_and_orientation(tmp_path, name):
    w = Writer(noise=True)
    exp = BUILD[name](tmp_path, w)
    s = load_dataset(name, size=32, root=str(tmp_path))
    for x, ids in ((s.train_x, exp["train"]), (s.test_x, exp["test"])):
        want = np.stack([w.written[k] for k, _ in ids]).transpose(0, 3, 1, 2)
        assert torch.equal(x, torch.from_numpy(want))
        assert torch.equal(as_float(x), torch.from_numpy(want).float() / 255)  # what ToTensor gives


def test_decode_matches_reference_resize_to_tensor():
    from torchvision import transforms as T

    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (29, 37, 3), dtype=np.uint8))
    x, y = vision.decode([(img, 4), (img.convert("L"), 1)], 20)
    ref = T.Compose([T.Resize((20, 20)), T.ToTensor()])
    assert torch.equal(as_float(x)[0], ref(img)) and y.tolist() == [4, 1]  # bit for bit: the VP path is unchanged
    assert torch.equal(as_float(x)[1], ref(img.convert("L").convert("RGB")))


def test_caltech_grey_images_become_rgb(tmp_path):
    build_caltech101(tmp_path, grey=True)
    s = load_dataset("caltech101", size=8, root=str(tmp_path), test_fraction=0.5)
    x = as_float(torch.cat([s.train_x, s.test_x]))
    grey = x[(x[:, 0] - 77 / 255).abs().amax(dim=(1, 2)) < 3 / 255]
    assert len(grey) == 1 and torch.equal(grey[0, 0], grey[0, 1]) and torch.equal(grey[0, 0], grey[0, 2])


@pytest.mark.parametrize("name", NAMES)
def test_missing_data_names_dataset_and_layout(tmp_path, name):
    with pytest.raises(FileNotFoundError, match=f"'{name}'.*no data root.*--data-root.*VPGRID_DATA.*download"):
        load_dataset(name, root=None)
    expected = tmp_path / DATASETS.card(name).layout[0].format(partition=1)
    with pytest.raises(FileNotFoundError) as e:
        load_dataset(name, root=str(tmp_path))
    assert f"'{name}'" in str(e.value) and str(expected) in str(e.value) and "data_root" in str(e.value)
    assert list(tmp_path.iterdir()) == []  # nothing created, nothing downloaded


def test_corrupt_files_are_reported(tmp_path):
    build_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match="'cifar10'.*test_batch"):
        load_dataset("cifar10", root=str(tmp_path))
    with pytest.raises(ValueError, match="partition"):
        load_dataset("dtd", root=str(tmp_path), partition=11)


def test_cached_dataset_round_trips_without_decoding_again(roots, tmp_path, monkeypatch):
    root = str(roots["dtd"][0])
    first = cached_dataset("dtd", 16, root, {}, tmp_path)
    direct = load_dataset("dtd", 16, root)

    def boom(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(vision, "decode", boom)
    with pytest.raises(AssertionError):  # the guard works: a fresh load would decode
        load_dataset("dtd", 16, root)
    second = cached_dataset("dtd", 16, root, {}, tmp_path)
    for a, b, c in zip((first.train_x, first.train_y, first.test_x, first.test_y),
                       (second.train_x, second.train_y, second.test_x, second.test_y),
                       (direct.train_x, direct.train_y, direct.test_x, direct.test_y)):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert first.classes == second.classes == direct.classes


# ---- CLIP's own preprocessing (a Crop), the uint8 memory-mapped cache ----

ODD = [(61, 37), (41, 90), (13, 20), (50, 50), (336, 17)]  # (h, w): tall, wide, smaller than the crop, square, thin


def noise(h: int, w: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def as_uint8(t: torch.Tensor) -> torch.Tensor:
    return (t * 255).round().to(torch.uint8)


@pytest.mark.parametrize("size", [64, 33])
def test_crop_is_open_clips_own_preprocessing(size):
    """Bicubic short side + centre crop, pixel for pixel what open_clip's eval transform gives (unnormalised)."""
    open_clip = pytest.importorskip("open_clip")
    ref = open_clip.image_transform(size, is_train=False, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    imgs = [noise(h, w, k) for k, (h, w) in enumerate(ODD)]
    x, _ = vision.decode([(img, 0) for img in imgs], size, Crop("bicubic", 1.0))
    for got, img in zip(x, imgs):
        assert torch.equal(got, as_uint8(ref(img)))
    squashed, _ = vision.decode([(imgs[0], 0)], size)  # the VP recipe's squash is another image
    assert not torch.equal(squashed[0], x[0])


def test_crop_pct_is_torchvisions_imagenet_eval():
    from torchvision import transforms as T

    ref = T.Compose([T.Resize(73, interpolation=T.InterpolationMode.BILINEAR), T.CenterCrop(64), T.ToTensor()])
    imgs = [noise(h, w, 10 + k) for k, (h, w) in enumerate(ODD)]
    x, _ = vision.decode([(img, 0) for img in imgs], 64, Crop("bilinear", 0.875))  # floor(64 / 0.875) = 73
    for got, img in zip(x, imgs):
        assert torch.equal(got, as_uint8(ref(img)))


def test_crop_of_float_tensors_matches_torchvision():
    from torchvision.transforms import v2

    x = torch.rand(2, 3, 8, 8)
    ref = v2.Compose([v2.Resize(40, interpolation=v2.InterpolationMode.BICUBIC, antialias=True), v2.CenterCrop(40)])
    torch.testing.assert_close(vision_base().resize(x, 40, Crop()), ref(x).clamp(0, 1), rtol=0, atol=1e-6)
    d = load_dataset("digits", 40, crop=Crop())
    assert d.train_x.shape[1:] == (3, 40, 40) and d.train_x.dtype == torch.float32
    with pytest.raises(ValueError, match="not images"):
        load_dataset("splice", 16, root="/nonexistent", crop=Crop())


def vision_base():
    import workers.data.base as base

    return base


def build_pets_noise(root: Path) -> dict:
    """An Oxford-IIIT Pet layout of noise images in odd aspect ratios: {split: [(path, label)]} in file order."""
    base, exp = root / "oxford-iiit-pet", {}
    (base / "annotations").mkdir(parents=True)
    (base / "images").mkdir()
    k = 0
    for split, n in (("trainval", 2), ("test", 1)):
        lines = []
        for c, (breed, species) in enumerate(PETS):
            for _ in range(n):
                h, w = ODD[k % len(ODD)]
                path = base / "images" / f"{breed}_{k + 1}.jpg"  # JPEG: the test decodes the same file
                noise(h, w, k).save(path)
                exp.setdefault(split, []).append((path, c))
                lines.append(f"{breed}_{k + 1} {c + 1} {species} {k}\n")
                k += 1
        (base / "annotations" / f"{split}.txt").write_text("".join(lines))
    return exp


def test_dataset_with_crop_is_decoded_from_the_original_files(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    exp = build_pets_noise(tmp_path)
    ref = open_clip.image_transform(48, is_train=False, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    s = cached_dataset("oxford_pets", 48, str(tmp_path), {}, tmp_path / "cache", Crop("bicubic", 1.0))
    for x, y, files in ((s.train_x, s.train_y, exp["trainval"]), (s.test_x, s.test_y, exp["test"])):
        assert y.tolist() == [c for _, c in files]
        for got, (path, _) in zip(x, files):
            assert torch.equal(got, as_uint8(ref(Image.open(path))))
    squashed = cached_dataset("oxford_pets", 48, str(tmp_path), {}, tmp_path / "cache")  # its own cache entry
    assert not torch.equal(squashed.train_x, s.train_x)
    assert len(list((tmp_path / "cache" / "datasets").glob("*.pt"))) == 2


def test_one_split_keeps_each_image_with_its_label_after_the_in_place_split(tmp_path):
    w = Writer(noise=True)
    files = []
    for c, cls in enumerate(["AnnualCrop", "Forest", "SeaLake"]):
        for j in range(7):
            k, a = w.pixels(c, 12, 12)
            path = tmp_path / "eurosat" / "2750" / cls / f"{cls}_{j + 1}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(a).save(path)
            files.append((a.transpose(2, 0, 1).tobytes(), c))
    s = load_dataset("eurosat", 12, str(tmp_path))
    xs, ys = torch.cat([s.train_x, s.test_x]), torch.cat([s.train_y, s.test_y])
    got = [(x.numpy().tobytes(), int(y)) for x, y in zip(xs, ys)]
    assert sorted(got) == sorted(files)
    assert s.train_x.untyped_storage().data_ptr() == s.test_x.untyped_storage().data_ptr()  # one tensor, two views


def test_permute_rows_in_place_is_indexing():
    x = torch.arange(7 * 4).view(7, 4)
    for seed in range(5):
        order = torch.randperm(7, generator=torch.Generator().manual_seed(seed))
        want = x[order]
        assert torch.equal(vision.permute_rows_(x.clone(), order), want)


def test_cache_is_uint8_memory_mapped_and_replaces_the_float_one(roots, tmp_path):
    root = str(roots["dtd"][0])
    s = cached_dataset("dtd", 16, root, {}, tmp_path)
    files = list((tmp_path / "datasets").iterdir())
    pt = [f for f in files if f.suffix == ".pt"]
    assert len(pt) == 1 and not [f for f in files if f.name.startswith(".tmp")]  # renamed into place, no leftovers
    n = len(s.train_y) + len(s.test_y)
    assert s.train_x.dtype == torch.uint8 and pt[0].stat().st_size < n * 3 * 16 * 16 + 4096  # 1 byte a value
    maps = Path("/proc/self/maps").read_text()
    assert str(pt[0]) in maps  # the tensors are the file's pages (mmap), not a copy in this process
    # A float32 cache written by the previous format, at the path it used, is not read back as this format.
    import hashlib
    import json

    old_key = json.dumps({"name": "dtd", "size": 16, "root": root, "args": {}}, sort_keys=True, default=str)
    old = tmp_path / "old" / "datasets" / f"dtd-16-{hashlib.sha256(old_key.encode()).hexdigest()[:12]}.pt"
    old.parent.mkdir(parents=True)
    torch.save({"train_x": as_float(s.train_x), "train_y": s.train_y, "test_x": as_float(s.test_x),
                "test_y": s.test_y, "classes": s.classes}, old)
    assert cached_dataset("dtd", 16, root, {}, tmp_path / "old").train_x.dtype == torch.uint8


def test_uint8_vp_path_gives_what_the_float_path_gave(roots, tmp_path):
    """The 32/128 px VP recipe on uint8 images converted per batch = the same run on the float32 tensors that
    loading gave before (uint8 / 255 up front): same mapping, loss and metrics, bit for bit."""
    from workers.models import build_model
    from workers.core.spec import RunSpec, TrainConfig
    from workers.methods.vp import train_prompt
    from workers.train import Task

    s = load_dataset("cifar10", 16, str(roots["cifar10"][0]))
    built, meta = build_model("demo_cnn", "random", {"width": 4}, tmp_path)
    spec = RunSpec(model="demo_cnn", method="ilm", dataset="cifar10", shots=None, seed=1, weights="random",
                   train=TrainConfig(epochs=3, batch_size=4, eval_batch_size=3))
    outs = []
    for conv in (lambda t: t, lambda t: t.float() / 255):
        task = Task(conv(s.train_x), s.train_y, conv(s.test_x), s.test_y, s.classes)
        outs.append(train_prompt(built.model, meta, task, spec, torch.device("cpu")))
    uint8, flt = outs
    assert s.train_x.dtype == torch.uint8
    assert uint8.mapping == flt.mapping and uint8.final_train_loss == flt.final_train_loss
    assert uint8.metrics == flt.metrics
