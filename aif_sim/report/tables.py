"""Rich tables: metrics as rows, pipelines as columns. A table is never cut: off a terminal (files, pipes, CI logs)
it prints at its full width, or at `COLUMNS` when that is set, and a cell too wide for its column wraps."""

from __future__ import annotations

import os
import sys
from typing import IO, Any

from rich import box
from rich.console import Console
from rich.table import Table

from aif_sim.metrics.summary import NUMERIC
from aif_sim.report.fmt import interval, number

BASELINE = "sequential"
SHORT = {"sequential": "seq", "aif": "aif", "uic": "uic", "aif_online": "aif_online"}
STALENESS_OFF = {"item_updates": "item vectors", "user_events": "user vectors"}
FIELD_OF = {"item_updates": "nearline.item_updates_per_s", "user_events": "nearline.user_events_per_s"}
UNBOUNDED = 10_000  # the console width off a terminal without COLUMNS: wider than any table, which sizes itself


def make_console(file: IO[str] | None = None) -> Console:
    """A console for results (on stdout, or `file`): a terminal's width, or `COLUMNS` when set; off a terminal without
    `COLUMNS`, no width limit: tables print whole."""
    stream = sys.stdout if file is None else file
    if stream.isatty() or os.environ.get("COLUMNS", "").isdigit():
        return Console(file=file)
    return Console(file=file, width=UNBOUNDED)


def plain_table(title: str) -> Table:
    """A compact table: a rule under the header, no outer frame."""
    return Table(title=title, title_justify="left", caption_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1))


def add_columns(table: Table, *headers: str, left: tuple[str, ...] = ()) -> None:
    """Right-aligned columns (those in `left` left-aligned) whose cells wrap, never cut, when the width is short."""
    for header in headers:
        table.add_column(header, justify="left" if header in left else "right", overflow="fold")


def comparison_table(summary: dict[str, Any], title: str) -> Table:
    """Pipelines side by side, ratios against the sequential pipeline, the SLO verdict."""
    pipelines = summary["pipelines"]
    others = ratio_pairs(list(pipelines))
    table = plain_table(title)
    add_columns(table, "metric", *pipelines, left=("metric",))
    for name, base_name in others:
        table.add_column(f"{SHORT[name]}/{SHORT[base_name]}", justify="right", style="cyan", overflow="fold")
    for metric in NUMERIC:  # the stage names (bottleneck, critical stage) are marked in the stage tables
        values = [metric.get(m) for m in pipelines.values()]
        if all(v is None for v in values):
            continue  # a figure no pipeline of this run has (no SLO, no cache, no nearline)
        row = [metric.label] + [number(v, metric.unit) for v in values]
        for name, base_name in others:
            value, base = metric.get(pipelines[name]), metric.get(pipelines[base_name])
            ok = metric.ratio and base and value is not None and value == value
            row.append(f"{value / base:.2f}×" if ok else "")
        table.add_row(*row)
        if metric.key == "p99_ms" and any(_failed_share(m) for m in pipelines.values()):
            table.add_row("p99 ms, all offered", *[_offered_p99(m) for m in pipelines.values()], *[""] * len(others))
    if all("slo" in m for m in pipelines.values()):
        verdicts = ["[green]MET[/]" if m["slo"]["valid"] else "[red]MISSED[/]" for m in pipelines.values()]
        table.add_row(f"SLO p99 ≤ {next(iter(pipelines.values()))['slo']['p99_ms']:g} ms", *verdicts, *[""] * len(others))
    notes = [
        f"[red]{name} completed no request[/] ({m['requests']['rejected']:,} rejected, {m['requests']['timed_out']:,} timed out, "
        f"{m['requests']['in_flight_at_end']:,} still in flight)"
        for name, m in pipelines.items()
        if m["requests"]["completed"] == 0
    ]
    notes += [
        f"{name}: {STALENESS_OFF[switch]} never change ({FIELD_OF[switch]} is 0): no {STALENESS_OFF[switch][:-1]} can be stale"
        for name, m in pipelines.items()
        for switch in ("item_updates", "user_events")
        if m.get("staleness", {}).get(switch) == "off"
    ]
    notes += hardware_lines(summary.get("hardware"))
    if summary.get("partial"):
        notes.append("[yellow]partial: the run was interrupted[/]")
    table.caption = "\n".join(notes) or None
    return table


