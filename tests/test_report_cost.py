"""The report's paired cost (against a hand-worked case, scipy's t interval and a large-sample check of the
bootstrap), its findings, ties in the label mapping, one colour vocabulary and figures readable at 880 px."""
import math

import matplotlib.text
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from orchestrator.report import aggregate as A
from orchestrator.report import cost as C
from orchestrator.grid import expand, parse_grid
from workers.core.store import Store
from workers.core.spec import RunResult

from tests.test_report_figures import HAND, _demo_like, _demo_text, hand  # noqa: F401  (the fixture)

pytestmark = pytest.mark.unit

T_975_1 = 12.7062047361747  # t(0.975, 1 df), from a printed table (Student's t, two-sided 95%)
T_975_2 = 4.30265272974946  # t(0.975, 2 df)


def _table(st):
    from orchestrator.report.entry import Options, load

    return load(str(st.root), Options())[2]


def test_paired_cost_matches_a_hand_worked_case_and_scipy(hand):
    st, _ = hand
    c = C.cost(C.pairs(_table(st)))
    full = c[(c["method"] == "ilm") & (c["budget"] == "full") & (c["metric"] == "accuracy")].set_index("variant")
    # magnitude 0.8: seeds 1, 2 (seed 3 failed) against dense 0.5, 0.6 -> differences -0.3, -0.2
    r = full.loc["magnitude 0.8"]
    sd = math.sqrt(((-0.3 + 0.25) ** 2 + (-0.2 + 0.25) ** 2) / 1)  # 0.0707...
    half = T_975_1 * sd / math.sqrt(2)
    assert (r["n"], r["seeds"], r["interval"]) == (2, "1,2", "t")
    assert r["mean"] == pytest.approx(-0.25) and r["lo"] == pytest.approx(-0.25 - half) and r["hi"] == pytest.approx(-0.25 + half)
    lo, hi = stats.t.interval(0.95, df=1, loc=-0.25, scale=stats.sem([-0.3, -0.2]))
    assert (r["lo"], r["hi"]) == (pytest.approx(lo), pytest.approx(hi))
    assert not r["excludes_zero"]  # [-0.885, 0.385]: two seeds do not resolve it
    assert (r["dense_mean"], r["compressed_mean"]) == (pytest.approx(0.55), pytest.approx(0.3))  # over the paired seeds
    # magnitude 0.5: one seed, no interval
    one = full.loc["magnitude 0.5"]
    assert one["n"] == 1 and one["mean"] == pytest.approx(0.05) and math.isnan(one["lo"]) and one["interval"] == ""
    # ECE = accuracy / 10 in the fixture: the same pairs, a tenth of the size
    e = c[(c["method"] == "ilm") & (c["budget"] == "full") & (c["metric"] == "ece") & (c["variant"] == "magnitude 0.8")]
    assert e["mean"].iloc[0] == pytest.approx(-0.025) and e["hi"].iloc[0] == pytest.approx((-0.25 + half) / 10)


def test_three_seed_t_interval_and_its_zero_exclusion():
    mean, lo, hi, kind = C.interval([-0.10, -0.12, -0.08])
    sd = 0.02
    assert kind == "t" and mean == pytest.approx(-0.1)
    assert (lo, hi) == (pytest.approx(-0.1 - T_975_2 * sd / math.sqrt(3)), pytest.approx(-0.1 + T_975_2 * sd / math.sqrt(3)))
    assert hi < 0  # excludes 0


