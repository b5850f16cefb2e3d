"""The layering rules of the architecture, read from the imports of every module of the package."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "aif_sim"


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(module, at top level) for every import in a file."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, id(node) in top))
    return found


def _modules() -> dict[str, list[tuple[str, bool]]]:
    return {str(path.relative_to(PACKAGE.parent)): _imports(path) for path in sorted(PACKAGE.rglob("*.py"))}


def _uses(module: str, names: tuple[str, ...]) -> bool:
    return any(module == name or module.startswith(name + ".") for name in names)


def test_the_rules_see_every_module():
    modules = _modules()
    assert len(modules) > 30 and any(m.startswith("aif_sim/sim/") for m in modules) and any(m.startswith("aif_sim/core/") for m in modules)


def test_layering_rules():
    broken = []
    for file, imports in _modules().items():
        area = file.split("/")[1] if file.count("/") > 1 else ""
        for module, top_level in imports:
            if _uses(module, ("simpy",)) and area != "sim":
                broken.append(f"{file}: simpy outside aif_sim/sim/")
            if _uses(module, ("asyncio", "aiocache")) and area != "live":
                broken.append(f"{file}: {module} outside aif_sim/live/")
            engines = {"sim", "compiled", "live"}
            if area in engines and _uses(module, tuple(f"aif_sim.{other}" for other in engines - {area})):
                broken.append(f"{file}: the engines import each other ({module})")
            if area == "model" and _uses(module, ("aif_sim.sim", "aif_sim.live", "aif_sim.app", "simpy", "asyncio")):
                broken.append(f"{file}: the model imports an engine ({module})")
            if area == "core" and _uses(
                module, ("aif_sim.sim", "aif_sim.live", "aif_sim.app", "aif_sim.metrics", "aif_sim.report", "aif_sim.model")
            ):
                broken.append(f"{file}: the core imports {module}")
            if _uses(module, ("torch",)) and area not in ("model", "live") and top_level:
                broken.append(f"{file}: torch imported at module level outside model/ and live/")
    assert not broken, "\n".join(broken)


def test_simulator_commands_do_not_import_torch():
    code = "import sys, aif_sim.cli; assert 'torch' not in sys.modules and 'simpy' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def _area(file: str) -> str:
    """The package of a module under aif_sim/ (a top-level module is its own)."""
    parts = file.split("/")
    return parts[1] if len(parts) > 2 else parts[1].removesuffix(".py")


def test_the_scenario_is_data_that_imports_no_other_package():
    """The scenario (schema, pipeline step language, shipped designs) is read by everything else and reads nothing of
    the simulator but its error type: the core's pipelines come from the scenario, never the other way round."""
    broken = [
        f"{file}: the scenario imports {module}"
        for file, imports in _modules().items()
        if _area(file) == "scenario"
        for module, _ in imports
        if _uses(module, ("aif_sim",)) and not _uses(module, ("aif_sim.scenario", "aif_sim.errors"))
    ]
    assert not broken, "\n".join(broken)


def test_no_two_packages_import_each_other():
    """No cycle between two packages of aif_sim (say, the scenario and the core)."""
    edges: set[tuple[str, str]] = set()
    for file, imports in _modules().items():
        for module, _ in imports:
            if module.startswith("aif_sim.") and module.split(".")[1] != _area(file):
                edges.add((_area(file), module.split(".")[1]))
    cycles = sorted(f"{a} <-> {b}" for a, b in edges if (b, a) in edges and a < b)
    assert not cycles, "\n".join(cycles)
