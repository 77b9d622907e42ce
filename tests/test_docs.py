"""The manual in docs/ against the code it describes: docs/cli.md against the CLI's own options, the worked
examples of docs/extending.md run for real, and the benchmark tables of docs/benchmarks.md against their data
files. (Every `vpgrid ...` command in README.md and docs/*.md is parsed by tests/test_recipes.py.)"""
from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


# --------------------------------------------------------------------------------------------- docs/cli.md
def cli_sections() -> dict[str, str]:
    """docs/cli.md's text under each `## vpgrid CMD` heading, by CMD."""
    text = (DOCS / "cli.md").read_text()
    parts = re.split(r"^## vpgrid (\S+)\n", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def click_commands() -> dict:
    import typer.main

    from orchestrator.cli import app

    return typer.main.get_command(app).commands


def options_of(cmd) -> set[str]:
    # Typer vendors its own Click: tell options from arguments by Click's public attribute, not by class.
    return {o for p in cmd.params if p.param_type_name == "option" for o in (*p.opts, *p.secondary_opts)} - {"--help"}


def test_every_command_has_a_section_and_no_section_is_stale():
    assert set(cli_sections()) == set(click_commands())


@pytest.mark.parametrize("name", sorted(click_commands()))
def test_every_option_of_help_is_documented_under_its_command(name):
    cmd = click_commands()[name]
    section = cli_sections()[name]
    documented = set(re.findall(r"^\| `(-[-\w]+)", section, re.M)) | set(re.findall(r"^\| `-[-\w]+`, `(-[-\w]+)", section, re.M))
    # Each option --help lists is in the command's table; each option in the table is the command's.
    assert options_of(cmd) - documented == set(), f"vpgrid {name}: options missing from docs/cli.md"
    assert documented - options_of(cmd) == set(), f"vpgrid {name}: docs/cli.md documents options it does not have"
    # The synopsis line names the same options (and the table's option names are what `--help` prints).
    synopsis = re.search(rf"^`vpgrid {name}\b[^\n]*`$", section, re.M)
    assert synopsis, f"vpgrid {name}: no synopsis line"
    if "[options of launch]" not in synopsis.group(0):
        named = set(re.findall(r"(?<![\w-])(--?[a-z][-a-z]*)", synopsis.group(0)))
        assert named <= options_of(cmd), named - options_of(cmd)


def test_cli_option_docs_were_checked_against_a_real_command():
    # The checks above would pass vacuously if the table pattern matched nothing.
    sections = cli_sections()
    assert "--retry-failed" in re.findall(r"^\| `(-[-\w]+)", sections["launch"], re.M)
    assert options_of(click_commands()["launch"]) >= {"--store", "--quiet", "-q", "--callback"}


# ------------------------------------------------------------------------------------- docs/architecture.md
def project_imports() -> dict[str, tuple[set[str], set[str]]]:
    """Every orchestrator/workers module -> (project modules it imports at module level, those it imports only
    inside a function), read from the source with ast."""
    import ast

    files = sorted([*ROOT.glob("orchestrator/**/*.py"), *ROOT.glob("workers/**/*.py")])
    mods = {}
    for p in files:
        name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = p
    out = {}
    for name, p in mods.items():
        top, lazy = set(), set()

        def visit(node, in_function):
            for ch in ast.iter_child_nodes(node):
                inner = in_function or isinstance(ch, (ast.FunctionDef, ast.AsyncFunctionDef))
                targets = []
                if isinstance(ch, ast.Import):
                    targets = [a.name for a in ch.names]
                elif isinstance(ch, ast.ImportFrom) and ch.module and ch.level == 0:
                    targets = [f"{ch.module}.{a.name}" if f"{ch.module}.{a.name}" in mods else ch.module for a in ch.names]
                for t in targets:
                    if t.split(".")[0] in ("orchestrator", "workers") and t != name:
                        (lazy if inner else top).add(t)
                visit(ch, inner)

        visit(ast.parse(p.read_text()), False)
        out[name] = (top, lazy - top)
    return out


def test_the_import_table_of_architecture_md_is_the_codes():
    text = (DOCS / "architecture.md").read_text()
    rows = re.findall(r"^\| `([\w.]+)` \| (.*?) \| (.*?) \|$", text, re.M)
    split = lambda cell: set() if cell == "–" else {m.strip() for m in cell.split(",")}
    documented = {name: (split(top), split(lazy)) for name, top, lazy in rows if name.split(".")[0] in ("orchestrator", "workers")}
    assert documented == project_imports()


def test_project_imports_sees_known_edges():
    imports = project_imports()
    assert "workers.spec" in imports["orchestrator.grid"][0]
    assert "orchestrator.store" in imports["workers.ray_adapter"][1]  # inside a function
    assert not any(m.startswith("orchestrator") for m in imports["workers.run"][0] | imports["workers.run"][1])


# ------------------------------------------------------------------------------ docs/store-and-resume.md
def test_every_column_of_a_row_is_documented():
    import dataclasses

    from workers.spec import RunResult

    text = (DOCS / "store-and-resume.md").read_text()
    section = text[text.index("## The rows"):]
    documented = {c for line in section.splitlines() if line.startswith("| `")
                  for c in re.findall(r"`(\w+)`", line.split("|")[1])}
    assert documented == {f.name for f in dataclasses.fields(RunResult)}


# ------------------------------------------------------------------------------------------ docs/cost.md
def test_the_paper_grid_estimate_in_cost_md_is_what_plan_prints():
    from typer.testing import CliRunner

    from orchestrator.cli import app

    out = CliRunner().invoke(app, ["plan", str(ROOT / "grids" / "paper.yaml"), "--estimate"])
    assert out.exit_code == 0, out.output
    printed = out.output[out.output.index("estimate:"):].strip().splitlines()
    text = (DOCS / "cost.md").read_text()
    block = re.search(r"```\n(estimate:.*?)```", text, re.S).group(1).strip().splitlines()
    # The header names the table's path as this checkout has it; the doc shows it relative to the repository.
    assert [printed[0].replace(f"{ROOT}/", "")] + printed[1:] == block
