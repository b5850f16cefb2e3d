"""Command line: run, compare and sweep scenarios; the model commands live in aif_sim.model.commands.

Exit codes: 0 success, 2 bad input (one line on stderr), 1 internal error.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from aif_sim import __version__
from aif_sim.atomic import write_json
from aif_sim.errors import InputError
from aif_sim.pipelines import PIPELINES, stages_of
from aif_sim.report import (
    comparison_table,
    make_console,
    plot_latency_cdf,
    plot_stage_breakdown,
    stage_table,
    write_timeseries,
)
from aif_sim.requests_log import RequestLog
from aif_sim.runner import build_samplers, simulate, summary_document
from aif_sim.scenario import Scenario, load_scenario, parse_overrides
from aif_sim.sweep import run_sweep


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit code 2."""

    commands: frozenset[str] = frozenset()

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _scenario_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenario", help="scenario YAML file")
    parser.add_argument("--out", type=Path, help="output directory (default results/<scenario>/<UTC time>/)")
    parser.add_argument("--seed", type=int, help="override the scenario's seed")
    parser.add_argument("--set", dest="overrides", action="append", metavar="PATH=VALUE", help="override a scenario field, e.g. traffic.arrival.qps=3000")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no tables")


def _run_options(parser: argparse.ArgumentParser) -> None:
    _scenario_options(parser)
    parser.add_argument("--format", choices=("parquet", "csv"), default="parquet", help="per-request file format")
    parser.add_argument("--requests-sample", type=float, default=1.0, metavar="FRACTION", help="share of completed requests written to the per-request file")


MODEL_COMMANDS = ("train", "evaluate", "sweep-model", "calibrate")


def build_parser(with_model: bool = True) -> Parser:
    """The CLI parser; `with_model=False` leaves out the model commands (and the torch import they need)."""
    parser = Parser(prog="aif-sim", description="Simulate sequential vs asynchronous (AIF) pre-ranking inference.")
    parser.add_argument("--version", action="version", version=f"aif-sim {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    run = commands.add_parser("run", help="run every pipeline the scenario names (the default command)")
    _run_options(run)
    run.set_defaults(func=cmd_run)

    compare = commands.add_parser("compare", help="run the scenario with the pipelines given here")
    _run_options(compare)
    compare.add_argument("--pipelines", required=True, help=f"comma-separated, from {', '.join(PIPELINES)}")
    compare.set_defaults(func=cmd_run)

    sweep = commands.add_parser("sweep", help="one run per value of a scenario field, in parallel processes")
    _scenario_options(sweep)
    sweep.add_argument("--param", required=True, help="dotted scenario field, e.g. traffic.arrival.qps")
    sweep.add_argument("--values", required=True, help="comma-separated values")
    sweep.add_argument("--jobs", type=int, default=None, help="parallel processes (default: CPU count)")
    sweep.set_defaults(func=cmd_sweep)

    if with_model:
        from aif_sim.model.commands import register

        register(commands)
    parser.commands = frozenset(commands.choices) | frozenset(MODEL_COMMANDS)
    return parser


def _overrides(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """The --set overrides, then --seed."""
    overrides = parse_overrides(args.overrides)
    if args.seed is not None:
        overrides.append(("seed", args.seed))
    return overrides


def _load(args: argparse.Namespace, extra: list[tuple[str, Any]] = ()) -> Scenario:
    return load_scenario(args.scenario, _overrides(args) + list(extra))


def _out_dir(args: argparse.Namespace, scenario: Scenario) -> Path:
    if args.out is not None:
        return args.out
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Path("results") / scenario.name / stamp


def _progress(console: Console, quiet: bool) -> Progress:
    return Progress(
        TextColumn("{task.description:<12}"),
        BarColumn(),
        TextColumn("{task.fields[simulated]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=quiet,
        transient=False,
    )


def cmd_run(args: argparse.Namespace) -> int:
    extra = []
    if getattr(args, "pipelines", None):
        extra.append(("pipelines", [p.strip() for p in args.pipelines.split(",") if p.strip()]))
    if not 0.0 <= args.requests_sample <= 1.0:
        raise InputError(f"--requests-sample: expected a fraction in [0, 1], got {args.requests_sample}")
    scenario = _load(args, extra)
    samplers = build_samplers(scenario, args.scenario)
    out = _out_dir(args, scenario)
    console = make_console()
    stage_columns = list(dict.fromkeys(s for p in scenario.pipelines for s in stages_of(p)))
    log = RequestLog(out / f"requests.{args.format}", stage_columns, args.format, args.requests_sample)
    horizon = scenario.duration_s + scenario.drain_s
    try:
        with _progress(console, args.quiet) as progress:
            tasks = {p: progress.add_task(p, total=horizon, simulated="") for p in scenario.pipelines}

            def advance(pipeline: str, now: float) -> None:
                progress.update(tasks[pipeline], completed=now, simulated=f"{now:,.1f}/{horizon:g} s simulated")

            results = simulate(scenario, samplers, log, advance)
    except BaseException:
        log.abort()
        raise
    log.close()
    summary = summary_document(scenario, results)
    write_json(out / "summary.json", summary)
    write_timeseries(out / "timeseries.csv", results)
    plot_latency_cdf(out / "latency_cdf.png", results, scenario.slo_p99_ms)
    plot_stage_breakdown(out / "stage_breakdown.png", summary)
    if not args.quiet:
        console.print(comparison_table(summary, f"{scenario.name}: {', '.join(scenario.pipelines)} (seed {scenario.seed})"))
        console.print(stage_table(summary))
        console.print(f"outputs in [bold]{out}[/]")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    if args.jobs is not None and args.jobs < 1:
        raise InputError(f"--jobs: expected a positive integer, got {args.jobs}")
    base = _overrides(args)
    points = parse_overrides([f"{args.param}={v}" for v in args.values.split(",")])
    for point in points:  # every point must be valid before any runs
        build_samplers(load_scenario(args.scenario, base + [point]), args.scenario)
    scenario = _load(args)
    run_sweep(args.scenario, scenario, args.param, [v for _, v in points], base, _out_dir(args, scenario), args.jobs, make_console(), args.quiet)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(with_model=not argv or argv[0] in MODEL_COMMANDS or argv[0].startswith("-"))
    if argv and argv[0] not in parser.commands and not argv[0].startswith("-"):
        argv.insert(0, "run")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors (already printed)
        return int(exc.code or 0)
    try:
        return args.func(args)
    except InputError as exc:
        print(f"aif-sim: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aif-sim: interrupted", file=sys.stderr)
        return 130
