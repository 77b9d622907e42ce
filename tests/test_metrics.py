"""classification_metrics against hand-worked values and independent numpy / scipy computations."""
import math

import numpy as np
import pytest
import scipy.stats
import torch

from workers.metrics import classification_metrics, expected_calibration_error, paper_ece, reliability_bins

pytestmark = pytest.mark.unit


def _two_class_logits(confs):
    """Logits whose softmax is exactly [c, 1 - c] (up to rounding)."""
    c = torch.tensor(confs, dtype=torch.float64)
    return torch.stack([c.log(), (1 - c).log()], dim=1)


def _ece_numpy(logits: np.ndarray, labels: np.ndarray, n_bins: int) -> float:
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    conf, pred = p.max(axis=1), p.argmax(axis=1)
    correct = (pred == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ece = 0.0
    for b in range(n_bins):
        lo, hi = edges[b], edges[b + 1]
        in_bin = (conf > lo) & (conf <= hi)
        if b == 0:
            in_bin |= conf == 0
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return float(ece)


def test_hand_worked_case():
    # confidences (class 0 is always the argmax) and labels: 0.95 ok, 0.95 wrong, 0.70 ok, 0.55 wrong.
    logits = _two_class_logits([0.95, 0.95, 0.70, 0.55])
    labels = torch.tensor([0, 1, 0, 1])
    m = classification_metrics(logits, labels)
    # 15 bins of width 1/15: 0.95 -> (14/15, 1], 0.70 -> (10/15, 11/15], 0.55 -> (8/15, 9/15].
    # bin 14: 2/4 * |0.5 - 0.95| = 0.225; bin 10: 1/4 * |1 - 0.70| = 0.075; bin 8: 1/4 * |0 - 0.55| = 0.1375
    assert m["ece"] == pytest.approx(0.225 + 0.075 + 0.1375)  # 0.4375
    assert m["accuracy"] == 0.5
    assert m["conf_correct"] == pytest.approx((0.95 + 0.70) / 2)
    assert m["nll"] == pytest.approx(-(math.log(0.95) + math.log(0.05) + math.log(0.70) + math.log(0.45)) / 4)
    # KL(p || U) for K=2 = p0 log(2 p0) + p1 log(2 p1), over the two wrong samples.
    kl = lambda c: c * math.log(2 * c) + (1 - c) * math.log(2 * (1 - c))  # noqa: E731
    assert m["kl_incorrect"] == pytest.approx((kl(0.95) + kl(0.55)) / 2)
    assert m["per_class_accuracy"] == [1.0, 0.0]
    assert m["n"] == 4
    assert set(m) == {"accuracy", "ece", "ece_paper", "conf_correct", "kl_incorrect", "kl_incorrect_paper", "nll",
                      "per_class_accuracy", "per_class_confidence", "reliability", "n"}


def test_ece_against_numpy():
    rng = np.random.default_rng(0)
    for k, scale in [(2, 1.0), (10, 3.0), (37, 0.3)]:
        logits = rng.normal(size=(400, k)) * scale
        labels = rng.integers(0, k, size=400)
        m = classification_metrics(torch.from_numpy(logits), torch.from_numpy(labels))
        assert m["ece"] == pytest.approx(_ece_numpy(logits, labels, 15), abs=1e-12)
        m10 = classification_metrics(torch.from_numpy(logits), torch.from_numpy(labels), n_bins=10)
        assert m10["ece"] == pytest.approx(_ece_numpy(logits, labels, 10), abs=1e-12)


def test_bin_edges_via_logits():
    # 4 bins: (0, .25], (.25, .5], (.5, .75], (.75, 1].
    # conf exactly 0.5 (equal logits) belongs to the lower bin (.25, .5], not to (.5, .75] with 0.6:
    logits = torch.cat([torch.zeros(1, 2, dtype=torch.float64), _two_class_logits([0.6])])
    m = classification_metrics(logits, torch.tensor([0, 1]), n_bins=4)
    # separate bins: 1/2 * |1 - 0.5| + 1/2 * |0 - 0.6| = 0.55 (sharing a bin would give 0.05)
    assert m["ece"] == pytest.approx(0.55)
    # conf exactly 1.0 (logit gap 100 saturates float64) belongs to the last bin, with 0.8:
    logits = torch.tensor([[100.0, 0.0]], dtype=torch.float64)
    assert torch.softmax(logits, 1).max().item() == 1.0
    logits = torch.cat([logits, _two_class_logits([0.8])])
    m = classification_metrics(logits, torch.tensor([1, 0]), n_bins=4)
    # same bin: |0.5 - 0.9| = 0.4 (dropping 1.0 would give 0.1, a bin of its own 0.6)
    assert m["ece"] == pytest.approx(0.4)


def test_bin_edges_direct():
    edges = torch.linspace(0, 1, 16, dtype=torch.float64)
    # an inner edge (5/15) joins the bin below it, with 0.3; 0.34 is in the bin above.
    conf = torch.tensor([edges[5].item(), 0.3, 0.34], dtype=torch.float64)
    correct = torch.tensor([True, False, False])
    # lower bin: 2/3 * |0.5 - (5/15 + 0.3)/2|; upper bin: 1/3 * 0.34
    expected = 2 / 3 * abs(0.5 - (edges[5].item() + 0.3) / 2) + 1 / 3 * 0.34
    assert expected_calibration_error(conf, correct) == pytest.approx(expected)
    # 0 shares the first bin (0, 1/15] with 0.04: |1 - 0.02| = 0.98 (dropping 0 would give 1/2 * 0.96).
    conf = torch.tensor([0.0, 0.04], dtype=torch.float64)
    assert expected_calibration_error(conf, torch.tensor([True, True])) == pytest.approx(1 - 0.02)


def test_kl_against_scipy():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(300, 7)) * 2
    labels = rng.integers(0, 7, size=300)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    wrong = p.argmax(axis=1) != labels
    uniform = np.full(7, 1 / 7)
    expected = np.mean([scipy.stats.entropy(p[i], uniform) for i in np.flatnonzero(wrong)])
    m = classification_metrics(torch.from_numpy(logits), torch.from_numpy(labels))
    assert m["kl_incorrect"] == pytest.approx(expected, rel=1e-10)
    assert m["accuracy"] == pytest.approx(1 - wrong.mean())
    assert m["nll"] == pytest.approx(-np.log(p[np.arange(300), labels]).mean(), rel=1e-10)
    assert m["conf_correct"] == pytest.approx(p[~wrong, labels[~wrong]].mean(), rel=1e-10)


