"""CLIP zero-shot source models, OpenAI/open_clip state dicts, TorchScript archives and UPop-pruned checkpoints,
checked against independent computations (open_clip's own encoders, hand-written attention).

Fast on 2 cores: random-weight ViT-B/32 at a 64-px canvas with the single "a photo of a {}." template; the
1000-class head is computed once (about 30 s on CPU) and every other build reuses it through the cache, which is
keyed by the text tower's weights.
"""
from __future__ import annotations

import math
import pickle
import urllib.error
import zipfile

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import workers.models.clip  # noqa: F401  (registers the CLIP models)
from workers import checkpoints
from workers.checkpoints import CheckpointError, load_strict, read_checkpoint, read_torchscript_tensors, resolve
from workers.models import MODELS, build_model
from workers.core.schemas.models import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from workers.models.clip import ClipClassifier
from workers.models.clip_weights import (PrunedAttention, apply_upop_shapes, checkpoint_filter_fn,
                                         upop_checkpoint_filter_fn)

pytestmark = pytest.mark.unit

open_clip = pytest.importorskip("open_clip")
ARGS = {"templates": "simple", "input_size": 64}  # 2x2 patches + class token: a fast image tower


@pytest.fixture(scope="module")
def rand(tmp_path_factory):
    """The random ViT-B/32 as vpgrid builds it, and open_clip's own model made the same way (seed 0)."""
    cache = tmp_path_factory.mktemp("clip_cache")
    built, meta = build_model("clip_vit_b32", "random", ARGS, cache)
    torch.manual_seed(0)
    ref = open_clip.create_model("ViT-B-32", pretrained=None, force_quick_gelu=True, force_image_size=64).eval()
    return built, meta, ref, cache


def head_files(cache):
    return sorted((cache / "clip_heads").glob("*.pt"))


def model_key(k: str) -> str:
    """open_clip CLIP key -> ClipClassifier key (the text modules live under `text.`)."""
    return k if k.startswith("visual.") or k == "logit_scale" else f"text.{k}"


def ref_block(x, sd, p, heads, mask=None):
    """One CLIP residual block from raw tensors: per-head loops, softmax(q k^T / sqrt(d')), QuickGELU."""
    def ln(t, n):
        return F.layer_norm(t, (t.shape[-1],), sd[p + n + ".weight"], sd[p + n + ".bias"], 1e-5)

    h = ln(x, "ln_1")
    w, b = sd[p + "attn.in_proj_weight"], sd[p + "attn.in_proj_bias"]
    inner = w.shape[0] // 3
    d = inner // heads
    out = torch.zeros(*x.shape[:2], inner)
    for i in range(heads):
        q, k, v = (h @ w[c * inner + i * d:c * inner + (i + 1) * d].T + b[c * inner + i * d:c * inner + (i + 1) * d]
                   for c in range(3))
        if d:
            s = q @ k.transpose(-1, -2) / math.sqrt(d) + (0 if mask is None else mask)
            out[..., i * d:(i + 1) * d] = s.softmax(-1) @ v
    x = x + out @ sd[p + "attn.out_proj.weight"].T + sd[p + "attn.out_proj.bias"]
    a = ln(x, "ln_2") @ sd[p + "mlp.c_fc.weight"].T + sd[p + "mlp.c_fc.bias"]
    a = a * torch.sigmoid(1.702 * a)
    return x + a @ sd[p + "mlp.c_proj.weight"].T + sd[p + "mlp.c_proj.bias"]


def upop_prune(sd, p, heads, keep_dims, keep_hidden, g):
    """What UPop's `compress` does to one block: one mask over a head's dims, shared by every head and by q, k,
    v (`alpha.repeat(3 * num_heads)`); one mask over the MLP's hidden units."""
    hd = sd[p + "attn.in_proj_weight"].shape[1] // heads
    alpha = torch.zeros(hd, dtype=torch.bool)
    alpha[torch.randperm(hd, generator=g)[:keep_dims]] = True
    sd[p + "attn.in_proj_weight"] = sd[p + "attn.in_proj_weight"][alpha.repeat(3 * heads)].clone()
    sd[p + "attn.in_proj_bias"] = sd[p + "attn.in_proj_bias"][alpha.repeat(3 * heads)].clone()
    sd[p + "attn.out_proj.weight"] = sd[p + "attn.out_proj.weight"][:, alpha.repeat(heads)].clone()
    hidden = torch.zeros(sd[p + "mlp.c_fc.weight"].shape[0], dtype=torch.bool)
    hidden[torch.randperm(len(hidden), generator=g)[:keep_hidden]] = True
    sd[p + "mlp.c_fc.weight"] = sd[p + "mlp.c_fc.weight"][hidden].clone()
    sd[p + "mlp.c_fc.bias"] = sd[p + "mlp.c_fc.bias"][hidden].clone()
    sd[p + "mlp.c_proj.weight"] = sd[p + "mlp.c_proj.weight"][:, hidden].clone()


