"""Shadow scoring: the real model scores simulated AIF requests with the item vectors the system had
(their times and versions) and with fresh ones."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from aif_sim.app.quality import score_shadow_samples, shadow_scorer
from aif_sim.app.run import build_samplers, simulate
from aif_sim.cli import main
from aif_sim.core.changes import item_changes
from aif_sim.model.evaluate import paired_gauc_difference, score
from aif_sim.model.train import load_checkpoint
from aif_sim.model.world import World
from aif_sim.scenario import validate_scenario
from tests.simtools import assert_same_samples, negligible, refused, scenario_dict


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("aif")
    assert main(["train", "--model", "aif", "--preset", "tiny", "--seed", "0", "--out", str(out)]) == 0
    return out / "checkpoint.pt"


def _shadow_scenario(checkpoint, qps: float, hours: float, seed: int, nearline: dict, candidates: int, **extra):
    """An AIF scenario of zero-time stages in which every request (up to 300) is shadow-scored. `extra`: more
    scenario sections; `users`/`items` replace the populations."""
    stages = {name: negligible() for name in ("merger", "retrieval", "user_inference", "item_fetch", "rtp")}
    model = {"checkpoint": str(checkpoint), "shadow_rate": 1.0, "shadow_candidates": candidates, "shadow_requests": 300}
    populations = {key: extra.pop(key) for key in ("users", "items") if key in extra}
    data = scenario_dict(stages, pipelines=["aif"], qps=qps, duration_s=hours * 3600.0, seed=seed, nearline=nearline, model=model, **extra)
    data["traffic"].update(populations)
    return validate_scenario(data, "<test>")


def _scored(scenario):
    """The scenario's AIF run, shadow-scored: its recorder (METRICS block and samples)."""
    results = simulate(scenario, build_samplers(scenario, "<test>"))
    score_shadow_samples(scenario, results)
    return results["aif"]


def _shadow_run(checkpoint, qps: float, hours: float, seed: int, nearline: dict, candidates: int, **extra):
    return _scored(_shadow_scenario(checkpoint, qps, hours, seed, nearline, candidates, **extra))


def _quality(checkpoint, interval_s: float) -> dict:
    """Six simulated hours of AIF at 0.02 QPS, items changing 10 times a second (Zipf over 10^5 items); every
    request is shadow-scored on 300 candidates."""
    refresh = {"mode": "periodic", "interval_s": interval_s, "workers": 8, "latency": {"dist": "constant", "ms": 0.001}}
    nearline = {"item_updates_per_s": 10, "refresh": refresh}
    recorder = _shadow_run(checkpoint, 0.02, 6, 3, nearline, 300, items={"count": 100_000, "zipf_s": 0.9})
    return recorder.summary()["quality"]


def test_stale_vectors_cost_quality_and_the_cost_grows_with_the_interval(checkpoint):
    fresh_always = _quality(checkpoint, 0)
    assert fresh_always["scored_requests"] > 300 * 0.6
    assert fresh_always["stale"] == fresh_always["fresh"]  # vectors made when read: identical scores
    losses = []
    for interval in (3600, 6 * 3600):
        quality = _quality(checkpoint, interval)
        assert quality["fresh"] == fresh_always["fresh"]  # the same requests, candidates and labels
        losses.append(quality["fresh"]["gauc"] - quality["stale"]["gauc"])
    assert 0 < losses[0] < losses[1], losses


def test_on_update_refresh_that_follows_the_world_keeps_vectors_fresh(checkpoint):
    """With item updates taken from the world's own item changes, prompt on-update refresh re-infers every changed
    item at once: the shadow-scored vectors match fresh ones; without refresh they grow stale."""
    quality, staleness = {}, {}
    for label, refresh in (("prompt", {"mode": "on_update", "workers": 8, "latency": {"dist": "constant", "ms": 0.001}}), ("none", None)):
        nearline = {"updates_from": "world", **({"refresh": refresh} if refresh else {})}
        summary = _shadow_run(checkpoint, 0.02, 6, 3, nearline, 300, items={"count": 100_000, "zipf_s": 0.9}).summary()
        quality[label], staleness[label] = summary["quality"], summary["staleness"]
    assert staleness["prompt"]["stale_fraction"] < 0.001 < staleness["none"]["stale_fraction"]
    assert quality["prompt"]["stale"]["gauc"] == pytest.approx(quality["prompt"]["fresh"]["gauc"], abs=1e-4)
    prompt_loss = abs(quality["prompt"]["fresh"]["gauc"] - quality["prompt"]["stale"]["gauc"])
    none_loss = quality["none"]["fresh"]["gauc"] - quality["none"]["stale"]["gauc"]
    assert none_loss > max(0.0005, 5 * prompt_loss), (none_loss, prompt_loss)


