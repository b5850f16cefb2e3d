"""Model figures: the savings of AIF's model design and of its asynchronous framework against a
serving-optimised sequential pre-ranker, LSH popcount vs dense similarity, and (optionally) GAUC of AIF
vs the baselines vs the oracle and the bridge-count curve.

    python bench/bench_model.py                      # speed at 10^4 candidates, one thread
    python bench/bench_model.py --quality            # + train the four models on the small preset
    python bench/bench_model.py --bridges            # + the bridge-count sweep (GAUC per n)

Speed ratios are of medians measured in the same run on the same CPU, as `calibrate` measures them
(three rounds per operator, median over rounds):
- model design: sequential_prerank / aif_online (the AIF model computed entirely online for the request);
- asynchronous framework: aif_online / realtime (what moving the user side next to retrieval and the
  item side nearline saves);
- both: sequential_prerank / realtime (target >= 10x); popcount vs dense similarity (target >= 5x).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from aif_sim.model.evaluate import evaluate
from aif_sim.model.factory import MODELS, model_config
from aif_sim.model.profile import calibrate
from aif_sim.model.sweeps import run_sweep
from aif_sim.model.threads import set_threads
from aif_sim.model.train import TrainConfig, timed_train
from aif_sim.model.world import World, preset

console = Console()


def speed(candidates: int) -> None:
    profile = calibrate(preset("small", 0), "cpu", quick=False, batches=(1,), candidates=(candidates,))
    times = {op: points[0] for op, points in profile["ops"].items() if op not in ("user_side", "item_side")}
    table = Table(title=f"one user, {candidates} candidates, {profile['threads']} thread(s), {profile['hardware']}")
    for col in ("operator", "median ms", "p99 ms"):
        table.add_column(col, justify="right")
    for op, t in times.items():
        table.add_row(op, f"{t['median_ms']:.2f}", f"{t['p99_ms']:.2f}")
    console.print(table)
    ms = {op: t["median_ms"] for op, t in times.items()}
    console.print(f"model design (sequential_prerank / aif_online): {ms['sequential_prerank'] / ms['aif_online']:.1f}x")
    console.print(f"asynchronous framework (aif_online / realtime): {ms['aif_online'] / ms['realtime']:.1f}x")
    console.print(
        f"real-time AIF vs sequential pre-ranker (sequential_prerank / realtime): {ms['sequential_prerank'] / ms['realtime']:.1f}x (target >= 10x)"
    )
    console.print(f"light pre-ranker vs real-time AIF (realtime / light_prerank): {ms['realtime'] / ms['light_prerank']:.1f}x")
    console.print(f"LSH popcount vs dense similarity: {ms['dense_similarity'] / ms['lsh_popcount']:.1f}x faster (target >= 5x)")


def quality(preset_name: str, seed: int, epochs: int) -> None:
    world = World(preset(preset_name, seed))
    test = world.requests("test")
    table = Table(title=f"held-out quality, preset {preset_name}, seed {seed}")
    for col in ("model", "AUC", "GAUC", "HR@10", "HR@50", "HR@100", "logloss", "train s"):
        table.add_column(col, justify="right")
    keys = ("auc", "gauc", "hr_at_10", "hr_at_50", "hr_at_100", "logloss")
    for name in MODELS:
        model, seconds = timed_train(name, world, model_config(world.cfg), TrainConfig(epochs=epochs), seed)
        m = evaluate(model, world, test)
        table.add_row(name, *(f"{m[k]:.4f}" for k in keys), f"{seconds:.0f}")
    table.add_row("oracle", *(f"{m['oracle_' + k]:.4f}" for k in keys), "-")
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=int, default=10_000)
    parser.add_argument("--quality", action="store_true", help="train AIF, sequential, light and two-tower; compare with the oracle")
    parser.add_argument("--bridges", action="store_true", help="run the bridge-count sweep")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--out", default="results/bench_model", help="where the bridge sweep writes sweep.csv/png")
    args = parser.parse_args()
    set_threads(1)
    speed(args.candidates)
    if args.quality:
        quality(args.preset, args.seed, args.epochs)
    if args.bridges:
        rows = run_sweep("bridges", preset(args.preset, args.seed), TrainConfig(epochs=args.epochs), Path(args.out), console=console)
        console.print("bridge count -> GAUC: " + ", ".join(f"{r['n_bridges']}: {r['gauc']:.4f}" for r in rows))


if __name__ == "__main__":
    main()
