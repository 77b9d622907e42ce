"""torchvision ResNets and the foreign checkpoint layouts of compressed ones: each layout is written here by hand,
loaded through resolve() + build_model(), and compared tensor by tensor with what it should give."""
import re
import urllib.error

import pytest
import torch
import torch.nn.functional as F
import torchvision

import workers.models.resnet as resnet
from workers.checkpoints import CheckpointError, resolve, sha256_file
from workers.models import MODELS, build_model

pytestmark = pytest.mark.unit


def _sparse_state(name: str, seed: int = 1) -> tuple[dict, dict]:
    """A torchvision state dict unlike the seed-0 random init (BN statistics too), and 0/1 masks for its conv and
    fc weights; returns (dense state, masks)."""
    g = torch.Generator().manual_seed(seed)
    state = {k: (torch.randn(v.shape, generator=g) if v.is_floating_point() else v + 7)
             for k, v in getattr(torchvision.models, name)().state_dict().items()}
    for k in state:
        if k.endswith("running_var"):
            state[k] = state[k].abs() + 0.1
    masks = {k: (torch.rand(v.shape, generator=g) > 0.6).float() for k, v in state.items()
             if k.endswith("weight") and (v.dim() == 4 or k == "fc.weight")}
    return state, masks


def _masked(state: dict, masks: dict) -> dict:
    return {k: v * masks[k] if k in masks else v for k, v in state.items()}


def _assert_loaded(model: torch.nn.Module, expected: dict) -> None:
    got = model.state_dict()
    assert sorted(got) == sorted(expected)
    for k, v in expected.items():
        assert torch.equal(got[k], v.to(got[k].dtype)), k


def _build(name: str, tmp_path, spec: dict):
    return build_model(name, resolve(spec, {}, tmp_path), {}, tmp_path)[0]


# --- random, args, forward -------------------------------------------------------------------------------------

def test_random_is_seeded_recorded_and_runs_on_a_small_canvas(tmp_path):
    a, meta = build_model("resnet18", "random", {"input_size": 64}, tmp_path)
    b, _ = build_model("resnet18", "random", {}, tmp_path)
    assert a.weights_source == "random init (seed 0); not pre-trained"
    _assert_loaded(b.model, a.model.state_dict())
    assert meta.input_size == 64 and MODELS.card("resnet18").input_size == 224
    with torch.no_grad():
        assert a.model(torch.randn(3, 3, 64, 64)).shape == (3, 1000)
    with pytest.raises(ValueError, match=r"unknown arg 'depth'.*valid args: input_size"):
        build_model("resnet18", "random", {"depth": 3}, tmp_path)


def test_every_checkpoint_format_has_a_loader():
    for name in ("resnet18", "resnet34", "resnet50"):
        assert set(MODELS.card(name).formats) == set(resnet.CHECKPOINT_FILTERS)


# --- state_dict ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["raw", "under_state_dict", "module_prefix", "no_bn_counters"])
def test_state_dict_layouts_load_exactly(tmp_path, layout):
    state, _ = _sparse_state("resnet18")
    obj = {
        "raw": state,
        "under_state_dict": {"state_dict": state, "epoch": 90},
        "module_prefix": {"state_dict": {f"module.{k}": v for k, v in state.items()}},
        # saved before torch 0.4.1: no num_batches_tracked
        "no_bn_counters": {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")},
    }[layout]
    torch.save(obj, tmp_path / "w.pth")
    built = _build("resnet18", tmp_path, {"path": str(tmp_path / "w.pth")})
    expected = state if layout != "no_bn_counters" else \
        {k: torch.tensor(0) if k.endswith("num_batches_tracked") else v for k, v in state.items()}
    _assert_loaded(built.model, expected)
    assert "sha256:" in built.weights_source and "(state_dict)" in built.weights_source


def test_a_key_that_does_not_map_is_named(tmp_path):
    state, _ = _sparse_state("resnet18")
    state["classifier.weight"] = state.pop("fc.weight")
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match=r"missing: fc.weight; unexpected: classifier.weight"):
        _build("resnet18", tmp_path, {"path": str(tmp_path / "w.pth")})
    torch.save(_sparse_state("resnet18")[0], tmp_path / "r18.pth")
    with pytest.raises(CheckpointError, match=r"missing: .*shape mismatch: fc.weight"):
        _build("resnet50", tmp_path, {"path": str(tmp_path / "r18.pth")})


