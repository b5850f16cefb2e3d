"""The model's CLI subcommands: train, evaluate, sweep-model and calibrate."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from aif_sim.atomic import write_json
from aif_sim.errors import InputError
from aif_sim.model.config import ModelConfig
from aif_sim.model.evaluate import evaluate, ranking_metrics, score
from aif_sim.model.factory import MODELS, model_config
from aif_sim.model.logdata import ITEM_FEATURES, MOVIELENS_100K, USER_FEATURES, LogConfig, LogWorld
from aif_sim.model.profile import calibrate
from aif_sim.model.sources import DataConfig, open_world
from aif_sim.model.sweeps import SWEEPS, parse_values, run_sweep
from aif_sim.model.threads import set_threads
from aif_sim.model.train import (
    Checkpoint,
    TrainConfig,
    continue_training,
    held_out_requests,
    load_checkpoint,
    model_version,
    save_checkpoint,
    timed_train,
)
from aif_sim.model.world import PRESETS, World, preset

DEFAULT_WINDOW_S = 3600.0  # train --continue-from: the fine-tuning window
FINE_TUNE_LR = 1e-3  # learning rate of train --continue-from (a fresh Adam on an already trained model)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the model subcommands to the CLI."""
    p = subparsers.add_parser("train", help="train a model on a synthetic world; write metrics.json and checkpoint.pt")
    p.add_argument("--model", choices=list(MODELS), default=None, help="required unless --continue-from")
    _world_options(p)
    p.add_argument("--bridges", type=int, default=None, help="BEA bridge count (aif; default 8)")
    p.add_argument("--lsh", choices=["bit1", "bit2", "dense"], default=None, help="LSH-SIM similarity (aif; default bit1)")
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    p.add_argument(
        "--lr", type=float, default=None, help=f"learning rate (default {TrainConfig.lr:g}; {FINE_TUNE_LR:g} with --continue-from)"
    )
    p.add_argument(
        "--continue-from",
        default=None,
        metavar="CHECKPOINT",
        help="fine-tune this published version on the world's later data: the next model version",
    )
    p.add_argument(
        "--window-s",
        type=float,
        default=None,
        help="--continue-from: the training window's length, starting where the version's training data ended (default 3600)",
    )
    p.add_argument(
        "--requests",
        type=int,
        default=None,
        help="--continue-from: training requests in the window (default: the preset's train_requests / 4)",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=train_command)

    p = subparsers.add_parser("evaluate", help="evaluate a checkpoint on its world's test requests")
    p.add_argument("--checkpoint", required=True)
    p.add_argument(
        "--data", default=None, metavar="PATH", help="a log-trained checkpoint: read its log from here (moved, or the same log again)"
    )
    p.add_argument("--item-lag-s", type=float, default=0.0, help="score with item features of this many seconds earlier")
    p.add_argument("--user-lag-s", type=float, default=0.0, help="score with user features (short sequence) of this many seconds earlier")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True, help="output directory (metrics.json)")
    p.set_defaults(func=evaluate_command)

    p = subparsers.add_parser("sweep-model", help="quality sweeps: bridge count, LSH encoding, item lag, user lag (CSV + PNG)")
    p.add_argument("--param", choices=list(SWEEPS), required=True)
    _world_options(p)
    p.add_argument("--values", default=None, help="comma-separated values to sweep (default: the standard grid)")
    p.add_argument("--checkpoint", default=None, help="item_lag, user_lag: evaluate this checkpoint instead of training one")
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    p.add_argument("--out", required=True, help="output directory (sweep.csv, sweep.png)")
    p.set_defaults(func=sweep_command)

    p = subparsers.add_parser("calibrate", help="time each model operator; write a profile JSON for the simulator")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--quick", action="store_true", help="fewer repetitions (about a minute)")
    p.add_argument("--threads", type=int, default=1, help="torch/BLAS threads per operator (default 1: one server of a pool)")
    p.add_argument("--out", required=True, help="profile JSON path")
    p.set_defaults(func=calibrate_command)


