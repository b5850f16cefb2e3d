"""Shadow scoring of UIC's user-interest vectors: the light model scores simulated UIC requests with the
user-interest vector the nearline users store had (made when the user's features were read) and with one made
at the request, in a world whose users behave at the simulator's own user events."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from aif_sim.app.quality import score_shadow_samples, shadow_scorer
from aif_sim.app.run import build_samplers, simulate
from aif_sim.cli import main
from aif_sim.core.changes import user_changes
from aif_sim.scenario import validate_scenario
from tests.simtools import assert_same_samples, negligible, refused, scenario_dict

UIC = ("merger", "retrieval", "feature_fetch", "light_prerank")
PROMPT = {"mode": "on_update", "workers": 8, "latency": {"dist": "constant", "ms": 0.001}}


@pytest.fixture(scope="module")
def light(tmp_path_factory):
    out = tmp_path_factory.mktemp("light")
    assert main(["train", "--model", "light", "--preset", "tiny", "--seed", "0", "--out", str(out)]) == 0
    return out / "checkpoint.pt"


def _scenario(light, hours: float, seed: int, nearline: dict, qps: float = 0.02, requests: int = 300, **populations):
    """A UIC scenario of zero-time stages whose every request (up to `requests`) is shadow-scored on 150 candidates;
    the tiny world's 300 users (uniform unless `users` says otherwise), 10^4 items."""
    stages = {name: negligible() for name in UIC}
    model = {"light_checkpoint": str(light), "shadow_rate": 1.0, "shadow_candidates": 150, "shadow_requests": requests}
    data = scenario_dict(stages, pipelines=["uic"], qps=qps, duration_s=hours * 3600.0, seed=seed, nearline=nearline, model=model)
    data["traffic"]["users"] = populations.get("users", {"count": 300, "zipf_s": 0.0})
    data["traffic"]["items"] = {"count": 10_000, "zipf_s": 0.9}
    return validate_scenario(data, "<test>")


def _scored(scenario, engine: str = "auto"):
    results = simulate(scenario, build_samplers(scenario, "<test>"), engine=engine)
    score_shadow_samples(scenario, results)
    return results["uic"]


def _events_by_rank(scenario) -> dict[int, np.ndarray]:
    """The simulator's user events (`core.changes.user_changes`), per user rank: their times."""
    chunks = list(user_changes(scenario))
    times = np.concatenate([c.times_s for c in chunks])
    ranks = np.concatenate([c.first for c in chunks])
    assert np.array_equal(np.concatenate([c.stop for c in chunks]), ranks + 1)  # one user per event
    order = np.argsort(ranks, kind="stable")
    ranks, times = ranks[order], times[order]
    bounds = np.searchsorted(ranks, np.arange(ranks.max() + 2))
    return {r: times[bounds[r] : bounds[r + 1]] for r in range(ranks.max() + 1)}


def test_the_scored_users_behave_at_the_simulators_user_events(light):
    """One change process for users: a scored user's events are exactly the simulator's events of its rank
    (shifted to world time), so its stored vector is stale in the scored world exactly when the simulator says so;
    the scored stale share estimates the simulator's own over all reads."""
    refresh = {"mode": "periodic", "interval_s": 1800, "workers": 4, "latency": {"dist": "constant", "ms": 0.001}}
    # 1,000 simulated users on the world's 300: ranks share world users and keep their own events
    scenario = _scenario(light, 3, 11, {"user_events_per_s": 0.5, "user_refresh": refresh}, qps=0.05, users={"count": 1000, "zipf_s": 0.8})
    recorder = _scored(scenario)
    samples = recorder.shadow_samples
    assert len(samples) == 300 and all(s.store == "users" and s.user_vector_s <= s.t_s for s in samples)
    scorer = shadow_scorer(scenario)
    events = _events_by_rank(scenario)
    shared = {int(scorer.world_users(s.user)) for s in samples}
    assert len(shared) < len({s.user for s in samples})  # some sampled ranks share a world user
    for s in samples:
        np.testing.assert_array_equal(scorer.users.events(s.user), scorer.world_time(events.get(s.user, np.empty(0))))
    simulated = np.array(
        [np.any((events.get(s.user, np.empty(0)) > s.user_vector_s) & (events.get(s.user, np.empty(0)) <= s.t_s)) for s in samples]
    )
    world = np.array([scorer.user_changed(s.user, s.user_vector_s, s.t_s) for s in samples])
    summary = recorder.summary()
    assert 0.1 < simulated.mean() < 0.9
    np.testing.assert_array_equal(world, simulated)
    quality, staleness = summary["quality"], summary["staleness"]
    assert quality["user_stale_fraction"] == pytest.approx(world.mean(), abs=1e-12)
    assert quality["stale_fraction"] == 0.0  # UIC reads its candidates' features at the request
    ages = np.array([s.t_s - s.user_vector_s for s in samples])
    assert quality["user_vector_age_s"]["mean"] == pytest.approx(ages.mean()) and ages.max() <= 1800 + 1e-6
    error = np.sqrt(world.mean() * (1 - world.mean()) / len(world))  # the sample's; the simulator's is over all reads
    assert abs(quality["user_stale_fraction"] - staleness["stale_fraction"]) < 4 * error, (quality, staleness)