# --- gmp -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["granet", "torch_prune"])
def test_gmp_layouts(tmp_path, layout):
    state, masks = _sparse_state("resnet18")
    if layout == "granet":  # GraNet's ImageNet main.py: already-sparse weights, 'module.' from DDP, no masks
        sd = {f"module.{k}": v for k, v in _masked(state, masks).items()}
        obj = {"epoch": 100, "arch": ("resnet18", "fanin"), "state_dict": sd, "best_prec1": 69.8,
               "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": [0, 1]}]}}
    else:  # torch.nn.utils.prune: weight_orig (dense) + weight_mask
        sd = {}
        for k, v in state.items():
            if k in masks:
                sd[k + "_orig"], sd[k[: -len("weight")] + "weight_mask"] = v, masks[k]
            else:
                sd[k] = v
        obj = {"state_dict": sd}
    torch.save(obj, tmp_path / "gmp.pth")
    built = _build("resnet18", tmp_path, {"format": "gmp", "path": str(tmp_path / "gmp.pth")})
    _assert_loaded(built.model, _masked(state, masks))
    assert "(gmp)" in built.weights_source


class _SparseMLBasicBlock(torch.nn.Module):
    """SparseML's `_BasicBlock` (sparseml/pytorch/models/classification/resnet.py): module names and forward as
    there; its ReLU subclass carries no tensors, so torch's ReLU stands in."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        nn = torch.nn
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.identity = None  # SparseML's _IdentityModifier (.conv 1x1 strided, .bn) where the shape changes
        if cin != cout or stride > 1:
            self.identity = nn.Module()
            self.identity.conv = nn.Conv2d(cin, cout, 1, stride, bias=False)
            self.identity.bn = nn.BatchNorm2d(cout)
        self.act_out = nn.ReLU()

    def forward(self, x):
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        out = out + (self.identity.bn(self.identity.conv(x)) if self.identity is not None else x)
        return self.act_out(out)


class _SparseMLResNet(torch.nn.Module):
    """SparseML's `ResNet` for resnet18/34: `input` (conv, bn, act, pool), `sections` of blocks, `classifier`
    (avgpool, fc, softmax; forward returns (logits, classes))."""

    def __init__(self, blocks: tuple[int, ...]) -> None:
        super().__init__()
        nn = torch.nn
        self.input = nn.Module()
        self.input.conv = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.input.bn = nn.BatchNorm2d(64)
        self.input.act = nn.ReLU()
        self.input.pool = nn.MaxPool2d(3, 2, 1)
        widths, sections, cin = (64, 128, 256, 512), [], 64
        for i, (n, cout) in enumerate(zip(blocks, widths)):
            sections.append(nn.Sequential(*[_SparseMLBasicBlock(cin if j == 0 else cout, cout,
                                                                2 if (i > 0 and j == 0) else 1) for j in range(n)]))
            cin = cout
        self.sections = nn.Sequential(*sections)
        self.classifier = nn.Module()
        self.classifier.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier.fc = nn.Linear(512, 1000)
        self.classifier.softmax = nn.Softmax(dim=1)

    def forward(self, x):
        i = self.input
        x = self.sections(i.pool(i.act(i.bn(i.conv(x)))))
        logits = self.classifier.fc(self.classifier.avgpool(x).flatten(1))
        return logits, self.classifier.softmax(logits)


def _sparseml_save_model(path, model: torch.nn.Module, epoch: int) -> None:
    """What SparseML's `save_model` (sparseml/pytorch/utils/model.py) writes: every state copied into a float32
    `torch.zeros(state.shape)` (num_batches_tracked included), under 'state_dict', with the epoch and arch_key."""
    from collections import OrderedDict

    sd = OrderedDict()
    for k, v in model.state_dict().items():
        copy = torch.zeros(v.shape)
        copy.copy_(v)
        sd[k] = copy
    torch.save({"state_dict": sd, "epoch": epoch, "arch_key": "resnet_v1-18",
                "recipe": "!ScheduledModifierManager\n  modifiers: [!GMPruningModifier {final_sparsity: 0.8}]"}, path)


@pytest.mark.integration  # seconds to tens of seconds: a full-size model, training or rendering
@pytest.mark.parametrize("name, blocks", [("resnet18", (2, 2, 2, 2)), ("resnet34", (3, 4, 6, 3))])
def test_gmp_sparsezoo_sparseml_layout(tmp_path, name, blocks):
    """SparseZoo's pruned-conservative ResNets are SparseML models saved by SparseML: every key maps onto
    torchvision's, and the loaded torchvision model computes what SparseML's module computes."""
    torch.manual_seed(3)
    ref = _SparseMLResNet(blocks)
    with torch.no_grad():  # sparse weights and non-trivial BatchNorm statistics, as a trained model has
        for n_, m in ref.named_modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.weight.mul_((torch.rand(m.weight.shape) > 0.8).float())
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1), m.running_var.uniform_(0.5, 1.5), m.weight.normal_(1, 0.1)
                m.num_batches_tracked.fill_(1234)
    ref.eval()
    _sparseml_save_model(tmp_path / "model.pth", ref, epoch=99)
    sd = torch.load(tmp_path / "model.pth", weights_only=True)["state_dict"]
    assert "input.conv.weight" in sd and "sections.1.0.identity.conv.weight" in sd and "classifier.fc.bias" in sd
    built = _build(name, tmp_path, {"format": "gmp", "path": str(tmp_path / "model.pth")})
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(built.model(x), ref(x)[0], atol=1e-5)
    got = built.model.state_dict()
    assert got["layer1.0.bn1.num_batches_tracked"].dtype == torch.long
    assert int(got["layer1.0.bn1.num_batches_tracked"]) == 1234
    assert float((got["layer2.0.conv1.weight"] == 0).float().mean()) > 0.7
    assert "SparseML layout" in built.weights_source

    bad = dict(sd)
    bad["sections.0.0.squeeze.weight"] = torch.zeros(1)
    torch.save({"state_dict": bad}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"not SparseML ResNet names: sections\.0\.0\.squeeze\.weight"):
        _build(name, tmp_path, {"format": "gmp", "path": str(tmp_path / "bad.pth")})
    del bad["sections.0.0.squeeze.weight"], bad["sections.0.0.bn2.running_var"]
    torch.save({"state_dict": bad}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"missing: layer1\.0\.bn2\.running_var"):
        _build(name, tmp_path, {"format": "gmp", "path": str(tmp_path / "bad.pth")})


# --- lth -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prefixed_checkpoint", [True, False])
def test_lth_weights_are_mask_times_weight(tmp_path, prefixed_checkpoint):
    state, masks = _sparse_state("resnet18")
    prefix = "model." if prefixed_checkpoint else ""
    torch.save({prefix + k: v for k, v in state.items()}, tmp_path / "resnet50_dyn4_9_checkpoint.pth")
    torch.save({"model." + k: m for k, m in masks.items()}, tmp_path / "resnet50_dyn4_9_mask.pth")
    built = _build("resnet18", tmp_path, {"format": "lth", "path": str(tmp_path / "resnet50_dyn4_9_checkpoint.pth"),
                                          "mask": str(tmp_path / "resnet50_dyn4_9_mask.pth")})
    _assert_loaded(built.model, _masked(state, masks))
    got = built.model.state_dict()
    for k, m in masks.items():
        assert torch.equal(got[k] == 0, (m == 0) | (state[k] == 0)), k  # zero exactly where pruned
    assert "_mask.pth" in built.weights_source and "(lth; masks applied)" in built.weights_source


@pytest.mark.integration  # seconds to tens of seconds: a full-size model, training or rendering
def test_lth_paper_loader_behaviour_is_an_explicit_compression_arg(tmp_path):
    """The paper's loader overwrote the masked weights with the unmasked ones; `apply_mask: false` does the same,
    on request only, and the row says so (compression_args holds the arg, weights_source the effect)."""
    from workers.compression.base import resolve_args

    state, masks = _sparse_state("resnet18")
    torch.save({"model." + k: v for k, v in state.items()}, tmp_path / "resnet50_dyn4_3_checkpoint.pth")
    torch.save({"model." + k: m for k, m in masks.items()}, tmp_path / "resnet50_dyn4_3_mask.pth")
    spec = {"format": "lth", "path": str(tmp_path / "resnet50_dyn4_3_checkpoint.pth"),
            "mask": str(tmp_path / "resnet50_dyn4_3_mask.pth")}

    def build(args: dict):
        assert resolve_args("lth", {"checkpoint": spec, **args})["apply_mask"] is args.get("apply_mask", True)
        return build_model("resnet18", resolve(spec, args, tmp_path), {}, tmp_path)[0]

    default, paper = build({}), build({"apply_mask": False})
    _assert_loaded(default.model, _masked(state, masks))
    _assert_loaded(paper.model, state)  # dense: the mask was read, checked, and not applied
    assert "masks applied" in default.weights_source
    assert "masks NOT applied (apply_mask: false" in paper.weights_source
    _assert_loaded(build({"apply_mask": True}).model, _masked(state, masks))
    with pytest.raises(ValueError, match="apply_mask"):
        resolve_args("lth", {"checkpoint": spec, "apply_mask": "paper"})
    bad = dict(masks)
    bad["fc.weight"] = torch.full_like(bad["fc.weight"], 0.5)
    torch.save({"model." + k: m for k, m in bad.items()}, tmp_path / "resnet50_dyn4_3_mask.pth")
    with pytest.raises(CheckpointError, match="values other than 0 and 1"):  # checked even when not applied
        build({"apply_mask": False})


def test_lth_refuses_unknown_or_missing_masks(tmp_path):
    state, masks = _sparse_state("resnet18")
    torch.save({"model." + k: v for k, v in state.items()}, tmp_path / "c.pth")
    spec = {"format": "lth", "path": str(tmp_path / "c.pth"), "mask": str(tmp_path / "m.pth")}
    torch.save({"model.layer9.0.conv1.weight": masks["layer1.0.conv1.weight"]}, tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match=r"mask keys with no weight.*model\.layer9\.0\.conv1\.weight"):
        _build("resnet18", tmp_path, spec)
    torch.save({"model.conv1.weight": masks["conv1.weight"] * 0.5}, tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match=r"other than 0 and 1"):
        _build("resnet18", tmp_path, spec)
    with pytest.raises(CheckpointError, match=r"needs its mask file"):
        _build("resnet18", tmp_path, {"format": "lth", "path": str(tmp_path / "c.pth")})


# --- sparse_transfer (Iofinova et al.) -------------------------------------------------------------------------

def _wrapped(state: dict, masks: dict) -> dict:
    """sparse-imagenet-transfer's WrappedLayer: conv/fc under `_layer`, masks as `_weight_mask` / `_bias_mask`."""
    out = {}
    for k, v in state.items():
        layer, _, leaf = k.rpartition(".")
        if k in masks or (leaf == "bias" and layer + ".weight" in masks):
            out[f"{layer}._layer.{leaf}"] = v
            out[f"{layer}._{leaf}_mask"] = masks.get(k, torch.ones_like(v))
        else:
            out[k] = v
    return out


