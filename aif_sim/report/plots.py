"""PNG plots of a run and of a sweep (written atomically). matplotlib is imported when a plot is drawn."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aif_sim.atomic import atomic_path
from aif_sim.core.pipelines import PIPELINES, Parallel, calls_of
from aif_sim.metrics.histogram import LogHistogram
from aif_sim.metrics.recorder import Recorder
from aif_sim.metrics.summary import Metric

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TAIL_TICKS = (0.0, 0.5, 0.9, 0.99, 0.999, 0.9999, 0.99999)
MARKED = {"p50": 0.5, "p99": 0.99, "p99.9": 0.999}
SHED_MARK = 0.01  # sweep points shedding more than this share are drawn hollow


def _figure(rows: int = 1, height: float = 4.5) -> tuple[Figure, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(rows, 1, figsize=(8, height), squeeze=False)


def _save(fig: Figure, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def _tail(q: np.ndarray | float) -> np.ndarray:
    """Quantile → tail position: 0.9, 0.99, 0.999 equally spaced (as HdrHistogram plots them)."""
    return -np.log10(1.0 - np.asarray(q, dtype=float))


def _tail_curve(histogram: LogHistogram) -> tuple[np.ndarray, np.ndarray]:
    edges, share = histogram.cdf()
    keep = share < 1.0  # the last bucket sits at infinity on a tail axis: end at the largest finite rank
    top = 1.0 - 1.0 / max(histogram.count, 1)
    return _tail(np.append(share[keep], top)), np.append(edges[keep], histogram.max)


def plot_latency_cdf(path: Path, results: dict[str, Recorder], slo_ms: float | None, title: str) -> None:
    """Latency against percentile on a tail axis, per pipeline, beside its no-contention latency; the SLO."""
    fig, axes = _figure(height=4.8)
    ax = axes[0, 0]
    deepest = 0.99
    for index, (pipeline, recorder) in enumerate(results.items()):
        color = f"C{index}"
        if recorder.latency.count == 0:
            ax.plot([], [], color=color, label=f"{pipeline}: completed nothing")
            continue
        deepest = max(deepest, 1.0 - 1.0 / recorder.latency.count)
        ax.plot(*_tail_curve(recorder.latency), color=color, label=f"{pipeline} simulated")
        ax.plot(*_tail_curve(recorder.no_contention), color=color, linestyle=":", label=f"{pipeline} no contention")
        for name, q in MARKED.items():
            if q <= deepest:
                value = recorder.latency.quantile(q)
                ax.plot(_tail(q), value, "o", color=color, markersize=4)
                ax.annotate(f"{name} {value:.1f}", (_tail(q), value), textcoords="offset points", xytext=(5, -11), fontsize=7, color=color)
    if slo_ms is not None:
        ax.axhline(slo_ms, color="red", linestyle="--", linewidth=1, label=f"SLO p99 {slo_ms:g} ms")
    ticks = [q for q in TAIL_TICKS if q <= deepest + 1e-12]
    ax.set_xticks(_tail(ticks), [f"{100 * q:g}%" for q in ticks])
    ax.set_xlim(0, _tail(deepest) * 1.02)
    if any(recorder.latency.count and recorder.latency.max > 0 for recorder in results.values()):
        ax.set_yscale("log")
    ax.set_xlabel("percentile of completed requests")
    ax.set_ylabel("end-to-end latency (ms)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"Latency by percentile — {title}", fontsize=10)
    _save(fig, path)


def plot_stage_breakdown(path: Path, summary: dict[str, Any], title: str) -> None:
    """Mean timeline of each pipeline: a bar per stage (queue wait, then service), parallel stages
    starting together and overlapping, each step starting when the longest branch of the previous ends."""
    pipelines = summary["pipelines"]
    height = sum(1.0 + 0.35 * len(m["stages"]) for m in pipelines.values())
    fig, axes = _figure(len(pipelines), height)
    limit = max((_or_zero(m["latency_ms"]["mean"]) for m in pipelines.values()), default=0.0) or 1.0
    for ax, (pipeline, metrics) in zip(axes[:, 0], pipelines.items()):
        names, starts, waits, services = [], [], [], []
        offset = 0.0
        for step in PIPELINES[pipeline]:
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
        parallel = " (∥: in parallel)" if any(isinstance(step, Parallel) for step in PIPELINES[pipeline]) else ""
        ax.set_title(f"{pipeline}: {done}{parallel}", fontsize=9)
        ax.grid(True, axis="x", alpha=0.3)
    axes[0, 0].legend(loc="lower left", bbox_to_anchor=(0.0, 1.12), ncol=2, fontsize=8, frameon=False)
    axes[-1, 0].set_xlabel("mean time since arrival (ms): each step starts when the longest mean branch of the one before ends")
    fig.suptitle(f"Where the time goes — {title}", fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def _series(rows: list[dict[str, Any]], pipeline: str, x: str, y: str) -> tuple[list[float], list[float], list[float], list[float]]:
    points = sorted(
        (r[x], r[y], r.get(f"{y}_ci95") or 0.0, r.get("shed_share") or 0.0)
        for r in rows
        if r["pipeline"] == pipeline and _finite(r[x]) and _finite(r[y])
    )
    return tuple(map(list, zip(*points))) if points else ([], [], [], [])  # type: ignore[return-value]


def plot_sweep(path: Path, rows: list[dict[str, Any]], x: str, x_label: str, metric: Metric, slo_ms: float | None, title: str) -> None:
    """One headline metric against the swept value (or another column), a line per pipeline, 95% CI bars;
    hollow markers where more than 1% of requests were shed."""
    fig, axes = _figure()
    ax = axes[0, 0]
    for index, pipeline in enumerate(dict.fromkeys(r["pipeline"] for r in rows)):
        xs, ys, ci, shed = _series(rows, pipeline, x, metric.key)
        if not xs:
            continue
        color = f"C{index}"
        ax.errorbar(xs, ys, yerr=ci, color=color, marker="", capsize=3, label=pipeline)
        filled = [s <= SHED_MARK for s in shed]
        ax.scatter([a for a, f in zip(xs, filled) if f], [b for b, f in zip(ys, filled) if f], color=color, zorder=3)
        ax.scatter(
            [a for a, f in zip(xs, filled) if not f],
            [b for b, f in zip(ys, filled) if not f],
            facecolors="white",
            edgecolors=color,
            zorder=3,
        )
    if slo_ms is not None and metric.unit == "ms" and metric.key.startswith("p99"):
        ax.axhline(slo_ms, color="red", linestyle="--", linewidth=1, label=f"SLO p99 {slo_ms:g} ms")
    ax.scatter([], [], facecolors="white", edgecolors="grey", label=f"> {100 * SHED_MARK:g}% shed")
    xs = [r[x] for r in rows if _finite(r[x])]
    positive = [v for v in xs if v > 0]
    if xs and min(xs) >= 0 and positive and max(positive) / min(positive) > 100:  # values over decades: a log axis
        ax.set_xscale("symlog", linthresh=min(positive))
    ax.set_xlabel(x_label)
    ax.set_ylabel(metric.axis_label)
    if metric.unit == "ms":
        ax.set_yscale("log")  # latencies past saturation are orders of magnitude above the rest
    if metric.unit == "share":
        from matplotlib.ticker import PercentFormatter

        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{metric.axis_label.split(' (')[0]} against {x_label.split(' (')[0]}\n{title}", fontsize=10)
    _save(fig, path)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _or_zero(value: Any) -> float:
    """A mean of no values (NaN or None) drawn as 0."""
    return float(value) if _finite(value) else 0.0


TIMESERIES_PANELS = (  # (column or column suffix, axis label, log scale)
    ("p99_ms", "p99 latency (ms)", True),
    ("_hit_ratio", "cache hit ratio", False),
    ("item_vector_age_mean_s", "mean item-vector age (s)", False),
    ("user_vector_age_mean_s", "mean user-vector age (s)", False),
    ("refresh_backlog", "refresh backlog (items)", False),
)


def plot_timeseries(path: Path, results: dict[str, Recorder], faults_at_s: list[float], title: str) -> None:
    """Per simulated second: p99, cache hit ratios, vector age and refresh backlog (the panels the run has),
    with the faults marked, so that a storm and its recovery can be seen."""
    panels = []
    for column, label, log in TIMESERIES_PANELS:
        lines = [
            (f"{pipeline} {name.removesuffix(column)}".rstrip() if column.startswith("_") else pipeline, pipeline, name)
            for pipeline, recorder in results.items()
            for name in recorder.timeseries.columns
            if (name.endswith(column) if column.startswith("_") else name == column)
        ]
        if lines:
            panels.append((label, log, lines))
    fig, axes = _figure(len(panels), 2.2 * len(panels) + 0.8)
    colors = {pipeline: f"C{i}" for i, pipeline in enumerate(results)}
    for ax, (label, log, lines) in zip(axes[:, 0], panels):
        for index, (legend, pipeline, name) in enumerate(lines):
            rows = results[pipeline].timeseries.rows
            style = ["-", "--", ":"][index % 3] if label == "cache hit ratio" else "-"
            ax.plot([r["t_s"] for r in rows], [r[name] for r in rows], style, color=colors[pipeline], label=legend, linewidth=1)
        for at_s in faults_at_s:
            ax.axvline(at_s, color="red", linestyle=":", linewidth=1)
        if log and any(r.latency.count and r.latency.max > 0 for r in results.values()):
            ax.set_yscale("log")
        ax.set_ylabel(label, fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("simulated time (s)" + ("; red: faults" if faults_at_s else ""))
    fig.suptitle(f"Per second — {title}", fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def plot_validate_cdf(path: Path, curves: list[dict[str, Any]], title: str) -> None:
    """Per load, each pipeline's latency by percentile on a tail axis: the DES (dashed) over the live run (solid)."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    if not curves:
        return
    fig, axes = _figure(len(curves), 3.6 * len(curves))
    for ax, curve in zip(axes[:, 0], curves):
        deepest = 0.99
        for index, pipeline in enumerate(curve["live"]):
            for engine, style in (("live", "-"), ("des", "--")):
                blocks = curve[engine].get(pipeline, [])
                latency = np.sort(np.concatenate(blocks)) if blocks else np.empty(0)
                if len(latency) == 0:
                    continue
                share = (np.arange(len(latency)) + 0.5) / len(latency)
                deepest = max(deepest, share[-1])
                ax.plot(_tail(share), latency, style, color=f"C{index}", label=f"{pipeline} {engine} ({len(latency):,})")
        ticks = [q for q in TAIL_TICKS if q <= deepest + 1e-12]
        ax.set_xticks(_tail(ticks), [f"{100 * q:g}%" for q in ticks])
        ax.set_xlim(0, _tail(deepest) * 1.02)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel("latency (ms)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="upper left", fontsize=7)
        ax.set_title(f"{curve['qps']:g} QPS", fontsize=9)
    axes[-1, 0].set_xlabel("percentile of completed requests")
    axes[0, 0].set_title(f"DES (dashed) against the live engine (solid): {title}\n{curves[0]['qps']:g} QPS", fontsize=9)
    _save(fig, path)
