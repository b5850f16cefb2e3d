"""Finished sweep points kept on disk by a hash of everything that determines them, so a repeated or an
interrupted sweep reruns only the points it does not have.

A point's key is the SHA-256 of: the resolved scenario (every field after overrides, with one pipeline), the
content of every file it reads (profiles, traces, empirical latencies, checkpoints) and the simulator's own
source code (every module of the package), so a changed input or a changed simulator never reuses a result.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from aif_sim.atomic import write_json
from aif_sim.scenario import Scenario

PACKAGE = Path(__file__).resolve().parents[1]


@functools.cache
def code_fingerprint() -> str:
    """The SHA-256 of the package's Python source, file by file in a fixed order."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        digest.update(str(path.relative_to(PACKAGE)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@functools.lru_cache(maxsize=256)
def _file_digest(path: Path, size: int, mtime_ns: int) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(node: Any) -> list[Path]:
    """Every file path held anywhere in a validated scenario."""
    if isinstance(node, Path):
        return [node]
    if isinstance(node, BaseModel):
        return [path for name in type(node).model_fields for path in _files(getattr(node, name))]
    if isinstance(node, list | tuple):
        return [path for item in node for path in _files(item)]
    if isinstance(node, dict):
        return [path for item in node.values() for path in _files(item)]
    return []


def point_key(scenario: Scenario) -> str:
    """The key of a one-pipeline point of a sweep (see the module docstring)."""
    files = {}
    for path in _files(scenario):
        stat = path.stat()
        files[str(path)] = _file_digest(path, stat.st_size, stat.st_mtime_ns)
    document = {"scenario": scenario.model_dump(mode="json"), "files": files, "code": code_fingerprint()}
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()


class PointCache:
    """METRICS blocks of finished points, one JSON file per key in `folder` (None: no cache)."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.hits = 0

    def get(self, key: str) -> dict[str, Any] | None:
        if self.folder is None:
            return None
        path = self.folder / f"{key}.json"
        try:
            metrics = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        self.hits += 1
        return metrics

    def put(self, key: str, metrics: dict[str, Any]) -> None:
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_json(self.folder / f"{key}.json", metrics)
