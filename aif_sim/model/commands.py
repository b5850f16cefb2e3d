"""The model's CLI subcommands: train, evaluate, sweep-model and calibrate."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from aif_sim.atomic import write_json
from aif_sim.errors import InputError
from aif_sim.model.config import ModelConfig
from aif_sim.model.evaluate import evaluate
from aif_sim.model.factory import MODELS, model_config
from aif_sim.model.profile import calibrate
from aif_sim.model.sweeps import SWEEPS, parse_values, run_sweep
from aif_sim.model.threads import set_threads
from aif_sim.model.train import Checkpoint, TrainConfig, load_checkpoint, model_version, save_checkpoint, timed_train
from aif_sim.model.world import PRESETS, World, preset


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the model subcommands to the CLI."""
    p = subparsers.add_parser("train", help="train a model on a synthetic world; write metrics.json and checkpoint.pt")
    p.add_argument("--model", choices=list(MODELS), required=True)
    _world_options(p)
    p.add_argument("--bridges", type=int, default=None, help="BEA bridge count (aif; default 8)")
    p.add_argument("--lsh", choices=["bit1", "bit2", "dense"], default=None, help="LSH-SIM similarity (aif; default bit1)")
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=train_command)

    p = subparsers.add_parser("evaluate", help="evaluate a checkpoint on its world's test requests")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--item-lag-s", type=float, default=0.0, help="score with item features of this many seconds earlier")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True, help="output directory (metrics.json)")
    p.set_defaults(func=evaluate_command)

    p = subparsers.add_parser("sweep-model", help="quality sweeps: bridge count, LSH encoding, item lag (CSV + PNG)")
    p.add_argument("--param", choices=list(SWEEPS), required=True)
    _world_options(p)
    p.add_argument("--values", default=None, help="comma-separated values to sweep (default: the standard grid)")
    p.add_argument("--checkpoint", default=None, help="item_lag: evaluate this checkpoint instead of training one")
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
    p.add_argument("--preset", choices=list(PRESETS), default="small")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch/BLAS threads (default 1)")


def _positive(name: str, value: int) -> int:
    if value < 1:
        raise InputError(f"{name}: {value}: expected a positive integer")
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
    train_cfg = TrainConfig(epochs=_positive("--epochs", args.epochs))
    world = World(preset(args.preset, args.seed))
    cfg: ModelConfig = model_config(world.cfg, **_aif_overrides(args))
    model, seconds = timed_train(args.model, world, cfg, train_cfg, args.seed)
    version = model_version(args.model, model)
    out = Path(args.out)
    save_checkpoint(out / "checkpoint.pt", Checkpoint(args.model, version, model, cfg, world.cfg, train_cfg, args.seed))
    metrics = {"model": args.model, "model_version": version, **evaluate(model, world, world.requests("test")), "train_seconds": seconds}
    write_json(out / "metrics.json", metrics)
    print(json.dumps(metrics, indent=2))
    return 0


def evaluate_command(args: argparse.Namespace) -> int:
    set_threads(_positive("--threads", args.threads))
    if args.item_lag_s < 0:
        raise InputError(f"--item-lag-s: {args.item_lag_s}: expected a non-negative number of seconds")
    ckpt = load_checkpoint(args.checkpoint)
    world = World(ckpt.world_config)
    metrics = {
        "model": ckpt.name,
        "model_version": ckpt.version,
        "item_lag_s": args.item_lag_s,
        **evaluate(ckpt.model, world, world.requests("test"), args.item_lag_s),
    }
    write_json(Path(args.out) / "metrics.json", metrics)
    print(json.dumps(metrics, indent=2))
    return 0


def sweep_command(args: argparse.Namespace) -> int:
    set_threads(_positive("--threads", args.threads))
    values = parse_values(args.param, args.values) if args.values is not None else None
    run_sweep(
        args.param,
        preset(args.preset, args.seed),
        TrainConfig(epochs=_positive("--epochs", args.epochs)),
        Path(args.out),
        values=values,
        checkpoint=args.checkpoint,
    )
    return 0


def calibrate_command(args: argparse.Namespace) -> int:
    profile = calibrate(preset("small", 0), args.device, args.quick, _positive("--threads", args.threads))
    write_json(args.out, profile)
    print(f"wrote {args.out}: {', '.join(f'{op} ({len(points)} points)' for op, points in profile['ops'].items())}")
    return 0