def test_perfectly_confident_and_correct():
    logits = torch.zeros(6, 3)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    logits[torch.arange(6), labels] = 60.0
    m = classification_metrics(logits, labels)
    assert m["ece"] == pytest.approx(0.0, abs=1e-12)
    assert m["accuracy"] == 1.0
    assert m["conf_correct"] == pytest.approx(1.0)
    assert m["kl_incorrect"] is None
    assert m["nll"] == pytest.approx(0.0, abs=1e-12)


def test_uniform_logits():
    # argmax ties go to class 0, so only the label-0 sample is correct.
    m = classification_metrics(torch.zeros(4, 4), torch.tensor([1, 2, 3, 0]))
    assert m["accuracy"] == 0.25
    assert m["kl_incorrect"] == pytest.approx(0.0, abs=1e-12)
    assert m["ece"] == pytest.approx(0.0, abs=1e-12)  # conf 0.25 everywhere, accuracy 0.25
    assert m["conf_correct"] == pytest.approx(0.25)
    assert m["nll"] == pytest.approx(math.log(4))
    assert m["per_class_accuracy"] == [1.0, 0.0, 0.0, 0.0]


def test_absent_class_and_none_correct():
    logits = torch.tensor([[0.0, 2.0, 0.0], [0.0, 2.0, 0.0]])
    m = classification_metrics(logits, torch.tensor([0, 0]))
    assert m["per_class_accuracy"] == [0.0, None, None]
    assert m["conf_correct"] is None
    assert m["accuracy"] == 0.0