def ratio_pairs(pipelines: list[str]) -> list[tuple[str, str]]:
    """The (pipeline, baseline) ratios a comparison shows: every pipeline against the sequential one and, with the
    like-for-like baseline, AIF against it (the framework's saving apart from the model design's)."""
    pairs = [(name, BASELINE) for name in pipelines if name != BASELINE] if BASELINE in pipelines else []
    if "aif" in pipelines and "aif_online" in pipelines:
        pairs.append(("aif", "aif_online"))
    return pairs


def hardware_lines(block: dict[str, Any] | None) -> list[str]:
    """The hardware the model stages are timed on (a report's caption line), said once."""
    if not block or not block["profiles"]:
        return []
    names = sorted(set(block["profiles"].values()))
    here = "" if block["differs"] else " (this host)"
    return [f"model stages timed as measured on {', '.join(names)}{here}"]


def _failed_share(metrics: dict[str, Any]) -> float:
    share = metrics.get("latency_offered_ms", {}).get("failed_share")
    return share if share is not None and share == share else 0.0


def _offered_p99(metrics: dict[str, Any]) -> str:
    """The p99 over every offered request, a failed one counting as slower than any completed: 'failed' where the
    percentile falls among the failures."""
    p99 = metrics.get("latency_offered_ms", {}).get("p99")
    return "[red]failed[/]" if p99 is None and _failed_share(metrics) else number(p99)


def stage_table(pipeline: str, metrics: dict[str, Any]) -> Table:
    """One pipeline's stages: time, wait, utilisation, share of the critical path, compute."""
    table = plain_table(f"{pipeline} stages (ms; ▲ busiest pool, ● most time on the critical path)")
    add_columns(table, "stage", "mean", "p99", "wait", "wait p99", "util", "on path", "compute", left=("stage",))
    for stage, stats in metrics["stages"].items():
        marks = (" ▲" if stage == metrics["bottleneck"] else "") + (" ●" if stage == metrics["critical_stage"] else "")
        marks += f" ({stats['nodes']} nodes)" if stats.get("nodes", 1) > 1 else ""
        table.add_row(
            stage + marks,
            number(stats["latency_ms"]["mean"]),
            number(stats["latency_ms"]["p99"]),
            number(stats["wait_ms"]["mean"]),
            number(stats["wait_ms"]["p99"]),
            number(stats["utilization"], "share"),
            number(stats["critical_path_share"], "share"),
            number(metrics["compute"][stage]["ms_per_request"]),
        )
    return table


SWEEP_EXTRAS = (
    "item_vector_age_mean_s",
    "gauc_loss",
    "stale_fraction",
    "version_mismatch_fraction",
    "user_vector_hit_ratio",
    "sim_features_hit_ratio",
    "own_store_age_mean_s",
)


