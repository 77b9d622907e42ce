"""Compression methods checked against independent (numpy / hand-worked) computations."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from workers.compression import COMPRESSIONS, CompressionReport, compress, measure_sparsity
from workers.core.registry import UnknownName

pytestmark = pytest.mark.unit

# Reasonable args per registered method; a new registration without an entry here fails the smoke test.
DEFAULT_ARGS: dict[str, dict] = {
    "dense": {},
    "magnitude": {"sparsity": 0.5},
    "random": {"sparsity": 0.5, "seed": 1},
    "fakequant": {"bits": 4, "act_bits": 8},
    # file-backed: the weights come from the checkpoint the run loads; the entry itself changes nothing
    "gmp": {"checkpoint": "g.pt", "sparsity": 0.9},
    "lth": {"checkpoint": {"format": "lth", "path": "c.pth", "mask": "m.pth"}, "round": 3},
    "acdc": {"checkpoint": "a.pt", "sparsity": 0.9},
    "rigl": {"checkpoint": "r.pt", "sparsity": 0.8},
    "str": {"checkpoint": "s.pt", "sparsity": 0.8},
    "upop": {"checkpoint": "u.pt", "ratio": 2},
    "vvtq": {"checkpoint": "v.pt", "bits": 4},
    "channel": {"ratio": 0.5},
}


def tiny() -> nn.Sequential:
    """Hand-set weights (8 in all) whose pruning order is known by inspection."""
    m = nn.Sequential(nn.Conv2d(1, 1, 2), nn.Flatten(), nn.Linear(1, 2), nn.Linear(2, 1))
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[[[0.1, 7.0], [-0.2, 2.5]]]]))
        m[2].weight.copy_(torch.tensor([[0.5], [-5.0]]))
        m[3].weight.copy_(torch.tensor([[-2.0, 4.0]]))
        for layer in (m[0], m[2], m[3]):
            layer.bias.fill_(0.01)
    return m


def cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10),
    ).eval()


def weights(m: nn.Module) -> list[np.ndarray]:
    return [x.weight.detach().numpy().copy() for x in m.modules() if isinstance(x, (nn.Conv2d, nn.Linear))]


def test_magnitude_global_zeroes_the_known_weights():
    m, report = compress(tiny(), "magnitude", {"sparsity": 0.375})
    # 3 of 8 go: |0.1|, |-0.2|, |0.5| -- two in the conv, one in the first linear, none in the last.
    assert m[0].weight.flatten().tolist() == [0.0, 7.0, 0.0, 2.5]
    assert m[2].weight.flatten().tolist() == [0.0, -5.0]
    assert m[3].weight.flatten().tolist() == [-2.0, 4.0]
    assert report.sparsity == 3 / 8
    assert report.layer_sparsity == {"0": 0.5, "2": 0.5, "3": 0.0}
    assert report.weight_bits is None and report.act_bits is None
    for layer in (m[0], m[2], m[3]):  # biases untouched
        assert torch.all(layer.bias == 0.01)


def test_magnitude_layer_scope_on_known_weights():
    m, report = compress(tiny(), "magnitude", {"sparsity": 0.5, "scope": "layer"})
    assert m[0].weight.flatten().tolist() == [0.0, 7.0, 0.0, 2.5]
    assert m[2].weight.flatten().tolist() == [0.0, -5.0]
    assert m[3].weight.flatten().tolist() == [0.0, 4.0]
    assert report.layer_sparsity == {"0": 0.5, "2": 0.5, "3": 0.5}


def test_magnitude_global_matches_numpy_and_leaves_plain_state_dict():
    model = cnn()
    before = weights(model)
    keys = list(model.state_dict())
    m, report = compress(model, "magnitude", {"sparsity": 0.7})
    flat = np.concatenate([w.ravel() for w in before])
    k = round(0.7 * flat.size)
    expect = np.ones(flat.size, bool)
    expect[np.argsort(np.abs(flat), kind="stable")[:k]] = False
    got = np.concatenate([w.ravel() for w in weights(m)]) != 0
    assert np.array_equal(got, expect)
    assert report.sparsity == pytest.approx((~got).sum() / got.size)
    assert list(m.state_dict()) == keys  # no weight_orig / weight_mask left behind
    assert not any(m._forward_pre_hooks for m in m.modules())


def test_magnitude_ties_are_broken_to_the_exact_count():
    m = nn.Linear(10, 10, bias=False)
    nn.init.constant_(m.weight, 0.5)
    a, _ = compress(copy.deepcopy(m), "magnitude", {"sparsity": 0.37})
    b, _ = compress(copy.deepcopy(m), "magnitude", {"sparsity": 0.37})
    assert int((a.weight == 0).sum()) == 37
    assert torch.equal(a.weight, b.weight)


@pytest.mark.parametrize("k", [0, 1, 37, 500, 999, 1000])
def test_the_k_smallest_are_a_stable_sorts_first_k(k):
    """Selection (kthvalue) against numpy's stable argsort, on scores with many ties at every value."""
    from workers.compression.prune import _smallest

    scores = torch.randint(0, 7, (1000,), generator=torch.Generator().manual_seed(0)).float()
    expect = np.zeros(1000, bool)
    expect[np.argsort(scores.numpy(), kind="stable")[:k]] = True
    assert np.array_equal(_smallest(scores, k).numpy(), expect)


