"""Vector stores of the scenario's own naming (`nearline.stores`): each has its own refresh pool over its entities'
changes, its own staleness figures, refresh bill and index memory, in every engine; bad declarations are refused."""

from __future__ import annotations

import json
from typing import Any

import pytest

from aif_sim.cli import main
from aif_sim.metrics.bill import memory_bytes, refresh_workers
from aif_sim.metrics.summary import headline_values
from aif_sim.scenario import validate_scenario
from tests.simtools import negligible, refused, run_summaries, scenario_dict, write_yaml

ITEMS = 20_000


def _periodic(interval_s: float, workers: int = 100, ms: float = 1.0) -> dict[str, Any]:
    return {"mode": "periodic", "interval_s": interval_s, "workers": workers, "latency": {"dist": "constant", "ms": ms}}


def _two_stores(duration_s: float = 130, warmup_s: float = 10) -> dict[str, Any]:
    """Two pipelines of one run: `pre` reads the shipped item store, passes every 4 s; `rank` reads its own store of
    items, `rank_vectors`, passes every 20 s. A pass of 20,000 items at 100 workers / 1 ms takes 0.2 s."""
    stages = {name: negligible() for name in ("fetch", "score")}
    pipelines = [
        {"name": "pre", "steps": [{"stage": "fetch", "vectors": "items"}, "score"]},
        {"name": "rank", "steps": [{"stage": "fetch", "vectors": "rank_vectors"}, "score"]},
    ]
    data = scenario_dict(stages, pipelines=pipelines, qps=40, duration_s=duration_s, warmup_s=warmup_s, drain_s=1.0)
    data["traffic"]["items"] = {"count": ITEMS, "zipf_s": 0.9}
    data["nearline"] = {
        "item_updates_per_s": 200,
        "refresh": _periodic(4),
        "stores": {"rank_vectors": {"entities": "items", "refresh": _periodic(20)}},
    }
    return data


def test_two_item_stores_on_different_intervals_give_their_own_ages_on_the_same_run():
    """A vector made at a pass's read of its entity is re-made one interval later: its age at a uniformly timed
    read is uniform on [0, T], mean T/2 (the pass is 5% of the shorter interval; each entity's offset into the pass
    is the same from pass to pass). Each store's pool bills its own busy time: the pass (0.2 s of 100 workers)
    once per interval, a utilization of 0.2 / T."""
    summaries = run_summaries(validate_scenario(_two_stores(), "<test>"))
    pre, rank = summaries["pre"]["staleness"], summaries["rank"]["staleness"]
    assert pre["item_vector_age_s"]["mean"] == pytest.approx(2.0, rel=0.05)
    assert rank["rank_vectors_vector_age_s"]["mean"] == pytest.approx(10.0, rel=0.05)
    assert rank["rank_vectors_vector_age_s"]["max"] <= 20.0 + 0.2 + 1e-6
    assert "item_vector_age_s" not in rank and "rank_vectors_vector_age_s" not in pre
    assert rank["item_updates"] == "on" and rank["rank_vectors_sweep_overrun_s"] == 0.0
    assert rank["rank_vectors_refresh_utilization"] == pytest.approx(0.2 / 20, abs=0.002)
    assert pre["refresh_utilization"] == pytest.approx(0.2 / 4, abs=0.005)
    # a store of items sees the item changes: the longer interval leaves more of its vectors behind them
    assert rank["stale_fraction"] > pre["stale_fraction"] > 0
    assert summaries["rank"]["compute"]["refresh:rank_vectors"]["busy_s"] == pytest.approx(0.2 * 100 * 6, rel=0.02)
    # compare and sweep show a named store's age as a headline of its own
    assert headline_values(summaries["rank"])["own_store_age_mean_s"] == rank["rank_vectors_vector_age_s"]["mean"]
    assert headline_values(summaries["pre"])["own_store_age_mean_s"] is None


def test_a_named_store_has_its_own_bill_and_index_memory():
    scenario = validate_scenario(_two_stores(), "<test>")
    assert refresh_workers(scenario, "rank") == {"refresh:rank_vectors": (100, 1.0)}
    assert memory_bytes(scenario, "rank") == {"index:rank_vectors": ITEMS * 512}
    assert refresh_workers(scenario, "pre") == {"refresh:items": (100, 1.0)}


def test_a_store_of_items_is_rolled_out_at_each_publication_a_store_of_users_is_not():
    """No entity changes; a model version published every 10 s (consistent policy). Each rollout re-infers the
    store of items (20,000 items at 100 workers / 1 ms: 0.2 s of every worker, 20 worker-seconds), and its index
    is held twice while it runs; the store of users is not re-inferred (its pool stays idle) and held once. The
    window (10, 40] holds the rollouts of 10, 20 and 30 s: 60 worker-seconds."""
    data = _two_stores(duration_s=40)
    data["nearline"] |= {"item_updates_per_s": 0, "model_publish_interval_s": 10}
    data["nearline"]["stores"]["rank_vectors"]["refresh"] = {"mode": "on_update", "workers": 100}
    data["nearline"]["stores"]["interest"] = {"entities": "users", "refresh": {"mode": "on_update", "workers": 100}}
    data["pipelines"].append({"name": "uic", "steps": [{"stage": "fetch", "vectors": "interest"}, "score"]})
    scenario = validate_scenario(data, "<test>")
    assert memory_bytes(scenario, "rank") == {"index:rank_vectors": ITEMS * 512 * 2}
    assert memory_bytes(scenario, "uic") == {"index:interest": 1000 * 512}
    summaries = run_summaries(scenario)
    assert summaries["rank"]["compute"]["refresh:rank_vectors"]["busy_s"] == pytest.approx(60.0, rel=1e-6)
    assert summaries["uic"]["compute"]["refresh:interest"]["busy_s"] == 0.0
    assert summaries["rank"]["staleness"]["version_mismatch_fraction"] == 0.0  # consistent: the old buffer is served
    ages = summaries["uic"]["staleness"]["interest_vector_age_s"]
    assert ages["mean"] > 10 and summaries["uic"]["staleness"]["user_events"] == "off"  # made at 0, never re-made


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d["pipelines"][1]["steps"][0].update(vectors="rank_vector"), "vectors: pipeline rank reads vector store 'rank_vector'"),
        (lambda d: d["pipelines"][1]["steps"][0].update(vectors="rank_vector"), "did you mean rank_vectors?"),
        (lambda d: d["nearline"]["stores"].update(users={"entities": "users", "refresh": _periodic(1)}), "'users' is a shipped store"),
    ],
)
def test_a_bad_store_is_refused_in_one_line(tmp_path, capsys, change, expected):
    data = _two_stores()
    change(data)
    err = refused(["run", str(write_yaml(tmp_path / "bad.yaml", data))], tmp_path / "out", capsys)
    assert expected in err and "bad.yaml" in err


def test_a_store_no_pipeline_reads_is_not_simulated_and_the_run_says_so(tmp_path):
    """`--set pipelines=[pre]` leaves `rank_vectors` unread: the run goes on, without its pool, and warns (summary.json
    keeps the warning)."""
    path = write_yaml(tmp_path / "two.yaml", _two_stores(duration_s=20))
    assert main(["run", str(path), "--set", "pipelines=[pre]", "--quiet", "--out", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["warnings"] == ["aif-sim: WARNING: nearline.stores.rank_vectors: no pipeline of the run reads it; it is not simulated"]
    assert list(summary["pipelines"]) == ["pre"] and "refresh:rank_vectors" not in summary["pipelines"]["pre"]["compute"]