def _world_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=list(PRESETS), default=None, help="world size (default small)")
    p.add_argument(
        "--data",
        default=None,
        metavar="PATH",
        help=f"train and test on an interaction log instead of the synthetic world: a CSV or Parquet file (columns user, item,"
        f" timestamp, label; optional {', '.join(ITEM_FEATURES + USER_FEATURES)}) or {MOVIELENS_100K}",
    )
    p.add_argument("--seed", type=int, default=None, help="world and training seed (default 0)")
    p.add_argument("--threads", type=int, default=1, help="torch/BLAS threads (default 1)")


def _positive(name: str, value: int) -> int:
    if value < 1:
        raise InputError(f"{name}: {value}: expected a positive integer")
    return value


def _learning_rate(value: float | None, default: float) -> float:
    if value is None:
        return default
    if not value > 0:
        raise InputError(f"--lr: {value:g}: expected a positive learning rate")
    return value


def _aif_overrides(args: argparse.Namespace) -> dict:
    overrides: dict = {}
    if args.bridges is not None:
        if args.bridges < 0:
            raise InputError(f"--bridges: {args.bridges}: expected a non-negative integer")
        overrides["n_bridges"] = args.bridges
    if args.lsh is not None:
        overrides["lsh_mode"] = args.lsh
    return overrides


def train_command(args: argparse.Namespace) -> int:
    set_threads(_positive("--threads", args.threads))
    if args.continue_from is not None:
        return _continue_command(args)
    if args.model is None:
        raise InputError("--model: required (one of " + ", ".join(MODELS) + ") unless --continue-from names a checkpoint")
    for option, value in (("--window-s", args.window_s), ("--requests", args.requests)):
        if value is not None:
            raise InputError(f"{option}: only with --continue-from")
    seed = 0 if args.seed is None else args.seed
    train_cfg = TrainConfig(epochs=_positive("--epochs", args.epochs), lr=_learning_rate(args.lr, TrainConfig.lr))
    world = open_world(_data_config(args, seed))
    cfg: ModelConfig = model_config(world.cfg, **_aif_overrides(args))
    model, seconds = timed_train(args.model, world, cfg, train_cfg, seed)
    ckpt = Checkpoint(args.model, model_version(args.model, model), model, cfg, world.cfg, train_cfg, seed)
    out = Path(args.out)
    save_checkpoint(out / "checkpoint.pt", ckpt)
    metrics = {**_version_fields(ckpt), **evaluate(model, world, world.requests("test")), "train_seconds": seconds}
    write_json(out / "metrics.json", metrics)
    print(json.dumps(metrics, indent=2))
    return 0


