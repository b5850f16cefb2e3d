"""Ctrl-C and SIGTERM as a flag that run loops poll, so an interrupted run can write what is valid."""

from __future__ import annotations

import signal
from types import FrameType, TracebackType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignal:
    """While active, SIGINT/SIGTERM set the flag (a second one interrupts at once); `exit_code` is
    128 + the signal number (130 for Ctrl-C, 143 for SIGTERM), or 0 when none came."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return 0 if self.signum is None else 128 + self.signum

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> StopSignal:
        self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def rearm(self) -> None:
        """Take the signals back from a library that replaced their handlers (Ray's `init` sets SIGTERM's)."""
        for s in SIGNALS:
            signal.signal(s, self._handle)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def ignore_in_worker() -> None:
    """Worker processes leave signals to their parent, which stops them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