def test_bootstrap_from_five_seeds_agrees_with_t_on_a_large_normal_sample():
    rng = np.random.default_rng(7)
    x = rng.normal(-0.05, 0.02, 400)
    mean, lo, hi, kind = C.interval(x)
    t_lo, t_hi = stats.t.interval(0.95, df=len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    assert kind == "bootstrap" and mean == pytest.approx(x.mean())
    assert abs(lo - t_lo) < 0.15 * (t_hi - t_lo) and abs(hi - t_hi) < 0.15 * (t_hi - t_lo)
    five = [0.1, 0.3, 0.2, 0.5, 0.4]
    _, lo5, hi5, kind5 = C.interval(five)
    assert kind5 == "bootstrap" and min(five) <= lo5 < 0.3 < hi5 <= max(five)
    # summarize: groups of 2 and 5 seeds side by side, each with its own kind of interval
    p = pd.DataFrame({"g": ["a"] * 2 + ["b"] * 5, "seed": [1, 2, 1, 2, 3, 4, 5], "diff": [-0.3, -0.2] + five,
                      "dense": 0.5, "compressed": 0.4})
    s = C.summarize(p, ["g"]).set_index("g")
    assert (s.loc["b", "interval"], s.loc["b", "lo"], s.loc["b", "hi"]) == ("bootstrap", lo5, hi5)
    assert s.loc["a", "interval"] == "t" and s.loc["a", "hi"] == pytest.approx(-0.25 + T_975_1 * 0.05)


def test_summary_intervals_are_students_t_over_seeds(hand):
    st, _ = hand
    s = A.summarize(_table(st), ["accuracy"])
    d = s[(s["method"] == "ilm") & (s["budget"] == "full") & (s["variant"] == "dense")].iloc[0]
    lo, hi = stats.t.interval(0.95, df=2, loc=0.6, scale=stats.sem([0.5, 0.6, 0.7]))
    assert (d["lo"], d["hi"]) == (pytest.approx(lo), pytest.approx(hi))


@pytest.mark.integration  # seconds to tens of seconds: a full-size model, training or rendering
def test_report_files_carry_the_cost_and_open_with_findings(hand, tmp_path):
    from orchestrator.report.deliver import Options, write

    st, _ = hand
    write(str(st.root), tmp_path / "r", Options())
    cost = pd.read_csv(tmp_path / "r" / "cost.csv")
    assert set(cost["metric"]) == {"accuracy", "ece"} and (cost["compression"] != "dense").all()
    s = pd.read_csv(tmp_path / "r" / "summary.csv")
    row = s[(s["method"] == "ilm") & (s["budget"] == "full") & (s["variant"] == "magnitude 0.8") & (s["metric"] == "accuracy")]
    assert row["cost_mean"].iloc[0] == pytest.approx(-0.25) and row["cost_n"].iloc[0] == 2
    assert s.loc[s["variant"] == "dense", "cost_mean"].isna().all()
    md = (tmp_path / "r" / "README.md").read_text()
    assert md.index("## Findings") < md.index("## About this report") < md.index("## Transfer accuracy")
    findings = md[md.index("## Findings"):md.index("## About this report")]
    assert "magnitude 0.8 · ilm · full: accuracy −25.0 [−88.5, +38.5]" in findings
    assert "No interval here excludes 0" in findings  # nothing resolved: no verdict
    assert "Too thin to say (1 seed, no interval): magnitude 0.5 · ilm · full." in findings
    table2 = (tmp_path / "r" / "tables" / "table2_demo_cnn.md").read_text()
    assert "(Δ −25.0 [−88.5, +38.5])" in table2 and "55.0 (Δ +5.0 [1 seed: no interval])" in table2
    table1 = (tmp_path / "r" / "tables" / "table1_drops.md").read_text()
    assert "unstructured" in table1 and "not resolved (interval includes 0)" in table1 and "too thin (1 seed)" in table1
    html = (tmp_path / "r" / "index.html").read_text()
    assert html.index('id="findings"') < html.index("About this report") and "<th></th>" not in html


def test_a_resolved_drop_gets_a_verdict_and_a_mark(tmp_path):
    from orchestrator.report.deliver import Options, write

    text = HAND.replace("seeds: [1, 2, 3]", "seeds: [1, 2, 3]").replace("sparsity: [0.8, 0.5]", "sparsity: [0.8]")
    st = Store(tmp_path / "s")
    st.create(text)
    for r in expand(parse_grid(text)):  # dense 0.6 + 0.01 * seed, sparse 0.3 + 0.012 * seed: drop -0.3 - 0.002 seed
        acc = 0.6 + 0.01 * r.seed if r.compression == "dense" else 0.3 + 0.012 * r.seed
        st.publish(RunResult.for_spec(r, "ok", accuracy=acc, ece=0.1, per_class_accuracy=[acc] * 10, finished_at=1.0))
    write(str(st.root), tmp_path / "r", Options(families=("table1",)))
    md = (tmp_path / "r" / "README.md").read_text()
    assert "magnitude 0.8 · ilm · full: accuracy −29.6 [−30.1, −29.1]; ECE +0.0 [+0.0, +0.0]; 3 seeds ✱" in md
    assert "| High |" in (tmp_path / "r" / "tables" / "table1_drops.md").read_text()


# ------------------------------------------------------------------------------------------- ties

TIES = HAND.replace("seeds: [1, 2, 3]", "seeds: [1, 2]").replace("sparsity: [0.8, 0.5]", "sparsity: [0.8]")


@pytest.fixture
def tied(tmp_path):
    """Two seeds: ilm maps target 0 to 3 (seed 1) and 4 (seed 2), target 1 to 5 by both; rlm's mapping is one random
    permutation per seed, the same in every variant."""
    st = Store(tmp_path / "s")
    st.create(TIES)
    for r in expand(parse_grid(TIES)):
        mapping = ([3, 5] if r.seed == 1 else [4, 5]) if r.method == "ilm" else ([11, 12] if r.seed == 1 else [13, 14])
        st.publish(RunResult.for_spec(r, "ok", accuracy=0.5, ece=0.1, label_mapping=mapping, finished_at=1.0))
    return st


def test_tied_mappings_are_shown_as_ties(tied, tmp_path):
    from orchestrator.report.deliver import Options, write
    from orchestrator.report.plots import KINDS, plt
    from tests.figure_text import drawn_texts

    m = A.label_maps(_table(tied))
    ilm = m[(m["method"] == "ilm") & (m["variant"] == "dense") & (m["budget"] == "full")].sort_values("target")
    assert list(zip(ilm["tied"], ilm["agree"], ilm["runs"])) == [("3,4", 1, 2), ("5", 2, 2)]
    info = write(str(tied.root), tmp_path / "r", Options(families=("mapping",)))
    (e,) = [x for x in info["entries"] if x.family == "mapping"]
    csv = pd.read_csv(next((tmp_path / "r").glob("figures/mapping/*.csv")))
    dense_ilm = csv[(csv["method"] == "ilm") & (csv["variant"] == "dense") & (csv["budget"] == "full")].sort_values("target")
    assert dense_ilm["source_label"].tolist() == ["warm_frame / warm_diamond", "warm_triangle"]  # shapes 3, 4 and 5
    md = next((tmp_path / "r").glob("figures/mapping/*.md")).read_text()
    assert "warm_frame / warm_diamond" in md and "(1/2)" not in md
    # rlm: every cell a tie, the same in both variants: named, not drawn
    assert "Not drawn: rlm" in (tmp_path / "r" / "README.md").read_text()
    from orchestrator.report.entry import load
    from orchestrator.report.plan import plan

    runs = load(str(tied.root), Options())[2]
    (entry,) = [x for x in plan(runs, A.summarize(runs), A.reliability(runs), A.label_maps(runs), Options(families=("mapping",)))]
    fig = KINDS[entry.draw[0]](**entry.draw[1])
    text = "\n".join(t.get_text() for t in drawn_texts(fig))
    plt.close(fig)
    assert "warm_frame / warm_diamond" in text and "rlm" not in text.split("\n")


# ------------------------------------------------------------------------------------------- figures

def _drawn(tmp_path):
    from orchestrator.report.entry import Options, load
    from orchestrator.report.plan import plan

    st = _demo_like(tmp_path / "s", _demo_text())
    runs = load(str(st.root), Options())[2]
    return [e for e in plan(runs, A.summarize(runs), A.reliability(runs), A.label_maps(runs), Options(),
                            extra={"classes": A.class_accuracy(runs)}) if e.draw is not None]


# a variant's meaning on the level axis: its place among its compression's levels (the demo: two each)
LEVEL = {"dense": "dense", "magnitude 0.6": "level 1 of 2", "fakequant 4": "level 1 of 2",
         "magnitude 0.8": "level 2 of 2", "fakequant 3": "level 2 of 2"}


@pytest.mark.integration  # seconds to tens of seconds: a full-size model, training or rendering
def test_one_colour_means_one_thing_across_figure_families(tmp_path):
    """Every legend entry and mapping header of the report: a method has one colour everywhere, a level (the k-th
    of n) one colour everywhere, and no colour stands for both a method and a level."""
    from orchestrator.report.plots import KINDS, plt

    meaning: dict[str, set] = {}
    seen = set()
    for e in _drawn(tmp_path):
        fig = KINDS[e.draw[0]](**e.draw[1])
        seen.add(e.family)
        for leg in fig.legends:
            for h, t in zip(leg.legend_handles, leg.get_texts()):
                name = LEVEL.get(t.get_text().split(" (")[0], t.get_text().split(" (")[0])
                if name.startswith("chance"):
                    continue
                c = matplotlib_hex(h.get_color() if hasattr(h, "get_color") else h.get_facecolor())
                meaning.setdefault(c, set()).add(name)
        for ax in fig.axes:
            for t in ax.texts:
                text = t.get_text()
                if t.get_weight() == "bold" and text != "target class" and ":" not in text and "\n" not in text:
                    meaning.setdefault(matplotlib_hex(t.get_color()), set()).add(LEVEL.get(text, text))
        plt.close(fig)
    assert {"accuracy", "ece", "reliability", "mapping"} <= seen
    by_name: dict[str, set] = {}
    for c, names in meaning.items():
        assert len(names) == 1, (c, names)  # one colour, one meaning
        by_name.setdefault(next(iter(names)), set()).add(c)
    assert all(len(cs) == 1 for cs in by_name.values()), by_name  # one meaning, one colour
    assert {"rlm", "flm", "ilm", "dense", "level 1 of 2", "level 2 of 2"} <= set(by_name)


def matplotlib_hex(c):
    import matplotlib.colors

    if isinstance(c, str):
        return matplotlib.colors.to_hex(c)
    c = np.asarray(c, dtype=float)
    return matplotlib.colors.to_hex(c[0] if c.ndim == 2 else c)


LTH = HAND.replace("sparsity: [0.8, 0.5]", "sparsity: [0.2, 0.4, 0.6, 0.8]").replace("shots: [4, full]", "shots: [full]")


@pytest.fixture
def four_levels(tmp_path):
    """Dense accuracy 0.6 + 0.01 seed; level s: 0.6 - s / 2 + 0.01 seed + 0.004 seed^2 (a seed-dependent cost);
    every run with a stored pad prompt, per-class accuracies and epoch accuracies (eval_every on)."""
    from safetensors.numpy import save

    st = Store(tmp_path / "s4")
    st.create(LTH.replace("train: {", "train: {eval_every: 1, "))
    for r in expand(parse_grid(st.grid_text())):
        lv = r.compression_level or 0.0
        acc = 0.6 - lv / 2 + 0.01 * r.seed + (0.004 * r.seed ** 2 if lv else 0)
        row = RunResult.for_spec(r, "ok", accuracy=acc, ece=0.1, per_class_accuracy=[acc] * 10,
                                 epoch_accuracy=[acc - 0.05, acc + 0.02], label_mapping=[1, 2], finished_at=1.0)
        row.prompt_path = st.put_prompt(r.run_key, save({"prompt": np.full((3, 32, 32), lv, np.float32)}))
        st.publish(row)
    return st


def test_lottery_heatmap_prompts_and_best_epoch_from_a_four_level_store(four_levels, tmp_path):
    from orchestrator.report.deliver import Options, write

    info = write(str(four_levels.root), tmp_path / "r", Options(families=("lottery", "prompts", "best_epoch", "classwise")))
    got = {e.family: e for e in info["entries"]}
    assert set(got) == {"lottery", "prompts", "best_epoch", "classwise"} and not any(e.skipped for e in got.values())
    heat = pd.read_csv(next((tmp_path / "r").glob("figures/lottery/*.csv"))).sort_values("rank")
    # the paired cost per level: -s/2 + 0.004 seed^2 averaged over seeds 1-3 (the best method: ilm and rlm tie, ilm first)
    assert heat["mean"].tolist() == pytest.approx([-lv / 2 + 0.004 * 14 / 3 for lv in (0.2, 0.4, 0.6, 0.8)])
    prompts = pd.read_csv(next((tmp_path / "r").glob("figures/prompts/*.csv")))
    assert set(prompts["seed"]) == {1} and len(prompts) == 2 * 4  # two methods x (dense + 3 of the 4 levels)
    best = (tmp_path / "r" / next(f for f in got["best_epoch"].files if f.endswith(".md"))).read_text()
    assert "| digits | ilm | dense | 62.0 | 64.0 |" in best  # last epoch 0.6 + 0.01 x mean seed 2; best +2 points
    cls = pd.read_csv(next((tmp_path / "r").glob("figures/classwise/*.csv")))
    assert cls[cls["variant"] == "magnitude 0.8"]["delta"].round(9).unique().tolist() == [round(-0.4 + 0.004 * 14 / 3, 9)]


@pytest.mark.integration  # seconds to tens of seconds: a full-size model, training or rendering
def test_every_figure_reads_at_880_px(tmp_path, four_levels):
    from orchestrator.report.entry import Options, load
    from orchestrator.report.plan import plan
    from orchestrator.report.plots import KINDS, plt
    from tests.figure_text import min_text_px, overlapping_texts

    runs = load(str(four_levels.root), Options())[2]
    extra = {"classes": A.class_accuracy(runs), "read_prompt": four_levels.read_prompt}
    more = [e for e in plan(runs, A.summarize(runs), A.reliability(runs), A.label_maps(runs), Options(), extra=extra)
            if e.draw is not None]
    entries = _drawn(tmp_path) + more
    assert {"accuracy", "ece", "reliability", "mapping", "classwise", "lottery", "prompts"} <= {e.family for e in entries}
    for e in entries:
        fig = KINDS[e.draw[0]](**e.draw[1])
        px, text = min_text_px(fig, 880)
        assert px >= 9.0, (e.title, text, px, fig.get_figwidth())
        # independently: every text object in the figure, font size (pt) x 100 dpi / 72 x the 880 px scale
        scale = min(1.0, 880 / (fig.get_figwidth() * 100))
        texts = [t for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text().strip()]
        assert min(t.get_fontsize() for t in texts) * 100 / 72 * scale >= 9.0, e.title
        assert overlapping_texts(fig) == [], e.title
        plt.close(fig)


@pytest.mark.integration  # seconds to tens of seconds: a full-size model, training or rendering
def test_accuracy_figure_shares_y_and_draws_chance_at_one_over_classes(tmp_path):
    from orchestrator.report.plots import KINDS, plt

    st = _demo_like(tmp_path / "s", _demo_text())
    for r in [e for e in _drawn(tmp_path / "x") if e.family == "accuracy"][:1]:
        fig = KINDS[r.draw[0]](**r.draw[1])
        axes = [a for a in fig.axes if a.get_visible()]
        assert len(axes) == 3 and len({a.get_ylim() for a in axes}) == 1  # a panel per method, one y scale
        chance = [ln for a in axes for ln in a.get_lines() if ln.get_linestyle() == ":"]
        assert len(chance) == 3 and all(np.allclose(ln.get_ydata(), 10.0) for ln in chance)  # digits: 10 classes
        plt.close(fig)
    assert st is not None
