"""A run's output folder, written atomically.

Files are written into a temporary folder beside the target and the folder is renamed into place
when complete: a failed run leaves nothing, an interrupted one what it validly wrote, and a reused
`--out` keeps no file of the older run. Without `--out` the folder is `results/<scenario>/<UTC time>`,
suffixed `-2`, `-3`, … when that name is taken (two runs never share a folder).
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

from aif_sim.errors import InputError


def default_folder(scenario_name: str) -> Path:
    return Path("results") / scenario_name / datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


class OutputFolder:
    """`with OutputFolder(target, explicit) as folder:` write under `folder.path`, then `folder.commit()`."""

    def __init__(self, target: Path, explicit: bool) -> None:
        if target.exists() and not target.is_dir():
            raise InputError(f"--out {target}: exists and is not a folder")
        self.target, self.explicit = target, explicit
        self.created: list[Path] = []  # parent folders this run made (removed again if nothing lands)
        self.path = Path()
        self.final: Path | None = None

    def __enter__(self) -> OutputFolder:
        parent = self.target.parent.absolute()
        missing = [p for p in [parent, *parent.parents] if not p.exists()]
        parent.mkdir(parents=True, exist_ok=True)
        self.created = missing
        self.path = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.", suffix=".tmp", dir=parent))
        return self

    def commit(self) -> Path:
        """Move the finished folder into place; returns where it landed."""
        if self.explicit:
            self.final = self._replace(self.target)
        else:
            self.final = self._first_free(self.target)
        return self.final

    def _replace(self, target: Path) -> Path:
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent.absolute()))
            os.replace(target, old / "previous")
        os.replace(self.path, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return target

    def _first_free(self, target: Path) -> Path:
        for n in range(1, 10_000):
            candidate = target if n == 1 else target.with_name(f"{target.name}-{n}")
            try:
                if candidate.exists():
                    continue
                os.rename(self.path, candidate)
                return candidate
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
        raise OSError(f"no free output folder name beside {target}")

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.final is None:
            shutil.rmtree(self.path, ignore_errors=True)
            for folder in self.created:  # deepest first
                try:
                    folder.rmdir()
                except OSError:
                    break
