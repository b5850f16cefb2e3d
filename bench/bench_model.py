"""Model figures: the savings of AIF's model design and of its asynchronous framework against a
serving-optimised sequential pre-ranker, LSH popcount vs dense similarity, and (optionally) GAUC of AIF
vs the baselines vs the oracle and the bridge-count curve.

    python bench/bench_model.py                      # speed at 10^4 candidates, one thread
    python bench/bench_model.py --quality            # + train the four models on the small preset
    python bench/bench_model.py --bridges            # + the bridge-count sweep (GAUC per n)
    python bench/bench_model.py --shadow             # + shadow scoring: 100 requests x 10^4 candidates, two versions

Speed ratios are of medians measured in the same run on the same CPU, as `calibrate` measures them
(three rounds per operator, median over rounds):
- model design: sequential_prerank / aif_online (the AIF model computed entirely online for the request);
- asynchronous framework: aif_online / realtime (what moving the user side next to retrieval and the
  item side nearline saves);
- both: sequential_prerank / realtime (target >= 10x); popcount vs dense similarity (target >= 5x).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from aif_sim.model.evaluate import evaluate
from aif_sim.model.factory import MODELS, model_config
from aif_sim.model.profile import calibrate
from aif_sim.model.shadow import ShadowScorer, shadow_quality
from aif_sim.model.sweeps import run_sweep
from aif_sim.model.threads import set_threads
from aif_sim.model.train import Checkpoint, TrainConfig, continue_training, model_version, timed_train
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


def shadow(preset_name: str, seed: int, epochs: int, n_requests: int, candidates: int) -> None:
    """Shadow scoring as the simulator calls it: version 0 (trained) and version 1 (fine-tuned on the next hour),
    users and items of a 10^6 population, the world's candidates, vectors from an hourly refresh (a tenth of them
    one refresh late, those before the publication of version 1 made by version 0); one thread."""
    world = World(preset(preset_name, seed))
    cfg = model_config(world.cfg)
    model, _ = timed_train("aif", world, cfg, TrainConfig(epochs=epochs), seed, show_progress=False)
    v0 = Checkpoint("aif", model_version("aif", model), model, cfg, world.cfg, TrainConfig(epochs=epochs), seed)
    v1, _ = continue_training(v0, world, 3600.0, world.cfg.train_requests // 4, TrainConfig(epochs=epochs, lr=1e-3), seed + 1, False)
    start = time.perf_counter()
    scorer = ShadowScorer([v0, v1], n_users=10**6, n_items=10**6, world_start_s=v1.trained_until_s - 3600.0)
    console.print(f"shadow scorer set up (world rebuilt from the checkpoint) in {time.perf_counter() - start:.2f} s")
    rng = np.random.default_rng(seed)
    requests = []
    for r in range(n_requests):
        t = 5400.0 + r * 36.0  # simulated seconds; version 1 published at 3600 s
        user = int(min(rng.zipf(1.1), 10**6) - 1)
        items = scorer.candidates(user, t, candidates, rng)
        made = np.floor(t / 3600.0) * 3600.0 - 3600.0 * (rng.random(len(items)) < 0.1)
        requests.append((user, t, items, made, (made >= 3600.0).astype(np.int64)))
    start = time.perf_counter()
    scored = [scorer.score(user, t, items, made, versions, serving_version=1, rng=rng) for user, t, items, made, versions in requests]
    seconds = time.perf_counter() - start
    quality = shadow_quality(scored, np.random.default_rng(seed))
    console.print(
        f"shadow scoring: {n_requests} requests x {candidates} candidates in {seconds:.2f} s ({1e3 * seconds / n_requests:.1f} ms per request); "
        f"stale fraction {np.mean([s.stale_fraction for s in scored]):.3f}, version mismatch {np.mean([s.version_mismatch_fraction for s in scored]):.3f}"
    )
    for which in ("stale", "fresh"):
        console.print(f"  {which}: " + ", ".join(f"{k} {v:.4f}" for k, v in quality[which].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=int, default=10_000)
    parser.add_argument("--quality", action="store_true", help="train AIF, sequential, light and two-tower; compare with the oracle")
    parser.add_argument("--bridges", action="store_true", help="run the bridge-count sweep")
    parser.add_argument("--shadow", action="store_true", help="time shadow scoring (trains AIF and fine-tunes a second version)")
    parser.add_argument("--shadow-requests", type=int, default=100)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--out", default="results/bench_model", help="where the bridge sweep writes sweep.csv/png")
    args = parser.parse_args()
    set_threads(1)
    if args.shadow:
        shadow(args.preset, args.seed, args.epochs, args.shadow_requests, args.candidates)
        return
    speed(args.candidates)
    if args.quality:
        quality(args.preset, args.seed, args.epochs)
    if args.bridges:
        rows = run_sweep("bridges", preset(args.preset, args.seed), TrainConfig(epochs=args.epochs), Path(args.out), console=console)
        console.print("bridge count -> GAUC: " + ", ".join(f"{r['n_bridges']}: {r['gauc']:.4f}" for r in rows))


if __name__ == "__main__":
    main()
