"""Command line: run, compare, sweep and run live scenarios; the model commands live in aif_sim.model.commands.

Exit codes: 0 success, 2 bad input (one line on stderr), 1 internal error, 130/143 interrupted
(Ctrl-C / SIGTERM: what was valid so far is written, marked partial).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from aif_sim import __version__
from aif_sim.api import Hooks, PlanOptions, RunOptions, SweepOptions, plan_with, run_with, sweep_with
from aif_sim.app.interrupt import StopSignal
from aif_sim.app.outputs import OutputFolder, default_folder
from aif_sim.app.run import ENGINES
from aif_sim.atomic import write_json
from aif_sim.core.hardware import hardware_note
from aif_sim.errors import InputError
from aif_sim.report.fmt import run_title
from aif_sim.report.plots import plot_validate_cdf
from aif_sim.report.tables import comparison_table, make_console, plan_table, schedule_table, sensitivity_table, stage_table, validate_table
from aif_sim.scenario import Override, Scenario, load_scenario, parse_overrides
from aif_sim.scenario.pipelines import shipped_designs


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit code 2."""

    commands: frozenset[str] = frozenset()

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _scenario_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenario", help="scenario YAML file")
    parser.add_argument(
        "--out", type=Path, help="output folder (default results/<scenario>/<UTC time>/); an earlier output folder there is replaced"
    )
    parser.add_argument("--force", action="store_true", help="replace an existing --out folder even if aif-sim did not write it")
    parser.add_argument("--seed", type=int, help="override the scenario's seed")
    parser.add_argument(
        "--set", dest="overrides", action="append", metavar="PATH=VALUE", help="override a scenario field, e.g. traffic.arrival.qps=3000"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no tables")


def _engine_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default="auto",
        help="simpy: the reference engine; compiled: the exact compiled engine (same results, refuses what it cannot run); "
        "auto: compiled wherever it supports the pipeline, saying which engine ran",
    )


def _run_options(parser: argparse.ArgumentParser) -> None:
    _scenario_options(parser)
    parser.add_argument(
        "--idealised",
        action="store_true",
        help="also run every stage of several nodes as one shared queue: the cost of real load balancing beside each p99",
    )
    parser.add_argument("--format", choices=("parquet", "csv"), default="parquet", help="per-request file format")
    parser.add_argument(
        "--requests-sample", type=float, default=1.0, metavar="FRACTION", help="share of completed requests written to the per-request file"
    )


def _trace_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trace",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="write trace.json: the timelines (Chrome trace-event format, for ui.perfetto.dev) of this share of the requests",
    )


MODEL_COMMANDS = ("train", "evaluate", "sweep-model", "calibrate")
BACKENDS = ("process", "ray")


