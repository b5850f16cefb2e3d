"""PNG plots of a run and of a sweep (written atomically); each plot function also returns its Figure.
matplotlib is imported when a plot is drawn."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aif_sim.atomic import atomic_path
from aif_sim.metrics.histogram import LogHistogram
from aif_sim.metrics.recorder import Recorder
from aif_sim.metrics.summary import Metric
from aif_sim.scenario.pipelines import Parallel, Pipeline, calls_of
from aif_sim.scenario.schema import Fault

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.axis import Axis
    from matplotlib.figure import Figure

TAIL_TICKS = (0.0, 0.5, 0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999, 0.9999999)
TAIL_ROOM = 5.5  # decades of tail past which 0% and 50% would crowd each other
MARKED = {"p50": 0.5, "p99": 0.99, "p99.9": 0.999}
SHED_MARK = 0.01  # sweep points shedding more than this share are drawn hollow
SHARE_TOP = 0.01  # a share axis reaches at least 1%
LONG_RUN_S = 7200  # a longer time series is drawn per minute, against hours
NAMED_BY = {"bottleneck_utilization": "bottleneck"}  # a sweep metric whose points are labelled with a text column


def _figure(rows: int = 1, height: float = 4.5, width: float = 8.0) -> tuple[Figure, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(rows, 1, squeeze=False)


def _save(fig: Figure, path: Path) -> Figure:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return fig


def _plain(value: float, _position: Any = None) -> str:
    """A tick label as a plain number: 20, 0.5, 1,000."""
    return f"{value:,.10g}"


def _plain_log(axis: Axis) -> None:
    """A log axis ticked at 1, 2 and 5 of every decade (and, when it spans less than a decade, at 3, 4, 6 and
    8 too), labelled as plain numbers."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    def minor(value: float, _position: Any) -> str:
        low, high = axis.get_view_interval()
        leading = round(value / 10 ** math.floor(math.log10(value) + 1e-9)) if value > 0 else 0
        return _plain(value) if high < 10 * low and leading in (3, 4, 6, 8) else ""

    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(_plain))
    axis.set_minor_formatter(FuncFormatter(minor))


def _tail(q: np.ndarray | float) -> np.ndarray:
    """Quantile → tail position: 0.9, 0.99, 0.999 equally spaced (as HdrHistogram plots them)."""
    return -np.log10(1.0 - np.asarray(q, dtype=float))


def _tail_curve(histogram: LogHistogram) -> tuple[np.ndarray, np.ndarray]:
    edges, share = histogram.cdf()
    keep = share < 1.0  # the last bucket sits at infinity on a tail axis: end at the largest finite rank
    top = 1.0 - 1.0 / max(histogram.count, 1)
    return _tail(np.append(share[keep], top)), np.append(edges[keep], histogram.max)


def _tail_axis(ax: Axes, deepest: float) -> None:
    """A tail axis up to the quantile `deepest`, ticked at 50%, 90%, 99%, …; at 0% too while that leaves room."""
    ticks = [q for q in TAIL_TICKS if q <= deepest + 1e-12 and (q > 0 or _tail(deepest) <= TAIL_ROOM)]
    ax.set_xticks(_tail(ticks), [f"{100 * q:.10g}%" for q in ticks])
    ax.set_xlim(0, _tail(deepest) * 1.02)


def _offered(rates: list[float]) -> str:
    """' at N QPS offered' (a range where the pipelines' windows differ); '' when no rate was measured."""
    values = sorted({round(rate) for rate in rates if _finite(rate)})
    if not values:
        return ""
    return f" at {values[0]:,} QPS offered" if len(values) == 1 else f" at {values[0]:,}–{values[-1]:,} QPS offered"


def _recorder_offered(results: dict[str, Recorder]) -> str:
    return _offered([r.offered / r.window.length_s for r in results.values() if r.window.length_s > 0])


