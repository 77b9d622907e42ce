import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # timm must never reach the hub

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import workers.models.vit  # noqa: F401  (registers deit_tiny, swin_tiny)
from workers import checkpoints
from workers.checkpoints import CheckpointError, resolve
from workers.models import build_model, get_module, set_module
from workers.models import quantisers, vvtq

SMALL = {"deit_tiny": 64, "swin_tiny": 224}  # smallest sizes each accepts


pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_thread")]


# ---------------------------------------------------------------- float models

@pytest.mark.parametrize("name", ["deit_tiny", "swin_tiny"])
def test_random_float_model_builds_seeded_and_runs(name, tmp_path):
    import timm

    size = SMALL[name]
    built, meta = build_model(name, "random", {"input_size": size}, tmp_path)
    assert meta.input_size == size and "random init (seed 0)" in built.weights_source
    cfg = timm.models.get_pretrained_cfg(workers.models.vit.TIMM_NAMES[name])
    assert tuple(meta.mean) == tuple(cfg.mean) and tuple(meta.std) == tuple(cfg.std)
    head = get_module(built.model, meta.head)
    assert isinstance(head, nn.Linear) and head.out_features == meta.num_classes == 1000
    with torch.no_grad():
        out = built.model(torch.randn(1, 3, size, size))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
    if name == "deit_tiny":  # seeded: a second build is identical
        again, _ = build_model(name, "random", {"input_size": size}, tmp_path)
        assert all(torch.equal(a, b) for a, b in zip(built.model.state_dict().values(), again.model.state_dict().values()))


def test_bad_args_and_sizes_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"unknown arg 'width'"):
        build_model("deit_tiny", "random", {"width": 3}, tmp_path)
    with pytest.raises(ValueError, match="multiple of 16"):
        build_model("deit_tiny", "random", {"input_size": 100}, tmp_path)
    with pytest.raises(ValueError, match="multiple of 224"):
        build_model("swin_tiny", "random", {"input_size": 112}, tmp_path)


def _perturbed(model: nn.Module) -> dict:
    g = torch.Generator().manual_seed(1)  # differs from the seed-0 model the builder starts from
    return {k: v + torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone()
            for k, v in model.state_dict().items()}


def test_official_deit_layout_loads_strictly(tmp_path):
    src, _ = build_model("deit_tiny", "random", {"input_size": 64}, tmp_path)
    sd = _perturbed(src.model)
    torch.save({"model": sd}, tmp_path / "deit.pth")
    built, _ = build_model("deit_tiny", resolve(str(tmp_path / "deit.pth"), {}, tmp_path), {"input_size": 64}, tmp_path)
    got = built.model.state_dict()
    assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd)
    assert "sha256:" in built.weights_source

    sd["head.renamed"] = sd.pop("head.weight")
    torch.save({"model": sd}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"missing: head.weight; unexpected: head.renamed"):
        build_model("deit_tiny", resolve(str(tmp_path / "bad.pth"), {}, tmp_path), {"input_size": 64}, tmp_path)


def test_official_swin_layout_loads_strictly(tmp_path):
    import re

    src, _ = build_model("swin_tiny", "random", {}, tmp_path)
    sd = _perturbed(src.model)
    # the official release: patch merging at the end of a stage, classifier at `head.`
    official = {re.sub(r"layers\.(\d)\.downsample", lambda m: f"layers.{int(m[1]) - 1}.downsample", k)
                .replace("head.fc.", "head."): v for k, v in sd.items()}
    assert "layers.0.downsample.reduction.weight" in official and "head.weight" in official
    torch.save({"model": official}, tmp_path / "swin.pth")
    built, _ = build_model("swin_tiny", resolve(str(tmp_path / "swin.pth"), {}, tmp_path), {}, tmp_path)
    got = built.model.state_dict()
    assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd)


