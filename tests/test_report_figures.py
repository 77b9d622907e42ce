"""`vpgrid report --out`: the aggregation against hand-computed values, captions' counts, missing runs, option
errors, every figure family on a demo-like store, --select, and that the report needs no torch."""
import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.report import aggregate as A
from orchestrator.cli import app
from orchestrator.grid import MATCH_AXES, Match, expand, parse_grid
from orchestrator.report.names import FAMILIES, SELECT_KEYS
from orchestrator.report.runs import select
from workers.core.store import Store
from workers.core.spec import RunResult

pytestmark = pytest.mark.unit

cli = CliRunner()

# One model, dense and two sparsity levels, two methods, two budgets, three seeds: 36 runs.
HAND = """
name: hand
models:
  - name: demo_cnn
    weights: random
    compressions: [dense, {method: magnitude, sparsity: [0.8, 0.5]}]
methods: [ilm, rlm]
datasets: [digits]
shots: [4, full]
seeds: [1, 2, 3]
train: {epochs: 2, batch_size: {4: 8, full: 32}}
"""


def _spec(runs, **axes):
    (s,) = [r for r in runs if all((r.shots if k == "shots" else getattr(r, k) if k != "level" else r.compression_level) == v
                                   for k, v in axes.items())]
    return s


def _bins(count: dict[int, tuple[int, float, float]]):
    c, f, a = [0] * 15, [None] * 15, [None] * 15
    for b, (n, conf, acc) in count.items():
        c[b], f[b], a[b] = n, conf, acc
    return dict(reliability_count=c, reliability_confidence=f, reliability_accuracy=a)


@pytest.fixture
def hand(tmp_path):
    """Known values in: dense ilm full seeds 1-3 accuracy 0.5 / 0.6 / 0.7; sparsity 0.8 ilm full: 0.2 and 0.4, seed 3
    failed; sparsity 0.5 ilm full: seed 1 only (0.55), seeds 2 and 3 pending; every other run ok with accuracy 0.3."""
    st = Store(tmp_path / "s")
    st.create(HAND)
    runs = expand(parse_grid(HAND))
    known = {(None, None, 1): 0.5, (None, None, 2): 0.6, (None, None, 3): 0.7,
             (0.8, None, 1): 0.2, (0.8, None, 2): 0.4, (0.5, None, 1): 0.55}
    for r in runs:
        lv = r.compression_level
        if r.method == "ilm" and r.shots is None and (lv, None, r.seed) in known:
            acc = known[(lv, None, r.seed)]
        elif r.method == "ilm" and r.shots is None and lv == 0.8 and r.seed == 3:
            st.publish(RunResult.for_spec(r, "failed", error="RuntimeError: out of memory\ntraceback", finished_at=1.0))
            continue
        elif r.method == "ilm" and r.shots is None and lv == 0.5:
            continue  # pending
        else:
            acc = 0.3
        extra = {}
        if r.method == "ilm" and r.shots is None and lv is None:
            extra = _bins({3: (2, 0.5, 1.0)} if r.seed == 1 else {3: (6, 0.7, 0.5)} if r.seed == 2 else {})
        mapping = {1: [3, 5], 2: [3, 7], 3: [4, 7]}[r.seed]
        st.publish(RunResult.for_spec(r, "ok", accuracy=acc, ece=acc / 10, ece_paper=acc / 100, conf_correct=0.9, kl_incorrect=0.25,
                                      label_mapping=mapping, finished_at=1.0, **extra))
    return st, runs


def _table(st, runs):
    from orchestrator.report.entry import Options, load

    _, _, t = load(str(st.root), Options())
    return t


