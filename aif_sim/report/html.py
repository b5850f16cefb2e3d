"""`report.html`: one self-contained page per run or sweep.

The page holds what the terminal prints (the same rich tables, exported as HTML with inline styles), every plot of
the output folder embedded as a `data:` URI, the warnings, the engine that ran each pipeline and the scenario as
run (every field, defaults included, as YAML). It references nothing outside itself: no script, no stylesheet, no
link, so it opens anywhere and can be mailed or archived alone.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from aif_sim import __version__
from aif_sim.atomic import write_text
from aif_sim.scenario import Scenario

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 90em; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
pre { font-family: ui-monospace, Menlo, 'DejaVu Sans Mono', monospace; font-size: 0.85em; line-height: 1.3;
      overflow-x: auto; background: #fafafa; padding: 0.8em; border: 1px solid #eee; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
ul.warnings li { color: #a33; } table.facts td { padding: 0.1em 1em 0.1em 0; vertical-align: top; }
"""
TABLE_WIDTH = 160  # characters: tables wider than this wrap their cells, as on a terminal of that width


def table_html(tables: Iterable[Table]) -> str:
    """Rich tables as an HTML fragment (a `<pre>` with inline styles), the same text the terminal shows."""
    console = Console(record=True, width=TABLE_WIDTH, file=io.StringIO(), color_system="truecolor", force_terminal=True)
    for table in tables:
        console.print(table)
        console.print()
    return console.export_html(inline_styles=True, code_format="<pre>{code}</pre>")


def image_html(path: Path) -> str:
    """A PNG embedded as a data: URI, with its file name as alt text and caption."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    name = html.escape(path.name)
    return f'<figure><img src="data:image/png;base64,{data}" alt="{name}"><figcaption>{name}</figcaption></figure>'


def scenario_yaml(scenario: Scenario) -> str:
    """The scenario as run: every field after overrides and defaults, as YAML."""
    return yaml.safe_dump(scenario.model_dump(mode="json", exclude_none=True), sort_keys=False, allow_unicode=True)


def facts_html(facts: dict[str, Any]) -> str:
    rows = "".join(f"<tr><td>{html.escape(key)}</td><td>{html.escape(str(value))}</td></tr>" for key, value in facts.items())
    return f'<table class="facts">{rows}</table>'


def warnings_html(warnings: list[str]) -> str:
    if not warnings:
        return "<p>None.</p>"
    return '<ul class="warnings">' + "".join(f"<li>{html.escape(w)}</li>" for w in warnings) + "</ul>"


def page(title: str, sections: list[tuple[str, str]]) -> str:
    """A whole HTML document: a title and (heading, HTML fragment) sections."""
    body = "".join(f"<section><h2>{html.escape(heading)}</h2>{fragment}</section>" for heading, fragment in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}"
        f"<footer><p>written by aif-sim {html.escape(__version__)}</p></footer></body></html>\n"
    )


def write_report(
    folder: Path,
    title: str,
    facts: dict[str, Any],
    warnings: list[str],
    tables: list[Table],
    scenario: Scenario,
    plots: list[str],
) -> None:
    """`report.html` in the output folder: facts, warnings, tables, the folder's plots named in `plots` (in that order,
    those that exist) and the scenario as run."""
    images = "".join(image_html(folder / name) for name in plots if (folder / name).exists())
    others = sorted(p.name for p in folder.iterdir() if not p.name.startswith(".") and p.suffix != ".png")
    sections = [
        ("Run", facts_html(facts)),
        ("Warnings", warnings_html(warnings)),
        ("Tables", table_html(tables) if tables else "<p>No pipeline ran.</p>"),
        ("Plots", images or "<p>No plots.</p>"),
        ("Scenario as run", f"<pre>{html.escape(scenario_yaml(scenario))}</pre>"),
        ("Files in this folder", "<p>" + html.escape(", ".join([*others, "report.html"])) + "</p>"),
    ]
    write_text(folder / "report.html", page(title, sections))
