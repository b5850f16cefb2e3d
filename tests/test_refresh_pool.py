"""One refresh pool per nearline store (`core.refresh`): its capacity is conserved across on-update refresh,
periodic passes and rollouts, an overrunning pass becomes a continuous sweep, and vectors carry the time their
features were read and the version that made them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aif_sim.app.run import build_samplers, simulate
from aif_sim.core.changes import ChangeChunk
from aif_sim.core.latency import build_sampler
from aif_sim.core.nearline import NearlineStore, Sweep
from aif_sim.core.refresh import RefreshPool
from aif_sim.scenario import validate_scenario
from aif_sim.scenario.schema import Refresh
from tests.simtools import negligible, run_summaries, scenario_dict

AIF = ("merger", "retrieval", "user_inference", "item_fetch", "rtp")


class _Heard:
    """A listener that keeps when each refresh and each sweep started."""

    def __init__(self) -> None:
        self.refreshes: list[float] = []
        self.sweeps: list[Sweep] = []
        self.now = 0.0

    def refreshing(self, entity: int) -> None:
        self.refreshes.append(self.now)

    def sweeping(self, sweep: Sweep) -> None:
        self.sweeps.append(sweep)


class _Driven:
    """A refresh pool resumed in time order up to each `advance(t)` (events before t), as an engine drives it."""

    def __init__(self, store: NearlineStore, changes: list[tuple[float, int]], refresh: Refresh, publish_s: float | None = None):
        self.store, self.heard, self.gauges = store, _Heard(), {}
        chunk = ChangeChunk(np.array([t for t, _ in changes]), np.array([e for _, e in changes]), np.array([e + 1 for _, e in changes]))
        sampler = build_sampler(refresh.latency, "<test>")
        self.pool = RefreshPool("items", store, [chunk], refresh, sampler, publish_s, [], np.random.default_rng(0), self._gauge, self.heard)
        self.process = self.pool.run()
        self.wake = next(self.process).time_s

    def _gauge(self, name: str, second: float, value: float) -> None:
        self.gauges.setdefault(name, {})[second] = value

    def advance(self, t: float) -> None:
        while self.wake < t:
            self.heard.now = self.wake
            self.wake = next(self.process).time_s
        self.heard.now = t


def _refresh(mode: str, workers: int, ms: float, **extra) -> Refresh:
    return Refresh(mode=mode, workers=workers, latency={"dist": "constant", "ms": ms}, **extra)


def _aif(items: int, nearline: dict, qps: float, duration_s: float, warmup_s: float, zipf_s: float = 0.9) -> dict:
    data = scenario_dict({name: negligible() for name in AIF}, pipelines=["aif"], qps=qps, duration_s=duration_s, warmup_s=warmup_s)
    data["traffic"]["items"] = {"count": items, "zipf_s": zipf_s}
    data["nearline"] = nearline
    return data


# --- capacity ------------------------------------------------------------------------------------------
def test_a_pass_longer_than_its_interval_sweeps_continuously():
    """10^5 items, one 1 ms worker, a pass due every 10 s: a pass takes 100 s, so passes run back to back and a
    vector is re-made every 100 s: mean age 50 s (pass / 2), not 5 s (interval / 2); each pass overruns its
    interval by 90 s and the worker is never idle after the first pass begins."""
    nearline = {"refresh": {"mode": "periodic", "interval_s": 10, "workers": 1, "latency": {"dist": "constant", "ms": 1}}}
    summary = run_summaries(validate_scenario(_aif(100_000, nearline, qps=20, duration_s=510, warmup_s=110), "<test>"))["aif"]
    staleness = summary["staleness"]
    assert staleness["item_vector_age_s"]["mean"] == pytest.approx(50.0, rel=0.05)
    assert staleness["item_vector_age_s"]["max"] <= 100.0 + 1e-3 + 1e-6
    assert staleness["sweep_overrun_s"] == pytest.approx(90.0, abs=1e-6)
    assert staleness["refresh_utilization"] == pytest.approx(1 - 10 / 510, abs=0.003)  # idle only for the first 10 s


def test_the_t_over_2_age_holds_where_capacity_allows():
    """The same catalogue and interval with a pass of 1 s (100 workers): passes begin every 10 s, so each entity
    is re-made every 10 s (at the same offset into each pass): mean age T/2 = 5 s, no overrun, utilization the
    pass's share of the interval (1 s in 10 s)."""
    nearline = {"refresh": {"mode": "periodic", "interval_s": 10, "workers": 100, "latency": {"dist": "constant", "ms": 1}}}
    summary = run_summaries(validate_scenario(_aif(100_000, nearline, qps=20, duration_s=210, warmup_s=10), "<test>"))["aif"]
    staleness = summary["staleness"]
    assert staleness["item_vector_age_s"]["mean"] == pytest.approx(5.0, rel=0.05)
    assert staleness["sweep_overrun_s"] == 0.0
    assert staleness["refresh_utilization"] == pytest.approx(0.1, abs=0.01)