def build_parser(with_model: bool = True) -> Parser:
    """The CLI parser; `with_model=False` leaves out the model commands (and the torch import they need)."""
    parser = Parser(prog="aif-sim", description="Simulate sequential vs asynchronous (AIF) pre-ranking inference.")
    parser.add_argument("--version", action="version", version=f"aif-sim {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    run = commands.add_parser("run", help="run every pipeline the scenario names (the default command)")
    _run_options(run)
    _engine_option(run)
    _trace_option(run)
    run.set_defaults(func=cmd_run)

    compare = commands.add_parser("compare", help="run the scenario with the pipelines given here")
    _run_options(compare)
    _engine_option(compare)
    _trace_option(compare)
    compare.add_argument("--pipelines", required=True, help=f"comma-separated: the scenario's own, or from {', '.join(shipped_designs())}")
    compare.set_defaults(func=cmd_run)

    live = commands.add_parser("live", help="run the scenario in wall-clock time: the real model, real caches, one asyncio process")
    _run_options(live)
    _trace_option(live)
    live.add_argument("--duration", type=float, metavar="S", help="seconds of arrivals (default: the scenario's duration_s)")
    live.set_defaults(func=cmd_live)

    plan = commands.add_parser("plan", help="per pipeline, the servers per pool of least cost that meet slo.p99_ms at a load")
    _scenario_options(plan)
    plan.add_argument("--qps", type=float, required=True, help="the load to plan for")
    plan.add_argument(
        "--pipelines", help=f"comma-separated: the scenario's own, or from {', '.join(shipped_designs())} (default: the scenario's)"
    )
    plan.add_argument("--replications", type=int, default=3, metavar="N", help="runs per configuration (default 3)")
    plan.add_argument(
        "--max-utilization",
        type=float,
        metavar="U",
        help="headroom: leave no pool busier than this share (a pool's stages.NAME.max_utilization takes precedence)",
    )
    plan.add_argument("--jobs", type=int, default=None, help="parallel processes (default: CPU count)")
    plan.add_argument("--cache", type=Path, default=Path("results/cache"), metavar="DIR", help="finished runs by scenario hash")
    plan.add_argument("--no-cache", action="store_true", help="run every configuration, keep none")
    plan.add_argument("--backend", choices=BACKENDS, default="process", help="worker processes here, or on Ray (RAY_ADDRESS)")
    _engine_option(plan)
    plan.set_defaults(func=cmd_plan)

    validate = commands.add_parser("validate", help="the DES against the live engine on this scenario, at several loads")
    _scenario_options(validate)
    validate.add_argument("--qps", help="comma-separated loads (default: 20, 40, 60, 80%% of the slowest pipeline's capacity)")
    validate.add_argument("--duration", type=float, metavar="S", help="seconds of arrivals per load (default: the scenario's duration_s)")
    validate.set_defaults(func=cmd_validate)

    sweep = commands.add_parser("sweep", help="one run per value of a scenario field (or a capacity search), in parallel processes")
    _scenario_options(sweep)
    sweep.add_argument("--param", help="dotted scenario field, e.g. traffic.arrival.qps")
    sweep.add_argument("--values", help="comma-separated values")
    sweep.add_argument(
        "--replications", type=int, default=1, metavar="N", help="runs per point with seeds seed..seed+N-1: mean and 95%% CI"
    )
    sweep.add_argument(
        "--find-capacity", metavar="LOW,HIGH", help="bisect the offered load for the highest QPS meeting slo.p99_ms (to 2%%)"
    )
    sweep.add_argument("--jobs", type=int, default=None, help="parallel processes (default: CPU count)")
    sweep.add_argument(
        "--cache", type=Path, default=Path("results/cache"), metavar="DIR", help="finished points by scenario hash (default results/cache)"
    )
    sweep.add_argument("--no-cache", action="store_true", help="run every point, keep none")
    sweep.add_argument(
        "--scale-profiles",
        metavar="FACTORS",
        help="sensitivity to the hardware: every profile-timed stage's times multiplied by each factor (e.g. 0.75,1,1.5,2)",
    )
    sweep.add_argument("--backend", choices=BACKENDS, default="process", help="worker processes here, or on Ray (RAY_ADDRESS)")
    _engine_option(sweep)
    sweep.set_defaults(func=cmd_sweep)

    if with_model:
        from aif_sim.model.commands import register

        register(commands)
    parser.commands = frozenset(commands.choices) | frozenset(MODEL_COMMANDS)
    return parser


def _overrides(args: argparse.Namespace) -> list[Override]:
    """The --set overrides, then --seed, then --pipelines where the command has it."""
    overrides = parse_overrides(args.overrides)
    if args.seed is not None:
        overrides.append(("seed", args.seed, "--seed"))
    if getattr(args, "pipelines", None):
        overrides.append(("pipelines", [p.strip() for p in args.pipelines.split(",") if p.strip()], "--pipelines"))
    return overrides


def _target(args: argparse.Namespace, scenario: Scenario) -> OutputFolder:
    if args.out is not None:
        return OutputFolder(args.out, explicit=True, force=args.force)
    return OutputFolder(default_folder(scenario.name), explicit=False)


class TerminalHooks(Hooks):
    """A run on the terminal: progress bars, notices, tables, and Ctrl-C or SIGTERM to stop it, writing what is valid."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.console = make_console()
        self.signal = StopSignal()

    def notify(self, line: str) -> None:
        if not self.quiet:
            print(line)

    def warn(self, line: str) -> None:
        print(line, file=sys.stderr)

    def hardware(self, block: dict[str, Any]) -> None:
        note = hardware_note(block)
        if note is not None and not self.quiet:
            print(f"aif-sim: note: {note}", file=sys.stderr)

    @contextmanager
    def progress(self, pipelines: list[str], horizon_s: float, verb: str) -> Iterator[Callable[[str, float], None]]:
        with Progress(
            TextColumn("{task.description:<12}"),
            BarColumn(),
            TextColumn("{task.fields[simulated]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            disable=self.quiet,
            transient=False,
        ) as progress:
            tasks = {p: progress.add_task(p, total=horizon_s, simulated="") for p in pipelines}

            def advance(pipeline: str, now: float) -> None:
                progress.update(tasks[pipeline], completed=now, simulated=f"{now:,.1f}/{horizon_s:g} s {verb}")

            yield advance

    @contextmanager
    def stopping(self) -> Iterator[StopSignal]:
        with self.signal as stop:
            yield stop

    def finish(self, out: Path) -> int:
        """Say where the outputs are (and that they are partial when stopped); the exit code."""
        if not self.quiet:
            self.console.print(f"outputs in [bold]{out}[/]")
        if self.signal():
            print(f"aif-sim: interrupted; partial results in {out}", file=sys.stderr)
        return self.signal.exit_code


def cmd_run(args: argparse.Namespace, engine: str | None = None) -> int:
    """run, compare and live: the API's run, with its tables printed."""
    overrides = _overrides(args)
    if getattr(args, "duration", None) is not None:
        overrides.append(("duration_s", args.duration, "--duration"))
    hooks = TerminalHooks(args.quiet)
    options = RunOptions(
        args.scenario,
        overrides,
        engine=engine or args.engine,
        out=args.out,
        default_out=True,
        force=args.force,
        idealised=args.idealised,
        format=args.format,
        requests_sample=args.requests_sample,
        trace=args.trace,
    )
    result = run_with(options, hooks)
    summary = result.summary
    if not args.quiet and summary["pipelines"]:
        hooks.console.print(comparison_table(summary, run_title(result.scenario)))
        for pipeline, metrics in summary["pipelines"].items():
            hooks.console.print(stage_table(pipeline, metrics))
        if summary["engine"] == "live":
            hooks.console.print(schedule_table(summary))
    return hooks.finish(result.out)


def cmd_live(args: argparse.Namespace) -> int:
    return cmd_run(args, "live")


def _many_runs(args: argparse.Namespace) -> dict[str, Any]:
    """The options a sweep and a plan share (`api.ManyRuns`)."""
    return {
        "source": args.scenario,
        "overrides": _overrides(args),
        "replications": args.replications,
        "jobs": args.jobs,
        "cache": None if args.no_cache else args.cache,
        "backend": args.backend,
        "engine": args.engine,
        "out": args.out,
        "default_out": True,
        "force": args.force,
    }


def cmd_plan(args: argparse.Namespace) -> int:
    hooks = TerminalHooks(args.quiet)
    options = PlanOptions(qps=args.qps, max_utilization=args.max_utilization, **_many_runs(args))
    outcome = plan_with(options, hooks)
    if not args.quiet:
        hooks.console.print(plan_table(outcome.document, run_title(outcome.scenario)))
    return hooks.finish(outcome.out)


def _loads(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        loads = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--qps {text}: expected comma-separated loads in QPS") from None
    if not loads or any(q <= 0 for q in loads):
        raise InputError(f"--qps {text}: expected positive loads")
    return loads


def cmd_validate(args: argparse.Namespace) -> int:
    from aif_sim.app.validate import TOLERANCE, ValidateRun, validate  # torch and asyncio: only for the live engine

    loads = _loads(args.qps)
    overrides = _overrides(args)
    scenario = load_scenario(args.scenario, overrides + ([("duration_s", args.duration, "--duration")] if args.duration else []))
    console = make_console()
    with StopSignal() as stop, _target(args, scenario) as folder:
        with Progress(TextColumn("{task.description:<24}"), BarColumn(), TimeElapsedColumn(), console=console, disable=args.quiet) as bar:
            tasks: dict[str, Any] = {}

            def progress(label: str, done: float, total: float) -> None:
                if label not in tasks:
                    tasks[label] = bar.add_task(label, total=total)
                bar.update(tasks[label], completed=done)

            run = ValidateRun(args.scenario, overrides, args.duration, progress, stop)
            document = validate(run, loads, folder.path)
        write_json(folder.path / "validate.json", document)
        plot_validate_cdf(folder.path / "validate_cdf.png", run.curves, run_title(scenario, with_load=False))
        out = folder.commit()
    if not args.quiet:
        console.print(validate_table(document["points"], TOLERANCE))
        console.print(f"outputs in [bold]{out}[/]")
    if stop():
        print(f"aif-sim: interrupted; partial results in {out}", file=sys.stderr)
    return stop.exit_code


def _find_capacity_range(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--find-capacity {text}: expected LOW,HIGH (two loads in QPS)") from None
    return low, high


def cmd_sweep(args: argparse.Namespace) -> int:
    values = None
    if args.param and args.values:
        values = [v for _, v, _ in parse_overrides([f"{args.param}={v}" for v in args.values.split(",")], "--param")]
    hooks = TerminalHooks(args.quiet)
    capacity = _find_capacity_range(args.find_capacity) if args.find_capacity else None
    options = SweepOptions(param=args.param, values=values, capacity=capacity, scale_profiles=args.scale_profiles, **_many_runs(args))
    outcome = sweep_with(options, hooks)
    if not args.quiet and outcome.cache_hits:
        hooks.console.print(f"{outcome.cache_hits} finished points taken from {args.cache}")
    if not args.quiet and "sensitivity" in outcome.document:
        hooks.console.print(sensitivity_table(outcome.document["sensitivity"], run_title(outcome.scenario)))
    return hooks.finish(outcome.out)


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
