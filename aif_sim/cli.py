"""Command line: run, compare, sweep and run live scenarios; the model commands live in aif_sim.model.commands.

Exit codes: 0 success, 2 bad input (one line on stderr), 1 internal error, 130/143 interrupted
(Ctrl-C / SIGTERM: what was valid so far is written, marked partial).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from aif_sim import __version__
from aif_sim.app.interrupt import StopSignal
from aif_sim.app.outputs import OutputFolder, default_folder
from aif_sim.app.point_cache import PointCache
from aif_sim.app.quality import score_shadow_samples, shadow_scorer, shadow_scores
from aif_sim.app.run import ENGINES, build_samplers, choose_engines, idealised_latency, simulate, summary_document, write_run
from aif_sim.app.sweep import SweepContext, find_capacity, grid_sweep, load_param, write_sweep
from aif_sim.atomic import write_json
from aif_sim.compiled import kernels_cached
from aif_sim.core.latency import Sampler
from aif_sim.core.pipelines import PIPELINES
from aif_sim.errors import InputError
from aif_sim.metrics.recorder import Recorder
from aif_sim.metrics.requests_log import RequestLog
from aif_sim.report.fmt import run_title
from aif_sim.report.plots import plot_validate_cdf
from aif_sim.report.tables import comparison_table, make_console, plan_table, schedule_table, schedule_warning, stage_table, validate_table
from aif_sim.scenario import Override, Scenario, load_scenario, parse_overrides


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
    run.set_defaults(func=cmd_run)

    compare = commands.add_parser("compare", help="run the scenario with the pipelines given here")
    _run_options(compare)
    _engine_option(compare)
    compare.add_argument("--pipelines", required=True, help=f"comma-separated, from {', '.join(PIPELINES)}")
    compare.set_defaults(func=cmd_run)

    live = commands.add_parser("live", help="run the scenario in wall-clock time: the real model, real caches, one asyncio process")
    _run_options(live)
    live.add_argument("--duration", type=float, metavar="S", help="seconds of arrivals (default: the scenario's duration_s)")
    live.set_defaults(func=cmd_live)

    plan = commands.add_parser("plan", help="per pipeline, the servers per pool of least cost that meet slo.p99_ms at a load")
    _scenario_options(plan)
    plan.add_argument("--qps", type=float, required=True, help="the load to plan for")
    plan.add_argument("--pipelines", help=f"comma-separated, from {', '.join(PIPELINES)} (default: the scenario's)")
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
    sweep.add_argument("--backend", choices=BACKENDS, default="process", help="worker processes here, or on Ray (RAY_ADDRESS)")
    _engine_option(sweep)
    sweep.set_defaults(func=cmd_sweep)

    if with_model:
        from aif_sim.model.commands import register

        register(commands)
    parser.commands = frozenset(commands.choices) | frozenset(MODEL_COMMANDS)
    return parser


def _overrides(args: argparse.Namespace) -> list[Override]:
    """The --set overrides, then --seed."""
    overrides = parse_overrides(args.overrides)
    if args.seed is not None:
        overrides.append(("seed", args.seed, "--seed"))
    return overrides


def _target(args: argparse.Namespace, scenario: Scenario) -> OutputFolder:
    if args.out is not None:
        return OutputFolder(args.out, explicit=True, force=args.force)
    return OutputFolder(default_folder(scenario.name), explicit=False)


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


Engine = Callable[[Scenario, dict[str, Sampler], RequestLog, Callable[[str, float], None], StopSignal], tuple[dict[str, Recorder], dict]]


def cmd_run(args: argparse.Namespace) -> int:
    overrides = _overrides(args)
    if getattr(args, "pipelines", None):
        overrides.append(("pipelines", [p.strip() for p in args.pipelines.split(",") if p.strip()], "--pipelines"))
    scenario = load_scenario(args.scenario, overrides)
    samplers = build_samplers(scenario, args.scenario)
    engines = choose_engines(scenario, samplers, args.engine)
    if shadow_scores(scenario):
        start = time.perf_counter()
        shadow_scorer(scenario, args.scenario)  # the scored world, built and checked before anything runs
        if not args.quiet:
            print(f"built the shadow-scored world (its items changing by this run's changes) in {time.perf_counter() - start:.1f} s")
    if not args.quiet:
        for pipeline, (engine, reason) in engines.items():
            print(f"{pipeline}: {engine} engine" + (f" ({reason})" if reason else ""))
        if any(engine == "compiled" for engine, _ in engines.values()) and not kernels_cached():
            print("compiling the compiled engine's kernels, once for this version of aif-sim (about 20 s; cached on disk)")

    def engine(
        scenario: Scenario, samplers: dict[str, Sampler], log: RequestLog, advance: Callable[[str, float], None], stop: StopSignal
    ) -> tuple[dict[str, Recorder], dict]:
        return simulate(scenario, samplers, log, advance, stop, args.engine), {}

    return _run(args, scenario, samplers, engine, "simulated")


def cmd_live(args: argparse.Namespace) -> int:
    overrides = _overrides(args)
    if args.duration is not None:
        overrides.append(("duration_s", args.duration, "--duration"))
    scenario = load_scenario(args.scenario, overrides)
    samplers = build_samplers(scenario, args.scenario)
    from aif_sim.app.live import live_engine  # torch and asyncio: only for the live engine

    return _run(args, scenario, samplers, live_engine(scenario, args.scenario), "run live")


def _run(args: argparse.Namespace, scenario: Scenario, samplers: dict[str, Sampler], engine: Engine, verb: str) -> int:
    """Run the scenario's pipelines on an engine, write the outputs, print the tables."""
    if not 0.0 <= args.requests_sample <= 1.0:
        raise InputError(f"--requests-sample: expected a fraction in [0, 1], got {args.requests_sample}")
    console = make_console()
    horizon = scenario.duration_s + scenario.drain_s
    with StopSignal() as stop, _target(args, scenario) as folder:
        log = RequestLog(
            folder.path / f"requests.{args.format}", scenario.stage_names, scenario.cache_names, args.format, args.requests_sample
        )
        try:
            with _progress(console, args.quiet) as progress:
                tasks = {p: progress.add_task(p, total=horizon, simulated="") for p in scenario.pipelines}

                def advance(pipeline: str, now: float) -> None:
                    progress.update(tasks[pipeline], completed=now, simulated=f"{now:,.1f}/{horizon:g} s {verb}")

                results, live = engine(scenario, samplers, log, advance, stop)
        except BaseException:
            log.abort()
            raise
        log.close()
        if not stop() and not live:
            score_shadow_samples(scenario, results, None if args.quiet else console)
        summary = summary_document(scenario, results, live)
        if args.idealised and not stop():
            _add_idealised(args, summary, console)
        write_run(folder.path, scenario, results, summary)
        out = folder.commit()
    if not args.quiet:
        console.print(comparison_table(summary, run_title(scenario)))
        for pipeline, metrics in summary["pipelines"].items():
            console.print(stage_table(pipeline, metrics))
        if live:
            console.print(schedule_table(summary))
        console.print(f"outputs in [bold]{out}[/]")
    for pipeline, block in live.items():
        if not block["kept_schedule"]:
            print(schedule_warning(pipeline, block), file=sys.stderr)
    if stop():
        print(f"aif-sim: interrupted; partial results in {out}", file=sys.stderr)
    return stop.exit_code