def test_json_able_types():
    m = classification_metrics(torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1]))
    for key in ("accuracy", "ece", "nll"):
        assert type(m[key]) is float
    assert type(m["n"]) is int
    assert all(v is None or type(v) is float for v in m["per_class_accuracy"])


def test_bad_inputs():
    with pytest.raises(ValueError, match="N = 0"):
        classification_metrics(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError):
        classification_metrics(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError):
        classification_metrics(torch.zeros(2, 3), torch.tensor([0, 3]))


# --- the paper's definitions, and the reliability data ------------------------------------------------------

def test_paper_ece_hand_worked():
    # batches of 2, in order. Batch 1: top logits 3 (right) and 2 (wrong), both > 1, so both in the package's
    # last bin: |2.5 - 0.5| = 2.0. Batch 2: 0.5 (right) in (7/15, 8/15], -0.5 (wrong) in the first bin:
    # 1/2 |0.5 - 1| + 1/2 |-0.5 - 0| = 0.5. Batch 3 (partial): 0.9 (right): |0.9 - 1| = 0.1.
    logits = torch.tensor([[3.0, 1.0, 0.0], [2.0, 0.0, 0.0], [0.5, 0.2, 0.1], [-1.0, -2.0, -0.5], [0.2, 0.9, 0.0]],
                          dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 0, 1])
    assert paper_ece(logits[:4], labels[:4], 2) == pytest.approx((2.0 + 0.5) / 4)
    assert paper_ece(logits, labels, 2) == pytest.approx((2.0 + 0.5 + 0.1) / 5)


@pytest.mark.parametrize("batch", [64, 128, 50])
@pytest.mark.parametrize("scale,shift", [(3.0, 0.0), (0.3, 0.0), (0.2, 0.5), (1.0, -2.0)])
def test_paper_ece_against_the_papers_package(batch, scale, shift):
    """The paper's own code path: cal.get_ece on each test batch's mapped logits, summed, divided by N."""
    cal = pytest.importorskip("calibration")  # uncertainty-calibration, the package the paper's code used
    rng = np.random.default_rng(batch)
    n, k = 300, 10  # 300 is not a multiple of any batch: the last batch is partial, as in a test loader
    logits = rng.normal(size=(n, k)) * scale + shift  # tops above 1, inside (0, 1) and below 0
    labels = rng.integers(0, k, size=n)
    expected = sum(cal.get_ece(logits[s:s + batch], labels[s:s + batch]) for s in range(0, n, batch)) / n
    got = paper_ece(torch.from_numpy(logits), torch.from_numpy(labels), batch)
    assert got == pytest.approx(expected, abs=1e-12)
    m = classification_metrics(torch.from_numpy(logits), torch.from_numpy(labels), paper_batch=batch)
    assert m["ece_paper"] == pytest.approx(expected, abs=1e-12)


def test_paper_ece_on_large_logits_is_gap_over_batch_size():
    # The paper's regime: every top mapped logit > 1, one bin per batch, so each full batch adds
    # |mean top logit - accuracy| and the sum / N is that gap averaged over batches / batch size.
    rng = np.random.default_rng(3)
    logits = torch.from_numpy(rng.normal(size=(256, 5)) + 5.0)
    labels = torch.from_numpy(rng.integers(0, 5, size=256))
    gaps = [float(logits[s:s + 128].max(1).values.mean()) - float((logits[s:s + 128].argmax(1) == labels[s:s + 128])
                                                                   .double().mean()) for s in (0, 128)]
    assert paper_ece(logits, labels, 128) == pytest.approx(sum(gaps) / 2 / 128)
    assert paper_ece(logits, labels, 64) != pytest.approx(paper_ece(logits, labels, 128))