def sweep_table(document: dict[str, Any], load: bool) -> Table:
    """A sweep.json document: value, pipeline, throughput (for a load sweep), p99 (with its 95% interval with
    replications), shed share, SLO, and the staleness and cache figures the sweep has (those not all zero); the
    capacity under the SLO and the warnings in the caption."""
    rows = document["rows"]
    table = plain_table(f"sweep of {document['param']}")
    by_key = {m.key: m for m in NUMERIC}
    extras = [by_key[key] for key in SWEEP_EXTRAS if any(row.get(key) for row in rows)][: 3 if load else 2]
    slo = any("slo_met" in row for row in rows)
    shed = any(row.get("shed_share") for row in rows)
    headers = ["value", "pipeline", *(["thru QPS"] if load else []), "p99 ms", *(["shed"] if shed else []), *(["SLO"] if slo else [])]
    add_columns(table, *headers, *(m.label for m in extras), left=("pipeline",))
    intervals = []
    for row in rows:
        verdict = "" if "slo_met" not in row else ("[green]met[/]" if row["slo_met"] else "[red]missed[/]")
        shown = [_with_ci(row, "p99_ms", "ms"), *(_with_ci(row, m.key, m.unit) for m in extras)]
        intervals += shown
        cells = [
            _value(row["value"]),
            row["pipeline"],
            *([number(row["throughput_qps"], "qps")] if load else []),
            shown[0],
            *([number(row["shed_share"], "share")] if shed else []),
            *([verdict] if slo else []),
        ]
        table.add_row(*cells, *shown[1:])
    notes = []
    if "capacity_qps" in document:
        capacities = ", ".join(f"{p} {_capacity(document, p)}" for p in document["capacity_qps"])
        notes.append(f"capacity under the SLO: {capacities}")
    if document.get("warnings"):
        notes.append(f"[yellow]{_wide_note(document['warnings'])}[/]")
    if any(cell.endswith(" agree)") for cell in intervals):
        notes.append(
            "(all N agree): the N replications gave the same value (percentiles to their histogram bucket, 0.5% wide): "
            "their spread is below that resolution, not zero"
        )
    if any(cell.endswith("]") for cell in intervals):
        notes.append(
            "\\[low, high]: the 95% interval clipped to what the metric can be "
            "(a share within 0–100%, a latency percentile not below its no-contention one)"
        )
    notes += hardware_lines(document.get("hardware"))
    if document.get("partial"):
        notes.append("[yellow]partial: interrupted[/]")
    table.caption = "\n".join(notes) or None
    return table


def _value(value: Any) -> str:
    return f"{value:,.0f}" if isinstance(value, float) and abs(value) >= 100 else str(value)


def _with_ci(row: dict[str, Any], key: str, unit: str) -> str:
    return interval(row.get(key), unit, row.get(f"{key}_ci95"), row.get(f"{key}_lo"), row.get(f"{key}_hi"), row["replications"])


def _capacity(document: dict[str, Any], pipeline: str) -> str:
    """A pipeline's capacity as the search bounds it: found, at least the highest load tried, below the lowest."""
    capacity, bound = document["capacity_qps"][pipeline], document["capacity_bound"][pipeline]
    tried = [row["value"] for row in document["rows"] if row["pipeline"] == pipeline]
    if bound == "at_least":
        return f"≥ {number(capacity, 'qps')} (the highest load tried)"
    if bound == "none":
        return f"< {number(min(tried), 'qps')} (the lowest load tried)"
    if bound == "unknown":
        return "unknown (interrupted)"
    return number(capacity, "qps")


def _wide_note(warnings: list[dict[str, Any]]) -> str:
    """One line naming every point and metric whose interval is wider than its mean."""
    labels = {m.key: m.label for m in NUMERIC}
    points: dict[tuple[str, str], list[str]] = {}
    for warning in warnings:
        points.setdefault((_value(warning["value"]), warning["pipeline"]), []).append(labels[warning["metric"]])
    runs = "/".join(str(n) for n in sorted({w["replications"] for w in warnings}))
    where = "; ".join(f"{value} {pipeline}: {', '.join(metrics)}" for (value, pipeline), metrics in points.items())
    return (
        f"95% intervals wider than their means from {runs} replications: {where}. Too wide to decide on: run 5 or more "
        "(the t quantile is 12.7 at 2 runs, 4.3 at 3, 2.8 at 5)"
    )


def schedule_table(summary: dict[str, Any]) -> Table:
    """How well a live run's load generator kept its schedule, per pipeline."""
    table = plain_table("load generator (open loop; latency is measured from each request's scheduled time)")
    add_columns(table, "pipeline", "sched QPS", "issued QPS", "lag p50", "lag p99", "lag max", "schedule", left=("pipeline",))
    for name, metrics in summary["pipelines"].items():
        live = metrics["live"]
        lag = live["schedule_lag_ms"]
        kept = "[green]kept[/]" if live["kept_schedule"] else "[bold red]NOT KEPT[/]"
        table.add_row(
            name, number(live["scheduled_qps"]), number(live["achieved_qps"]), *(number(lag[k], "ms") for k in ("p50", "p99", "max")), kept
        )
    return table