def test_a_cached_user_vector_is_scored_at_its_age(checkpoint):
    """A request that took its user vector from the user-vector cache is shadow-scored with the user side as it
    was when that vector was made."""
    nearline = {"refresh": {"mode": "periodic", "interval_s": 0}}
    recorder = _shadow_run(
        checkpoint,
        0.05,
        2,
        5,
        nearline,
        200,
        caches={"user_vector": {"capacity": 10_000}},
        users={"count": 20, "zipf_s": 1.0},
        items={"count": 10_000, "zipf_s": 0.9},
    )
    samples = recorder.shadow_samples
    cached = [s for s in samples if s.user_vector_s is not None]
    assert len(cached) > 100 and all(s.user_vector_s < s.t_s for s in cached)
    assert sum(s.t_s - s.user_vector_s for s in cached) / len(cached) > 600  # vectors made long before use
    assert recorder.summary()["quality"]["scored_requests"] == len(samples)


def test_the_compiled_engine_takes_the_simpy_engines_shadow_samples(checkpoint):
    """Shadow sampling with item updates, periodic refresh, a cached user vector and a micro-batched user side:
    the compiled engine takes the same requests, candidates, vector times and versions and user-vector ages."""
    stages = {
        name: {"servers": 2, "latency": {"dist": "exponential", "mean_ms": 2}} for name in ("merger", "retrieval", "item_fetch", "rtp")
    }
    stages["user_inference"] = {"servers": 1, "latency": {"dist": "exponential", "mean_ms": 3}, "batch": {"max_size": 4, "max_wait_ms": 2}}
    model = {"checkpoint": str(checkpoint), "shadow_rate": 0.3, "shadow_candidates": 100, "shadow_requests": 60}
    refresh = {"mode": "periodic", "interval_s": 4, "workers": 2, "latency": {"dist": "constant", "ms": 1}}
    nearline = {"item_updates_per_s": 50, "refresh": refresh}
    caches = {"user_vector": {"capacity": 200, "ttl_s": 3}}
    data = scenario_dict(stages, pipelines=["aif"], qps=30, duration_s=20, seed=4, nearline=nearline, model=model, caches=caches)
    data["traffic"]["items"] = {"count": 10_000, "zipf_s": 0.9}
    scenario = validate_scenario(data, "<test>")
    samplers = build_samplers(scenario, "<test>")
    simpy = simulate(scenario, samplers, engine="simpy")["aif"].shadow_samples
    compiled = simulate(scenario, samplers, engine="compiled")["aif"].shadow_samples
    assert len(simpy) == 60 and any(s.user_vector_s is not None for s in simpy)
    assert_same_samples(compiled, simpy)


def _simulated_stale(scenario, samples) -> np.ndarray:
    """Per scored candidate, whether the simulator changed its item after its vector was made and before it was
    read, from the run's item changes (`core.changes`) alone."""
    changes = list(item_changes(scenario))
    times = np.concatenate([c.times_s for c in changes])
    ranks = np.concatenate([c.first for c in changes])
    order = np.lexsort((times, ranks))
    times, ranks = times[order], ranks[order]
    verdicts = []
    for s in samples:
        lo = np.searchsorted(ranks, s.items)
        hi = np.searchsorted(ranks, s.items, side="right")
        # the number of the item's changes at or before t, minus those at or before its vector time
        at = [np.searchsorted(times[a:b], x, side="right") for a, b, x in zip(lo, hi, np.broadcast_to(s.t_s, s.items.shape))]
        before = [np.searchsorted(times[a:b], m, side="right") for a, b, m in zip(lo, hi, s.made_s)]
        verdicts.append(np.array(at) > np.array(before))
    return np.concatenate(verdicts)


def test_the_scored_world_changes_the_simulators_items_at_the_simulators_times(checkpoint):
    """One change process: a scored candidate's world item changed between its vector's time and the read exactly
    when the simulator changed the simulated item it stands for in that interval."""
    refresh = {"mode": "periodic", "interval_s": 1800, "workers": 8, "latency": {"dist": "constant", "ms": 0.001}}
    nearline = {"item_updates_per_s": 20, "refresh": refresh}
    scenario = _shadow_scenario(checkpoint, 0.05, 2, 7, nearline, 200, items={"count": 100_000, "zipf_s": 0.9})
    recorder = _scored(scenario)
    samples = recorder.shadow_samples
    scorer = shadow_scorer(scenario)
    simulated = _simulated_stale(scenario, samples)
    world = np.concatenate([scorer.item_changed(s.items, s.made_s, s.t_s) for s in samples])
    assert 0.05 < simulated.mean() < 0.95
    np.testing.assert_array_equal(world, simulated)
    assert recorder.summary()["quality"]["stale_fraction"] == pytest.approx(world.mean(), abs=1e-12)


