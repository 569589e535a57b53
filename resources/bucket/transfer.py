"""Bytes as they arrive: what a watchdog and a progress log of a multi-gigabyte download must look at.

A file's size says nothing about a download in ranged parts (its file is allocated to full size first), and elapsed
time says nothing on a slow link. A ``TransferMeter`` is handed to ``Bucket.download_to``; each stream of the
transfer (one per ranged part) reports every read into it, so a reader can tell bytes received, the rate, and how
long the stalest open stream has gone without a byte: one stalled part shows as stalled while the others flow.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class TransferState:
    """One reading of a meter: ``idle_seconds`` is the stalest open stream's time without a byte (or, with no stream
    open, the time since the last byte or stream change)."""

    received: int
    expected: int | None
    elapsed_seconds: float
    idle_seconds: float
    open_streams: int

    @property
    def mib_per_second(self) -> float:
        return self.received / 2**20 / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    def describe(self) -> str:
        total = f" of {self.expected / 2**20:.1f}" if self.expected else ""
        return (f"{self.received / 2**20:.1f}{total} MiB in {self.elapsed_seconds:.0f} s "
                f"({self.mib_per_second:.2f} MiB/s, {self.open_streams} streams)")


class TransferMeter:
    """Counts the bytes of one transfer over its streams; thread-safe (parts are read from a pool of threads)."""

    def __init__(self, expected: int | None = None, clock: Callable[[], float] = time.monotonic):
        self.expected = expected
        self._clock = clock
        self._lock = threading.Lock()
        self._started = self._last_event = clock()
        self._received = 0
        self._streams: dict[int, float] = {}  # open stream -> time of its last byte (or of its opening)
        self._ids = itertools.count()

    @contextmanager
    def stream(self) -> Iterator[Callable[[int], None]]:
        """One stream of the transfer; yields the function to call with the size of every read."""
        sid = next(self._ids)
        with self._lock:
            self._streams[sid] = self._last_event = self._clock()

        def received(n: int) -> None:
            with self._lock:
                self._received += n
                self._streams[sid] = self._last_event = self._clock()

        try:
            yield received
        finally:
            with self._lock:
                del self._streams[sid]
                self._last_event = self._clock()

    def state(self) -> TransferState:
        with self._lock:
            now = self._clock()
            oldest = min(self._streams.values(), default=self._last_event)
            return TransferState(self._received, self.expected, now - self._started, now - oldest,
                                 len(self._streams))
