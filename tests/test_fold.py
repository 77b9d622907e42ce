"""BatchNorm folded into the convolution before it: the same function, in float64, for the models that have it;
left alone where it is not a convolution's sole reader, is hooked, or cannot be traced; never for fine-tuning."""
import pytest
import torch
import torchvision
from torch import nn

from workers.fold import fold_batchnorm
from workers.methods.baselines import full_finetune
from workers.methods.vp import train_prompt
from workers.models.demo_cnn import DemoCNN
from workers.run import Context
from workers.core.spec import RunSpec, TrainConfig

pytestmark = pytest.mark.unit


def _random_statistics(model: nn.Module) -> nn.Module:
    """Eval-mode BatchNorm that is far from the identity, so a wrong fold shows."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))
    return model.double().eval()


def _batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("make, folded", [(lambda: DemoCNN(width=8), 5), (torchvision.models.resnet18, 20)],
                         ids=["demo_cnn", "resnet18"])
def test_a_folded_model_computes_the_same_function_and_the_original_is_untouched(make, folded):
    torch.manual_seed(0)
    model = _random_statistics(make())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = fold_batchnorm(model)
    assert _batchnorms(out) == 0 and _batchnorms(model) == folded
    x = torch.randn(3, 3, 48, 48, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(out(x), model(x), rtol=1e-10, atol=1e-10)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # full fine-tuning still gets this one


def test_the_fold_keeps_pruned_weights_at_zero():
    model = _random_statistics(DemoCNN(width=8))
    conv = model.features[1][0]
    with torch.no_grad():
        conv.weight[conv.weight.abs() < conv.weight.abs().median()] = 0
    zeros = conv.weight == 0
    assert bool(((fold_batchnorm(model).features[1][0].weight == 0) == zeros).all())


class _SharedConv(nn.Module):
    """The conv's output feeds the BatchNorm and a skip: folding would change the skip."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


class _Branching(nn.Module):
    """Data-dependent control flow: symbolic tracing fails, so nothing is folded."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn(self.conv(x)) if x.sum() > 0 else x


def test_batchnorms_that_cannot_be_folded_exactly_are_left_alone():
    shared = _random_statistics(_SharedConv())
    assert fold_batchnorm(shared) is shared
    branching = _random_statistics(_Branching())
    assert fold_batchnorm(branching) is branching
    training = _random_statistics(DemoCNN(width=8)).train()  # batch statistics: not a fixed affine map
    assert fold_batchnorm(training) is training
    hooked = _random_statistics(DemoCNN(width=8))
    hooked.features[2][1].register_forward_hook(lambda m, a, y: y)  # e.g. an activation quantiser on its output
    out = fold_batchnorm(hooked)
    assert _batchnorms(out) == 1 and isinstance(out.features[2][1], nn.BatchNorm2d)
    plain = nn.Sequential(nn.Conv2d(3, 3, 3), nn.LayerNorm(3))  # no BatchNorm (a ViT): the model itself, no copy
    assert fold_batchnorm(plain) is plain


def test_vp_reads_the_folded_variant_and_fine_tuning_trains_the_one_as_compressed(tmp_path, monkeypatch):
    import workers.run as run_module

    seen = {}

    def spy(name):
        real = {"ilm": train_prompt, "ff": full_finetune}[name]

        def method(model, *args):
            seen[name] = _batchnorms(model)
            return real(model, *args)
        return method

    monkeypatch.setattr(run_module.METHODS, "get", spy)
    train = TrainConfig(epochs=1, batch_size=8, input_size=8)
    specs = [RunSpec(model="demo_cnn", method=m, dataset="digits", shots=1, seed=1, weights="random",
                     model_args={"width": 4}, train=train) for m in ("ilm", "ff")]
    ctx = Context(tmp_path, torch.device("cpu"))
    rows = [r for s in specs for r in run_module.run_group([s], ctx)]
    assert [r.status for r in rows] == ["ok", "ok"], [r.error for r in rows]
    assert seen == {"ilm": 0, "ff": 5}
    v = ctx.variant(specs[0])
    assert v.params == sum(p.numel() for p in v.model.parameters())  # the row counts the model as compressed