def _add_idealised(args: argparse.Namespace, summary: dict[str, Any], console: Console) -> None:
    """Each pipeline's latency with every stage of several nodes as one shared queue (`idealised_latency_ms`)."""
    overrides = _overrides(args) + ([("pipelines", list(summary["pipelines"]), "--pipelines")] if getattr(args, "pipelines", None) else [])
    latency = idealised_latency(args.scenario, overrides, getattr(args, "engine", "auto"))
    if latency is None:
        if not args.quiet:
            console.print("--idealised: no stage has several nodes; every pool is already one shared queue")
        return
    for pipeline, block in latency.items():
        summary["pipelines"][pipeline]["idealised_latency_ms"] = block


def cmd_plan(args: argparse.Namespace) -> int:
    from aif_sim.app.plan import load_overrides, plan_pipelines

    if args.replications < 1:
        raise InputError(f"--replications: expected a positive integer, got {args.replications}")
    if args.jobs is not None and args.jobs < 1:
        raise InputError(f"--jobs: expected a positive integer, got {args.jobs}")
    if args.qps <= 0:
        raise InputError(f"--qps: expected a positive load, got {args.qps:g}")
    if args.max_utilization is not None and not 0 < args.max_utilization <= 1:
        raise InputError(f"--max-utilization: expected a share in (0, 1], got {args.max_utilization:g}")
    base = _overrides(args)
    if args.pipelines:
        base.append(("pipelines", [p.strip() for p in args.pipelines.split(",") if p.strip()], "--pipelines"))
    scenario = load_scenario(args.scenario, base)
    load = load_overrides(scenario, args.qps, args.scenario)
    planned = load_scenario(args.scenario, base + load)
    samplers = build_samplers(planned, args.scenario)
    console = make_console()
    cache = PointCache(None if args.no_cache else args.cache)
    with StopSignal() as stop, _target(args, scenario) as folder:
        ctx = SweepContext(
            args.scenario,
            planned,
            "servers",
            base,
            args.replications,
            args.jobs,
            console,
            args.quiet,
            stop,
            cache,
            args.backend,
            args.engine,
        )
        document = plan_pipelines(ctx, args.qps, load, samplers, lambda pipeline: None, args.max_utilization)
        write_json(folder.path / "plan.json", document)
        out = folder.commit()
    if not args.quiet:
        console.print(plan_table(document, run_title(planned)))
        console.print(f"outputs in [bold]{out}[/]")
    if stop():
        print(f"aif-sim: interrupted; partial results in {out}", file=sys.stderr)
    return stop.exit_code


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
    if not 0 < low < high:
        raise InputError(f"--find-capacity {text}: expected 0 < LOW < HIGH")
    return low, high


