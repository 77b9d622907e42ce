"""The offline demo's numbers in the docs and the golden values that pin them.

`python -m orchestrator.report.demo --store results/demo` (after `vpgrid launch grids/demo.yaml`, docs/demo.md):
  1. checks the store holds the whole demo grid, every run ok;
  2. checks every finding the docs state (`FINDINGS`): a paired difference over seeds whose 95% interval
     excludes zero, in the stated direction; a finding that does not hold writes nothing and exits 1;
  3. runs the golden slice (`SLICE`: a few runs of the demo grid, one torch thread, in a fresh interpreter with
     numerics that do not depend on the CPU: `PORTABLE_ENV`) and writes its metrics to
     tests/golden/demo_slice.json, which tests/test_demo_golden.py compares to 1e-4;
  4. rewrites the generated parts of README.md and docs/demo.md (between `<!-- demo:NAME -->` markers).

Torch and the workers are imported only by the slice: the tables and findings need pandas alone.
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from workers.core.spec import variant_tag

ROOT = Path(__file__).resolve().parents[2]
GRID = ROOT / "grids" / "demo.yaml"
GOLDEN = ROOT / "tests" / "golden" / "demo_slice.json"
DOCS = (ROOT / "README.md", ROOT / "docs" / "demo.md")
GOLDEN_METRICS = ("accuracy", "ece", "nll", "conf_correct", "kl_incorrect", "final_train_loss", "sparsity")

# The golden slice: one seed of each variant with ILM at 10 shots, and the other two label mappings on the dense
# model: every compression and every mapping of the demo, ~30 s of one CPU core.
SLICE = [{"method": "ilm", "shots": 10, "seed": 1},
         {"compression": "dense", "method": "rlm", "shots": 10, "seed": 1},
         {"compression": "dense", "method": "flm", "shots": 10, "seed": 1}]


@dataclass(frozen=True)
class Finding:
    """`sign * (b - a) > 0` for `metric` over seeds paired by seed; a, b: (variant, method, budget)."""

    text: str
    metric: str
    a: tuple[str, str, str]
    b: tuple[str, str, str]
    sign: int = 1


FINDINGS = (
    Finding("80% magnitude sparsity costs ILM accuracy (full split)", "accuracy",
            ("magnitude 0.8", "ilm", "full"), ("dense", "ilm", "full")),
    Finding("80% sparsity costs more than 60% (ILM, full split)", "accuracy",
            ("magnitude 0.8", "ilm", "full"), ("magnitude 0.6", "ilm", "full")),
    Finding("3-bit fake quantisation costs ILM accuracy (full split)", "accuracy",
            ("fakequant 3", "ilm", "full"), ("dense", "ilm", "full")),
    Finding("ILM beats FLM on the dense model (10 shots)", "accuracy",
            ("dense", "flm", "10-shot"), ("dense", "ilm", "10-shot")),
    Finding("the full split beats 10 shots (dense, ILM)", "accuracy",
            ("dense", "ilm", "10-shot"), ("dense", "ilm", "full")),
)


# -- the store's tables and findings (pandas only) -------------------------------------------------------------

def _runs(store: str):
    """(the store's rows, its finished runs in the run table: variant 'magnitude 0.6', budget '10-shot')."""
    from orchestrator.report.runs import run_table
    from workers.core.store import Store

    try:
        s = Store(store)
        s.grid_text()  # a folder that is not a store fails here, in one line
        df = s.frame()
    except Exception as e:
        raise SystemExit(f"error: {store}: not a readable store: {(str(e).splitlines() or [type(e).__name__])[0]}")
    runs = run_table(df)
    return df, runs[runs["state"] == "ok"]


def check_store(store: str) -> None:
    """The store is the demo grid, whole: every run of grids/demo.yaml is in it, ok."""
    from orchestrator.grid import expand, parse_grid

    df, ok = _runs(store)
    want = {r.run_key for r in expand(parse_grid(GRID.read_text(), str(GRID)), str(GRID))}
    missing = want - set(ok["run_key"])
    if missing or len(df) != len(want):
        raise SystemExit(f"error: {store}: not a complete run of {GRID.name} ({len(want) - len(missing)} of "
                         f"{len(want)} runs ok, {len(df)} rows); launch it again: vpgrid launch grids/demo.yaml")


def paired(ok, finding: Finding) -> dict:
    """Mean of sign*(b - a) over the seeds both have, in points, with its 95% interval: the report's own
    (orchestrator.report.cost.interval: Student t below 5 seeds, a bootstrap from 5)."""
    from orchestrator.report.cost import interval

    def values(v, m, b):
        s = ok[(ok["variant"] == v) & (ok["method"] == m) & (ok["budget"] == b)]
        return s.set_index("seed")[finding.metric]

    d = (finding.sign * 100 * (values(*finding.b) - values(*finding.a))).dropna()
    mean, lo, hi, _ = interval(d.to_numpy())
    return {"finding": finding.text, "metric": finding.metric, "seeds": len(d), "mean": mean,
            "lo": lo, "hi": hi, "holds": bool(lo > 0)}


def findings_md(rows: list[dict]) -> str:
    lines = ["| finding | metric | difference (points) | 95% interval over seeds | holds |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['finding']} | {r['metric']} | {r['mean']:+.1f} | [{r['lo']:+.1f}, {r['hi']:+.1f}] "
                     f"({r['seeds']} seeds) | {'yes' if r['holds'] else 'NO'} |")
    return "\n".join(lines)


def tables_md(store: str, methods: tuple[str, ...] | None = None) -> str:
    """`vpgrid report`'s Markdown tables of accuracy and ECE, of some methods only if asked."""
    from orchestrator.report.runs import run_table
    from orchestrator.report.summary import markdown, summary
    from workers.core.store import Store

    df = Store(store).frame()
    if methods:
        df = df[df["method"].isin(methods)]
    return markdown(summary(run_table(df)), ("accuracy", "ece")).strip()


# -- the golden slice (torch, in this process) ------------------------------------------------------------------

def slice_specs() -> list:
    """The demo grid's runs that SLICE names, in SLICE's order then the grid's."""
    from orchestrator.grid import expand, parse_grid

    runs = expand(parse_grid(GRID.read_text(), str(GRID)), str(GRID))
    out = []
    for want in SLICE:
        out += [r for r in runs if all(getattr(r, k) == v for k, v in want.items()) and r not in out]
    return out


# The golden slice runs with numerics that do not depend on the CPU: at one thread the order of float sums still
# follows the kernels each library picks for the CPU it finds (torch's vector unit, oneDNN's and MKL's code paths
# and blocking): two AVX-512 machines gave the slice 4 runs apart, one by 5 points of accuracy. ATen's baseline
# kernels, oneDNN off and MKL's conditional numerical reproducibility ("COMPATIBLE": one code path on every x86-64
# CPU) remove each choice. Measured on one machine: with these settings, capping MKL at AVX2 moves nothing; with
# ATen's and oneDNN's alone, the same cap moves all 7 runs. About 2.5 times slower than the default kernels.
PORTABLE_ENV = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "OMP_NUM_THREADS": "1"}


