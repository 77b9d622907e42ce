"""A store written before the launch and store modules were split (tests/fixtures/store_before_refactor: 8 runs of a
small grid, 4 ok and 4 failed, compacted, with the ok runs' prompts) still reads the same and resumes with nothing
re-run: run keys, the store's schema and its layout stay what they were."""
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.grid import expand, parse_grid
from workers.core.store import SCHEMA, Store

pytestmark = pytest.mark.unit
FIXTURE = Path(__file__).parent / "fixtures" / "store_before_refactor"


def contents(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def old_store(tmp_path) -> Path:
    return Path(shutil.copytree(FIXTURE, tmp_path / "s"))


def test_the_plan_gives_the_run_keys_the_old_store_holds(old_store):
    st = Store(old_store)
    (part,) = (old_store / "runs").glob("part-*.parquet")
    assert pq.read_schema(part).remove_metadata() == SCHEMA  # the columns and types rows were written with
    rows = st.table().to_pylist()
    planned = expand(parse_grid(st.grid_text()))
    assert sorted(r.run_key for r in planned) == sorted(x["run_key"] for x in rows)
    assert sorted(st.statuses().values()) == ["failed"] * 4 + ["ok"] * 4  # the 500-shot runs lack images
    for key, path in ((x["run_key"], x["prompt_path"]) for x in rows):  # an ok VP run's prompt, where the row says
        assert (path is None) == (st.statuses()[key] == "failed")
        assert path is None or st.read_prompt(key) == (FIXTURE / "_prompts" / f"{key}.safetensors").read_bytes()


@pytest.mark.parametrize("args", [["resume", "{store}", "-q"], ["launch", "{grid}", "--store", "{store}", "-q"]])
def test_the_old_store_resumes_with_nothing_re_run(old_store, tmp_path, args):
    grid = tmp_path / "grid.yaml"
    grid.write_text(Store(old_store).grid_text())
    before = contents(old_store)
    r = CliRunner().invoke(app, [a.format(store=old_store, grid=grid) for a in args])
    assert r.exit_code == 0, r.output
    assert "nothing to run: all 8 runs of before_refactor are in the store" in r.stderr
    assert contents(old_store) == before  # no row, prompt, pack or launch record written