def test_sparse_transfer_wrapped_layers_and_masks(tmp_path):
    state, masks = _sparse_state("resnet18")
    masks["fc.bias"] = (torch.arange(1000) % 3 != 0).float()
    sd = {f"module.{k}": v for k, v in _wrapped(state, masks).items()}
    assert "module.fc._bias_mask" in sd and "module.layer1.0.conv1._layer.weight" in sd
    torch.save({"model_config": {"arch": "resnet18", "dataset": "imagenet"}, "model_state_dict": sd},
               tmp_path / "st.ckpt")
    built = _build("resnet18", tmp_path, {"format": "sparse_transfer", "path": str(tmp_path / "st.ckpt")})
    _assert_loaded(built.model, _masked(state, masks))
    assert isinstance(built.model.maxpool, torch.nn.MaxPool2d) and built.model.maxpool.padding == 1


def _acdc_save_checkpoint(path, model_config: dict, state: dict, optimizer, lr_scheduler, epoch: int) -> None:
    """IST-DASLab/ACDC utils/checkpoints.py `save_checkpoint`: the classes of the optimizer and the scheduler are
    pickled by reference beside their state dicts."""
    torch.save({"epoch": epoch, "model_config": model_config, "model_state_dict": state,
                "optimizer": {"type": type(optimizer), "state_dict": optimizer.state_dict()},
                "lr_scheduler": {"type": type(lr_scheduler), "state_dict": lr_scheduler.state_dict()}}, path)