def cmd_sweep(args: argparse.Namespace) -> int:
    if args.jobs is not None and args.jobs < 1:
        raise InputError(f"--jobs: expected a positive integer, got {args.jobs}")
    if args.replications < 1:
        raise InputError(f"--replications: expected a positive integer, got {args.replications}")
    base = _overrides(args)
    scenario = load_scenario(args.scenario, base)
    if args.find_capacity:
        low, high = _find_capacity_range(args.find_capacity)
        if scenario.slo_p99_ms is None:
            raise InputError(f"{args.scenario}: slo.p99_ms: required field is missing (--find-capacity searches the load that meets it)")
        param = args.param or load_param(scenario)
        values: list = [low, high]
    else:
        if not args.param or not args.values:
            raise InputError("--param and --values: both are required (or --find-capacity LOW,HIGH)")
        param = args.param
        values = [v for _, v, _ in parse_overrides([f"{param}={v}" for v in args.values.split(",")], "--param")]
    for value in values:  # every point must be valid before any runs
        build_samplers(load_scenario(args.scenario, base + [(param, value, "--param")]), args.scenario)
    console = make_console()
    with StopSignal() as stop, _target(args, scenario) as folder:
        cache = PointCache(None if args.no_cache else args.cache)
        ctx = SweepContext(
            args.scenario, scenario, param, base, args.replications, args.jobs, console, args.quiet, stop, cache, args.backend, args.engine
        )
        rows, results, extra = find_capacity(ctx, *values) if args.find_capacity else grid_sweep(ctx, values)
        write_sweep(ctx, folder.path, rows, results, extra)
        out = folder.commit()
    if not args.quiet:
        if cache.hits:
            console.print(f"{cache.hits} finished points taken from {args.cache}")
        console.print(f"outputs in [bold]{out}[/]")
    if stop():
        print(f"aif-sim: interrupted; partial results in {out}", file=sys.stderr)
    return stop.exit_code


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
