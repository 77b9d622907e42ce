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

pytestmark = pytest.mark.unit

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
PACKAGES = ("orchestrator", "workers", "benchmarks")  # the project's rooms: the product's two and the benchmarks


def project_imports() -> dict[str, tuple[set[str], set[str]]]:
    """Every orchestrator/workers/benchmarks module -> (project modules it imports at module level, those it imports
    only inside a function), read from the source with ast."""
    import ast

    files = sorted(p for room in PACKAGES for p in ROOT.glob(f"{room}/**/*.py"))
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
                    if t.split(".")[0] in PACKAGES and t != name:
                        (lazy if inner else top).add(t)
                visit(ch, inner)

        visit(ast.parse(p.read_text()), False)
        out[name] = (top, lazy - top)
    return out


def test_the_import_table_of_architecture_md_is_the_codes():
    text = (DOCS / "architecture.md").read_text()
    rows = re.findall(r"^\| `([\w.]+)` \| (.*?) \| (.*?) \|$", text, re.M)
    split = lambda cell: set() if cell == "–" else {m.strip() for m in cell.split(",")}
    documented = {name: (split(top), split(lazy)) for name, top, lazy in rows if name.split(".")[0] in PACKAGES}
    assert documented == project_imports()


def test_the_layers_import_only_downwards():
    """The core imports nothing above it, the data plane not the control plane, the product not the benchmarks."""
    for name, (top, lazy) in project_imports().items():
        core_ok = not name.startswith("workers.core") or all(t.startswith("workers.core") for t in top | lazy)
        above = ("orchestrator", "benchmarks") if name.startswith("workers") else () if name.startswith("benchmarks") else ("benchmarks",)
        assert core_ok and not any(t.startswith(above) for t in top | lazy), (name, top | lazy)


def test_project_imports_sees_known_edges():
    imports = project_imports()
    assert "workers.core.spec" in imports["orchestrator.grid"][0]
    assert "workers.run" in imports["workers.trial"][1]  # inside a function
    assert not any(m.startswith("orchestrator") for m in imports["workers.run"][0] | imports["workers.run"][1])


# ------------------------------------------------------------------------------ docs/store-and-resume.md
def test_every_column_of_a_row_is_documented():
    import dataclasses

    from workers.core.spec import RunResult

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


# ---------------------------------------------------------------------------------------- docs/extending.md
EXAMPLES = r'''
import importlib, json, re, sys, types
from pathlib import Path

import numpy as np
import torch

doc, root, cache = Path(sys.argv[1]).read_text(), sys.argv[2], Path(sys.argv[3])
new_files, entries, appends = {}, [], []
for block in re.findall(r"```python\n(.*?)```", doc, re.S):
    head, _, body = block.partition("\n")
    if m := re.fullmatch(r"# new file: (workers/[\w/]+)\.py", head):
        new_files[m.group(1).replace("/", ".")] = body
    elif m := re.fullmatch(r"# add to (\w+) in (workers/[\w/]+)\.py", head):
        entries.append((m.group(1), m.group(2).replace("/", "."), body))
    elif head.startswith("# append to"):
        appends.append(body.strip())
    else:
        raise SystemExit(f"a python block of extending.md says not where it goes: {head}")
# Cards first (a registry refuses a name without one), as the page says; then each new file as the module it
# would be, after the registries it registers into.
for table, module, body in entries:
    exec(f"{table}.update({{{body}}})", vars(importlib.import_module(module)))
import workers.compression, workers.data, workers.methods, workers.models  # noqa: E401
for name, body in new_files.items():
    mod = types.ModuleType(name)
    sys.modules[name] = mod
    exec(compile(body, name, "exec"), vars(mod))
imported = [".".join(re.match(r"from (workers\.\w+) import (\w+)", line).groups()) for line in appends]

from orchestrator.grid import expand, parse_grid
from orchestrator.validate import check_grid
from workers.core.schemas import METHODS as METHOD_CARDS
from workers.core.schemas.datasets import dataset_sizes

grid = parse_grid(re.search(r"```yaml\n(.*?)```", doc, re.S).group(1), "extending.md")
check_grid(grid, "extending.md")
doc_runs = len(expand(grid, "extending.md"))

from workers.compression import compress
from workers.data import load_dataset
from workers.models import build_model
from workers.run import Context, run

# N:M, against an independent reading of "the n largest of every m": per group, the kept weights' smallest
# magnitude is at least the dropped weights' largest, and exactly m - n are zero.
built, meta = build_model("mobilenet_v2", "random", {"input_size": 32}, cache)
before = {n: p.detach().clone() for n, p in built.model.named_parameters()}
model, report = compress(built.model, "nm", {"n": 1, "m": 4})
groups_ok, pruned_layers = True, 0
for n, p in model.named_parameters():
    if p.ndim < 2 or n.endswith("bias"):
        continue
    rows = p.detach().reshape(p.shape[0], -1).numpy()
    if rows.shape[1] % 4:
        groups_ok &= bool(np.array_equal(rows, before[n].reshape(p.shape[0], -1).numpy()))
        continue
    pruned_layers += 1
    g, g0 = rows.reshape(rows.shape[0], -1, 4), np.abs(before[n].reshape(p.shape[0], -1, 4).numpy())
    zero = g == 0
    groups_ok &= bool((zero.sum(-1) == 3).all())
    groups_ok &= bool((np.where(zero, np.inf, g0).min(-1) >= np.where(zero, g0, -np.inf).max(-1)).all())

splits = load_dataset("fashion_mnist", size=28, root=root)
try:
    load_dataset("fashion_mnist", root=str(cache / "nowhere"))
    missing = ""
except FileNotFoundError as e:
    missing = str(e)

tiny = parse_grid("""
name: ext
models:
  - name: mobilenet_v2
    weights: random
    args: {input_size: 32}
    compressions: [dense, {method: nm, n: 2, m: 4}]
methods: [ilm, cosine_probe]
datasets: [fashion_mnist]
shots: [2]
seeds: [1]
train: {epochs: 2, batch_size: 8, input_size: 16}
""")
check_grid(tiny, "tiny")
torch.set_num_threads(1)
rows = [run(spec, Context(cache, torch.device("cpu"), data_root=root)) for spec in expand(tiny)]
print(json.dumps({
    "new_files": sorted(new_files), "imported": imported, "doc_runs": doc_runs,
    "passes": METHOD_CARDS["cosine_probe"].passes.train, "sizes": dataset_sizes("fashion_mnist", {}).train,
    "nm_groups_ok": groups_ok, "nm_layers": pruned_layers, "nm_sparsity": report.sparsity,
    "classes": splits.classes, "train_shape": list(splits.train_x.shape), "dtype": str(splits.train_x.dtype),
    "first_train_image": splits.train_x[0].tolist(), "missing": missing,
    "rows": [{k: getattr(r, k) for k in ("status", "error", "method", "compression", "sparsity", "accuracy",
                                         "label_mapping", "weights_source", "n_train", "final_train_loss")}
             for r in rows]}))
'''