def schedule_warning(pipeline: str, live: dict[str, Any]) -> str:
    """One loud line when the host could not issue a pipeline's requests on time."""
    lag = live["schedule_lag_ms"]
    return (
        f"aif-sim: WARNING: {pipeline}: this host could not keep the load schedule (issued {live['achieved_qps']:,.1f} of "
        f"{live['scheduled_qps']:,.1f} QPS, lag p99 {lag['p99']:.2f} ms, max {lag['max']:.1f} ms): its latencies include the host's own overload"
    )


def validate_table(points: list[dict[str, Any]], tolerance: float) -> Table:
    """Per pipeline and load, three rows: the profile DES, the replay DES (the live run's own service times) and the
    live run: p50 and p99, each model's error against live with its 95% interval; beside the profile DES the stage
    whose mean latency diverges most (DES/live means, ms), beside the replay the stage whose mean wait diverges most
    (replay/live, ms), beside live its time outside stage visits (mean / p99, ms)."""
    table = plain_table(f"DES against live: error model/live - 1 ± its 95% CI half-width; target ±{100 * tolerance:g}%")
    add_columns(table, "pipe", "QPS", "util", "n", "run", "p50 ms", "error", "p99 ms", "error", "note", left=("pipe", "run", "note"))
    for point in points:
        head = [
            SHORT.get(point["pipeline"], point["pipeline"]),
            f"{point['qps']:.0f}",
            f"{100 * point['utilization']:.0f}%",
            f"{point['samples']:,}",
        ]
        stage = point.get("diverging_stage")  # absent from validate.json written before it was added
        note = (
            f"diverges most: {stage['stage']} {stage['des_ms']:.1f}/{stage['live_ms']:.1f} ({100 * stage['error']:+.0f}%)" if stage else ""
        )
        table.add_row(*head, "profile DES", *_validate_cells(point["des"], point["error"], point["ci95"].get("error", {}), tolerance), note)
        replay = point.get("replay")  # absent from validate.json written before the replay was added
        if replay is not None:
            waits = {name: error for name, error in replay["error"]["wait"].items() if error is not None and error == error}
            worst = max(waits, key=lambda name: abs(waits[name]), default=None)
            note = (
                f"wait most off: {worst} {replay['wait_ms'][worst]:.2f}/{point['live']['wait_ms'][worst]:.2f} ({100 * waits[worst]:+.0f}%)"
                if worst is not None
                else ""
            )
            table.add_row(
                "", "", "", "", "replay DES", *_validate_cells(replay, replay["error"], replay["ci95"].get("error", {}), tolerance), note
            )
        outside = point["live"].get("outside_stages_ms")
        note = f"outside stages {outside['mean']:.2f} / {outside['p99']:.2f}" if outside else ""
        table.add_row("", "", "", "", "live", f"{point['live']['p50_ms']:.1f}", "", f"{point['live']['p99_ms']:.1f}", "", note)
    return table


def _validate_cells(figures: dict[str, Any], error: dict[str, Any], intervals: dict[str, Any], tolerance: float) -> list[str]:
    """A model's p50 and p99 (ms), each followed by its error against live ± the half-width of its 95% interval."""
    cells = []
    for name in ("p50", "p99"):
        interval = intervals.get(name)
        colour = "green" if abs(error[name]) <= tolerance else "red"
        spread = f"±{50 * (interval[1] - interval[0]):.0f}" if interval else ""
        cells += [f"{figures[f'{name}_ms']:.1f}", f"[{colour}]{100 * error[name]:+.1f}%[/]{spread}"]
    return cells


