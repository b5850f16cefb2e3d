"""A run's output folder, written atomically.

Files are written into a temporary folder beside the target and the folder is renamed into place
when complete: a failed run leaves nothing, an interrupted one what it validly wrote, and a reused
`--out` keeps no file of the older run. Every output folder holds a marker file (`MARKER`); an existing
`--out` is replaced only when it is empty or holds the marker (an aif-sim output), or with `--force`, and
never when it is the current folder or one that contains it. Without `--out` the folder is
`results/<scenario>/<UTC time>`, suffixed `-2`, `-3`, … when that name is taken (two runs never share a folder).
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

from aif_sim import __version__
from aif_sim.errors import InputError

MARKER = ".aif-sim-output"


def check_replaceable(target: Path, force: bool) -> None:
    """Refuse an `--out` whose replacement would lose what aif-sim did not write, or that cannot be replaced."""
    where = target.absolute()
    if Path.cwd().resolve().is_relative_to(where.resolve()):
        raise InputError(f"--out {target}: is the current folder or contains it; give a new folder or an earlier output folder")
    if not where.exists():
        return
    if not where.is_dir():
        raise InputError(f"--out {target}: exists and is not a folder")
    entries = sorted(p.name for p in where.iterdir())
    if entries and MARKER not in entries and not force:
        shown = ", ".join(entries[:3]) + (", …" if len(entries) > 3 else "")
        raise InputError(
            f"--out {target}: exists and holds files aif-sim did not write ({shown}); "
            "give a new folder, or --force to replace it with everything in it"
        )


def default_folder(scenario_name: str) -> Path:
    return Path("results") / scenario_name / datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


class OutputFolder:
    """`with OutputFolder(target, explicit) as folder:` write under `folder.path`, then `folder.commit()`."""

    def __init__(self, target: Path, explicit: bool, force: bool = False) -> None:
        if explicit:
            check_replaceable(target, force)
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
        (self.path / MARKER).write_text(f"written by aif-sim {__version__}; a later run with --out here replaces this folder\n")
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
