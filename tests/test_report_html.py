"""report.html: one self-contained page per run and per sweep, validated as HTML (no browser here: a checker built on
html.parser) and checked against the files it gathers."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import yaml

from aif_sim.cli import main
from aif_sim.scenario import load_scenario
from tests.simtools import scenario_dict, small_stages, write_yaml

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
FORBIDDEN = {"script", "link", "iframe", "object", "embed", "base"}  # what would load or run something from elsewhere
PNG = b"\x89PNG\r\n\x1a\n"


class PageChecker(HTMLParser):
    """Tags balanced and properly nested (void elements excepted); every reference (`src`, `href`, `srcset`, `action`)
    a `data:` URI; nothing that loads or runs code; the images' data kept."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.images: list[bytes] = []
        self.text: list[str] = []
        self.doctype = False

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl.lower() == "doctype html"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in FORBIDDEN:
            self.problems.append(f"<{tag}>")
        for name, value in attrs:
            if name in ("src", "href", "srcset", "action", "poster") and not (value or "").startswith("data:"):
                self.problems.append(f"<{tag} {name}={value!r}>: not embedded")
            if name == "style" and value and "url(" in value:
                self.problems.append(f"<{tag} style>: url()")
        if tag == "img":
            src = dict(attrs).get("src") or ""
            match = re.fullmatch(r"data:image/png;base64,([A-Za-z0-9+/=]+)", src)
            if match is None:
                self.problems.append("<img> without an embedded PNG")
            else:
                self.images.append(base64.b64decode(match.group(1)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            self.problems.append(f"</{tag}>: a void element has no end tag")
        elif not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def check_page(path: Path) -> PageChecker:
    """Parse a report; assert it is a whole, balanced, self-contained HTML document."""
    text = path.read_text(encoding="utf-8")
    checker = PageChecker()
    checker.feed(text)
    checker.close()
    assert checker.doctype, "no <!DOCTYPE html>"
    assert not checker.stack, f"unclosed: {checker.stack}"
    assert not checker.problems, checker.problems
    assert "@import" not in text and "http://" not in text and "https://" not in text
    assert all(image.startswith(PNG) for image in checker.images)
    return checker


def _scenario(tmp_path: Path) -> Path:
    stages = small_stages({"servers": 8, "latency": {"dist": "gamma", "mean_ms": 6, "cv": 0.5}})
    data = scenario_dict(stages, pipelines=["sequential", "aif"], qps=200, duration_s=2.0, warmup_s=0.5, slo={"p99_ms": 40})
    return write_yaml(tmp_path / "s.yaml", data)


def test_a_runs_report_holds_its_tables_plots_engines_warnings_and_scenario(tmp_path):
    path, out = _scenario(tmp_path), tmp_path / "run"
    assert main([str(path), "--out", str(out), "--quiet", "--trace", "0.01", "--set", "traffic.arrival.qps=250"]) == 0
    checker = check_page(out / "report.html")
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 3 and sorted(checker.images) == sorted(p.read_bytes() for p in pngs)
    text = "".join(checker.text)
    summary = json.loads((out / "summary.json").read_text())
    for warning in summary["warnings"]:  # the engine fallback tracing causes
        assert warning in text
    assert "sequential" in text and "simpy engine" in text and "p99" in text and "prerank" in text
    scenario_text = text[text.index("Scenario as run") + len("Scenario as run") : text.index("Files in this folder")]
    as_run = load_scenario(path, [("traffic.arrival.qps", 250, "--set")]).model_dump(mode="json", exclude_none=True)
    assert yaml.safe_load(scenario_text) == as_run


def test_a_sweeps_report_holds_its_table_and_every_plot(tmp_path):
    path, out = _scenario(tmp_path), tmp_path / "sweep"
    argv = ["sweep", str(path), "--param", "traffic.arrival.qps", "--values", "100,200", "--out", str(out), "--quiet", "--no-cache"]
    assert main([*argv, "--jobs", "2", "--engine", "simpy"]) == 0
    checker = check_page(out / "report.html")
    pngs = sorted(out.glob("*.png"))
    assert "latency_throughput.png" in {p.name for p in pngs}
    assert sorted(checker.images) == sorted(p.read_bytes() for p in pngs)
    text = "".join(checker.text)
    assert "traffic.arrival.qps" in text and "capacity" in text


def test_the_checker_catches_what_a_page_must_not_hold(tmp_path):
    cases = {
        "<!DOCTYPE html><html><body><div></body></html>": "closes",
        '<!DOCTYPE html><html><body><img src="plot.png"></body></html>': "not embedded",
        '<!DOCTYPE html><html><body><a href="https://example.com">x</a></body></html>': "not embedded",
        "<!DOCTYPE html><html><body><script></script></body></html>": "<script>",
    }
    for page, expected in cases.items():
        checker = PageChecker()
        checker.feed(page)
        assert any(expected in problem for problem in checker.problems), page


def test_a_run_stopped_before_any_pipeline_ran_still_gets_a_valid_page(tmp_path):
    """Interrupted at once, a run has no pipeline to tabulate: its page says so and names the interruption."""
    from aif_sim.app.run import summary_document, write_run

    scenario = load_scenario(_scenario(tmp_path))
    summary = summary_document(scenario, {})
    write_run(tmp_path, scenario, {}, summary)
    text = "".join(check_page(tmp_path / "report.html").text)
    assert summary["partial"] and "No pipeline ran." in text and "interrupted: the results are partial" in text