def test_a_rollout_pauses_on_update_refresh_and_the_pool_never_exceeds_its_capacity():
    """2 workers of 2 ms (1,000 re-inferences a second), 700 changes a second over 5,000 items, a model version
    every 20 s whose rollout takes 5,000 / 1,000 = 5 s. Counted in 0.5 s windows, per-entity refreshes plus the
    entities sweeps reach never exceed what the workers can do; no per-entity refresh starts during a rollout, so
    the backlog grows then and drains afterwards (the rollout takes its full length, on-update refresh waits)."""
    rng = np.random.default_rng(3)
    times = np.cumsum(rng.exponential(1 / 700, 45_000))
    changes = [(float(t), int(e)) for t, e in zip(times[times < 60], rng.integers(0, 5000, 45_000))]
    driven = _Driven(NearlineStore(5000), changes, _refresh("on_update", 2, 2.0), publish_s=20.0)
    driven.advance(60.0)
    heard = driven.heard
    starts = np.array(heard.refreshes)
    assert [s.start_s for s in heard.sweeps] == pytest.approx([20.0, 40.0], abs=0.002)  # after the refreshes in flight
    for sweep in heard.sweeps:
        assert sweep.rollout and sweep.end_s - sweep.start_s == pytest.approx(5.0)
        during = (starts >= sweep.start_s) & (starts < sweep.end_s)
        assert not during.any()
    edges = np.arange(0, 60.001, 0.5)
    work = np.histogram(starts, edges)[0].astype(float)
    for sweep in heard.sweeps:
        reached = sweep.start_s + np.arange(sweep.count) / sweep.rate
        work += np.histogram(reached, edges)[0]
    assert work.max() <= 1000 * 0.5 + 2  # two workers, a refresh each in flight at a window's start
    assert work[(edges[:-1] >= 2) & (edges[:-1] < 18)].mean() == pytest.approx(700 * 0.5 * (1 - 0.02), rel=0.06)  # keeps up
    backlog = driven.gauges["refresh_backlog"]
    assert backlog[24.0] > 2000 and backlog[19.0] < 50 and backlog[35.0] < 50  # grows in the rollout, drains after
    used = driven.gauges["refresh_utilization"]
    assert max(used.values()) <= 1.0 + 1e-9 and used[22.0] == pytest.approx(1.0)


# --- versions and times --------------------------------------------------------------------------------
def test_a_vector_is_stamped_when_its_features_were_read_and_shown_when_its_inference_ends():
    """One 0.5 s worker: entity 3 changes at 1.0 (read at once, written at 1.5) and again at 1.2, during that
    inference: the vector written at 1.5 is stale, and a second refresh reads it at 1.5 (written at 2.0)."""
    store = NearlineStore(10)
    driven = _Driven(store, [(1.0, 3), (1.2, 3)], _refresh("on_update", 1, 500.0))
    entity = np.array([3])
    driven.advance(1.4)
    assert store.read(entity, 1.4)[0][0] == 0.0  # still the vector made at time 0
    driven.advance(1.6)
    made, _ = store.read(entity, 1.6)
    assert made[0] == 1.0 and store.changed_s[3] == 1.2  # stale: changed after its features were read
    driven.advance(2.1)
    made, _ = store.read(entity, 2.1)
    assert made[0] == 1.5 and store.changed_s[3] < made[0]
    assert driven.heard.refreshes == [1.0, 1.5]