def _continue_command(args: argparse.Namespace) -> int:
    """train --continue-from: the next version, fine-tuned on the window after the parent's training data, and its
    metrics (next to the parent's) on the requests of the window after that."""
    for option, value in (("--preset", args.preset), ("--data", args.data), ("--bridges", args.bridges), ("--lsh", args.lsh)):
        if value is not None:
            raise InputError(f"{option}: not with --continue-from (the world and the model come from the checkpoint)")
    parent = load_checkpoint(args.continue_from)
    if isinstance(parent.world_config, LogConfig):
        raise InputError(
            f"--continue-from: {args.continue_from} was trained on a log; model versions are fine-tuned on the synthetic world"
        )
    if args.model is not None and args.model != parent.name:
        raise InputError(f"--model: {args.model}: the checkpoint {args.continue_from} holds a {parent.name} model")
    world = World(parent.world_config)
    n_requests = _positive("--requests", args.requests) if args.requests is not None else max(1, world.cfg.train_requests // 4)
    seed = args.seed if args.seed is not None else parent.seed + parent.version_number + 1
    train_cfg = TrainConfig(epochs=_positive("--epochs", args.epochs), lr=_learning_rate(args.lr, FINE_TUNE_LR))
    window_s = DEFAULT_WINDOW_S if args.window_s is None else args.window_s
    if not window_s > 0:
        raise InputError(f"--window-s: {window_s:g}: expected a positive number of seconds")
    end = float(parent.trained_until_s) + 2 * window_s
    if end > world.cfg.horizon_s:
        raise InputError(
            f"--window-s: {window_s:g}: training and the held-out window after it end at {end:g} s, "
            f"after the world's horizon ({world.cfg.horizon_s:g} s)"
        )
    child, seconds = continue_training(parent, world, window_s, n_requests, train_cfg, seed)
    held_out = held_out_requests(world, child)
    out = Path(args.out)
    save_checkpoint(out / "checkpoint.pt", child)
    parent_metrics = ranking_metrics(held_out, score(parent.model, world, held_out))
    metrics = {
        **_version_fields(child),
        "eval_window_s": [child.trained_until_s, child.trained_until_s + window_s],
        **evaluate(child.model, world, held_out),
        **{f"parent_{k}": v for k, v in parent_metrics.items()},
        "train_requests": n_requests,
        "train_seconds": seconds,
    }
    write_json(out / "metrics.json", metrics)
    print(json.dumps(metrics, indent=2))
    return 0


def _version_fields(ckpt: Checkpoint) -> dict:
    return {
        "model": ckpt.name,
        "model_version": ckpt.version,
        "version_number": ckpt.version_number,
        "parent_version": ckpt.parent_version,
        "trained_until_s": ckpt.trained_until_s,
        "train_window_s": list(ckpt.train_window_s),
    }


def evaluate_command(args: argparse.Namespace) -> int:
    set_threads(_positive("--threads", args.threads))
    for option, lag in (("--item-lag-s", args.item_lag_s), ("--user-lag-s", args.user_lag_s)):
        if lag < 0:
            raise InputError(f"{option}: {lag}: expected a non-negative number of seconds")
    ckpt = load_checkpoint(args.checkpoint)
    world = open_world(_checkpoint_data(ckpt, args.checkpoint, args.data))
    metrics = {
        **_version_fields(ckpt),
        "item_lag_s": args.item_lag_s,
        "user_lag_s": args.user_lag_s,
        **evaluate(ckpt.model, world, held_out_requests(world, ckpt), args.item_lag_s, args.user_lag_s),
    }
    write_json(Path(args.out) / "metrics.json", metrics)
    print(json.dumps(metrics, indent=2))
    return 0


def sweep_command(args: argparse.Namespace) -> int:
    set_threads(_positive("--threads", args.threads))
    values = parse_values(args.param, args.values) if args.values is not None else None
    run_sweep(
        args.param,
        _data_config(args, 0 if args.seed is None else args.seed),
        TrainConfig(epochs=_positive("--epochs", args.epochs)),
        Path(args.out),
        values=values,
        checkpoint=args.checkpoint,
    )
    return 0


def _data_config(args: argparse.Namespace, seed: int) -> DataConfig:
    """The synthetic world's preset, or the log of --data (not both)."""
    if args.data is None:
        return preset(args.preset or "small", seed)
    if args.preset is not None:
        raise InputError("--preset: not with --data (the log is the world)")
    data = args.data if args.data == MOVIELENS_100K else str(Path(args.data).resolve())
    return LogConfig(data=data, seed=seed)


def _checkpoint_data(ckpt: Checkpoint, checkpoint: str, data: str | None) -> DataConfig:
    """The checkpoint's world, its log read from `data` when given (it must be the same log: the same sizes)."""
    cfg = ckpt.world_config
    if data is None:
        return cfg
    if not isinstance(cfg, LogConfig):
        raise InputError(f"--data: {checkpoint} was trained on the synthetic world, not on a log")
    moved = LogWorld(replace(cfg, data=data)).cfg
    if (moved.n_users, moved.n_items, moved.train_end_s) != (cfg.n_users, cfg.n_items, cfg.train_end_s):
        raise InputError(
            f"--data: {data}: not the log {checkpoint} was trained on ({moved.n_users} users and {moved.n_items} items, not {cfg.n_users} and {cfg.n_items})"
        )
    return moved


def calibrate_command(args: argparse.Namespace) -> int:
    profile = calibrate(preset("small", 0), args.device, args.quick, _positive("--threads", args.threads))
    write_json(args.out, profile)
    print(f"wrote {args.out}: {', '.join(f'{op} ({len(points)} points)' for op, points in profile['ops'].items())}")
    return 0
