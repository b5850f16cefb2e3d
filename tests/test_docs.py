"""README.md describes what the tool does: every command-line option, every union member with its tag, every output file."""

from __future__ import annotations

import argparse
import re
import typing
from pathlib import Path

import pytest

from aif_sim.cli import build_parser, main
from aif_sim.scenario import schema
from tests.simtools import scenario_dict, small_stages, write_yaml

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.S | re.M)
    assert match, title
    return match.group(1)


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    actions = build_parser()._subparsers._group_actions  # type: ignore[union-attr]
    return dict(next(a for a in actions if isinstance(a, argparse._SubParsersAction)).choices)


@pytest.mark.parametrize("command", ["run", "compare", "sweep", "plan", "live", "validate"])
def test_every_option_of_the_simulator_commands_is_in_the_readme(command):
    options = {o for a in _subcommands()[command]._actions for o in a.option_strings if o.startswith("--") and o != "--help"}
    missing = sorted(o for o in options if not re.search(rf"{re.escape(o)}\b", README))
    assert not missing, f"{command}: {missing}"


@pytest.mark.parametrize("union", [schema.ArrivalSpec, schema.LatencySpec, schema.CandidateSpec, schema.Fault])
def test_the_field_table_writes_each_union_member_with_its_tag(union):
    members, field = typing.get_args(union)
    tag = field.discriminator
    table = _section("Scenario file")
    for member in typing.get_args(members):
        (value,) = typing.get_args(member.model_fields[tag].annotation)
        assert f"{{{tag}: {value}" in table, f"{tag}: {value}"


def test_every_file_a_run_writes_is_in_the_outputs_list(tmp_path):
    stages = small_stages({"servers": 16, "latency": {"dist": "gamma", "mean_ms": 10, "cv": 0.3}})
    data = scenario_dict(stages, pipelines=["sequential", "aif"], qps=200, duration_s=2.0, warmup_s=0.5)
    out = tmp_path / "out"
    assert main([str(write_yaml(tmp_path / "s.yaml", data)), "--out", str(out), "--quiet"]) == 0
    outputs = _section("Outputs (in the run's folder)")
    missing = sorted(p.name for p in out.iterdir() if f"`{p.name}`" not in outputs and not p.name.startswith("."))
    assert not missing, missing