def portable_here() -> str | None:
    """None where the portable numerics exist (x86-64 with MKL); else why the golden values cannot apply."""
    import torch

    if platform.machine().lower() not in ("x86_64", "amd64") or not torch.backends.mkl.is_available():
        return f"the golden values are made with MKL on x86-64; this is {platform.machine()} " \
               f"(MKL {'present' if torch.backends.mkl.is_available() else 'absent'})"
    return None


def run_slice(cache_dir: Path) -> list[dict]:
    """The slice's runs in fresh interpreters with `PORTABLE_ENV`, each run alone at one torch thread, as
    {run_key, what, metrics}: the same numbers on every x86-64 machine. One interpreter per core (at most two),
    each taking every other run: a run's numbers do not depend on which process runs it."""
    import os
    import subprocess
    import tempfile

    parts = max(1, min(2, os.cpu_count() or 1))
    code = "import sys; from orchestrator.report.demo import _slice_to; _slice_to(*sys.argv[1:])"
    with tempfile.TemporaryDirectory() as tmp:
        outs = [Path(tmp) / f"slice-{i}.json" for i in range(parts)]
        procs = [subprocess.Popen([sys.executable, "-c", code, str(out), str(cache_dir), str(i), str(parts)],
                                  env={**os.environ, **PORTABLE_ENV}, cwd=ROOT, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True) for i, out in enumerate(outs)]
        failed = []
        for p in procs:
            _, err = p.communicate()
            if p.returncode:
                failed.append(f"exit {p.returncode}: {err.strip()[-2000:]}")
        if failed:
            raise RuntimeError(f"golden slice failed ({failed[0]})")
        rows = {r["run_key"]: r for out in outs for r in json.loads(out.read_text())}
        return [rows[s.run_key] for s in slice_specs()]