@pytest.mark.parametrize("classes", ["torch", "acdc_own"])
def test_acdc_original_release_with_pickled_optimizer_classes(tmp_path, monkeypatch, classes):
    """AC/DC's own files: weights_only alone refuses them; their tensors load, their classes are never imported."""
    import sys
    import types

    state, masks = _sparse_state("resnet18")
    sd = {f"module.{k}": v for k, v in _wrapped(state, masks).items()}  # WrappedLayer under DataParallel
    params = [torch.nn.Parameter(torch.randn(3, 2))]
    if classes == "torch":
        opt_cls, sched = torch.optim.SGD, lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10)
        names = {"torch.optim.sgd.SGD", "torch.optim.lr_scheduler.CosineAnnealingLR"}
    else:  # AC/DC's optimization.sgd.SGD and optimization.lr_schedulers.CosineLR: not importable here at load time
        pkg, sgd, lrs = (types.ModuleType(n) for n in ("optimization", "optimization.sgd",
                                                       "optimization.lr_schedulers"))
        opt_cls = type("SGD", (torch.optim.SGD,), {"__module__": "optimization.sgd"})
        sched_cls = type("CosineLR", (torch.optim.lr_scheduler.CosineAnnealingLR,),
                         {"__module__": "optimization.lr_schedulers"})
        sgd.SGD, lrs.CosineLR, pkg.sgd, pkg.lr_schedulers = opt_cls, sched_cls, sgd, lrs
        for m in (pkg, sgd, lrs):
            monkeypatch.setitem(sys.modules, m.__name__, m)
        sched = lambda o: sched_cls(o, T_max=10)  # noqa: E731
        names = {"optimization.sgd.SGD", "optimization.lr_schedulers.CosineLR"}
    opt = opt_cls(params, lr=0.1, momentum=0.9)
    params[0].sum().backward()
    opt.step()  # a momentum buffer: tensors in the optimizer state too
    _acdc_save_checkpoint(tmp_path / "best_sparse_checkpoint.ckpt", {"arch": "resnet18", "dataset": "imagenet"},
                          sd, opt, sched(opt), epoch=99)
    monkeypatch.undo()  # the training code is gone when the file is loaded
    assert "optimization" not in sys.modules
    assert set(torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "best_sparse_checkpoint.ckpt")) == names
    with pytest.raises(Exception, match="weights_only"):
        torch.load(tmp_path / "best_sparse_checkpoint.ckpt", weights_only=True)
    spec = {"format": "sparse_transfer", "path": str(tmp_path / "best_sparse_checkpoint.ckpt")}
    built = _build("resnet18", tmp_path, spec)
    _assert_loaded(built.model, _masked(state, masks))
    assert "optimization" not in sys.modules  # never imported


