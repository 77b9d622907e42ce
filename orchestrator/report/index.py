"""The index of `vpgrid report --out DIR`: DIR/README.md and DIR/index.html, opening with the findings, then every
entry per figure family with its caption, files, table and missing runs."""
from __future__ import annotations

import html
import re
from pathlib import Path

from orchestrator.report.entry import Entry, caption, missing_lines
from orchestrator.report.names import FAMILIES, FAMILY_TITLES


def _header(info: dict) -> list[str]:
    sel = ", ".join(f"{k}={'|'.join(map(str, v))}" for k, v in info["select"].items()) or "none"
    lines = [f"Store `{info['store']}`, grid `{info['grid']}`: {info['ok']} finished, {info['failed']} failed, "
             f"{info['pending']} pending runs (selection: {sel}).",
             f"ECE: {'proper (`ece`)' if info['ece'] == 'proper' else 'the paper code variant (`ece_paper`)'}; "
             f"KL: {'KL(p ‖ U) (`kl_incorrect`)' if info['kl'] == 'proper' else 'the paper code variant (`kl_incorrect_paper`)'}. "
             "Only finished runs are averaged; runs that differ in any setting are never averaged as seeds.",
             "Every pending and failed run: [missing.csv](missing.csv); all means, stds and intervals: "
             "[summary.csv](summary.csv); every paired cost: [cost.csv](cost.csv); "
             "the Markdown tables of `vpgrid report`: [tables/summary.md](tables/summary.md)."]
    if info["not_in_grid"]:
        lines.append(f"{info['not_in_grid']} stored rows belong to runs no longer in the grid; they are included.")
    return lines


def _findings_md(findings) -> list[str]:
    intro, groups = findings
    parts = ["## Findings", "", *intro, ""]
    for head, lines in groups:
        parts += [f"**{head}**", "", *[f"- {x}" for x in lines], ""]
    return parts


def index_md(entries: list[Entry], info: dict, findings=([], [])) -> str:
    parts = ["# vpgrid report", "", *_findings_md(findings), "## About this report", "",
             *[f"{x}  " for x in _header(info)], "", "Manual: what each section, figure and table shows, and the "
             "definitions of the paired cost and its interval: docs/report.md in the vpgrid repository.", ""]
    for fam in FAMILIES:
        es = [e for e in entries if e.family == fam]
        if not es:
            continue
        parts += [f"## {FAMILY_TITLES[fam]}", ""]
        for e in es:
            if e.title != FAMILY_TITLES[fam]:
                parts += [f"### {e.title}", ""]
            if e.skipped:
                parts.append(f"*Not drawn: {e.skipped}.* {caption(e)}")
            else:
                parts.append(caption(e))
                parts.append("")
                for f in e.files:
                    if f.endswith(".png"):
                        parts.append(f"![{e.title}]({f})")
                if e.table_md:
                    parts += ["", e.table_md]
                parts.append("")
                parts.append("Files: " + ", ".join(f"[{Path(f).suffix[1:]}]({f})" for f in e.files))
            miss = missing_lines(e)
            if miss:
                parts += ["", "<details><summary>missing runs</summary>", "", *[f"- {x}" for x in miss], "", "</details>"]
            parts.append("")
    return "\n".join(parts) + "\n"


def index_html(entries: list[Entry], info: dict, findings=([], [])) -> str:
    h = html.escape
    intro, groups = findings
    body = ["<h1>vpgrid report</h1>", '<section id="findings" class="findings"><h2>Findings</h2>',
            *[f"<p>{_md_links(h(x))}</p>" for x in intro]]
    for head, lines in groups:
        body.append(f"<h3>{h(head)}</h3><ul>" + "".join(f"<li>{h(x)}</li>" for x in lines) + "</ul>")
    body += ["</section>", "<h2>About this report</h2>", *[f"<p>{_md_links(h(x))}</p>" for x in _header(info)],
             "<p>Manual: docs/report.md in the vpgrid repository (each section, figure and table; the paired cost "
             "and its interval).</p>", "<nav><ul>"]
    fams = [f for f in FAMILIES if any(e.family == f for e in entries)]
    body += [f'<li><a href="#{f}">{h(FAMILY_TITLES[f])}</a></li>' for f in fams] + ["</ul></nav>"]
    for fam in fams:
        body.append(f'<h2 id="{fam}">{h(FAMILY_TITLES[fam])}</h2><div class="grid">')
        for e in (x for x in entries if x.family == fam):
            wide = " wide" if e.table_html or e.family == "mapping" else ""
            body.append(f'<section class="entry{wide}">')
            if e.title != FAMILY_TITLES[fam]:
                body.append(f"<h3>{h(e.title)}</h3>")
            if e.skipped:
                body.append(f"<p><em>Not drawn: {h(e.skipped)}.</em> {h(caption(e))}</p>")
            else:
                body.append(f"<p>{h(caption(e))}</p>")
                body += [f'<a href="{h(f)}"><img src="{h(f)}" alt="{h(e.title)}"></a>' for f in e.files
                         if f.endswith(".png")]
                if e.table_html:
                    body.append(f'<div class="table">{e.table_html}</div>')
                body.append("<p>Files: " + ", ".join(f'<a href="{h(f)}">{h(Path(f).suffix[1:])}</a>' for f in e.files) + "</p>")
            miss = missing_lines(e)
            if miss:
                body.append("<details><summary>missing runs</summary><ul>" + "".join(f"<li>{h(x)}</li>" for x in miss)
                            + "</ul></details>")
            body.append("</section>")
        body.append("</div>")
    style = ("body{font-family:sans-serif;max-width:1800px;margin:2em auto;padding:0 1em;color:#222}"
             ".grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:1.5em}"
             ".wide{grid-column:1/-1}.findings{background:#f6f6f6;padding:0.5em 1.5em;border-radius:6px}"
             "img{max-width:100%;border:1px solid #ddd}.table{overflow-x:auto}"
             "table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}"
             "th{background:#f0f0f0}section.entry p{font-size:14px}")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>vpgrid report</title>"
            f"<style>{style}</style></head><body>" + "\n".join(body) + "</body></html>\n")


def _md_links(text: str) -> str:
    """[name](href) and `code` in the header lines, as HTML."""
    text = re.sub(r"\[([^\]]+)\]\(([^)]+)\)", r'<a href="\2">\1</a>', text)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