# UPop's file also holds its momentum encoder and queues; shapes here are placeholders (they are dropped).
UPOP_TRAINING_KEYS = {"visual_m.ln_post.weight": (768,), "transformer_m.resblocks.0.mlp.c_fc.weight": (9, 512),
                      "token_embedding_m.weight": (3, 512), "ln_final_m.bias": (512,), "text_projection_m": (512, 512),
                      "positional_embedding_m": (77, 512), "image_queue": (512, 4), "text_queue": (512, 4),
                      "idx_queue": (1, 4), "ptr_queue": (1,)}


def test_registered_clip_models():
    for name, size, gpu in (("clip_vit_b32", 224, 0.25), ("clip_vit_l14", 224, 0.5), ("clip_vit_l14_336", 336, 0.5)):
        meta = MODELS.card(name)
        assert (meta.input_size, meta.num_classes, meta.head) == (size, 1000, "head")
        assert (meta.mean, meta.std) == (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD) == (
            (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
        assert meta.resources == {"cpu": 2, "gpu": gpu} and meta.formats == ("state_dict", "upop")


@pytest.mark.integration  # seconds to tens of seconds: a full-size model, training or rendering
def test_random_b32_is_open_clip_and_logits_are_scaled_cosines_to_the_class_texts(rand):
    built, meta, ref, _ = rand
    model = built.model
    assert built.weights_source == "random init (seed 0); not pre-trained"
    assert meta.input_size == 64 and not model.training and not any(p.requires_grad for p in model.parameters())
    own = model.state_dict()
    for k, v in ref.state_dict().items():  # the seeded init is open_clip's, with QuickGELU as OpenAI trained it
        assert torch.equal(own[model_key(k)], v), k

    tok = open_clip.get_tokenizer("ViT-B-32")
    idx = [0, 1, 417, 999]
    texts = [f"a photo of a {open_clip.IMAGENET_CLASSNAMES[i]}." for i in idx]
    with torch.no_grad():
        want = F.normalize(ref.encode_text(tok(texts)), dim=-1)  # open_clip's path: the full 77-token context
        assert model.head.weight.shape == (1000, 512)
        assert torch.allclose(model.head.weight.norm(dim=1), torch.ones(1000), atol=1e-5)
        assert torch.allclose(model.head.weight[idx], want, atol=1e-5)
        assert torch.allclose(model.encode_text(texts), want, atol=1e-5)

        x = torch.randn(3, 3, 64, 64)
        img = F.normalize(ref.encode_image(x), dim=-1)
        scale = ref.logit_scale.exp()  # ln(1/0.07): below the clamp
        assert math.isclose(float(model.head.scale), 1 / 0.07, rel_tol=1e-5)
        assert torch.allclose(model.features(x), img, atol=1e-5)
        out = model(x)
        assert out.shape == (3, 1000)
        assert torch.allclose(out, scale * img @ model.head.weight.T, atol=1e-4)


@pytest.mark.integration  # seconds to tens of seconds: a full-size model, training or rendering
def test_head_cache_is_reused_and_keyed_by_the_text_weights(rand):
    built, _, _, cache = rand
    (path,) = head_files(cache)
    saved = torch.load(path, weights_only=True)  # a plain tensor: loads without unpickling code
    assert isinstance(saved, torch.Tensor) and torch.equal(saved, built.model.head.weight)
    mtime = path.stat().st_mtime_ns
    again, _ = build_model("clip_vit_b32", "random", ARGS, cache)
    assert path.stat().st_mtime_ns == mtime and head_files(cache) == [path]
    assert torch.equal(again.model.head.weight, built.model.head.weight)

    text = again.model.text
    d0 = text.digest()
    with torch.no_grad():
        text.ln_final.weight[0] += 1
    assert text.digest() != d0  # other text weights -> another head


@pytest.mark.integration  # seconds to tens of seconds: a full-size model, training or rendering
def test_without_fill_head_the_head_is_zeros_and_nothing_is_computed(rand, tmp_path):
    """What the model benchmarks build (workers/frozen.py, fill_head=False): the same image tower, a zero head."""
    built, _, _, _ = rand
    bare, _ = build_model("clip_vit_b32", "random", ARGS, tmp_path, fill_head=False)
    assert head_files(tmp_path) == [] and not bare.model.head.weight.any()
    own = bare.model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in built.model.state_dict().items() if k != "head.weight")


@pytest.mark.integration  # seconds to tens of seconds: a full-size model, training or rendering
def test_state_dict_checkpoint_loads_strictly(rand, tmp_path):
    _, _, ref, cache = rand
    sd = dict(ref.state_dict())
    sd["logit_scale"] = torch.tensor(5.0)  # above ln 100: the scale is clamped to 100
    good = tmp_path / "clip.pt"
    torch.save({"state_dict": sd}, good)
    built, _ = build_model("clip_vit_b32", resolve({"path": str(good)}, {}, cache), ARGS, cache)
    own = built.model.state_dict()
    assert all(torch.equal(own[model_key(k)], v) for k, v in sd.items())
    assert float(built.model.head.scale) == pytest.approx(100.0) and "sha256:" in built.weights_source
    assert len(head_files(cache)) == 1  # same text tower as the random model: same cached head

    bigger, _ = build_model("clip_vit_b32", resolve({"path": str(good)}, {}, cache), {**ARGS, "input_size": 96}, cache)
    assert bigger.model.visual.positional_embedding.shape == (10, 768)
    assert "resized from 4 to 9 patches" in bigger.weights_source
    assert bigger.model(torch.zeros(1, 3, 96, 96)).shape == (1, 1000)
    with pytest.raises(CheckpointError, match=r"visual\.positional_embedding: file \(5, 768\) vs model \(50, 768\)"):
        build_model("clip_vit_b32", resolve({"path": str(good)}, {}, cache), {"templates": "simple"}, cache)

    sd["visual.conv1.renamed"] = sd.pop("visual.conv1.weight")
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"missing: visual\.conv1\.weight; unexpected: visual\.conv1\.renamed"):
        build_model("clip_vit_b32", resolve({"path": str(tmp_path / "bad.pt")}, {}, cache), ARGS, cache)


