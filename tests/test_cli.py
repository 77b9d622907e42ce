"""The CLI without Ray: plan, errors, status and report on a store filled by hand."""
import dataclasses
import json
import re

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.grid import expand, parse_grid
from workers.core.store import Store
from tests.conftest import TINY, write_grid
from workers.core.spec import RunResult

pytestmark = pytest.mark.unit

cli = CliRunner()


@pytest.mark.smoke
def test_plan_json(tiny_grid):
    r = cli.invoke(app, ["plan", str(tiny_grid), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert (out["runs"], out["trials"]) == (24, 8)  # cells of 6 in pieces of 3 (pack_size 4)
    assert out["by_axis"]["method"] == {"rlm": 8, "flm": 8, "ilm": 8}


@pytest.mark.smoke
def test_plan_text(tiny_grid):
    r = cli.invoke(app, ["plan", str(tiny_grid)])
    assert r.exit_code == 0 and "24 runs in 8 trials" in r.stdout


def test_malformed_grid_exits_nonzero_naming_the_field_and_creates_no_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = yaml.safe_load(TINY)
    d["shots"] = [1, "many"]
    g = write_grid(tmp_path, yaml.safe_dump(d))
    for cmd in (["plan", str(g)], ["launch", str(g), "--store", str(tmp_path / "s")]):
        r = cli.invoke(app, cmd)
        assert r.exit_code == 1
        assert "shots.1" in r.stderr and str(g) in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "s").exists() and not (tmp_path / "results").exists()


def test_unknown_names_fail_before_anything_is_written(tmp_path):
    d = yaml.safe_load(TINY)
    d["models"][0]["name"] = "resnet_18"
    d["methods"] = ["ilm", "ilmm"]
    g = write_grid(tmp_path, yaml.safe_dump(d))
    r = cli.invoke(app, ["launch", str(g), "--store", str(tmp_path / "s")])
    assert r.exit_code == 1
    assert "models.0: unknown model 'resnet_18'; did you mean 'resnet18'" in r.stderr
    assert "methods.1: unknown method 'ilmm'; did you mean 'ilm'" in r.stderr
    assert not (tmp_path / "s").exists()


def test_status_of_a_directory_that_is_no_store(tmp_path):
    r = cli.invoke(app, ["status", str(tmp_path)])
    assert r.exit_code == 1 and "not a vpgrid store" in r.stderr


@pytest.fixture
def half_done(tmp_path):
    """A store where a third of the tiny grid is ok, a sixth failed, the rest pending."""
    st = Store(tmp_path / "s")
    st.create(TINY)
    runs = expand(parse_grid(TINY))
    for i, spec in enumerate(runs[:12]):
        failed = i % 3 == 0
        st.publish(RunResult.for_spec(spec, "failed" if failed else "ok", error="RuntimeError: boom" if failed else None,
                                      accuracy=None if failed else 0.1 * (i % 5), ece=None if failed else 0.05,
                                      finished_at=float(i)))
    return st, runs


def test_status_json_counts(half_done):
    st, runs = half_done
    r = cli.invoke(app, ["status", str(st.root), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert (out["total"], out["done"], out["failed"], out["pending"]) == (24, 8, 4, 12)
    per_seed = out["by_axis"]["seed"]
    assert sum(v["done"] for v in per_seed.values()) == 8
    assert out["driver_alive"] is False and out["eta_seconds"] is None


def test_status_text_and_failed_listing(half_done):
    st, _ = half_done
    r = cli.invoke(app, ["status", str(st.root), "--failed"])
    assert r.exit_code == 0, r.output
    assert "8 done, 4 failed, 12 pending of 24" in r.stdout and "vpgrid resume" in r.stdout
    assert r.stdout.count("RuntimeError: boom") == 4


def test_failed_listing_prints_shots_as_integers(half_done):
    """Store.frame() reads the nullable int column as float: the listing must not say shots=1.0 or shots=nan."""
    st, runs = half_done
    full = dataclasses.replace(runs[0], shots=None, seed=7)
    st.publish(RunResult.for_spec(full, "failed", error="RuntimeError: boom", finished_at=99.0))
    out = cli.invoke(app, ["status", str(st.root), "--failed"]).stdout
    shots = re.findall(r"shots=(\S+)", out)
    assert sorted(set(shots)) == ["1", "2", "full"] and shots.count("full") == 1


def _two_dataset_args_store(tmp_path):
    """Two seeds of each of two configurations that differ only in dataset_args."""
    st = Store(tmp_path / "s2")
    st.create(TINY)
    spec = expand(parse_grid(TINY))[0]
    accs = {}
    for args, acc in (({}, 0.2), ({"cap_shots": True}, 0.8)):
        for seed in (1, 2):
            s = dataclasses.replace(spec, dataset_args=args, seed=seed)
            accs[s.run_key] = acc + 0.01 * seed
            st.publish(RunResult.for_spec(s, "ok", accuracy=acc + 0.01 * seed, ece=0.1, finished_at=1.0))
    assert len(accs) == 4  # four distinct runs
    return st


def test_report_keeps_runs_with_different_dataset_args_apart(tmp_path):
    st = _two_dataset_args_store(tmp_path)
    rows = json.loads(cli.invoke(app, ["report", str(st.root), "--json"]).stdout)
    # averaged together they would be one row of 4 "seeds" with mean 0.515
    assert sorted((r["dataset_args"], r["seeds"], round(r["accuracy_mean"], 6)) for r in rows) == [
        ("{\"cap_shots\":true}", 2, 0.815), ("{}", 2, 0.215)]
    md = cli.invoke(app, ["report", str(st.root)]).stdout
    assert "dataset_args={}" in md and 'dataset_args={"cap_shots":true}' in md
    assert "| 21.5 ± 0.7 |" in md and "| 81.5 ± 0.7 |" in md


def test_report_groups_by_every_setting(tmp_path):
    """Each setting of SETTINGS, changed alone on one of two seeds, splits the group: no setting is averaged away."""
    from orchestrator.report.names import SETTINGS
    from orchestrator.report.runs import run_table
    from orchestrator.report.summary import summary

    spec = expand(parse_grid(TINY))[0]
    base = RunResult.for_spec(spec, "ok", accuracy=0.5, prompt_kind="pad").to_row()
    changed = {"weights": "pretrained", "model_args": "{}", "compression_args": '{"x":1}', "dataset_args": '{"a":1}',
               "epochs": 3, "lr": 0.1, "batch_size": 4, "input_size": 16, "milestones": [0.5], "gamma": 0.5,
               "eval_batch_size": 8, "eval_every": 1, "prompt_kind": "token_patches"}
    assert set(changed) == set(SETTINGS)
    for col, value in changed.items():
        other = {**base, "seed": 2, col: value}
        table = summary(run_table(pd.DataFrame([base, other])))
        assert len(table) == 2 and list(table["seeds"]) == [1, 1], col
    assert len(summary(run_table(pd.DataFrame([base, {**base, "seed": 2}])))) == 1  # the seed alone is averaged over


def test_report_rows_do_not_split_on_settings_that_follow_the_budget(tmp_path):
    """batch_size per shots (as in the demo) differs across the budget columns but not within one cell: one
    configuration is one row with a cell per budget, and no setup column appears."""
    from orchestrator.report.runs import run_table
    from orchestrator.report.summary import markdown, summary

    spec = expand(parse_grid(TINY))[0]
    rows = []
    for shots, bs, acc in ((1, 8, 0.30), (10, 32, 0.60)):
        for seed in (1, 2):
            s = dataclasses.replace(spec, shots=shots, seed=seed,
                                    train=dataclasses.replace(spec.train, batch_size=bs))
            rows.append(RunResult.for_spec(s, "ok", accuracy=acc + 0.01 * seed, ece=0.1, finished_at=1.0).to_row())
    md = markdown(summary(run_table(pd.DataFrame(rows))), metrics=("accuracy",))
    body = [l for l in md.splitlines() if l.startswith("| ") and "variant" not in l]
    assert len(body) == 1 and "setup" not in md and "batch_size=" not in md
    assert body[0].endswith("| 31.5 ± 0.7 | 61.5 ± 0.7 |")


def test_report_and_compact(half_done):
    st, runs = half_done
    r = cli.invoke(app, ["report", str(st.root), "--json"])
    rows = json.loads(r.stdout)
    assert r.exit_code == 0 and sum(x["seeds"] for x in rows) == 8
    r = cli.invoke(app, ["compact", str(st.root)])
    assert r.exit_code == 0 and "12 files -> 1" in r.stderr
    r2 = cli.invoke(app, ["status", str(st.root), "--json"])
    assert json.loads(r2.stdout)["done"] == 8


def test_grid_change_counts_against_the_new_grid(half_done):
    """Editing the grid (dropping a seed) keeps old rows but status counts the new grid."""
    st, _ = half_done
    d = yaml.safe_load(TINY)
    d["seeds"] = [1]
    st.create(yaml.safe_dump(d))
    out = json.loads(cli.invoke(app, ["status", str(st.root), "--json"]).stdout)
    assert out["total"] == 12 and out["done"] + out["failed"] + out["pending"] == 12 and out["not_in_grid"] > 0


@pytest.mark.smoke
@pytest.mark.integration
def test_plan_status_and_list_import_neither_torch_nor_ray(half_done):
    """The control plane starts fast: checked in a fresh interpreter, since this one has torch loaded."""
    import subprocess
    import sys
    from pathlib import Path

    st, _ = half_done
    paper = Path(__file__).parents[1] / "grids" / "paper.yaml"
    code = ("import sys; from typer.testing import CliRunner; from orchestrator.cli import app; "
            f"assert CliRunner().invoke(app, ['plan', {str(paper)!r}, '--json']).exit_code == 0; "
            f"assert CliRunner().invoke(app, ['status', {str(st.root)!r}, '--json']).exit_code == 0; "
            "assert CliRunner().invoke(app, ['list', '--json']).exit_code == 0; "
            "print(sorted(m for m in ('torch', 'ray', 'torchvision', 'timm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("command", ["plan", "launch", "resume", "status", "report", "compact", "bench", "list"])
def test_help_shows_every_option_default(command):
    """Rich markup used to eat '[default: ...]' written into help texts."""
    import click
    import typer.main

    r = cli.invoke(app, [command, "--help"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.stdout.split())  # help wraps long lines
    cmd = typer.main.get_command(app).commands[command]
    for p in cmd.params:
        if isinstance(p, click.Option) and not p.is_flag and p.default not in (None, ()) and p.name != "help":
            shown = ", ".join(map(str, p.default)) if isinstance(p.default, (list, tuple)) else str(p.default)
            assert f"[default: {shown}]" in text, (p.name, r.stdout)
    if command == "launch":
        assert "[default: results/<grid name>]" in text and "[default: $VPGRID_DATA, else the grid's data_root]" in text


def test_shell_completion_is_offered():
    r = cli.invoke(app, ["--help"])
    assert r.exit_code == 0 and "--install-completion" in r.stdout and "--show-completion" in r.stdout


def test_list_shows_every_declared_name_with_args_and_defaults():
    from workers.core.schemas import CARDS

    r = cli.invoke(app, ["list", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert {(x["kind"], x["name"]) for x in rows} == {(k, n) for k, t in CARDS.items() for n in t}
    magnitude = next(x for x in rows if x["name"] == "magnitude")
    assert magnitude["args"] == [
        {"name": "sparsity", "type": "float", "required": True, "default": None, "valid": "float in [0, 1)",
         "help": "fraction of conv/linear weights set to zero"},
        {"name": "scope", "type": "str", "required": False, "default": "global", "valid": "'global' | 'layer'",
         "help": "one threshold over all layers, or one per layer"}]
    r = cli.invoke(app, ["list", "datasets", "--json"])
    assert {x["kind"] for x in json.loads(r.stdout)} == {"dataset"}


def test_list_table():
    r = cli.invoke(app, ["list", "models"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "demo_cnn" in r.stdout and "width=16" in r.stdout and "input_size=224  int in [1, inf), a multiple of 16" in r.stdout
    assert "magnitude" not in r.stdout  # models only


def _fake_benchmark() -> dict:
    return {"bench": "fake", "value": 1.5}


def test_bench_runs_what_the_vpgrid_bench_entry_points_name(monkeypatch):
    """`vpgrid bench NAME` finds the benchmarks as entry points; the product itself imports none of them."""
    import importlib.metadata

    fake = importlib.metadata.EntryPoint("fake", f"{__name__}:_fake_benchmark", "vpgrid.bench")
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group: [fake] if group == "vpgrid.bench" else [])
    r = cli.invoke(app, ["bench", "fake", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["results"] == [{"bench": "fake", "value": 1.5}]
    r = cli.invoke(app, ["bench", "plan"])  # not installed here: one line naming what is
    assert r.exit_code == 2 and r.stderr.strip().endswith("unknown benchmark 'plan'; valid: train, gpu, fake")


def test_every_benchmark_in_pyproject_is_a_function_the_cli_lists():
    import importlib
    import tomllib
    from pathlib import Path

    from orchestrator.cli.tools import BUILT_IN, ORDER

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    entries = project["project"]["entry-points"]["vpgrid.bench"]
    for name, target in entries.items():
        module, _, attr = target.partition(":")
        assert module.startswith("benchmarks.") and callable(getattr(importlib.import_module(module), attr)), name
    assert sorted([*entries, *BUILT_IN]) == sorted(ORDER)