def test_user_vectors_refreshed_on_every_event_cost_nothing(light):
    """Prompt on-update refresh re-infers each user at its event: the stored vectors are the fresh ones and the
    GAUC loss is 0, inside its confidence interval."""
    recorder = _scored(_scenario(light, 4, 12, {"user_events_per_s": 1.0, "user_refresh": PROMPT}))
    quality = recorder.summary()["quality"]
    assert quality["scored_requests"] > 250 and quality["user_stale_fraction"] == 0.0
    assert quality["stale"] == quality["fresh"]
    loss = quality["gauc_loss"]
    assert loss["mean"] == 0.0 and loss["lo"] <= 0.0 <= loss["hi"]
    assert 0.55 < quality["fresh"]["gauc"]  # the light model ranks


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def test_without_refresh_stale_scores_drift_from_fresh_ones_as_the_vectors_age(light):
    """No user refresh: every user-interest vector is the one made at the start. A request whose user has not
    behaved since is scored exactly as with a fresh vector; the others' scores drift further from the fresh ones
    the more of the user's short sequence its events have replaced, so older vectors are staler and further off."""
    scenario = _scenario(light, 8, 13, {"user_events_per_s": 0.05}, qps=0.025, requests=600)
    recorder = _scored(scenario)
    samples = recorder.shadow_samples
    assert len(samples) > 500 and all(s.user_vector_s == 0.0 for s in samples)
    scorer = shadow_scorer(scenario)
    scored = [scorer.score_user_interest(s.user, s.t_s, s.items, 0.0, 0, 0, rng=np.random.default_rng(i)) for i, s in enumerate(samples)]
    events = np.array([np.count_nonzero(scorer.users.events(s.user) <= scorer.world_time(s.t_s)) for s in samples])
    stale = np.array([r.user_stale for r in scored])
    np.testing.assert_array_equal(stale, events > 0)
    drift = np.array([np.mean(np.abs(_logit(r.stale) - _logit(r.fresh))) for r in scored])
    assert np.all(drift[~stale] == 0) and np.all(drift[stale] > 0)
    ages = np.array([r.user_vector_age_s for r in scored])
    young, old = ages < 2 * 3600, ages > 5 * 3600
    assert stale[young].mean() < stale[old].mean()
    assert drift[young].mean() < drift[old].mean()
    few, many = (events > 0) & (events <= 2), events >= 5  # a sequence of 20 with a few items replaced, or a quarter
    assert drift[few].mean() < drift[many].mean(), (drift[few].mean(), drift[many].mean())
    quality = recorder.summary()["quality"]
    assert quality["user_stale_fraction"] == pytest.approx(stale.mean())
    loss = quality["gauc_loss"]
    assert loss["lo"] <= loss["mean"] <= loss["hi"] and loss["detectable"] > 0


def test_the_compiled_engine_takes_the_simpy_engines_uic_samples(light):
    """The compiled engine samples the same UIC requests, candidates and user-interest vector times."""
    stages = {name: {"servers": 2, "latency": {"dist": "exponential", "mean_ms": 2}} for name in UIC}
    model = {"light_checkpoint": str(light), "shadow_rate": 0.3, "shadow_candidates": 100, "shadow_requests": 60}
    refresh = {"mode": "on_update", "workers": 1, "latency": {"dist": "exponential", "mean_ms": 40}}
    nearline = {"user_events_per_s": 40, "user_refresh": refresh}
    data = scenario_dict(stages, pipelines=["uic"], qps=30, duration_s=20, seed=4, nearline=nearline, model=model)
    data["traffic"]["items"] = {"count": 10_000, "zipf_s": 0.9}
    scenario = validate_scenario(data, "<test>")
    samplers = build_samplers(scenario, "<test>")
    simpy = simulate(scenario, samplers, engine="simpy")["uic"].shadow_samples
    compiled = simulate(scenario, samplers, engine="compiled")["uic"].shadow_samples
    assert len(simpy) == 60 and any(s.user_vector_s < s.t_s for s in simpy)
    assert_same_samples(compiled, simpy)


def _scenario_file(tmp_path, model: dict) -> str:
    stages = {name: negligible() for name in UIC}
    data = scenario_dict(stages, pipelines=["uic"], qps=0.01, duration_s=3600, model=model, nearline={"user_events_per_s": 1})
    data["traffic"]["items"] = {"count": 10_000, "zipf_s": 0.9}
    path = tmp_path / "uic.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.fixture(scope="module")
def aif(tmp_path_factory):
    out = tmp_path_factory.mktemp("aif")
    assert main(["train", "--model", "aif", "--preset", "tiny", "--seed", "0", "--epochs", "1", "--out", str(out)]) == 0
    return out / "checkpoint.pt"


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"checkpoint": "AIF", "shadow_rate": 1.0}, "model.light_checkpoint: pipeline uic reads user-interest vectors"),
        ({"light_checkpoint": "AIF", "shadow_rate": 1.0}, "holds the aif model; expected the light model"),
    ],
)
def test_uic_shadow_inputs_the_light_model_cannot_serve_are_refused_in_one_line(aif, tmp_path, capsys, model, message):
    path = _scenario_file(tmp_path, {key: str(aif) if value == "AIF" else value for key, value in model.items()})
    assert message in refused([path, "--quiet"], tmp_path / "out", capsys)
