"""The hardware behind a run's times: this host's CPU, and the hardware each calibration profile was measured on.

Model stages timed by a profile take the times of the profile's hardware, not of the host that runs the simulator;
reports name that hardware and say once when it is not this host's (a verdict can hang on it: see `app.sensitivity`).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from aif_sim.core.latency import read_profile
from aif_sim.scenario.schema import ProfileLatency, Scenario

CALIBRATE_HERE = "python run_sim.py calibrate --device cpu --out profiles/cpu.json"


def cpu_name() -> str:
    """A readable description of this host's CPU: its model and logical CPUs."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model} ({os.cpu_count()} logical CPUs)"


def profile_paths(scenario: Scenario) -> list[Path]:
    """The calibration profiles the scenario's stages are timed by."""
    specs = [stage.latency for stage in scenario.stages.values()]
    return list(dict.fromkeys(spec.path for spec in specs if isinstance(spec, ProfileLatency)))


def hardware(scenario: Scenario) -> dict[str, Any]:
    """This host (`host`), each profile's hardware (`profiles`: path -> hardware) and whether any differs (`differs`)."""
    host = cpu_name()
    profiles = {str(path): str(read_profile(path).get("hardware", "unknown")) for path in profile_paths(scenario)}
    return {"host": host, "profiles": profiles, "differs": any(name != host for name in profiles.values())}


def hardware_note(block: dict[str, Any]) -> str | None:
    """One line when a profile was measured on other hardware than this host's, else None."""
    other = {path: name for path, name in block["profiles"].items() if name != block["host"]}
    if not other:
        return None
    measured = "; ".join(f"{path} on {name}" for path, name in other.items())
    return (
        f"model stages are timed as measured on other hardware ({measured}), not on this host ({block['host']}); "
        f"to time them here: {CALIBRATE_HERE}"
    )
