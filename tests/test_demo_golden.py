"""The demo's numbers are pinned: a slice of grids/demo.yaml, run here at one torch thread with numerics that do not
depend on the CPU (orchestrator.report.demo.PORTABLE_ENV), must give the metrics committed in
tests/golden/demo_slice.json to 1e-4 on any x86-64 machine. A change that moves them fails until the golden values and
the docs' demo tables are regenerated together: `python -m orchestrator.report.demo --store results/demo` (docs/demo.md).
"""
import json
import math

import pandas as pd
import pytest

from orchestrator.report import demo

pytestmark = pytest.mark.unit


@pytest.mark.integration  # seconds to tens of seconds: a full-size model, training or rendering
@pytest.mark.slow
def test_demo_slice_matches_the_golden_values(tmp_path):
    if demo.portable_here():
        pytest.skip(demo.portable_here())
    golden = json.loads(demo.GOLDEN.read_text())
    assert golden["numerics"] == demo.PORTABLE_ENV | {"mkldnn": False}
    got = demo.run_slice(tmp_path)
    assert [g["run_key"] for g in got] == [g["run_key"] for g in golden["runs"]], \
        "the demo grid's slice changed: regenerate with python -m orchestrator.report.demo --store results/demo"
    for g, want in zip(got, golden["runs"]):
        for m, v in want["metrics"].items():
            assert g["metrics"][m] == pytest.approx(v, abs=1e-4), (want["what"], m)


def test_the_slice_covers_every_variant_and_mapping_of_the_demo():
    specs = demo.slice_specs()
    assert 5 <= len(specs) <= 8  # a few runs: under a minute of CPU
    assert {(s.compression, s.compression_level) for s in specs} == {
        ("dense", None), ("magnitude", 0.6), ("magnitude", 0.8), ("fakequant", 4), ("fakequant", 3)}
    assert {s.method for s in specs} == {"rlm", "flm", "ilm"}


def test_paired_interval_by_hand():
    """Seeds 1-3, b - a = 2, 4, 6 points: mean 4, sd 2, half-width t(0.975, 2) * 2 / sqrt(3) = 4.303 * 1.1547."""
    ok = pd.DataFrame({"variant": ["x"] * 3 + ["y"] * 3, "method": "ilm", "budget": "full",
                       "seed": [1, 2, 3] * 2, "accuracy": [0.50, 0.50, 0.50, 0.52, 0.54, 0.56]})
    r = demo.paired(ok, demo.Finding("y beats x", "accuracy", ("x", "ilm", "full"), ("y", "ilm", "full")))
    assert r["seeds"] == 3 and r["mean"] == pytest.approx(4.0)
    assert r["hi"] - r["mean"] == pytest.approx(4.302653 * 2 / math.sqrt(3), rel=1e-5)
    assert r["mean"] - r["lo"] == pytest.approx(4.302653 * 2 / math.sqrt(3), rel=1e-5)
    assert r["holds"] is False  # 4.0 - 4.97 < 0: three seeds this spread do not tell
    worse = demo.paired(ok, demo.Finding("x beats y", "accuracy", ("x", "ilm", "full"), ("y", "ilm", "full"), -1))
    assert worse["mean"] == pytest.approx(-4.0) and worse["holds"] is False
    ok.loc[ok["variant"] == "y", "accuracy"] = [0.52, 0.53, 0.54]  # diffs 2, 3, 4: half 2.48 < 3
    assert demo.paired(ok, demo.Finding("y beats x", "accuracy", ("x", "ilm", "full"), ("y", "ilm", "full")))["holds"]


def test_the_docs_blocks_are_filled_in_place():
    text = "a\n<!-- demo:ilm -->\nold\n<!-- demo:ilm end -->\nb\n"
    assert demo.replace_block(text, "ilm", "new\n", "x") == "a\n<!-- demo:ilm -->\nnew\n<!-- demo:ilm end -->\nb\n"
    with pytest.raises(SystemExit, match="x: no <!-- demo:tables -->"):
        demo.replace_block(text, "tables", "new", "x")
    for path in demo.DOCS:  # the generated blocks are where the command writes them
        assert "<!-- demo:ilm -->" in path.read_text() or "<!-- demo:tables -->" in path.read_text(), path


def test_the_command_refuses_a_missing_or_incomplete_store(tmp_path, capsys):
    from workers.core.store import Store

    with pytest.raises(SystemExit, match="not a readable store: .*not a vpgrid store"):
        demo.main(["--store", str(tmp_path / "none"), "--check"])
    Store(tmp_path / "s").create(demo.GRID.read_text())
    before = [p.stat().st_mtime_ns for p in (demo.GOLDEN, *demo.DOCS)]
    with pytest.raises(SystemExit, match=r"not a complete run of demo.yaml \(0 of \d+ runs ok, 0 rows\)"):
        demo.main(["--store", str(tmp_path / "s")])
    assert [p.stat().st_mtime_ns for p in (demo.GOLDEN, *demo.DOCS)] == before  # nothing written