@pytest.mark.integration  # seconds to tens of seconds: a full-size model, training or rendering
def test_upop_checkpoint_builds_the_pruned_vision_tower(rand, tmp_path):
    _, _, ref, cache = rand
    sd = {k: v.clone() for k, v in ref.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    pre = "visual.transformer.resblocks."
    upop_prune(sd, f"{pre}0.", 12, keep_dims=40, keep_hidden=1000, g=g)
    upop_prune(sd, f"{pre}5.", 12, keep_dims=0, keep_hidden=3072, g=g)  # attention pruned away entirely
    upop_prune(sd, f"{pre}11.", 12, keep_dims=64, keep_hidden=17, g=g)  # attention kept whole
    path = tmp_path / "clip_large_retrieval_coco_2x_compressed.pth"
    torch.save({"model": {**sd, **{k: torch.zeros(s) for k, s in UPOP_TRAINING_KEYS.items()}}}, path)

    built, _ = build_model("clip_vit_b32", resolve({"format": "upop", "path": str(path)}, {}, tmp_path), ARGS, cache)
    model = built.model
    assert "UPop" in built.weights_source and "sha256:" in built.weights_source
    own = model.state_dict()
    assert set(own) - {"text.attn_mask"} >= {model_key(k) for k in sd}
    for k, v in sd.items():
        assert own[model_key(k)].shape == v.shape and torch.equal(own[model_key(k)], v), k
    blocks = model.visual.transformer.resblocks
    assert isinstance(blocks[0].attn, PrunedAttention) and blocks[0].attn.head_dim == 40
    assert isinstance(blocks[5].attn, PrunedAttention) and blocks[5].attn.head_dim == 0
    assert isinstance(blocks[11].attn, nn.MultiheadAttention)
    assert [blocks[i].mlp.c_fc.out_features for i in (0, 5, 11)] == [1000, 3072, 17]
    assert len(head_files(cache)) == 1  # the text tower is untouched here, so its head is reused

    x = torch.randn(2, 5, 768)
    with torch.no_grad():
        for i in (0, 5, 11, 3):
            assert torch.allclose(blocks[i](x), ref_block(x, sd, f"{pre}{i}.", 12), atol=1e-4), i

        # the whole image tower, from the file's tensors alone
        img = torch.randn(2, 3, 64, 64)
        t = F.conv2d(img, sd["visual.conv1.weight"], stride=32).flatten(2).transpose(1, 2)
        t = torch.cat([sd["visual.class_embedding"].expand(2, 1, -1), t], dim=1) + sd["visual.positional_embedding"]
        t = F.layer_norm(t, (768,), sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"], 1e-5)
        for i in range(12):
            t = ref_block(t, sd, f"{pre}{i}.", 12)
        t = F.layer_norm(t[:, 0], (768,), sd["visual.ln_post.weight"], sd["visual.ln_post.bias"], 1e-5)
        feats = F.normalize(t @ sd["visual.proj"], dim=-1)
        assert torch.allclose(model.features(img), feats, atol=1e-4)
        assert torch.allclose(model(img), model.head.scale * feats @ model.head.weight.T, atol=1e-3)


@pytest.mark.integration  # seconds to tens of seconds: a full-size model, training or rendering
def test_upop_text_tower_pruning_and_layout_errors(rand):
    _, _, ref, _ = rand
    sd = {k: v.clone() for k, v in ref.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    upop_prune(sd, "transformer.resblocks.0.", 8, keep_dims=16, keep_hidden=100, g=g)
    upop_prune(sd, "transformer.resblocks.11.", 8, keep_dims=0, keep_hidden=2048, g=g)
    state = upop_checkpoint_filter_fn({**sd, **{k: torch.zeros(s) for k, s in UPOP_TRAINING_KEYS.items()}})
    assert set(state) == set(sd)
    torch.manual_seed(0)
    clip = open_clip.create_model("ViT-B-32", pretrained=None, force_quick_gelu=True, force_image_size=64).eval()
    apply_upop_shapes(clip, state, "test")
    load_strict(clip, state, "test")
    blocks = clip.transformer.resblocks
    assert blocks[0].attn.head_dim == 16 and blocks[11].attn.head_dim == 0
    x = torch.randn(2, 7, 512)
    mask = clip.attn_mask[:7, :7]  # causal
    tok = open_clip.get_tokenizer("ViT-B-32")
    texts = ["a photo of a dog.", "a photo of a great white shark in the deep blue sea."]
    with torch.no_grad():
        for i in (0, 11, 4):
            want = ref_block(x, sd, f"transformer.resblocks.{i}.", 8, mask)
            assert torch.allclose(blocks[i](x, attn_mask=mask), want, atol=1e-4), i
        model = ClipClassifier(clip, tok, 1000)  # the cut-short context gives open_clip's full-context embedding
        assert torch.allclose(model.encode_text(texts), F.normalize(clip.encode_text(tok(texts)), dim=-1), atol=1e-5)

    bad = dict(state)
    bad["transformer.resblocks.2.attn.in_proj_weight"] = torch.zeros(3 * 8 * 5 + 1, 512)
    with pytest.raises(CheckpointError, match=r"transformer\.resblocks\.2\.attn\.in_proj_weight has 121 rows"):
        apply_upop_shapes(clip, bad, "bad.pth")


def test_pretrained_offline_is_a_clear_error_not_random_weights(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network (test)")

    monkeypatch.setattr(checkpoints.urllib.request, "urlopen", offline)
    with pytest.raises(CheckpointError) as err:
        build_model("clip_vit_b32", "pretrained", {"templates": "simple"}, tmp_path)
    msg = str(err.value)
    for part in ("ViT-B-32.pt", "no network (test)", "weights: {path: /path/to/ViT-B-32.pt, sha256: 40d365715913"):
        assert part in msg
    assert not (tmp_path / "clip_heads").exists()  # failed before building anything


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2)
        self.ln_1 = nn.LayerNorm(8)
        self.attn_mask = torch.full((3, 3), float("-inf")).triu(1)  # a plain attribute, as in OpenAI's CLIP

    def forward(self, x):
        return self.attn(self.ln_1(x), x, x, need_weights=False, attn_mask=self.attn_mask)[0]


class _Tower(nn.Module):
    def __init__(self):
        super().__init__()
        self.resblocks = nn.Sequential(_Block(), _Block())

    def forward(self, x):
        return self.resblocks(x)


class _ScriptedClip(nn.Module):
    def __init__(self):
        super().__init__()
        self.transformer = _Tower()
        self.text_projection = nn.Parameter(torch.randn(8, 4).half())
        self.register_buffer("input_resolution", torch.tensor(224))

    def forward(self, x):
        return self.transformer(x).half() @ self.text_projection


def _as_2021_torch_jit_archive(src, dst, folder: str) -> None:
    """Re-pack an archive of today's torch.jit.save in the records of the torch.jit that wrote OpenAI's 2021/2022
    files (pytorch torch/csrc/jit/serialization/export_module.cpp and caffe2/serialize/inline_container.cc of that
    time): the folder is the basename of the file the model was saved to (not the downloaded file's name);
    `version` first; then each archive's tensors (`data/N`) before its pickle, the code, and `constants/N`
    before `constants.pkl`; none of the records added since (`byteorder`, `.data/serialization_id`,
    `.format_version`, `.storage_alignment`). data.pkl's persistent ids, ('storage', torch.<T>Storage, 'N',
    'cpu', numel), are the same then and now."""
    with zipfile.ZipFile(src) as zf:
        prefix = zf.namelist()[0].split("/")[0] + "/"
        rec = {n[len(prefix):]: zf.read(n) for n in zf.namelist()}
    dropped = {"byteorder", ".data/serialization_id", ".data/version", ".format_version", ".storage_alignment"}
    order = (["version"] + sorted((n for n in rec if n.startswith("data/")), key=lambda n: int(n.split("/")[1]))
             + ["data.pkl"] + sorted(n for n in rec if n.startswith("code/"))
             + sorted(n for n in rec if n.startswith("constants/")) + ["constants.pkl"])
    assert set(rec) - dropped == set(order), sorted(set(rec) - dropped - set(order))
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as out:
        for n in order:
            out.writestr(f"{folder}/{n}", rec[n])


@pytest.mark.filterwarnings("ignore:'torch.load' received a zip file")
@pytest.mark.parametrize("vintage", ["today", "2022"])
def test_torchscript_archives_are_read_without_running_them(tmp_path, capsys, vintage):
    module = _ScriptedClip()
    with pytest.warns(FutureWarning):  # deprecated, but it is how OpenAI's files were made
        torch.jit.save(torch.jit.script(module), tmp_path / "m.pt")
    if vintage == "2022":  # what ViT-L-14-336px.pt (April 2022) was written as; saved under another name
        _as_2021_torch_jit_archive(tmp_path / "m.pt", tmp_path / "ViT-L-14-336px.pt", "model_export")
        (tmp_path / "ViT-L-14-336px.pt").replace(tmp_path / "m.pt")
        names = zipfile.ZipFile(tmp_path / "m.pt").namelist()
        assert names[0] == "model_export/version" and "model_export/byteorder" not in names
    with pytest.raises(Exception, match="weights_only"):
        torch.load(tmp_path / "m.pt", weights_only=True)
    got = read_checkpoint(tmp_path / "m.pt")
    want = module.state_dict()
    assert set(got) - set(want) == {"transformer.resblocks.0.attn_mask", "transformer.resblocks.1.attn_mask"}
    for k, v in want.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k
    assert set(checkpoint_filter_fn(got)) == set(want) - {"input_resolution"}

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with zipfile.ZipFile(tmp_path / "evil.pt", "w") as zf:
        zf.writestr("evil/data.pkl", pickle.dumps(Evil(), protocol=2))
        zf.writestr("evil/constants.pkl", pickle.dumps((), protocol=2))
    with pytest.raises(CheckpointError, match=r"refusing to load (builtins|__builtin__)\.print"):
        read_torchscript_tensors(tmp_path / "evil.pt")
    assert "pwned" not in capsys.readouterr().out


@pytest.mark.parametrize("args, match", [
    ({"depth": 3}, r"unknown arg 'depth'"),
    ({"input_size": 50}, r"input_size 50 is not a multiple of 32"),
    ({"templates": "fancy"}, r"templates 'fancy' is not one of 'openai', 'simple'"),
    ({"classes": "cifar10"}, r"classes 'cifar10' is not one of 'imagenet'"),
])
def test_bad_args_are_refused(args, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        build_model("clip_vit_b32", "random", args, tmp_path)


# ---------------------------------------------------------------- built-in compression on CLIP

def small_clip() -> ClipClassifier:
    """A two-block open_clip CLIP (random init, seed 0): fast enough to prune and quantise whole."""
    torch.manual_seed(0)
    clip = open_clip.CLIP(embed_dim=16, quick_gelu=True,
                          vision_cfg={"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16},
                          text_cfg={"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}).eval()
    return ClipClassifier(clip, open_clip.get_tokenizer("ViT-B-32"), num_classes=20)


def image_tower_weights(model: ClipClassifier) -> dict[str, torch.Tensor]:
    """Written out by hand for open_clip's ViT: every weight a forward pass multiplies an input by."""
    v = model.visual
    out = {"visual.conv1": v.conv1.weight, "visual.proj": v.proj}
    for i, block in enumerate(v.transformer.resblocks):
        p = f"visual.transformer.resblocks.{i}."
        assert isinstance(block.attn, nn.MultiheadAttention)
        out |= {p + "attn.in_proj": block.attn.in_proj_weight, p + "attn.out_proj": block.attn.out_proj.weight,
                p + "mlp.c_fc": block.mlp.c_fc.weight, p + "mlp.c_proj": block.mlp.c_proj.weight}
    return out


def test_clip_magnitude_pruning_covers_the_whole_image_tower_and_spares_the_text_tower():
    from workers.compression import compress

    model = small_clip()
    text_before = {k: v.clone() for k, v in model.text.state_dict().items()}
    before = {k: w.detach().clone() for k, w in image_tower_weights(model).items()}
    model, report = compress(model, "magnitude", {"sparsity": 0.6, "scope": "global"})
    after = image_tower_weights(model)
    # an independent count over the image tower's prunable weights, in_proj and proj included
    zeros = sum(int((w == 0).sum()) for w in after.values())
    total = sum(w.numel() for w in after.values())
    assert report.sparsity == zeros / total and abs(zeros / total - 0.6) < 1e-3
    assert set(report.layer_sparsity) == set(after)
    for i in range(2):
        assert report.layer_sparsity[f"visual.transformer.resblocks.{i}.attn.in_proj"] > 0.3
    assert (after["visual.proj"] == 0).any()
    # one global threshold over exactly those weights: every zeroed one is no larger than every kept one
    old = torch.cat([w.abs().flatten() for w in before.values()])
    new = torch.cat([w.flatten() for w in after.values()])
    assert old[new == 0].max() <= old[new != 0].min()
    for k, v in model.text.state_dict().items():
        assert torch.equal(v, text_before[k]), k


def test_clip_fakequant_quantises_in_proj_and_proj_and_their_inputs():
    from workers.compression import compress
    from workers.compression.quant import QuantAct

    model = small_clip()
    text_before = {k: v.clone() for k, v in model.text.state_dict().items()}
    calib = torch.randn(4, 3, 32, 32)
    model, report = compress(model, "fakequant", {"bits": 4, "act_bits": 8}, calib=calib)
    assert report.sparsity < 0.2  # 4 bits round some small weights to 0; counted over the image tower only
    for name, w in image_tower_weights(model).items():
        rows = (w.T if name == "visual.proj" else w).detach().double().flatten(1)  # proj's outputs: its columns
        steps = rows / (rows.abs().amax(1, keepdim=True) / 7)
        assert torch.allclose(steps, steps.round(), atol=1e-4), name  # on the symmetric 4-bit grid, per channel
        assert len(rows[0].unique()) <= 15, name
    for k, v in model.text.state_dict().items():
        assert torch.equal(v, text_before[k]), k

    # activations: the attention's input is quantised once and passed as query, key and value alike
    seen = []
    attn = model.visual.transformer.resblocks[1].attn
    assert any(isinstance(h, QuantAct) for h in attn._forward_pre_hooks.values())
    attn.register_forward_pre_hook(lambda m, args: seen.append(args))
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    (q, k, v), = [a[:3] for a in seen]
    scale = next(h for h in attn._forward_pre_hooks.values() if isinstance(h, QuantAct)).scale
    assert k is q and v is q and torch.allclose(q / scale, (q / scale).round(), atol=1e-3)
