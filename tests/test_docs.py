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