def test_a_sweep_reads_entity_i_at_start_plus_i_over_rate_and_writes_it_one_slot_later():
    store = NearlineStore(100)
    driven = _Driven(store, [], _refresh("periodic", 1, 10.0, interval_s=5))  # 100 entities a second
    driven.advance(5.2)
    made, version = store.read(np.array([0, 18, 19, 20, 99]), 5.2)
    assert made.tolist() == [5.0, 5.18, 5.19, 0.0, 0.0]  # 19 is written at 5.2; 20 is read at 5.2
    assert version.tolist() == [0] * 5


@pytest.mark.parametrize("policy", ["consistent", "latest"])
def test_a_refresh_keeps_the_version_that_made_it(policy):
    """A refresh in flight when a version is published finishes with the old version (the rollout waits for it);
    under `consistent` nothing of the new version is read before the rollout is complete, and nothing is
    relabelled: after it, every vector is the new version's, stamped by the rollout."""
    store = NearlineStore(10, consistent=policy == "consistent")
    driven = _Driven(store, [(9.9, 7)], _refresh("on_update", 1, 200.0), publish_s=10.0)  # in flight 9.9 .. 10.1
    driven.advance(10.05)
    assert store.sweep is None  # the rollout waits for the refresh in flight
    driven.advance(10.15)
    assert store.sweep is not None and store.sweep.start_s == pytest.approx(10.1) and store.version[7] == 0
    start, rate = store.sweep.start_s, store.sweep.rate  # 1 worker of 200 ms: 5 a second, a rollout of 2 s
    made, version = store.read(np.array([0, 7, 9]), start + 2 / rate + 1e-9)
    if policy == "consistent":
        assert store.serving_version == 0 and version.tolist() == [0, 0, 0] and made[1] == 9.9
    else:
        assert store.serving_version == 1 and version.tolist() == [1, 0, 0] and made[0] == start
    driven.advance(start + 10 / rate + 1e-6)
    made, version = store.read(np.arange(10), start + 10 / rate + 1e-6)
    assert store.serving_version == 1 and (version == 1).all() and made[7] == start + 7 / rate


def test_versions_published_during_a_rollout_give_way_to_the_newest():
    """A rollout of 25 s (one 1 ms worker, 25,000 entities) and a version every 10 s: the versions of 20 s and
    30 s are published while the first rollout runs; only the newest (3) is rolled out, when it ends."""
    store = NearlineStore(25_000)
    driven = _Driven(store, [], _refresh("on_update", 1, 1.0), publish_s=10.0)
    driven.advance(36.0)
    assert [(s.start_s, s.version) for s in driven.heard.sweeps] == [(10.0, 1), (35.0, 3)]


def test_overlapping_passes_no_longer_exceed_the_catalogue_rate():
    """The issue's case: 10^5 items, one 1 ms worker, a pass due every 10 s; over 300 s the pool re-infers at
    most 1,000 entities a second (the old model started a pass every 10 s beside the running ones)."""
    driven = _Driven(NearlineStore(100_000), [], _refresh("periodic", 1, 1.0, interval_s=10))
    driven.advance(300.0)
    sweeps = driven.heard.sweeps
    assert [s.start_s for s in sweeps] == pytest.approx([10.0, 110.0, 210.0])
    assert all(math.isclose(s.rate, 1000.0) for s in sweeps)


@pytest.mark.parametrize("policy", ["latest", "consistent"])
def test_cached_user_vectors_of_an_old_version_are_invalidated_at_the_switch(policy):
    """50 users, a user-vector cache that holds them all, a new model version every 10 s (rolled out at once:
    no refresh workers): each user misses once at the start and once after each switch of the serving version
    (10 s and 20 s), on both engines alike. A request arriving while its user's inference runs misses too."""
    stages = {name: negligible() for name in AIF}
    stages["user_inference"] = {"servers": 1000, "latency": {"dist": "constant", "ms": 5}}
    data = scenario_dict(stages, pipelines=["aif"], qps=300, duration_s=30.0, caches={"user_vector": {"capacity": 100_000}})
    data["traffic"]["users"] = {"count": 50, "zipf_s": 0.5}
    data["nearline"] = {"model_publish_interval_s": 10, "version_policy": policy}
    scenario = validate_scenario(data, "<test>")
    samplers = build_samplers(scenario, "<test>")
    caches = [simulate(scenario, samplers, engine=engine)["aif"].summary()["caches"]["user_vector"] for engine in ("simpy", "compiled")]
    assert caches[0] == caches[1]
    assert 150 <= caches[0]["misses"] < 210
