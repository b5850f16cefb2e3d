"""aif-sim: simulate sequential vs asynchronous (AIF) pre-ranking inference.

The Python API (`aif_sim.api`): `run`, `sweep` and `plan`, imported when first used, so that `import aif_sim` stays
light (no simulator, no torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aif_sim.errors import InputError

__version__ = "0.1.0"
__all__ = ["InputError", "__version__", "plan", "run", "sweep"]

if TYPE_CHECKING:
    from aif_sim.api import plan, run, sweep


def __getattr__(name: str) -> Any:
    if name in ("run", "sweep", "plan"):
        from aif_sim import api

        return getattr(api, name)
    raise AttributeError(f"module 'aif_sim' has no attribute {name!r}")