def test_acdc_stand_ins_run_nothing_and_are_never_weights(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    state, _ = _sparse_state("resnet18")
    spec = {"format": "sparse_transfer", "path": str(tmp_path / "x.ckpt")}
    # a global called with arguments (a REDUCE) is not a class pickled by reference: the load fails, nothing runs
    torch.save({"model_config": {"arch": "resnet18", "dataset": "imagenet"}, "model_state_dict": state,
                "optimizer": Evil()}, tmp_path / "x.ckpt")
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*x\.ckpt.*re-download it or check its format"):
        _build("resnet18", tmp_path, spec)
    assert "pwned" not in capsys.readouterr().out
    # a stand-in where a tensor should be is refused, naming the entry
    sd = dict(state)
    sd["fc.bias"] = torch.optim.SGD
    torch.save({"model_config": {"arch": "resnet18", "dataset": "imagenet"}, "model_state_dict": sd},
               tmp_path / "x.ckpt")
    with pytest.raises(CheckpointError, match=r"x\.ckpt: model_state_dict holds entries that are not tensors: fc\.bias"):
        _build("resnet18", tmp_path, spec)
    # the generic loader still refuses such files outright
    from workers.checkpoints import load_state_dict

    with pytest.raises(CheckpointError, match=r"torch\.optim\.sgd\.SGD to unpickle, which vpgrid refuses"):
        load_state_dict(tmp_path / "x.ckpt")


def test_sparse_transfer_refuses_other_archs_datasets_and_layouts(tmp_path):
    state, _ = _sparse_state("resnet18")
    spec = {"format": "sparse_transfer", "path": str(tmp_path / "st.ckpt")}
    torch.save({"model_config": {"arch": "resnet50_rigl", "dataset": "imagenet"}, "model_state_dict": state},
               tmp_path / "st.ckpt")
    with pytest.raises(CheckpointError, match=r"arch is 'resnet50_rigl'; model 'resnet18' loads resnet18"):
        _build("resnet18", tmp_path, spec)
    torch.save({"model_config": {"arch": "resnet18", "dataset": "cifar10"}, "model_state_dict": state},
               tmp_path / "st.ckpt")
    with pytest.raises(CheckpointError, match=r"dataset is 'cifar10'"):
        _build("resnet18", tmp_path, spec)
    torch.save({"state_dict": state}, tmp_path / "st.ckpt")
    with pytest.raises(CheckpointError, match=r"holds 'model_config' and 'model_state_dict'"):
        _build("resnet18", tmp_path, spec)


def _rigl_name(k: str) -> str:
    """torchvision key -> the RigL port's (sparse-imagenet-transfer models/external/rigl/resnet.py)."""
    k = re.sub(r"^conv1\.", "initial_conv.conv.", k)
    k = re.sub(r"^bn1\.", "initial_conv.bn.", k)
    k = re.sub(r"^(layer\d)\.(\d+)\.conv(\d)\.", r"\1.block.\2.conv\3.conv.", k)
    k = re.sub(r"^(layer\d)\.(\d+)\.bn(\d)\.", r"\1.block.\2.conv\3.bn.", k)
    k = re.sub(r"^(layer\d)\.(\d+)\.downsample\.0\.", r"\1.block.\2.shortcut.conv.", k)
    return re.sub(r"^(layer\d)\.(\d+)\.downsample\.1\.", r"\1.block.\2.shortcut.bn.", k)


@pytest.mark.integration  # seconds to tens of seconds: a full-size model, training or rendering
def test_sparse_transfer_rigl_names_and_tf_maxpool(tmp_path):
    state, masks = _sparse_state("resnet50")
    sd = _wrapped({_rigl_name(k): v for k, v in state.items()}, {_rigl_name(k): m for k, m in masks.items()})
    assert "layer2.block.0.shortcut.conv._layer.weight" in sd and "initial_conv.bn.running_var" in sd
    torch.save({"model_config": {"arch": "resnet50_rigl", "dataset": "imagenet"},
                "model_state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "rigl.ckpt")
    built = _build("resnet50", tmp_path, {"format": "sparse_transfer", "path": str(tmp_path / "rigl.ckpt")})
    _assert_loaded(built.model, _masked(state, masks))
    assert "resnet50_rigl" in built.weights_source
    with torch.no_grad():
        assert built.model(torch.randn(2, 3, 64, 64)).shape == (2, 1000)
    # The stem pool is TensorFlow's 'SAME': extra pad bottom/right on even maps, one each side on odd ones.
    pool = built.model.maxpool
    x = torch.randn(2, 4, 8, 8)
    assert torch.equal(pool(x), F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=float("-inf")), 3, 2))
    assert not torch.equal(pool(x), F.max_pool2d(x, 3, 2, padding=1))
    x = torch.randn(2, 4, 7, 7)
    assert torch.equal(pool(x), F.max_pool2d(x, 3, 2, padding=1))


def test_sparse_transfer_str_conv_classifier(tmp_path):
    state, masks = _sparse_state("resnet50")
    sd = dict(_masked(state, masks))
    sd["fc.weight"] = sd["fc.weight"].reshape(1000, 2048, 1, 1)  # STR: fc is a bias-free 1x1 conv
    del sd["fc.bias"]
    torch.save({"model_config": {"arch": "resnet50_str", "dataset": "imagenet"}, "model_state_dict": sd},
               tmp_path / "str.ckpt")
    built = _build("resnet50", tmp_path, {"format": "sparse_transfer", "path": str(tmp_path / "str.ckpt")})
    expected = _masked(state, masks)
    expected["fc.bias"] = torch.zeros(1000)
    _assert_loaded(built.model, expected)
    feats = torch.randn(2, 2048)
    assert torch.allclose(built.model.fc(feats), F.conv2d(feats[..., None, None], sd["fc.weight"]).flatten(1),
                          rtol=1e-4, atol=1e-3)


# --- download path, checksum, published weights ----------------------------------------------------------------

def test_checksum_mismatch_and_a_verified_file_url_download(tmp_path):
    state, _ = _sparse_state("resnet18")
    torch.save(state, tmp_path / "w.pth")
    uri, digest = (tmp_path / "w.pth").as_uri(), sha256_file(tmp_path / "w.pth")
    wrong = "0" * 16 if not digest.startswith("0" * 16) else "1" * 16
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        resolve({"url": uri, "sha256": wrong}, {}, tmp_path / "cache")
    assert not list((tmp_path / "cache" / "downloads").glob("*w.pth"))  # a bad file is not kept
    built = _build("resnet18", tmp_path / "cache", {"url": uri, "sha256": digest[:12]})
    assert len(list((tmp_path / "cache" / "downloads").glob("*w.pth"))) == 1
    _assert_loaded(built.model, state)


@pytest.fixture
def offline(monkeypatch):
    def refuse(*a, **k):
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr("workers.checkpoints.urllib.request.urlopen", refuse)


def test_pretrained_offline_says_what_is_missing_and_where(tmp_path, offline, monkeypatch):
    with pytest.raises(CheckpointError) as e:
        build_model("resnet18", "pretrained", {}, tmp_path)
    msg = str(e.value)
    assert "resnet18-f37072fd.pth" in msg and str(tmp_path / "downloads") in msg and "weights:" in msg
    assert "no network in tests" in msg

    # The path the message names is where fetch() looks: a verified file put there loads without a download.
    state, _ = _sparse_state("resnet18")
    torch.save(state, tmp_path / "mine.pth")
    sha = sha256_file(tmp_path / "mine.pth")[:8]
    monkeypatch.setitem(resnet.PUBLISHED, "resnet18",
                        {"url": f"https://example.invalid/resnet18-{sha}.pth", "sha256": sha})
    with pytest.raises(CheckpointError) as e:
        build_model("resnet18", "pretrained", {}, tmp_path)
    looked = re.search(r"looks for them at (\S+);", str(e.value)).group(1)
    (tmp_path / "mine.pth").rename(looked)
    built, _ = build_model("resnet18", "pretrained", {}, tmp_path)
    _assert_loaded(built.model, state)


def test_pretrained_is_fetched_once_into_the_cache(tmp_path, monkeypatch):
    state, _ = _sparse_state("resnet18", seed=3)
    torch.save(state, tmp_path / "resnet18-published.pth")
    sha = sha256_file(tmp_path / "resnet18-published.pth")[:8]
    monkeypatch.setitem(resnet.PUBLISHED, "resnet18",
                        {"url": (tmp_path / "resnet18-published.pth").as_uri(), "sha256": sha})
    built, _ = build_model("resnet18", "pretrained", {}, tmp_path / "cache")
    _assert_loaded(built.model, state)
    assert "IMAGENET1K_V1" in built.weights_source and f"sha256:{sha}" in built.weights_source
    (tmp_path / "resnet18-published.pth").unlink()  # the second build needs only the cache
    again, _ = build_model("resnet18", "pretrained", {}, tmp_path / "cache")
    _assert_loaded(again.model, state)


def test_published_table_matches_torchvision():
    from torchvision.models import ResNet18_Weights, ResNet34_Weights, ResNet50_Weights

    for name, w in (("resnet18", ResNet18_Weights), ("resnet34", ResNet34_Weights), ("resnet50", ResNet50_Weights)):
        url = w.IMAGENET1K_V1.url
        assert resnet.PUBLISHED[name]["url"] == url
        assert resnet.PUBLISHED[name]["sha256"] == re.search(r"-([0-9a-f]{8,})\.pth$", url).group(1)