def test_layer_scope_gives_each_layer_the_fraction():
    m, report = compress(cnn(), "magnitude", {"sparsity": 0.6, "scope": "layer"})
    for name, layer in m.named_modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            n = layer.weight.numel()
            assert abs(int((layer.weight == 0).sum()) - 0.6 * n) <= 1
            assert report.layer_sparsity[name] == pytest.approx(0.6, abs=1 / n)


def test_measure_sparsity_matches_numpy_recount():
    m, _ = compress(cnn(), "random", {"sparsity": 0.3, "seed": 3})
    ws = weights(m)
    glob, per = measure_sparsity(m)
    assert glob == pytest.approx(sum((w == 0).sum() for w in ws) / sum(w.size for w in ws))
    assert list(per) == ["0", "3", "7", "9"]
    assert [per[k] for k in per] == pytest.approx([(w == 0).mean() for w in ws])


def test_random_sparsity_and_determinism():
    total = sum(w.size for w in weights(cnn()))
    a, ra = compress(cnn(), "random", {"sparsity": 0.4, "seed": 7})
    b, _ = compress(cnn(), "random", {"sparsity": 0.4, "seed": 7})
    c, _ = compress(cnn(), "random", {"sparsity": 0.4, "seed": 8})
    assert ra.sparsity == pytest.approx(round(0.4 * total) / total)
    za = [w == 0 for w in weights(a)]
    assert all(np.array_equal(x, y == 0) for x, y in zip(za, weights(b)))
    assert not all(np.array_equal(x, y == 0) for x, y in zip(za, weights(c)))
    assert all(torch.equal(x.bias, y.bias) for x, y in zip(a.modules(), cnn().modules()) if isinstance(x, nn.Linear))


def numpy_fakequant(w: np.ndarray, bits: int) -> np.ndarray:
    qmax = 2 ** (bits - 1) - 1
    flat = w.astype(np.float64).reshape(w.shape[0], -1)
    out = np.empty_like(flat)
    for i, row in enumerate(flat):
        scale = np.abs(row).max() / qmax if np.abs(row).max() > 0 else 1.0
        out[i] = np.clip(np.round(row / scale), -qmax, qmax) * scale
    return out.reshape(w.shape).astype(np.float32)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_fakequant_weights_match_numpy(bits):
    model = cnn()
    with torch.no_grad():
        model[0].weight[2].zero_()  # an all-zero channel must stay zero, not become NaN
    before = weights(model)
    m, report = compress(model, "fakequant", {"bits": bits})
    for w0, w in zip(before, weights(m)):
        np.testing.assert_array_equal(w, numpy_fakequant(w0, bits))
        for row in w.reshape(w.shape[0], -1):
            assert len(np.unique(row)) <= 2**bits - 1
    assert np.all(weights(m)[0][2] == 0)
    assert report.weight_bits == bits and report.act_bits is None


def test_fakequant_8bit_close_to_float():
    x = torch.rand(16, 3, 8, 8)
    ref = cnn()(x)
    m, _ = compress(cnn(), "fakequant", {"bits": 8})
    out = m(x)
    assert not torch.equal(out, ref)
    assert (out - ref).abs().max() < 0.02 * ref.abs().max()


def test_activation_quant_changes_outputs_and_respects_calibration_range():
    calib = torch.rand(32, 3, 8, 8)
    weight_only, _ = compress(cnn(), "fakequant", {"bits": 8})
    m, report = compress(cnn(), "fakequant", {"bits": 8, "act_bits": 4}, calib=calib)
    assert report.act_bits == 4 and report.weight_bits == 8
    x = torch.rand(8, 3, 8, 8)
    assert not torch.allclose(m(x), weight_only(x), atol=1e-4)
    seen = {}
    m[0].register_forward_pre_hook(lambda mod, a: seen.__setitem__("in", a[0]))  # runs after the quantiser
    with torch.no_grad():
        m(calib * 3 - 1)  # inputs well outside the calibrated [0, 1]
    got = seen["in"]
    assert got.min() >= 0 and got.max() <= calib.max() + 1e-6  # clamped to the calibrated (unsigned) range
    assert len(torch.unique(got)) <= 2**4  # 4-bit unsigned grid: 16 levels
    copy.deepcopy(m)(x)  # the hooks survive the deep copy the runner makes


