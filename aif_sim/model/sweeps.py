"""Quality sweeps of the AIF model: bridge count, LSH encoding, item-vector lag, user-vector lag and model age (a
model trained once, measured on the data of later and later stretches). Writes sweep.csv and sweep.png."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console

from aif_sim.atomic import write_csv
from aif_sim.errors import InputError
from aif_sim.model.evaluate import evaluate
from aif_sim.model.factory import model_config
from aif_sim.model.sources import DataConfig, age_window_s, open_world, test_candidates
from aif_sim.model.train import TrainConfig, held_out_requests, load_checkpoint, timed_train
from aif_sim.report.plots import plot_model_sweep


def _lsh_mode(text: str) -> str:
    if text not in ("bit1", "bit2", "dense"):
        raise ValueError(text)
    return text


@dataclass(frozen=True)
class Sweep:
    """A swept quantity: its column name, default grid and the parser of one value."""

    column: str
    default: tuple
    parse: Callable[[str], object]


SWEEPS: dict[str, Sweep] = {
    "bridges": Sweep("n_bridges", (0, 1, 2, 4, 8, 16, 32, 64), int),
    "lsh": Sweep("lsh_mode", ("bit1", "bit2", "dense"), _lsh_mode),
    "item_lag": Sweep("item_lag_s", (0.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 43200.0), float),
    "user_lag": Sweep("user_lag_s", (0.0, 60.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0), float),
    "model_age": Sweep("model_age_s", (0.0, 21600.0, 43200.0, 64800.0), float),
}
AGE_STREAM = 5  # request stream of the model-age windows (world.requests_between)


def parse_values(param: str, text: str) -> list:
    """The comma-separated values of a sweep; InputError when one does not parse."""
    try:
        return [SWEEPS[param].parse(v.strip()) for v in text.split(",")]
    except ValueError as exc:
        raise InputError(f"--values: {text}: expected comma-separated values for {param} like {SWEEPS[param].default}") from exc


def run_sweep(
    param: str,
    world_cfg: DataConfig,
    train: TrainConfig,
    out: Path,
    values: Sequence | None = None,
    checkpoint: str | None = None,
    console: Console | None = None,
) -> list[dict]:
    """Train (or load) AIF models over the sweep's values, evaluate each on the test requests, write CSV + PNG."""
    sweep = SWEEPS[param]
    values = list(values) if values is not None else list(sweep.default)
    console = console or Console(stderr=True)
    ckpt = load_checkpoint(checkpoint) if checkpoint else None
    world = open_world(ckpt.world_config if ckpt else world_cfg)
    test = held_out_requests(world, ckpt) if ckpt else world.requests("test")
    rows: list[dict] = []
    if param == "model_age":
        model = ckpt.model if ckpt else timed_train("aif", world, model_config(world.cfg), train, world.cfg.seed)[0]
        trained_until = float(ckpt.trained_until_s) if ckpt else float(world.cfg.train_end_s)
        window = age_window_s(world.cfg)
        for age in values:
            lo, hi = trained_until + age, trained_until + age + window
            if age < 0 or hi > world.cfg.horizon_s:
                raise InputError(
                    f"--values: {age:g}: expected ages from 0 to {world.cfg.horizon_s - trained_until - window:g} s (the data ends then)"
                )
            requests = world.requests_between(lo, hi, len(test), test_candidates(world.cfg), stream=AGE_STREAM)
            rows.append(
                {sweep.column: age, "window_start_s": lo, "window_end_s": hi, "requests": len(requests), **evaluate(model, world, requests)}
            )
            console.print(f"{sweep.column}={age:g}: gauc={rows[-1]['gauc']:.4f} on {len(requests)} requests")
    elif param in ("item_lag", "user_lag"):
        model = ckpt.model if ckpt else timed_train("aif", world, model_config(world.cfg), train, world.cfg.seed)[0]
        for lag in values:
            if lag < 0:
                raise InputError(f"--values: {lag:g}: expected non-negative lags in seconds")
            if param == "item_lag":
                stale = world.changed_between(test.items, test.times[:, None] - lag, test.times[:, None]).mean()
                rows.append({sweep.column: lag, "stale_fraction": float(stale), **evaluate(model, world, test, item_lag_s=lag)})
            else:
                before = world.behaviours.count(test.users, test.times - lag)
                stale = np.mean(world.behaviours.count(test.users, test.times) > before)
                rows.append({sweep.column: lag, "stale_fraction": float(stale), **evaluate(model, world, test, user_lag_s=lag)})
            console.print(f"{sweep.column}={lag:g}: gauc={rows[-1]['gauc']:.4f} stale_fraction={stale:.3f}")
    else:
        for value in values:
            model, seconds = timed_train("aif", world, model_config(world.cfg, **{sweep.column: value}), train, world.cfg.seed)
            rows.append({sweep.column: value, **evaluate(model, world, test), "train_seconds": seconds})
            console.print(f"{sweep.column}={value}: gauc={rows[-1]['gauc']:.4f} auc={rows[-1]['auc']:.4f}")
    write_csv(out / "sweep.csv", rows)
    plot_model_sweep(out / "sweep.png", rows, sweep.column)
    return rows
