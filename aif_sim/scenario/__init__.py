"""The scenario: its schema (pydantic) and its loading (YAML, overrides, one-line errors)."""

from aif_sim.scenario.loading import Override, load_scenario, parse_overrides, validate_scenario
from aif_sim.scenario.schema import Scenario

__all__ = ["Override", "Scenario", "load_scenario", "parse_overrides", "validate_scenario"]