def test_summarize_gives_hand_computed_means_stds_and_counts(hand):
    st, runs = hand
    s = A.summarize(_table(st, runs), ["accuracy"])
    full_ilm = s[(s["method"] == "ilm") & (s["budget"] == "full")].set_index("variant")
    assert list(full_ilm.index) == ["dense", "magnitude 0.5", "magnitude 0.8"]  # dense, then least -> most sparse
    assert list(full_ilm["rank"]) == [0, 1, 2]
    d, lo, hi = full_ilm.loc["dense"], full_ilm.loc["magnitude 0.5"], full_ilm.loc["magnitude 0.8"]
    assert (d["n"], d["seeds"]) == (3, "1,2,3") and d["mean"] == pytest.approx(0.6) and d["std"] == pytest.approx(0.1)
    assert (hi["n"], hi["seeds"]) == (2, "1,2")  # the failed seed 3 is not averaged in
    assert hi["mean"] == pytest.approx(0.3) and hi["std"] == pytest.approx(math.sqrt(0.02))
    assert (lo["n"], lo["mean"]) == (1, pytest.approx(0.55)) and math.isnan(lo["std"])  # one seed: no std
    # every other configuration: three seeds of 0.3
    rest = s[~((s["method"] == "ilm") & (s["budget"] == "full"))]
    assert len(rest) == 3 * 3 and set(rest["n"]) == {3} and (rest["mean"] - 0.3).abs().max() < 1e-12
    assert set(rest["std"].round(12)) == {0.0} and set(s["setup"]) == {""}  # batch_size follows shots: no split


def test_summarize_keeps_runs_that_differ_in_a_setting_apart(hand):
    st, runs = hand
    spec = _spec(runs, method="rlm", shots=4, compression="dense", seed=1)
    other = dataclasses.replace(spec, train=dataclasses.replace(spec.train, lr=0.5), seed=1)
    st.publish(RunResult.for_spec(other, "ok", accuracy=0.9, finished_at=2.0))
    t = _table(st, runs)
    s = A.summarize(t, ["accuracy"])
    cell = s[(s["method"] == "rlm") & (s["budget"] == "4-shot") & (s["variant"] == "dense")]
    assert sorted(zip(cell["setup"], cell["n"], cell["mean"].round(6))) == [("lr=0.01", 3, 0.3), ("lr=0.5", 1, 0.9)]
    assert t.loc[~t["in_grid"], "run_key"].tolist() == [other.run_key]


def test_reliability_pools_bins_weighted_by_count(hand):
    st, runs = hand
    r = A.reliability(_table(st, runs))
    b = r[(r["variant"] == "dense") & (r["method"] == "ilm") & (r["budget"] == "full")]
    assert len(b) == 15 and set(b["runs"]) == {3} and b["count"].tolist() == [0, 0, 0, 8] + [0] * 11
    row = b[b["bin"] == 3].iloc[0]
    assert row["confidence"] == pytest.approx((2 * 0.5 + 6 * 0.7) / 8) and row["accuracy"] == pytest.approx((2 + 3) / 8)
    assert (row["lo"], row["hi"]) == (pytest.approx(3 / 15), pytest.approx(4 / 15))
    assert b[b["bin"] != 3]["confidence"].isna().all()


def test_label_maps_take_the_majority_over_seeds(hand):
    st, runs = hand
    m = A.label_maps(_table(st, runs))
    d = m[(m["variant"] == "dense") & (m["method"] == "ilm") & (m["budget"] == "full")].sort_values("target")
    assert list(zip(d["target"], d["source"], d["agree"], d["runs"])) == [(0, 3, 2, 3), (1, 7, 2, 3)]


def test_drops_table_from_the_hand_store(hand):
    st, runs = hand
    t = A.table_drops(A.summarize(_table(st, runs)))
    got = {r.variant: (r.cells, round(r.mean_drop, 9), round(r.max_drop, 9)) for r in t.itertuples()}
    # ilm full: 0.6 - 0.3 (sparsity 0.8), 0.6 - 0.55 (0.5); the three other cells: 0.3 - 0.3
    assert got == {"magnitude 0.5": (4, round(0.05 / 4, 9), 0.05), "magnitude 0.8": (4, round(0.3 / 4, 9), 0.3)}


