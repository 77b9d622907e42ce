"""The reference ILM-VP recipe, pinned: ILM remaps every epoch and FLM once, the learning rate steps 0.01 -> 0.001
-> 0.0001 at 50% and 72% of the epochs, and an ILM run on a hand-made problem ends at a hand-checked mapping."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import workers.methods.vp as train_mod
from workers.models import ModelCard
from workers.core.spec import RunSpec, TrainConfig
from workers.methods.vp import train_prompt
from workers.train import Task

pytestmark = pytest.mark.unit

# A 2-px image in a 4-px canvas; mean 0, std 1, so the model sees raw pixel values.
META = ModelCard("a test model", input_size=4, num_classes=4, source="hand-made", mean=(0.0, 0.0, 0.0),
                 std=(1.0, 1.0, 1.0))


class CodeReader(nn.Module):
    """A fixed, frozen "source model": reads the image's top-left pixel (canvas (1, 1), inside the border) and
    predicts the source class s whose code (s + 1) / 10 is nearest, so each image's source prediction is set by
    hand, whatever the prompt. A border term gives the prompt a gradient without changing any argmax."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        codes = torch.arange(1, 5, dtype=x.dtype) / 10
        centre = x[:, 0, 1, 1:2]
        return -1000 * (centre - codes) ** 2 + 1e-3 * x[:, :, 0, :].sum((1, 2))[:, None]


# Source predictions per target class, chosen so that the frequency matrix (source x target) is
#          t0 t1 t2
#     s0 [  2  3  0 ]
#     s1 [  0  2  1 ]
#     s2 [  1  0  1 ]
#     s3 [  0  0  0 ]
# Greedy by hand: the global max 3 binds t1 -> s0 (row s0, column t1 struck out); then the max 1 ties between
# (s1, t2), (s2, t0) and (s2, t2): row-major order takes (s1, t2), so t2 -> s1; t0 gets the last, s2.
# (Per-column argmax would give t0 and t1 both s0.)
PREDICTIONS = {0: [0, 0, 2], 1: [0, 0, 0, 1, 1], 2: [1, 2]}
HAND_MAPPING = [2, 0, 1]


def hand_task() -> Task:
    y = torch.tensor([t for t, preds in PREDICTIONS.items() for _ in preds])
    codes = torch.tensor([(s + 1) / 10 for preds in PREDICTIONS.values() for s in preds])
    x = codes.view(-1, 1, 1, 1).expand(-1, 3, 2, 2).contiguous()
    return Task(x, y, x, y, ["a", "b", "c"])


def spec(method: str, epochs: int) -> RunSpec:
    return RunSpec("hand", method, "hand", shots=None, seed=0,
                   train=TrainConfig(epochs=epochs, batch_size=64, eval_batch_size=64))


@pytest.fixture
def mapping_calls(monkeypatch):
    """Spy on the mapping: every call to compute_mapping from the training loop, with its method."""
    calls = []
    real = train_mod.compute_mapping

    def spy(name, **kw):
        calls.append((name, kw.get("source_pred") is not None))
        return real(name, **kw)

    monkeypatch.setattr(train_mod, "compute_mapping", spy)
    return calls


@pytest.mark.parametrize("method, expected", [("ilm", 7), ("ilm_hungarian", 7), ("flm", 1), ("rlm", 1)])
def test_mapping_is_recomputed_every_epoch_for_ilm_and_once_for_flm(mapping_calls, method, expected):
    out = train_prompt(CodeReader(), META, hand_task(), spec(method, 7), torch.device("cpu"))
    assert len(mapping_calls) == expected and {n for n, _ in mapping_calls} == {method}
    assert all(from_data == (method != "rlm") for _, from_data in mapping_calls)  # RLM: seeded, no data
    assert len(out.mapping) == 3


def test_learning_rate_steps_at_50_and_72_percent_of_the_epochs(monkeypatch):
    seen = []  # the lr the optimizer holds at each step: one step per epoch (one batch holds all images)
    real_step = torch.optim.Adam.step

    def step(self, *a, **kw):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **kw)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    train_prompt(CodeReader(), META, hand_task(), spec("ilm", 50), torch.device("cpu"))
    expected = [0.01] * 25 + [0.001] * 11 + [0.0001] * 14  # milestones int(0.5 * 50) = 25, int(0.72 * 50) = 36
    assert seen == pytest.approx(expected, rel=1e-9) and len(seen) == 50


def test_ilm_end_to_end_reaches_the_hand_checked_mapping(mapping_calls):
    out = train_prompt(CodeReader(), META, hand_task(), spec("ilm", 3), torch.device("cpu"))
    assert out.mapping == HAND_MAPPING and len(mapping_calls) == 3
    # the mapped test predictions follow: every image whose source prediction is mapped to its class is right
    right = sum(preds.count(HAND_MAPPING[t]) for t, preds in PREDICTIONS.items())
    assert out.metrics["accuracy"] == pytest.approx(right / 10)