def _idx(path: Path, data: "np.ndarray") -> None:
    """An IDX file as Fashion-MNIST ships them: magic (0x08 = uint8, then the number of dimensions), big-endian
    int32 sizes, then the bytes."""
    import numpy as np

    header = bytes([0, 0, 8, data.ndim]) + np.array(data.shape, dtype=">i4").tobytes()
    path.write_bytes(header + data.astype(np.uint8).tobytes())


@pytest.mark.slow
@pytest.mark.integration
def test_the_worked_examples_of_extending_md_run(tmp_path):
    import numpy as np

    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train_x, test_x = rng.integers(0, 256, (40, 28, 28)), rng.integers(0, 256, (20, 28, 28))
    _idx(raw / "train-images-idx3-ubyte", train_x)
    _idx(raw / "train-labels-idx1-ubyte", np.arange(40) % 10)
    _idx(raw / "t10k-images-idx3-ubyte", test_x)
    _idx(raw / "t10k-labels-idx1-ubyte", np.arange(20) % 10)
    script = tmp_path / "examples.py"
    script.write_text(EXAMPLES)
    out = subprocess.run([sys.executable, str(script), str(DOCS / "extending.md"), str(tmp_path / "data"),
                          str(tmp_path / "cache")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    # every new file is imported by one of the page's import lines, and the page's grid validates
    assert sorted(r["imported"]) == r["new_files"] == ["workers.compression.nm", "workers.data.fashion",
                                                       "workers.methods.cosine", "workers.models.mobilenet"]
    assert r["doc_runs"] == 2 * 2 * 1 * 2 * 3  # variants x methods x dataset x shots x seeds
    assert (r["passes"], r["sizes"]) == ("features", 60000)
    # N:M keeps the largest of each group; the 3-channel stem stays dense
    assert r["nm_groups_ok"] and r["nm_layers"] > 10 and 0.5 < r["nm_sparsity"] < 0.75
    # the dataset reads the IDX files: torchvision's classes, the grey image as three equal channels
    import torchvision

    assert r["classes"] == [c.lower() for c in torchvision.datasets.FashionMNIST.classes]
    assert (r["train_shape"], r["dtype"]) == ([40, 3, 28, 28], "torch.uint8")
    assert r["first_train_image"] == [train_x[0].tolist()] * 3
    assert "FashionMNIST/raw/train-images-idx3-ubyte" in r["missing"]
    # one run per example: every row ok, and each example visible in its row
    rows = {(x["compression"], x["method"]): x for x in r["rows"]}
    assert set(rows) == {("dense", "ilm"), ("dense", "cosine_probe"), ("nm", "ilm"), ("nm", "cosine_probe")}
    for x in rows.values():
        assert x["status"] == "ok", x["error"]
        assert x["weights_source"] == "random init (seed 0); not pre-trained" and x["n_train"] == 20
        assert 0 <= x["accuracy"] <= 1 and np.isfinite(x["final_train_loss"])
    assert rows[("nm", "ilm")]["sparsity"] > 0.4 and rows[("dense", "ilm")]["sparsity"] == 0
    assert rows[("dense", "cosine_probe")]["label_mapping"] is None
    assert len(rows[("dense", "ilm")]["label_mapping"]) == 10


# --------------------------------------------------------------------------------------- docs/benchmarks.md
def markdown_table(rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
                     + ["| " + " | ".join(r) + " |" for r in rows[1:]])


RESULTS = sorted((ROOT / "benchmarks" / "results").glob("*.csv"))


@pytest.mark.parametrize("path", RESULTS, ids=[p.name for p in RESULTS])
def test_each_benchmark_file_is_rendered_in_benchmarks_md(path):
    text = (DOCS / "benchmarks.md").read_text()
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert len(rows) > 1 and all(len(r) == len(rows[0]) for r in rows)
    assert f"`benchmarks/results/{path.name}`" in text
    assert markdown_table(rows) in text, f"docs/benchmarks.md: the table of {path.name} differs from the file"


def test_the_shipped_throughput_table_is_rendered_in_benchmarks_md():
    from orchestrator.estimate import DEFAULT_TABLE

    table = json.loads(Path(DEFAULT_TABLE).read_text())
    rows = [["model", "input size", "batch", "train images/s", "forward images/s", "start-up (s)"]]
    rows += [[f"`{m}`", str(e["input_size"]), str(e["batch"]), f"{e['train_images_per_s']:.3g}",
              f"{e['forward_images_per_s']:.3g}", f"{e['startup_s']:.3g}"] for m, e in table["models"].items()]
    assert markdown_table(rows) in (DOCS / "benchmarks.md").read_text()


# ------------------------------------------------------------------------------------- README and docs/*.md
# Pages other branches write; until they are merged, links to them are not checked.
ELSEWHERE = {"demo.md", "report.md", "cluster.md", "scale.md"}


def pages() -> dict[Path, str]:
    """The README and every page of the manual. The README's sections that are moving to docs/demo.md, report.md
    and cluster.md are left out: those pages are checked instead."""
    out = {}
    for p in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        text = p.read_text()
        if p == ROOT / "README.md":
            text = re.sub(r"^## (The offline demo|Report|Running on a cluster)\n.*?(?=^## |\Z)", "", text,
                          flags=re.S | re.M)
        out[p] = text
    return out


def slugs(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings."""
    heads = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", path.read_text(), flags=re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def test_every_link_of_the_readme_and_docs_resolves():
    checked = 0
    for page, text in pages().items():
        for target in re.findall(r"\]\(([^)\s]+)\)|src=\"([^\"]+)\"", text):
            target = target[0] or target[1]
            if target.startswith(("http://", "https://")):
                continue
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            if not dest.exists() and dest.name in ELSEWHERE and dest.parent == DOCS:
                continue
            assert dest.exists(), f"{page.name}: link to {target}: no such file"
            if anchor:
                assert anchor in slugs(dest), f"{page.name}: link to {target}: no such heading"
            checked += 1
    assert checked > 50


def test_no_diary_in_the_docs():
    """No commit hashes, load averages or session notes in the README, the manual or the shipped measurements
    (a throughput table or a benchmark's results states its machine and date, nothing of the moment)."""
    shipped = [*(ROOT / "orchestrator" / "throughput").glob("*.json"), *(ROOT / "benchmarks" / "results").iterdir()]
    assert shipped
    for p in shipped:
        assert not re.search(r"load.?av|this session", p.read_text(), re.I), p.name
    for p, text in pages().items():
        assert not re.search(r"\bload average|this session|\bsession of\b", text, re.I), p.name
        assert not re.search(r"\b(commit|clean checkout|clone) [0-9a-f]{7,40}\b|\([0-9a-f]{7}\)", text), p.name


def test_every_grid_in_the_readme_and_docs_validates():
    """A whole grid in a page's YAML block (one with a `name:`) validates and expands, as `vpgrid plan` does it.
    extending.md's grid names entries that exist only once its examples are added: its own test checks it."""
    from orchestrator.grid import expand, parse_grid
    from orchestrator.validate import check_grid

    grids = [(p.name, y) for p, text in pages().items() if p.name != "extending.md"
             for y in re.findall(r"```yaml\n(.*?)```", text, re.S) if re.search(r"^name:", y, re.M)]
    assert {name for name, _ in grids} >= {"README.md", "grid.md"}
    for name, y in grids:
        g = parse_grid(y, name)
        check_grid(g, name)
        assert expand(g, name), name