def write_golden(runs: list[dict]) -> None:
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps({"grid": GRID.name, "threads": 1, "numerics": PORTABLE_ENV | {"mkldnn": False},
                                  "runs": runs}, indent=1) + "\n")


def _slice_to(out: str, cache_dir: str, part: str = "0", parts: str = "1") -> None:
    """run_slice's fresh interpreter: its share of the slice's runs (every `parts`-th from `part`), as JSON, to
    `out`."""
    import torch

    from workers.run import run_alone

    assert torch.backends.cpu.get_cpu_capability() == "DEFAULT", "run through run_slice (PORTABLE_ENV)"
    torch.backends.mkldnn.enabled = False
    rows = []
    specs = slice_specs()[int(part)::int(parts)]
    for spec, row in zip(specs, run_alone(specs, Path(cache_dir), threads=1)):
        if row.status != "ok":
            raise RuntimeError(f"golden slice run {spec.run_key} failed: {row.error}")
        variant = variant_tag(spec.compression, spec.compression_level)
        what = f"{variant} {spec.method} {spec.shots}-shot seed {spec.seed}"
        rows.append({"run_key": spec.run_key, "what": what,
                     "metrics": {m: float(getattr(row, m)) for m in GOLDEN_METRICS}})
    Path(out).write_text(json.dumps(rows))


# -- writing ----------------------------------------------------------------------------------------------------

def replace_block(text: str, name: str, body: str, where: str) -> str:
    """The text between `<!-- demo:NAME -->` and `<!-- demo:NAME end -->` replaced by `body`."""
    pattern = re.compile(rf"(<!-- demo:{name} -->\n).*?(<!-- demo:{name} end -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"error: {where}: no <!-- demo:{name} --> ... <!-- demo:{name} end --> block to fill")
    return pattern.sub(lambda m: m.group(1) + body.strip() + "\n" + m.group(2), text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m orchestrator.report.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--store", required=True, help="a finished demo store (vpgrid launch grids/demo.yaml)")
    p.add_argument("--cache", default=None, help="node cache for the slice [default: $VPGRID_CACHE]")
    p.add_argument("--check", action="store_true", help="check the store and findings only; write nothing")
    args = p.parse_args(argv)
    check_store(args.store)
    _, ok = _runs(args.store)
    rows = [paired(ok, f) for f in FINDINGS]
    print(findings_md(rows))
    failed = [r["finding"] for r in rows if not r["holds"]]
    if failed:
        print(f"error: {len(failed)} finding(s) the docs state do not hold in {args.store}: {'; '.join(failed)}; "
              "nothing written", file=sys.stderr)
        return 1
    if args.check:
        return 0
    if portable_here():
        print(f"error: {portable_here()}: the golden values cannot be made here; nothing written", file=sys.stderr)
        return 1
    from workers.node_cache import node_cache_dir

    golden = run_slice(Path(args.cache) if args.cache else node_cache_dir())
    blocks = {"tables": tables_md(args.store), "ilm": tables_md(args.store, ("ilm",)), "findings": findings_md(rows)}
    texts = {}
    for path in DOCS:
        text = path.read_text()
        for name, body in blocks.items():
            if f"<!-- demo:{name} -->" in text:
                text = replace_block(text, name, body, str(path))
        texts[path] = text
    write_golden(golden)
    for path, text in texts.items():
        path.write_text(text)
    print(f"wrote {GOLDEN.relative_to(ROOT)} ({len(golden)} runs) and the demo tables in "
          f"{', '.join(str(p.relative_to(ROOT)) for p in DOCS)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