def test_pretrained_is_verified_and_never_falls_back(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match=r"no published sha256.*weights: \{path"):
        build_model("swin_tiny", "pretrained", {}, tmp_path)

    def offline(url, dest):
        raise CheckpointError(f"could not download {url}: network unreachable")

    monkeypatch.setattr(checkpoints, "_download", offline)
    with pytest.raises(CheckpointError, match=r"deit_tiny_patch16_224-a1311bcf.pth.*if offline"):
        build_model("deit_tiny", "pretrained", {}, tmp_path)
    # a download that is not the published file is refused, and not kept
    def wrong_file(url, dest):
        torch.save({"model": {}}, dest)

    monkeypatch.setattr(checkpoints, "_download", wrong_file)
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        build_model("deit_tiny", "pretrained", {}, tmp_path)
    assert not any((tmp_path / "downloads").iterdir())


# ---------------------------------------------------------------- VVTQ

def _pow2(x: torch.Tensor) -> torch.Tensor:
    # powers of two: x / alpha is then exact in float32 and float64 alike, so the float64 reference rounds the same
    return 2.0 ** torch.round(torch.log2(x))


def _calibrate(model: nn.Module, seed: int) -> nn.Module:
    """Stand-in for VVTQ training: random weights, LSQ-style step sizes (a different one per bit width), initialised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in model.named_modules():
            if not isinstance(m, quantisers.QUANTISERS):
                continue
            qp = torch.tensor([2.0 ** (n - 1) - 1 for n in range(2, 9)])
            if isinstance(m, quantisers.QuantAct):
                m.alpha.copy_(_pow2(2.0 / qp.sqrt() * (1 + torch.rand(7, generator=g))))
                if m.offset:
                    m.beta.copy_(-0.125 * torch.rand(7, generator=g))
            else:
                m.weight.normal_(0, 0.05, generator=g)
                m.alpha.copy_(_pow2(2 * m.weight.abs().mean() / qp.sqrt()))
            m.init_state.fill_(1)
    return model


def _save_vvtq(sd: dict, path) -> None:
    # as train_VVTQ.py saves it: the DistributedDataParallel state dict ('module.' keys) under 'state_dict'
    torch.save({"epoch": 300, "arch": "resnet50", "state_dict": {"module." + k: v for k, v in sd.items()},
                "best_acc1": torch.tensor(74.71)}, path)


def _load_vvtq(name, path, bits, tmp_path, args=None):
    return build_model(name, resolve({"format": "vvtq", "path": str(path)}, {"bits": bits}, tmp_path), args or {},
                       tmp_path)


def _expected_bits(name: str, bits: int, module: str) -> int:
    eight = {"patch_embed.quant", "patch_embed.proj", "quant", "head", "head.fc"}
    return 8 if module in eight or module.endswith("downsample.reduction") else bits


@pytest.mark.parametrize("name,bits", [("deit_tiny", 4), ("deit_tiny", 3), ("deit_tiny", 2),
                                       ("swin_tiny", 4), ("swin_tiny", 2)])
@pytest.mark.integration  # seconds to tens of seconds: a full-size model, training or rendering
def test_vvtq_checkpoint_loads_exactly_and_quantises(name, bits, tmp_path):
    src = _calibrate(vvtq.create(name, bits), seed=bits).eval()
    sd = src.state_dict()
    assert {"blocks.0.attn.proj_q.alpha", "layers.0.blocks.0.attn.proj_q.alpha"} & sd.keys()
    assert sd[next(k for k in sd if k.endswith("mlp.quant2.beta"))].shape == (7,)
    if name == "swin_tiny":
        sd["patch_embed.quant.init_state"] = torch.zeros(1)  # never runs in the original, so files leave it at 0
    _save_vvtq(sd, tmp_path / "ckpt.pth.tar")

    built, meta = _load_vvtq(name, tmp_path / "ckpt.pth.tar", bits, tmp_path)
    model = built.model
    got = model.state_dict()
    assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd)
    assert "sha256:" in built.weights_source

    # bit widths: 8 at the patch embedding and head (and Swin's patch merging), `bits` everywhere else
    widths = vvtq.bit_widths(model)
    assert widths == {m: _expected_bits(name, bits, m) for m in widths}
    assert sum(w == bits for w in widths.values()) > 50 and isinstance(get_module(model, meta.head), quantisers.QuantLinear)
    assert get_module(model, meta.head).bit_width == 8

    # the same network as the one saved
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model(x), src(x))

    # one quantised Linear against an independent float64 LSQ: x_q, w_q from alpha[bits - 2]
    mlp = (model.blocks[0] if name == "deit_tiny" else model.layers[0].blocks[0]).mlp
    qn, qp = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    a_x, a_w = mlp.quant1.alpha[bits - 2].double(), mlp.fc1.alpha[bits - 2].double()
    inp = torch.randn(2, 5, mlp.fc1.in_features) * float(a_x) * (qp + 1)  # spans the grid and beyond it
    x_q = torch.clamp(torch.round(inp.double() / a_x), qn, qp) * a_x
    w_q = torch.clamp(torch.round(mlp.fc1.weight.double() / a_w), qn, qp) * a_w
    assert (x_q == qn * a_x).any() and (w_q != 0).float().mean() > 0.3  # clipping and rounding both exercised
    with torch.no_grad():
        out = mlp.fc1(mlp.quant1(inp))
    torch.testing.assert_close(out.double(), F.linear(x_q, w_q, mlp.fc1.bias.double()), rtol=1e-5, atol=1e-5)

    # the GELU output quantiser is unsigned with an offset; attention probabilities unsigned
    a, b = mlp.quant2.alpha[bits - 2].double(), mlp.quant2.beta[bits - 2].double()
    h = torch.randn(2, 5, mlp.fc1.out_features) * float(a) * 2**bits
    ref = torch.clamp(torch.round((h.double() - b) / a), 0, 2**bits - 1) * a + b
    with torch.no_grad():
        torch.testing.assert_close(mlp.quant2(h).double(), ref, rtol=1e-6, atol=1e-6)
    attn = (model.blocks[0] if name == "deit_tiny" else model.layers[0].blocks[0]).attn
    assert not attn.quant_attn.signed and attn.quant_q.signed and attn.quant_input.signed

    # at most 2^bits distinct weight values per layer (the float weights have thousands)
    for mname, m in model.named_modules():
        if isinstance(m, (quantisers.QuantLinear, quantisers.QuantConv2d)):
            with torch.no_grad():
                n_levels = m.quantised_weight().unique().numel()
            assert n_levels <= 2 ** m.bit_width, mname
            assert m.weight.unique().numel() > 2 ** m.bit_width, mname


def test_vvtq_refuses_mismatched_or_uninitialised_files(tmp_path):
    src = _calibrate(vvtq.create("deit_tiny", 4), seed=0)
    sd = src.state_dict()
    _save_vvtq(sd, tmp_path / "w4a4.pth.tar")

    with pytest.raises(ValueError, match="32 is the float model.*state_dict"):
        _load_vvtq("deit_tiny", tmp_path / "w4a4.pth.tar", 32, tmp_path)
    with pytest.raises(ValueError, match=r"bits must be one of \(2, 3, 4\)"):
        _load_vvtq("deit_tiny", tmp_path / "w4a4.pth.tar", 8, tmp_path)
    with pytest.raises(CheckpointError, match=r"blocks.0.attn.quant_input.nbits is \[4.0\] in the file \(4 bits\) but "
                                              r"the model runs it at 2 bits"):
        _load_vvtq("deit_tiny", tmp_path / "w4a4.pth.tar", 2, tmp_path)

    bad = dict(sd, **{"blocks.3.mlp.fc2.init_state": torch.zeros(1)})
    _save_vvtq(bad, tmp_path / "uninit.pth.tar")
    with pytest.raises(CheckpointError, match="blocks.3.mlp.fc2.init_state .* never initialised"):
        _load_vvtq("deit_tiny", tmp_path / "uninit.pth.tar", 4, tmp_path)

    bad = dict(sd)
    bad["blocks.0.attn.qkv.weight"] = bad.pop("blocks.0.attn.proj_q.weight")
    _save_vvtq(bad, tmp_path / "renamed.pth.tar")
    with pytest.raises(CheckpointError, match=r"missing: blocks.0.attn.proj_q.weight; unexpected: blocks.0.attn.qkv"):
        _load_vvtq("deit_tiny", tmp_path / "renamed.pth.tar", 4, tmp_path)

    with pytest.raises(RuntimeError, match="not initialised"):
        vvtq.create("deit_tiny", 4)(torch.zeros(1, 3, 224, 224))


@pytest.mark.integration  # seconds to tens of seconds: a full-size model, training or rendering
def test_vvtq_swin_learned_patch_merging_bits_as_the_original_reads_them(tmp_path):
    """Swin's PatchMerging.reduction is QuantLinear(nbits=8) with the original's default mixpre=True, so training
    moves its nbits off 8.0. The original runs every quantiser at round(clamp(nbits, 2, 8)) (`bit_pass`) and indexes
    alpha with int() of that; it fails on NaN."""
    src = _calibrate(vvtq.create("swin_tiny", 4), seed=4).eval()
    sd = src.state_dict()
    key = "layers.0.downsample.reduction.nbits"
    assert torch.equal(sd[key], torch.tensor([8.0]))
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        want = src(x)

    def load(state, name):
        _save_vvtq(state, tmp_path / name)
        return _load_vvtq("swin_tiny", tmp_path / name, 4, tmp_path)[0].model

    # one optimiser step's drift: still 8 bits, the same network
    model = load(dict(sd, **{key: torch.tensor([7.9987])}), "drift.pth.tar")
    assert vvtq.bit_widths(model)["layers.0.downsample.reduction"] == 8
    with torch.no_grad():
        assert torch.equal(model(x), want)

    # a width learned down to 7.4 runs at 7 bits, alpha[5], as the original would run it
    alpha = sd["layers.0.downsample.reduction.alpha"].clone()
    alpha[5] *= 4  # a 7-bit step size of its own, so 7 and 8 bits differ here
    model = load(dict(sd, **{key: torch.tensor([7.4]), "layers.0.downsample.reduction.alpha": alpha}), "seven.pth.tar")
    red = model.layers[0].downsample.reduction
    assert vvtq.bit_widths(model)["layers.0.downsample.reduction"] == 7 and red.bit_width == 7
    a = red.alpha[5].double()
    w_q = torch.clamp(torch.round(red.weight.double() / a), -64, 63) * a
    inp = torch.randn(3, red.in_features)
    with torch.no_grad():
        torch.testing.assert_close(red(inp).double(), inp.double() @ w_q.T, rtol=1e-5, atol=1e-5)
        assert not torch.equal(red(inp), src.layers[0].downsample.reduction(inp))  # not the 8-bit layer
    # above 8 clamps to 8, as bit_pass does
    model = load(dict(sd, **{key: torch.tensor([8.6])}), "high.pth.tar")
    assert model.layers[0].downsample.reduction.bit_width == 8

    # NaN: the original cannot run it (int(nan)), so it is refused, naming the key
    _save_vvtq(dict(sd, **{key: torch.tensor([float("nan")])}), tmp_path / "nan.pth.tar")
    with pytest.raises(CheckpointError, match=r"layers.0.downsample.reduction.nbits is \[nan\].*cannot run it"):
        _load_vvtq("swin_tiny", tmp_path / "nan.pth.tar", 4, tmp_path)

    # a width fixed in training (mixpre=False) is read the same way: 3.9999 is 4 bits, 3.0 is another model
    fixed = "layers.0.blocks.0.mlp.fc1.nbits"
    model = load(dict(sd, **{fixed: torch.tensor([3.9999])}), "fixed.pth.tar")
    assert model.layers[0].blocks[0].mlp.fc1.bit_width == 4
    _save_vvtq(dict(sd, **{fixed: torch.tensor([3.0])}), tmp_path / "w3.pth.tar")
    with pytest.raises(CheckpointError, match=r"mlp.fc1.nbits is \[3.0\] in the file \(3 bits\) but the model runs it at 4"):
        _load_vvtq("swin_tiny", tmp_path / "w3.pth.tar", 4, tmp_path)


@pytest.mark.integration  # seconds to tens of seconds: a full-size model, training or rendering
def test_vvtq_at_other_sizes_and_head_replacement(tmp_path):
    # DeiT: a 224-px checkpoint's position embedding is resampled to a 112-px canvas
    src = _calibrate(vvtq.create("deit_tiny", 4), seed=0)
    _save_vvtq(src.state_dict(), tmp_path / "deit.pth.tar")
    built, meta = _load_vvtq("deit_tiny", tmp_path / "deit.pth.tar", 4, tmp_path, {"input_size": 112})
    assert built.model.pos_embed.shape == (1, 7 * 7 + 1, 192) and meta.input_size == 112
    x = torch.randn(2, 3, 112, 112, requires_grad=True)
    out = built.model(x)
    assert out.shape == (2, 1000)
    out.sum().backward()  # visual prompting trains through the frozen model: the estimator passes gradients
    assert x.grad.abs().sum() > 0

    # Swin: the classifier sits at meta.head ("head.fc") yet saves as the original's "head.*"; replacing it works
    src = _calibrate(vvtq.create("swin_tiny", 3), seed=0)
    sd = src.state_dict()
    assert "head.weight" in sd and "head.alpha" in sd and not any(k.startswith("head.fc") for k in sd)
    _save_vvtq(sd, tmp_path / "swin.pth.tar")
    built, meta = _load_vvtq("swin_tiny", tmp_path / "swin.pth.tar", 3, tmp_path)
    set_module(built.model, meta.head, nn.Linear(768, 10))
    with torch.no_grad():
        assert built.model(torch.randn(1, 3, 224, 224)).shape == (1, 10)
    # a wrong relative-position index in a file (a layout this code mis-derives) is refused, not overwritten
    sd = dict(sd)
    sd["layers.0.blocks.0.attn.relative_position_index"] = sd["layers.0.blocks.0.attn.relative_position_index"].flip(0)
    _save_vvtq(sd, tmp_path / "bad_index.pth.tar")
    with pytest.raises(CheckpointError, match="relative_position_index .* differs"):
        _load_vvtq("swin_tiny", tmp_path / "bad_index.pth.tar", 3, tmp_path)


@pytest.mark.integration  # seconds to tens of seconds: a full-size model, training or rendering
@pytest.mark.parametrize("name", ["deit_tiny", "swin_tiny"])
def test_vvtq_architecture_is_timms_float_model_with_quantisation_off(name, tmp_path, monkeypatch):
    """An independent check of the rebuilt architecture (windows, shifts, masks, merging, read-out): with the
    quantisers made identities and timm's float weights mapped in (qkv split into proj_q/k/v; Swin's merging at the
    end of a stage, classifier at `head.`), the quantised model computes timm's float model."""
    import re

    monkeypatch.setattr(quantisers, "lsq", lambda x, alpha, qn, qp, beta=None: x)
    float_model, _ = build_model(name, "random", {}, tmp_path)
    mapped = {}
    for k, v in float_model.model.state_dict().items():
        if ".qkv." in k:
            mapped.update({k.replace(".qkv.", f".proj_{p}."): c for p, c in zip("qkv", v.chunk(3))})
        else:
            k = re.sub(r"layers\.(\d)\.downsample", lambda m: f"layers.{int(m[1]) - 1}.downsample", k)
            mapped[k.replace("head.fc.", "head.")] = v
    quantised = _calibrate(vvtq.create(name, 4), seed=0).eval()
    own = quantised.state_dict()
    assert mapped.keys() <= own.keys()
    assert all(k.endswith(("nbits", "alpha", "beta", "init_state", "relative_position_index", "attn_mask"))
               for k in own.keys() - mapped.keys())
    quantised.load_state_dict({**own, **mapped})
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ref, out = float_model.model(x), quantised(x)
    assert ref.std() > 0.05
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
