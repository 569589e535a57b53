"""A run that is alive but makes no progress (a stalled download, a wedged GPU) must fail, as the old fleet's
heartbeat monitor made it: Dagster's run monitoring only sees dead workers.

The shard loop says what it is waiting for and beats on every encoded segment; bytes arriving in the download
folder count as progress too. When nothing moved for ``timeout`` seconds, ``on_hang`` gets a message naming the
wait. The run loop's ``on_hang`` fails the run and ends the process, since a thread stuck in a socket read or a CUDA
call cannot be interrupted from Python.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType


def folder_bytes(path: Path | None) -> int:
    """Bytes of the files under ``path`` (0 when it does not exist); files vanishing meanwhile are skipped."""
    if path is None or not path.exists():
        return 0
    total = 0
    for item in path.rglob("*"):
        try:
            if item.is_file():
                total += item.stat().st_size
        except OSError:
            continue
    return total


class HangWatchdog:
    """Calls ``on_hang(message)`` once when neither a beat nor a byte in the watched folder came for ``timeout``
    seconds. Use as a context manager around the work."""

    def __init__(self, timeout: float, on_hang: Callable[[str], None], *, poll_seconds: float | None = None):
        if timeout <= 0:
            raise ValueError(f"hang timeout must be positive, got {timeout}")
        self.timeout = timeout
        self.on_hang = on_hang
        self.poll_seconds = poll_seconds or min(5.0, timeout / 10)
        self._lock = threading.Lock()
        self._last = time.monotonic()
        self._what = "the run to start"
        self._folder: Path | None = None
        self._folder_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.fired: str | None = None

    def beat(self) -> None:
        with self._lock:
            self._last = time.monotonic()

    def waiting_for(self, what: str, folder: Path | None = None) -> None:
        """Say what the loop waits for now (it counts as progress); growth of ``folder`` keeps it alive."""
        with self._lock:
            self._what, self._folder = what, folder
            self._folder_bytes = folder_bytes(folder)
            self._last = time.monotonic()

    def _idle_seconds(self) -> float:
        with self._lock:
            folder, seen = self._folder, self._folder_bytes
        now_bytes = folder_bytes(folder)
        with self._lock:
            if now_bytes != seen:
                self._folder_bytes, self._last = now_bytes, time.monotonic()
            return time.monotonic() - self._last

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            idle = self._idle_seconds()
            if idle >= self.timeout:
                with self._lock:
                    what = self._what
                self.fired = f"no progress for {idle:.0f} s (limit {self.timeout:g} s) while waiting for {what}"
                self.on_hang(self.fired)
                return

    def __enter__(self) -> "HangWatchdog":
        self._thread = threading.Thread(target=self._watch, name="hang-watchdog", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.poll_seconds + 5)
