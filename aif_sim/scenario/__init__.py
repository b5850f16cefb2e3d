"""The scenario: its schema (pydantic) and its loading (YAML, overrides, one-line errors)."""

from aif_sim.scenario.loading import Override, ScenarioSource, load_scenario, parse_overrides, source_label, validate_scenario
from aif_sim.scenario.schema import Scenario

__all__ = ["Override", "Scenario", "ScenarioSource", "load_scenario", "parse_overrides", "source_label", "validate_scenario"]