@pytest.mark.integration  # seconds to tens of seconds: a full-size model, training or rendering
def test_captions_count_runs_and_list_what_is_missing(hand, tmp_path):
    from orchestrator.report.deliver import Options, write
    from orchestrator.report.entry import caption

    st, runs = hand
    info = write(str(st.root), tmp_path / "r", Options())
    ece = next(e for e in info["entries"] if e.family == "ece")
    # the full budget of dense and both levels, two methods: 18 runs, 15 ok, 1 failed, 2 pending
    assert caption(ece).startswith("Expected calibration error")
    assert "15 finished runs in 6 configurations, 1–3 seeds each; missing: 2 pending, 1 failed" in caption(ece)
    acc = next(e for e in info["entries"] if e.family == "accuracy")
    assert acc.title == "demo_cnn, magnitude: test accuracy vs data budget, per method"
    assert "33 finished runs in 12 configurations, 1–3 seeds each; missing: 2 pending, 1 failed" in caption(acc)
    missing = pd.read_csv(tmp_path / "r" / "missing.csv")
    assert sorted(missing["state"]) == ["failed", "pending", "pending"]
    assert set(missing["run_key"]) == {_spec(runs, method="ilm", shots=None, level=lv, seed=s).run_key
                                      for lv, s in ((0.8, 3), (0.5, 2), (0.5, 3))}
    md = (tmp_path / "r" / "README.md").read_text()
    assert "failed: demo_cnn magnitude 0.8 ilm digits full seed 3: RuntimeError: out of memory" in md
    assert "pending: demo_cnn magnitude 0.5 ilm digits full seed 2" in md
    assert "33 finished, 1 failed, 2 pending runs" in md
    html = (tmp_path / "r" / "index.html").read_text()
    assert "RuntimeError: out of memory" in html and html.count("<details>") == md.count("<details>")


def _demo_like(root: Path, text: str, fail_every: int = 13, pending_every: int = 11) -> Store:
    """Every run of `text` with plausible metrics, bins and mappings; some failed, some left pending."""
    st = Store(root)
    st.create(text)
    for i, spec in enumerate(expand(parse_grid(text))):
        if i % pending_every == 5:
            continue
        if i % fail_every == 3:
            st.publish(RunResult.for_spec(spec, "failed", error="RuntimeError: boom", finished_at=1.0))
            continue
        pen = 0.3 * (spec.compression_level or 0) if spec.compression == "magnitude" else \
            0.02 * (8 - spec.compression_level) if spec.compression == "fakequant" else 0.0
        acc = 0.3 + 0.05 * (spec.shots or 30) ** 0.3 - pen + 0.01 * spec.seed
        st.publish(RunResult.for_spec(spec, "ok", accuracy=acc, ece=0.05 + pen, ece_paper=0.01, conf_correct=0.6 - pen,
                                      kl_incorrect=0.3 + pen, kl_incorrect_paper=0.01,
                                      **_bins({b: (10, (b + 0.5) / 15, max(0.0, (b + 0.5) / 15 - pen)) for b in range(6, 15)}),
                                      label_mapping=[(3 * t + spec.seed) % 20 for t in range(10)],
                                      per_class_accuracy=[min(1.0, acc + 0.02 * t - 0.1) for t in range(10)],
                                      finished_at=1.0))
    return st


def _demo_text(two_models: bool = False) -> str:
    d = yaml.safe_load((Path(__file__).parents[1] / "grids" / "demo.yaml").read_text())
    if two_models:  # a second width: a setup that tells the two apart, and Tables 3-4 get two columns
        d["models"].append({**d["models"][0], "args": {"width": 8}})
    return yaml.safe_dump(d)