def test_scored_and_simulated_stale_fractions_agree_on_alike_candidates(checkpoint):
    """With items equally popular (so equally likely to change), the stale share of the shadow-scored candidates
    (retrieval's) and of the simulator's own staleness sample estimate the same probability: they agree within
    sampling error (per-request shares, as the candidates of one request share its read time)."""
    refresh = {"mode": "periodic", "interval_s": 1800, "workers": 8, "latency": {"dist": "constant", "ms": 0.001}}
    nearline = {"item_updates_per_s": 30, "refresh": refresh}
    scenario = _shadow_scenario(checkpoint, 0.1, 3, 8, nearline, 150, items={"count": 100_000, "zipf_s": 0.0})
    recorder = _scored(scenario)
    summary = recorder.summary()
    shares = np.array([np.mean(s.made_s < s.t_s) for s in recorder.shadow_samples])  # any nonzero age
    scorer = shadow_scorer(scenario)
    per_request = np.array(
        [
            scorer.world.changed_between(scorer.world_items(s.items), scorer.world_time(s.made_s), scorer.world_time(s.t_s)).mean()
            for s in recorder.shadow_samples
        ]
    )
    assert shares.mean() > 0.5
    scored, simulated = summary["quality"]["stale_fraction"], summary["staleness"]["stale_fraction"]
    assert scored == pytest.approx(per_request.mean(), abs=1e-12)
    assert 0.05 < simulated < 0.95
    error = per_request.std(ddof=1) / np.sqrt(len(per_request))  # the scored share's; the simulator's sample is larger
    assert abs(scored - simulated) < 4 * error * np.sqrt(2), (scored, simulated, error)


def test_fresh_gauc_on_retrieved_candidates_is_the_models_held_out_gauc(checkpoint):
    """Shadow candidates drawn as the world's retrieval draws them: with the held-out requests' users (uniform),
    window (the 6 hours after training) and candidate count, fresh GAUC equals the model's held-out GAUC within
    the sampling error of both (cluster bootstrap by user)."""
    ckpt = load_checkpoint(checkpoint)
    world = World(ckpt.world_config)
    test = world.requests("test")
    held_out = score(ckpt.model, world, test)
    users = np.broadcast_to(test.users[:, None], test.labels.shape)
    constant = np.zeros(test.labels.shape)
    expected = paired_gauc_difference(users, test.labels, held_out, constant, np.random.default_rng(0))  # GAUC - 0.5, with its error
    c = world.cfg
    scenario = _shadow_scenario(
        checkpoint,
        c.test_requests / (c.test_end_s - c.train_end_s),
        (c.test_end_s - c.train_end_s) / 3600,
        9,
        {"refresh": {"mode": "periodic", "interval_s": 0}},
        c.test_candidates,
        users={"count": c.n_users, "zipf_s": 0.0},
        items={"count": c.n_items, "zipf_s": 0.0},
    )
    samples = _scored(scenario).shadow_samples
    assert len(samples) > 0.8 * c.test_requests and all(len(np.unique(s.items)) == c.test_candidates for s in samples)
    scorer = shadow_scorer(scenario)
    scored = [scorer.score(s.user, s.t_s, s.items, s.made_s, s.versions, 0, rng=np.random.default_rng(i)) for i, s in enumerate(samples)]
    groups = np.concatenate([np.full(len(r.labels), r.user_rank) for r in scored])
    labels = np.concatenate([r.labels for r in scored])
    fresh = np.concatenate([r.fresh for r in scored])
    measured = paired_gauc_difference(groups, labels, fresh, np.zeros(len(fresh)), np.random.default_rng(1))
    error = np.hypot(expected["se"], measured["se"])
    assert abs(measured["mean"] - expected["mean"]) < 4 * error, (measured, expected)
    assert 0.55 < measured["mean"] + 0.5  # a model that ranks, not noise


def _scenario_file(tmp_path, checkpoint, **changes) -> str:
    stages = {name: negligible() for name in ("merger", "retrieval", "user_inference", "item_fetch", "rtp")}
    model = {"checkpoint": str(checkpoint), "shadow_rate": 1.0, "shadow_candidates": 200, "shadow_requests": 10}
    data = scenario_dict(stages, pipelines=["aif"], qps=0.01, duration_s=3600, model=model, nearline={"item_updates_per_s": 1})
    data["traffic"]["items"] = {"count": 10_000, "zipf_s": 0.9}
    for key, value in changes.items():
        section, field = key.split("__")
        data[section][field] = value
    path = tmp_path / "shadow.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model__shadow_candidates": 2001}, "model.shadow_candidates: 2001: the world has 2000 items"),
        ({"traffic__items": {"count": 1000, "zipf_s": 0.9}}, "traffic.items.count: 1000"),
    ],
)
def test_shadow_inputs_the_world_cannot_serve_are_refused_in_one_line(checkpoint, tmp_path, capsys, changes, message):
    assert message in refused([_scenario_file(tmp_path, checkpoint, **changes), "--quiet"], tmp_path / "out", capsys)


def test_a_run_past_the_worlds_horizon_is_refused_in_one_line(checkpoint, tmp_path, capsys):
    """The world's users stop behaving at its horizon: a longer run is refused, naming the field."""
    horizon = load_checkpoint(checkpoint).world_config.horizon_s - load_checkpoint(checkpoint).trained_until_s
    path = _scenario_file(tmp_path, checkpoint)
    err = refused([path, "--quiet", "--set", f"duration_s={horizon}"], tmp_path / "out", capsys)
    assert err.startswith(f"aif-sim: error: {path}: duration_s: the run lasts")