def plot_latency_cdf(path: Path, results: dict[str, Recorder], slo_ms: float | None, title: str) -> Figure:
    """Latency against percentile on a tail axis, per pipeline (wide, translucent), over its no-contention latency
    (thin, dashed, on top); p50, p99 and p99.9 marked on the curve and given in the legend; the SLO."""
    fig, axes = _figure(height=6.0)
    ax = axes[0, 0]
    deepest = 0.99
    for index, (pipeline, recorder) in enumerate(results.items()):
        color = f"C{index}"
        if recorder.latency.count == 0:
            ax.plot([], [], color=color, label=f"{pipeline}: completed nothing")
            continue
        depth = 1.0 - 1.0 / recorder.latency.count
        deepest = max(deepest, depth)
        marked = {name: recorder.latency.quantile(q) for name, q in MARKED.items() if q <= depth}
        values = ", ".join(f"{name} {value:.1f}" for name, value in marked.items())
        ax.plot(*_tail_curve(recorder.latency), color=color, linewidth=3, alpha=0.45, label=f"{pipeline} simulated: {values} ms", zorder=2)
        ax.plot(
            *_tail_curve(recorder.no_contention), color=color, linewidth=1.2, dashes=(4, 2), label=f"{pipeline} no contention", zorder=3
        )
        ax.plot(_tail([MARKED[name] for name in marked]), list(marked.values()), "o", color=color, markersize=5, zorder=4)
    if slo_ms is not None:
        ax.axhline(slo_ms, color="red", linestyle="--", linewidth=1, label=f"SLO p99 {slo_ms:g} ms")
    _tail_axis(ax, deepest)
    if any(recorder.latency.count and recorder.latency.max > 0 for recorder in results.values()):
        ax.set_yscale("log")
        _plain_log(ax.yaxis)
    ax.set_xlabel("percentile of completed requests")
    ax.set_ylabel("end-to-end latency (ms)")
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", alpha=0.1)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8)
    ax.set_title(f"Latency by percentile{_recorder_offered(results)} — {title}", fontsize=10)
    return _save(fig, path)


def plot_stage_breakdown(path: Path, summary: dict[str, Any], title: str, pipelines_run: dict[str, Pipeline]) -> Figure:
    """Mean timeline of each pipeline (`pipelines_run`: their steps, by name): a bar per stage (queue wait, then
    service), parallel stages starting together and overlapping, each step starting when the longest branch of the
    previous ends."""
    pipelines = summary["pipelines"]
    height = sum(1.0 + 0.35 * len(m["stages"]) for m in pipelines.values())
    fig, axes = _figure(len(pipelines), height)
    limit = max((_or_zero(m["latency_ms"]["mean"]) for m in pipelines.values()), default=0.0) or 1.0
    for ax, (pipeline, metrics) in zip(axes[:, 0], pipelines.items()):
        names, starts, waits, services = [], [], [], []
        offset = 0.0
        for step in pipelines_run[pipeline].steps:
            longest = 0.0
            for call in calls_of(step):
                stats = metrics["stages"][call.stage]
                total, wait = _or_zero(stats["latency_ms"]["mean"]), _or_zero(stats["wait_ms"]["mean"])
                names.append(f"{call.stage} ∥" if isinstance(step, Parallel) else call.stage)
                starts.append(offset)
                waits.append(wait)
                services.append(max(total - wait, 0.0))
                longest = max(longest, total)
            offset += longest
        rows = range(len(names))
        ax.barh(rows, waits, left=starts, color="tab:orange", label="queue wait")
        ax.barh(rows, services, left=np.add(starts, waits), color="tab:blue", label="service")
        ax.set_yticks(list(rows), names)
        ax.invert_yaxis()
        ax.set_xlim(0, limit * 1.05)
        mean, p99 = metrics["latency_ms"]["mean"], metrics["latency_ms"]["p99"]
        done = f"mean {mean:.1f} ms, p99 {p99:.1f} ms" if metrics["requests"]["completed"] else "completed nothing"
        parallel = " (∥: in parallel)" if any(isinstance(step, Parallel) for step in pipelines_run[pipeline].steps) else ""
        ax.set_title(f"{pipeline}: {done}{parallel}", fontsize=9)
        ax.grid(True, axis="x", alpha=0.3)
    axes[0, 0].legend(loc="lower left", bbox_to_anchor=(0.0, 1.12), ncol=2, fontsize=8, frameon=False)
    axes[-1, 0].set_xlabel("mean time since arrival (ms): each step starts when the longest mean branch of the one before ends")
    fig.suptitle(f"Where the time goes{_offered([m['offered_qps'] for m in pipelines.values()])} — {title}", fontsize=10)
    return _save(fig, path)