@pytest.mark.integration  # seconds to tens of seconds: a full-size model, training or rendering
def test_every_family_is_written_for_a_demo_like_store(tmp_path):
    st = _demo_like(tmp_path / "s", _demo_text(two_models=True))
    r = cli.invoke(app, ["report", str(st.root), "--out", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == str(tmp_path / "r" / "index.html")
    html = (tmp_path / "r" / "index.html").read_text()
    md = (tmp_path / "r" / "README.md").read_text()
    for fam in FAMILIES:
        if fam in ("lottery", "prompts", "best_epoch"):  # > 3 levels, stored prompts, eval_every: not in this store
            continue
        assert list((tmp_path / "r").glob(f"figures/{fam}/*.png") if fam not in ("table1", "table2", "table3")
                    else (tmp_path / "r").glob(f"tables/{fam}*.md")), fam
    assert "Not drawn: no finished run with a stored prompt (STORE/_prompts/)" in md
    pngs = sorted(str(p.relative_to(tmp_path / "r")) for p in (tmp_path / "r").rglob("*.png"))
    # 2 models x 2 compressions: accuracy (a panel per method) + ece, confidence, kl + reliability of the most
    # accurate method + the label mapping + class-wise impact
    assert len(pngs) == 4 * (1 + 3 + 1 + 1 + 1)
    for p in pngs:
        assert f'src="{p}"' in html and f"]({p})" in md
        assert (tmp_path / "r" / p).with_suffix(".svg").stat().st_size > 0
    assert "model_args=" in md  # the two widths are told apart, never averaged as seeds
    table1 = (tmp_path / "r" / "tables" / "table1_drops.md").read_text()
    assert "| magnitude | unstructured |" in table1 and "| fakequant | quantization |" in table1
    mapping = pd.concat(pd.read_csv(p) for p in (tmp_path / "r").glob("figures/mapping/*.csv"))
    names = {x for label in mapping["source_label"] for x in label.split(" / ")}  # 'a / b': seeds split evenly
    assert names <= set(__import__("workers.core.classnames").core.classnames.shapes())


@pytest.mark.integration  # seconds to tens of seconds: a full-size model, training or rendering
def test_figures_have_no_overlapping_or_clipped_text(tmp_path):
    from orchestrator.report.entry import Options, load
    from orchestrator.report.plan import plan
    from orchestrator.report.plots import KINDS, plt
    from tests.figure_text import overlapping_texts

    st = _demo_like(tmp_path / "s", _demo_text())
    _, _, runs = load(str(st.root), Options())
    entries = plan(runs, A.summarize(runs), A.reliability(runs), A.label_maps(runs), Options())
    drawn = [e for e in entries if e.draw is not None]
    assert {e.family for e in drawn} == {"accuracy", "ece", "confidence", "kl", "reliability", "mapping"}
    for e in drawn:
        fig = KINDS[e.draw[0]](**e.draw[1])
        assert overlapping_texts(fig) == [], e.title
        plt.close(fig)


def test_a_users_own_model_appears_without_code_change(tmp_path):
    text = HAND.replace("name: demo_cnn", "name: my_net").replace("sparsity: [0.8, 0.5]", "sparsity: [0.7]")
    st = _demo_like(tmp_path / "s", text, fail_every=1000, pending_every=1000)
    r = cli.invoke(app, ["report", str(st.root), "--out", str(tmp_path / "r"), "--family", "accuracy", "--family", "mapping"])
    assert r.exit_code == 0, r.output
    md = (tmp_path / "r" / "README.md").read_text()
    assert "my_net, magnitude: test accuracy vs data budget, per method" in md
    assert "source class names of 'my_net' are not declared" in md and "ece" not in {p.name for p in (tmp_path / "r" / "figures").iterdir()}


@pytest.mark.integration  # seconds to tens of seconds: a full-size model, training or rendering
def test_select_narrows_the_report_with_grid_match_semantics(hand, tmp_path):
    st, runs = hand
    r = cli.invoke(app, ["report", str(st.root), "--out", str(tmp_path / "r"), "--select", "level=0.8",
                         "--select", "compression=dense", "--select", "method=ilm"])
    assert r.exit_code == 0, r.output  # level=0.8 and compression=dense: no run is both
    r = cli.invoke(app, ["report", str(st.root), "--out", str(tmp_path / "r"), "--select", "level=0.8",
                         "--select", "level=0.5", "--select", "shots=full", "--json"])
    assert r.exit_code == 0, r.output
    s = pd.read_csv(tmp_path / "r" / "summary.csv")
    assert set(s["variant"]) == {"magnitude 0.8", "magnitude 0.5"} and set(s["budget"]) == {"full"}
    assert json.loads(r.stdout)["pending"] == 2 and json.loads(r.stdout)["failed"] == 1
    # the same rows as the grid's own `match` on the specs
    t = _table(st, runs)
    for wanted in ({"level": [0.8, 0.5], "shots": ["full"]}, {"method": ["rlm"], "seed": [2]}, {"compression": ["dense"]}):
        expect = {s.run_key for s in runs if Match(**wanted).matches(s)}
        assert set(select(t[t["in_grid"]], wanted)["run_key"]) == expect, wanted
    md = cli.invoke(app, ["report", str(st.root), "--select", "shots=full", "--select", "method=ilm"]).stdout
    assert "4-shot" not in md and "| full |" in md and "rlm" not in md


@pytest.mark.parametrize("args, message", [
    (["--select", "modle=x"], "--select: unknown key 'modle'; did you mean 'model'?"),
    (["--select", "model"], "--select 'model': expected KEY=VALUE"),
    (["--select", "model=resnet50"], "--select model=resnet50: no run of the grid or store has it (model: demo_cnn)"),
    (["--ece", "paperr"], "--ece: unknown value 'paperr'; did you mean 'paper'?"),
    (["--kl", "x"], "--kl: unknown value 'x'"),
    (["--family", "acc"], "--family: unknown value 'acc'"),
    (["--vector", "png"], "--vector: unknown value 'png' (valid: svg, pdf)"),
    (["--metric", "f1"], "--metric: unknown value 'f1'"),
])
def test_option_errors_are_one_line_and_exit_2(hand, tmp_path, args, message):
    st, _ = hand
    r = cli.invoke(app, ["report", str(st.root), "--out", str(tmp_path / "r"), *args])
    assert r.exit_code == 2, r.output
    assert r.stderr.strip() == "error: " + r.stderr.strip()[len("error: "):] and len(r.stderr.strip().splitlines()) == 1
    assert message in r.stderr and not (tmp_path / "r").exists()


def test_ece_paper_switch_draws_the_papers_variant(hand, tmp_path):
    st, _ = hand
    r = cli.invoke(app, ["report", str(st.root), "--out", str(tmp_path / "r"), "--ece", "paper", "--family", "ece",
                         "--vector", "pdf"])
    assert r.exit_code == 0, r.output
    md = (tmp_path / "r" / "README.md").read_text()
    assert "ECE, paper's code (logit units / batch) vs sparsity at the full training split" in md and "paper code's ECE" in md
    assert list((tmp_path / "r").glob("figures/ece/*.pdf")) and not list((tmp_path / "r").glob("figures/accuracy/*"))


@pytest.mark.integration
def test_report_imports_neither_torch_nor_ray(hand, tmp_path):
    st, _ = hand
    code = ("import sys; from typer.testing import CliRunner; from orchestrator.cli import app; "
            f"r = CliRunner().invoke(app, ['report', {str(st.root)!r}, '--out', {str(tmp_path / 'r')!r}]); "
            "assert r.exit_code == 0, r.output; "
            "print(sorted(m for m in ('torch', 'ray', 'torchvision', 'timm', 'open_clip') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_select_keys_are_the_grid_match_axes():
    assert SELECT_KEYS == MATCH_AXES


def test_source_class_names_match_every_registered_model():
    """Each registered model declares its source classes (workers/core/classnames.py), as many as it outputs."""
    from workers.core.classnames import CLASS_LISTS, SOURCE_CLASSES, shapes
    from workers.data.shapes import CLASSES
    from workers.models import MODELS

    assert list(shapes()) == list(CLASSES)
    for entry in MODELS:
        assert entry.name in SOURCE_CLASSES, entry.name
        names = CLASS_LISTS[SOURCE_CLASSES[entry.name]]()
        assert names is None or len(names) == entry.card.num_classes, entry.name


def test_label_mapping_names_are_readable():
    from workers.core.classnames import imagenet, mapped_name

    assert mapped_name("demo_cnn", "ilm", "digits", 0, 10) == "warm_disc"
    assert mapped_name("demo_cnn", "ilm", "digits", 25, 10) == "#25"  # out of range: shown as an index
    assert mapped_name("clip_vit_l14_336", "clip_ilm", "digits", 23, 10) == "template 2: 3"
    if imagenet() is not None:
        assert mapped_name("resnet50", "ilm", "cifar10", 1, 10) == "goldfish"


@pytest.mark.integration
def test_a_store_with_no_finished_run_lists_every_run_as_pending(tmp_path):
    st = Store(tmp_path / "s")
    st.create(HAND)
    r = cli.invoke(app, ["report", str(st.root), "--out", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    assert len(pd.read_csv(tmp_path / "r" / "missing.csv")) == len(expand(parse_grid(HAND))) == 36
    md = (tmp_path / "r" / "README.md").read_text()
    assert "*Not drawn: no finished run yet.*" in md and "No finished runs; missing: 18 pending, 0 failed" in md
    assert not list((tmp_path / "r").rglob("*.png"))