def test_paper_test_batch_per_dataset():
    from workers.data import DATASETS
    from workers.metrics import run_metrics
    from workers.core.spec import RunSpec

    assert {n: DATASETS.card(n).paper_test_batch for n in DATASETS.names() if DATASETS.card(n).paper_test_batch != 128
            } == {"oxford_pets": 64}
    logits, labels = torch.randn(200, 37, dtype=torch.float64) * 2 + 3, torch.randint(0, 37, (200,))
    pets = run_metrics(logits, labels, RunSpec("resnet18", "ilm", "oxford_pets", None, 0))
    assert pets["ece_paper"] == pytest.approx(paper_ece(logits, labels, 64))
    assert pets["ece_paper"] != pytest.approx(paper_ece(logits, labels, 128))


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides")  # the paper's reduction, on purpose
def test_kl_incorrect_paper_by_hand():
    rng = np.random.default_rng(4)
    logits = torch.from_numpy(rng.normal(size=(120, 6)) * 2)
    labels = torch.from_numpy(rng.integers(0, 6, size=120))
    m = classification_metrics(logits, labels)
    values = []
    for z, y in zip(logits.tolist(), labels.tolist()):
        e = [math.exp(v) for v in z]
        p = [v / sum(e) for v in e]
        if max(range(6), key=lambda i: p[i]) != y:
            # F.kl_div(log p, U, reduction='mean'): mean over the K elements of U_k (log U_k - log p_k)
            values.append(sum((1 / 6) * (math.log(1 / 6) - math.log(pk)) for pk in p) / 6)
    assert m["kl_incorrect_paper"] == pytest.approx(sum(values) / len(values), rel=1e-12)
    wrong = logits.argmax(1) != labels
    torch_value = torch.nn.functional.kl_div(torch.log_softmax(logits[wrong], 1), torch.full((int(wrong.sum()), 6), 1 / 6,
                                             dtype=torch.float64), reduction="mean")
    assert m["kl_incorrect_paper"] == pytest.approx(float(torch_value), rel=1e-12)
    assert m["kl_incorrect_paper"] != pytest.approx(m["kl_incorrect"])  # KL(U||p)/K is not KL(p||U)


def test_reliability_bins_and_per_class_confidence_against_numpy():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(500, 4)) * 2
    labels = rng.integers(0, 3, size=500)  # class 3 absent
    z = np.exp(logits - logits.max(1, keepdims=True))
    p = z / z.sum(1, keepdims=True)
    conf, correct = p.max(1), p.argmax(1) == labels
    m = classification_metrics(torch.from_numpy(logits), torch.from_numpy(labels))
    r = m["reliability"]
    edges = np.linspace(0, 1, 16)
    for b in range(15):
        in_bin = (conf > edges[b]) & (conf <= edges[b + 1])
        assert r["count"][b] == in_bin.sum()
        if in_bin.any():
            assert r["confidence"][b] == pytest.approx(conf[in_bin].mean(), rel=1e-12)
            assert r["accuracy"][b] == pytest.approx(correct[in_bin].mean(), rel=1e-12)
        else:
            assert r["confidence"][b] is None and r["accuracy"][b] is None
    assert sum(r["count"]) == 500 and r["count"][:3] == [0, 0, 0]  # K = 4: confidence >= 1/4
    assert m["per_class_confidence"][:3] == pytest.approx([conf[labels == c].mean() for c in range(3)], rel=1e-12)
    assert m["per_class_confidence"][3] is None
    # the reliability data reproduce the ECE
    assert m["ece"] == pytest.approx(sum(c / 500 * abs(a - f) for c, f, a in zip(*r.values()) if c), abs=1e-15)
    assert reliability_bins(torch.from_numpy(conf), torch.from_numpy(correct)) == r