def _error_bars(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """How far below and above each row's mean its 95% interval reaches, as the row bounds it (`_lo`, `_hi`: the
    interval clipped to what the metric can be); none without an interval."""
    below = [r[key] - r[f"{key}_lo"] if _finite(r.get(f"{key}_lo")) else 0.0 for r in rows]
    above = [r[f"{key}_hi"] - r[key] if _finite(r.get(f"{key}_hi")) else 0.0 for r in rows]
    return below, above


def _capacity_point(rows: list[dict[str, Any]], x: str, key: str, capacity: float) -> tuple[float, float] | None:
    """Where a pipeline's capacity (one of its swept loads) sits on the plot."""
    for row in rows:
        if _finite(row["value"]) and math.isclose(row["value"], capacity) and _finite(row[x]) and _finite(row[key]):
            return row[x], row[key]
    return None


def plot_sweep(
    path: Path,
    rows: list[dict[str, Any]],
    x: str,
    x_label: str,
    metric: Metric,
    slo_ms: float | None,
    title: str,
    capacity: dict[str, float | None] | None = None,
) -> Figure:
    """One headline metric against the swept value (or another column), a line per pipeline, 95% CI bars as the
    rows bound them (clipped to what the metric can be); hollow markers where more than 1% of requests were shed;
    each pipeline's capacity (a star and a vertical line) where given; for the busiest pool's utilisation, the
    pools in the legend and a pool's name where it changes."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator, PercentFormatter

    fig, axes = _figure(height=4.5, width=8.5)
    ax = axes[0, 0]
    top = 0.0
    for index, pipeline in enumerate(dict.fromkeys(r["pipeline"] for r in rows)):
        mine = sorted((r for r in rows if r["pipeline"] == pipeline and _finite(r[x]) and _finite(r[metric.key])), key=lambda r: r[x])
        if not mine:
            continue
        color = f"C{index}"
        xs, ys = [r[x] for r in mine], [r[metric.key] for r in mine]
        below, above = _error_bars(mine, metric.key)
        top = max(top, *(y + a for y, a in zip(ys, above)))
        names = [r.get(NAMED_BY[metric.key]) for r in mine] if metric.key in NAMED_BY else []
        named = f"{pipeline}: {' → '.join(n for n in dict.fromkeys(names) if n)}" if any(names) else pipeline
        ax.errorbar(xs, ys, yerr=[below, above], color=color, marker="", capsize=3, label=named)
        filled = [(r.get("shed_share") or 0.0) <= SHED_MARK for r in mine]
        ax.scatter([a for a, f in zip(xs, filled) if f], [b for b, f in zip(ys, filled) if f], color=color, zorder=3)
        ax.scatter(
            [a for a, f in zip(xs, filled) if not f],
            [b for b, f in zip(ys, filled) if not f],
            facecolors="white",
            edgecolors=color,
            zorder=3,
        )
        for a, b, name, before in zip(xs[1:], ys[1:], names[1:], names):
            if name and name != before:
                ax.annotate(name, (a, b), textcoords="offset points", xytext=(4, 6), fontsize=7, color=color)
        found = (capacity or {}).get(pipeline)
        point = _capacity_point(mine, x, metric.key, found) if found is not None else None
        if point is not None:
            ax.axvline(point[0], color=color, linestyle=":", linewidth=1.2, label=f"{pipeline} capacity: {found:,.0f} QPS offered")
            ax.plot(*point, "*", color=color, markersize=14, markeredgecolor="black", zorder=4)
    if slo_ms is not None and metric.unit == "ms" and metric.key.startswith("p99"):
        ax.axhline(slo_ms, color="red", linestyle="--", linewidth=1, label=f"SLO p99 {slo_ms:g} ms")
    ax.scatter([], [], facecolors="white", edgecolors="grey", label=f"> {100 * SHED_MARK:g}% shed")
    xs = [r[x] for r in rows if _finite(r[x])]
    positive = [v for v in xs if v > 0]
    if xs and min(xs) >= 0 and positive and max(positive) / min(positive) > 100:  # values over decades: a log axis
        ax.set_xscale("symlog", linthresh=10 ** math.floor(math.log10(min(positive))))  # 0 a decade below the smallest
        ax.xaxis.set_major_formatter(FuncFormatter(_plain))
    elif xs and all(float(v).is_integer() for v in xs):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    ax.set_xlabel(x_label)
    ax.set_ylabel(metric.axis_label)
    if metric.unit == "ms":
        ax.set_yscale("log")  # latencies past saturation are orders of magnitude above the rest
        _plain_log(ax.yaxis)
    if metric.unit == "share":
        ax.set_ylim(0.0, min(max(top, SHARE_TOP) * 1.1, 1.05))
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, fontsize=8)
    ax.set_title(f"{metric.axis_label.split(' (')[0]} against {x_label.split(' (')[0]}\n{title}", fontsize=10)
    return _save(fig, path)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _or_zero(value: Any) -> float:
    """A mean of no values (NaN or None) drawn as 0."""
    return float(value) if _finite(value) else 0.0


TIMESERIES_PANELS = (  # (column or column suffix, axis label, log scale, per-minute aggregate of a long run)
    ("completed", "requests per second", False, "mean"),
    ("p99_ms", "p99 latency (ms)", True, "max"),
    ("_hit_ratio", "cache hit ratio", False, "mean"),
    ("item_vector_age_mean_s", "mean item-vector age (s)", False, "mean"),
    ("user_vector_age_mean_s", "mean user-vector age (s)", False, "mean"),
    ("refresh_backlog", "refresh backlog (items)", False, "max"),
)
PER_MINUTE = {"mean": "mean of each minute", "max": "worst second of each minute"}


def _per_minute(t_s: np.ndarray, values: np.ndarray, how: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-second values (in time order, NaN where a second has none) → per minute: the mean or the maximum
    of the seconds that have one, at the middle of the minute."""
    minute = (t_s // 60).astype(np.int64)
    starts = np.flatnonzero(np.diff(minute, prepend=-1))
    if how == "max":
        aggregate = np.fmax.reduceat(values, starts)
    else:
        seen = ~np.isnan(values)
        counts = np.add.reduceat(seen.astype(np.int64), starts)
        sums = np.add.reduceat(np.where(seen, values, 0.0), starts)
        aggregate = np.divide(sums, counts, out=np.full(len(starts), np.nan), where=counts > 0)
    return minute[starts] * 60.0 + 30.0, aggregate


def _unmeasured(rows: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """The spans (s) of the warm-up and the drain seconds of a time series."""
    spans = []
    for phase in ("warmup", "drain"):
        seconds = [r["t_s"] for r in rows if r["phase"] == phase]
        if seconds:
            spans.append((float(min(seconds)), float(max(seconds)) + 1.0))
    return spans


def _mark_faults(ax: Axes, faults: Sequence[Fault], scale: float, labelled: bool) -> None:
    """A fault with a duration as a shaded span, an instantaneous one as a line; its kind (and the cache or stage
    it strikes) written at its start."""
    for fault in faults:
        duration_s = getattr(fault, "duration_s", 0.0)
        if duration_s:
            ax.axvspan(fault.at_s * scale, (fault.at_s + duration_s) * scale, color="red", alpha=0.12, linewidth=0)
        else:
            ax.axvline(fault.at_s * scale, color="red", linestyle=":", linewidth=1.2)
        if labelled:
            target = getattr(fault, "cache", None) or getattr(fault, "stage", None)
            ax.annotate(
                f"{fault.kind} {target}" if target else fault.kind,
                (fault.at_s * scale, 1.0),
                xycoords=ax.get_xaxis_transform(),
                xytext=(3, -3),
                textcoords="offset points",
                va="top",
                fontsize=7,
                color="red",
            )


def plot_timeseries(path: Path, results: dict[str, Recorder], faults: Sequence[Fault], title: str) -> Figure:
    """Per simulated second (per minute past 2 h, against hours): completions, p99 (with the SLO), cache hit
    ratios, vector age and refresh backlog (the panels the run has); warm-up and drain shaded, faults marked."""
    from matplotlib.ticker import FuncFormatter

    panels = []
    for column, label, log, how in TIMESERIES_PANELS:
        lines = [
            (f"{pipeline} {name.removesuffix(column)}".rstrip() if column.startswith("_") else pipeline, pipeline, name)
            for pipeline, recorder in results.items()
            for name in recorder.timeseries.columns
            if (name.endswith(column) if column.startswith("_") else name == column)
        ]
        if lines:
            panels.append((column, label, log, how, lines))
    rows = next((r.timeseries.rows for r in results.values() if r.timeseries.rows), [])
    long = len(rows) > LONG_RUN_S
    scale = 1 / 3600 if long else 1.0
    slo_ms = next((r.slo_ms for r in results.values() if r.slo_ms is not None), None)
    fig, axes = _figure(max(len(panels), 1), 2.2 * max(len(panels), 1) + 0.8, width=9.0)
    colors = {pipeline: f"C{i}" for i, pipeline in enumerate(results)}
    for position, (ax, (column, label, log, how, lines)) in enumerate(zip(axes[:, 0], panels)):
        for index, (legend, pipeline, name) in enumerate(lines):
            series = results[pipeline].timeseries.rows
            t_s = np.array([r["t_s"] for r in series], dtype=float)
            values = np.array([r[name] for r in series], dtype=float)
            if long:
                t_s, values = _per_minute(t_s, values, how)
            style = ["-", "--", ":"][index % 3] if column.startswith("_") else "-"
            ax.plot(
                t_s * scale,
                values,
                style,
                color=colors[pipeline],
                label=f"{legend} completed" if column == "completed" else legend,
                linewidth=1,
            )
        if column == "completed":  # every pipeline is offered the same arrivals
            t_s = np.array([r["t_s"] for r in rows], dtype=float)
            offered = np.array([r["offered"] for r in rows], dtype=float)
            if long:
                t_s, offered = _per_minute(t_s, offered, how)
            ax.plot(t_s * scale, offered, color="black", linewidth=0.8, alpha=0.6, label="offered (arrivals)", zorder=1)
        for number, (start, end) in enumerate(_unmeasured(rows)):
            label_span = "warm-up, drain: not measured" if position == 0 and number == 0 else None
            ax.axvspan(start * scale, end * scale, color="0.5", alpha=0.15, linewidth=0, label=label_span)
        _mark_faults(ax, faults, scale, labelled=position == 0)
        if column == "p99_ms" and slo_ms is not None:
            ax.axhline(slo_ms, color="red", linestyle="--", linewidth=1, label=f"SLO p99 {slo_ms:g} ms")
        if log and any(r.latency.count and r.latency.max > 0 for r in results.values()):
            ax.set_yscale("log")
            _plain_log(ax.yaxis)
        else:
            ax.yaxis.set_major_formatter(FuncFormatter(_plain))
            ax.set_ylim(0.0, max(ax.get_ylim()[1], 1.0))  # counts, ratios and ages: from 0, at least to 1
        ax.set_ylabel(f"{label}\n({PER_MINUTE[how]})" if long else label, fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    axes[-1, 0].set_xlabel("simulated time (h)" if long else "simulated time (s)")
    every = "Per minute" if long else "Per second"
    fig.suptitle(f"{every}{_recorder_offered(results)} — {title}", fontsize=10)
    return _save(fig, path)


def plot_validate_cdf(path: Path, curves: list[dict[str, Any]], title: str) -> Figure | None:
    """Per load, each pipeline's latency by percentile on a tail axis: the profile DES (dashed) and the replay DES
    (dotted) over the live run (solid)."""
    if not curves:
        return None
    fig, axes = _figure(len(curves), 3.6 * len(curves))
    for ax, curve in zip(axes[:, 0], curves):
        deepest = 0.99
        for index, pipeline in enumerate(curve["live"]):
            for engine, style in (("live", "-"), ("des", "--"), ("replay", ":")):
                blocks = curve.get(engine, {}).get(pipeline, [])
                latency = np.sort(np.concatenate(blocks)) if blocks else np.empty(0)
                if len(latency) == 0:
                    continue
                share = (np.arange(len(latency)) + 0.5) / len(latency)
                deepest = max(deepest, share[-1])
                ax.plot(_tail(share), latency, style, color=f"C{index}", label=f"{pipeline} {engine} ({len(latency):,})")
        _tail_axis(ax, deepest)
        ax.set_yscale("log")
        _plain_log(ax.yaxis)
        ax.set_ylabel("latency (ms)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="upper left", fontsize=7)
        ax.set_title(f"{curve['qps']:g} QPS", fontsize=9)
    axes[-1, 0].set_xlabel("percentile of completed requests")
    loads = [f"{curve['qps']:g}" for curve in curves]
    at = loads[0] if len(loads) == 1 else f"{', '.join(loads[:-1])} and {loads[-1]}"
    fig.suptitle(f"DES (dashed), replay DES (dotted) and the live engine (solid) at {at} QPS — {title}", fontsize=10)
    return _save(fig, path)


def _duration(seconds: float) -> str:
    """A lag as people write it: 0, 30 s, 10 min, 12 h."""
    if seconds == 0:
        return "0"
    if seconds < 60:
        return f"{seconds:g} s"
    return f"{seconds / 60:g} min" if seconds < 3600 else f"{seconds / 3600:g} h"


def plot_model_sweep(path: Path, rows: list[dict[str, Any]], column: str) -> Figure:
    """GAUC and AUC against the swept value of a model sweep, a numeric one on a numeric axis (symlog where it
    spans decades; lags in seconds labelled as durations); the oracle's (the ceiling) in the title where the data
    has one (a log has no true click probabilities)."""
    values = [r[column] for r in rows]
    numeric = all(_finite(v) for v in values)
    xs = values if numeric else list(range(len(rows)))
    fig, axes = _figure(height=4.0, width=6.4)
    ax = axes[0, 0]
    for metric in ("gauc", "auc"):
        ax.plot(xs, [r[metric] for r in rows], "o-", label=f"AIF {metric.upper()}")
    positive = [v for v in values if numeric and v > 0]
    if positive and max(positive) / min(positive) >= 10:
        ax.set_xscale("symlog", linthresh=min(positive))
        ax.minorticks_off()
    labels = [_duration(v) if column.endswith("_s") else _plain(v) for v in values] if numeric else [str(v) for v in values]
    ax.set_xticks(xs, labels)
    ax.set_xlabel(f"{column} (log scale past {labels[values.index(min(positive))]})" if ax.get_xscale() == "symlog" else column)
    ax.set_ylabel("held-out metric")
    oracle = rows[0]
    if "oracle_gauc" in oracle:
        ax.set_title(f"oracle GAUC {oracle['oracle_gauc']:.3f}, AUC {oracle['oracle_auc']:.3f}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