def plan_table(document: dict[str, Any], title: str) -> Table:
    """The designs side by side: servers per pool, refresh workers and memory, the whole cost per hour and its parts, the
    p99 the plan gives (± its 95% half-width)."""
    designs = document["pipelines"]
    table = plain_table(f"plan at {document['qps']:g} QPS, SLO p99 ≤ {document['slo_p99_ms']:g} ms — {title}")
    add_columns(table, "", *designs, left=("",))
    stages = list(dict.fromkeys(stage for d in designs.values() for stage in d.get("servers", d["lower_bounds"])))
    for stage in stages:
        table.add_row(f"{stage} servers", *[_servers(d, stage) for d in designs.values()])
    pools = list(dict.fromkeys(pool for d in designs.values() for pool in d.get("refresh_workers", {})))
    for pool in pools:  # the item side (and UIC's user side), nearline
        table.add_row(f"{pool} workers", *[str(d.get("refresh_workers", {}).get(pool, "")) for d in designs.values()])
    if any(d.get("memory_bytes") for d in designs.values()):
        table.add_row("memory GiB", *[number(sum(d.get("memory_bytes", {}).values()) / 2**30, "gib") for d in designs.values()])
    for part, label in (("stages", "servers"), ("refresh", "refresh workers"), ("memory", "memory")):
        if any("cost" in d for d in designs.values()):
            table.add_row(f"cost / hour: {label}", *[number(d["cost"][part], "cost") if "cost" in d else "" for d in designs.values()])
    table.add_row("cost / hour", *[f"{d['cost_per_hour']:,.1f}" if d["feasible"] else "[red]infeasible[/]" for d in designs.values()])
    runs = document["replications"]
    p99 = [interval(d["p99_ms"], "ms", d["p99_ci95"], d["p99_lo"], d["p99_hi"], runs) if d["feasible"] else "–" for d in designs.values()]
    table.add_row("p99 ms", *p99)
    table.add_row("configurations run", *[str(d["evaluated"]) for d in designs.values()])
    base = designs.get(BASELINE)
    if base is not None and base["feasible"]:
        table.add_row(
            "cost / sequential", *[f"{d['cost_per_hour'] / base['cost_per_hour']:.2f}×" if d["feasible"] else "–" for d in designs.values()]
        )
    reasons = [f"[red]{name} infeasible[/] ({d['reason']})" for name, d in designs.items() if not d["feasible"]]
    table.caption = "\n".join(reasons + hardware_lines(document.get("hardware"))) or None
    return table


def _servers(design: dict[str, Any], stage: str) -> str:
    if not design["feasible"]:
        return f"≥ {design['lower_bounds'][stage]}" if stage in design["lower_bounds"] else ""
    if stage not in design["servers"]:
        return ""
    utilization = design["utilization"][stage]
    nodes = design.get("nodes", {}).get(stage)
    machines = f"{nodes} node{'' if nodes == 1 else 's'}, " if nodes else ""
    return f"{design['servers'][stage]} ({machines}{100 * utilization:.0f}%)"


def sensitivity_table(document: dict[str, Any], title: str) -> Table:
    """`sweep --scale-profiles`: per design and factor, the p99 and SLO verdict, whether it keeps up with the load (and
    its capacity under the SLO); the largest factor up to which each holds."""
    scales = document["scales"]
    table = plain_table(f"sensitivity to the hardware: every profile-timed stage x factor — {title}")
    add_columns(table, "design", *(f"× {factor:g}" for factor in scales), "SLO met up to", "keeps up to", left=("design",))
    for pipeline, design in document["designs"].items():
        cells = {point["scale"]: _sensitivity_cell(point) for point in design["points"]}
        table.add_row(
            pipeline, *(cells.get(factor, "") for factor in scales), _factor(design["slo_met_up_to"]), _factor(design["keeps_up_to"])
        )
    notes = [f"scaled: {', '.join(document['stages'])}; a cell: p99 ms, SLO verdict, the busiest pool's utilisation"]
    notes.append("keeps up: at most 1% of requests shed and throughput within 1% of the offered load")
    if any("capacity_up_to" in d for d in document["designs"].values()):
        load = number(document["offered_qps"], "qps")
        ups = ", ".join(f"{name} {_factor(d.get('capacity_up_to'))}" for name, d in document["designs"].items())
        notes.append(f"capacity under the SLO at least the scenario's {load} QPS up to: {ups} (capacity per factor in the cells)")
    table.caption = "\n".join(notes)
    return table


def _sensitivity_cell(point: dict[str, Any]) -> str:
    verdict = "" if point["slo_met"] is None else ("[green]met[/]" if point["slo_met"] else "[red]missed[/]")
    cell = f"{number(point['p99_ms'])} {verdict} ({number(point['bottleneck_utilization'], 'share')})"
    if "capacity_qps" in point:
        cell += f", cap {number(point['capacity_qps'], 'qps')}"
    return cell


def _factor(value: float | None) -> str:
    return "[red]at no factor tried[/]" if value is None else f"× {value:g}"