def test_act_bits_without_calib_is_an_error():
    with pytest.raises(ValueError, match="calib"):
        compress(cnn(), "fakequant", {"bits": 8, "act_bits": 8})


def test_unknown_method_lists_valid_names():
    with pytest.raises(UnknownName) as e:
        compress(cnn(), "magnitud", {})
    msg = str(e.value)
    assert "did you mean 'magnitude'" in msg
    assert all(name in msg for name in COMPRESSIONS.names())


@pytest.mark.parametrize(
    "method,args,key",
    [
        ("magnitude", {"sparsity": 1.0}, "sparsity"),
        ("magnitude", {"sparsity": -0.1}, "sparsity"),
        ("magnitude", {"sparsity": 0.5, "scope": "local"}, "scope"),
        ("magnitude", {"sparsty": 0.5}, "sparsty"),
        ("magnitude", {}, "sparsity"),
        ("random", {"sparsity": 0.5, "seed": 1.5}, "seed"),
        ("fakequant", {"bits": 9}, "bits"),
        ("fakequant", {"bits": 8, "act_bits": 1}, "act_bits"),
        ("fakequant", {"bits": True}, "bits"),
        ("dense", {"sparsity": 0.5}, "sparsity"),
    ],
)
def test_bad_arg_names_method_and_key(method, args, key):
    model = cnn()
    before = weights(model)
    with pytest.raises(ValueError) as e:
        compress(model, method, args)
    msg = str(e.value)
    assert repr(method) in msg
    assert repr(key) in msg or f"{key} {args[key]!r}" in msg  # names the key (and the bad value)
    assert all(np.array_equal(a, b) for a, b in zip(before, weights(model)))  # nothing applied


def test_every_registered_method_has_default_args():
    assert set(COMPRESSIONS.names()) <= set(DEFAULT_ARGS), "add the new method to DEFAULT_ARGS"


@pytest.mark.parametrize("method", COMPRESSIONS.names())
def test_smoke_every_method(method):
    model = cnn()
    keys = list(model.state_dict())
    x = torch.rand(4, 3, 8, 8)
    m, report = compress(model, method, DEFAULT_ARGS[method], calib=torch.rand(8, 3, 8, 8))
    assert m is model  # in place
    assert isinstance(report, CompressionReport) and 0 <= report.sparsity < 1
    assert set(report.layer_sparsity) == {"0", "3", "7", "9"}
    assert list(m.state_dict()) == keys
    out = m(x)
    assert out.shape == (4, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("method", ["gmp", "lth", "acdc", "rigl", "str", "upop", "vvtq"])
def test_file_backed_methods_need_their_checkpoint_and_change_nothing(method):
    model = cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    compress(model, method, DEFAULT_ARGS[method])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    args = {k: v for k, v in DEFAULT_ARGS[method].items() if k != "checkpoint"}
    with pytest.raises(ValueError, match="arg 'checkpoint' is required"):
        compress(cnn(), method, args)


def test_a_quantised_architecture_reports_its_own_bits():
    model = cnn()
    model.quant_bits = (3, 3)
    _, report = compress(model, "vvtq", DEFAULT_ARGS["vvtq"])
    assert (report.weight_bits, report.act_bits) == (3, 3)


def test_channel_pruning_shrinks_the_model_and_keeps_the_classes():
    import torchvision

    model = torchvision.models.resnet18(num_classes=20).eval()
    before = sum(p.numel() for p in model.parameters())
    x = torch.rand(2, 3, 32, 32)
    m, report = compress(model, "channel", {"ratio": 0.5}, calib=x)
    after = sum(p.numel() for p in m.parameters())
    assert m(x).shape == (2, 20)  # the classifier keeps every source class
    assert m.conv1.out_channels == 32 and m.fc.in_features == 256  # half the channels of each layer
    assert 0.2 < after / before < 0.35  # conv weights scale with in x out channels: about a quarter left
    with pytest.raises(ValueError, match="needs an example batch"):
        compress(torchvision.models.resnet18(num_classes=20), "channel", {"ratio": 0.5})
