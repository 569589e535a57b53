"""A run that is alive but makes no progress (a stalled download, a wedged GPU) must fail, as the old fleet's
heartbeat monitor made it: Dagster's run monitoring only sees dead workers.

The shard loop says what it is waiting for and beats on every encoded segment. While it waits for a download, the
download's TransferMeter is the measure: bytes as they arrive, per stream, so a slow but steady link is alive however
long a multi-gigabyte tar takes, and one ranged part that gets no byte for ``timeout`` seconds is a hang even while
the others flow. When nothing moved for ``timeout`` seconds, ``on_hang`` gets a message naming the wait. The run
loop's ``on_hang`` fails the run and ends the process, since a thread stuck in a socket read or a CUDA call cannot be
interrupted from Python.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType

from resources.bucket.transfer import TransferMeter


class HangWatchdog:
    """Calls ``on_hang(message)`` once when no beat came for ``timeout`` seconds and the download waited for (if
    any) had a stream without a byte for as long. Use as a context manager around the work."""

    def __init__(self, timeout: float, on_hang: Callable[[str], None], *, poll_seconds: float | None = None):
        if timeout <= 0:
            raise ValueError(f"hang timeout must be positive, got {timeout}")
        self.timeout = timeout
        self.on_hang = on_hang
        self.poll_seconds = poll_seconds or min(5.0, timeout / 10)
        self._lock = threading.Lock()
        self._last = time.monotonic()
        self._what = "the run to start"
        self._meter: TransferMeter | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.fired: str | None = None

    def beat(self) -> None:
        with self._lock:
            self._last = time.monotonic()

    def waiting_for(self, what: str, meter: TransferMeter | None = None) -> None:
        """Say what the loop waits for now (it counts as progress); bytes arriving on ``meter`` keep it alive."""
        with self._lock:
            self._what, self._meter = what, meter
            self._last = time.monotonic()

    def _idle(self) -> tuple[float, str]:
        with self._lock:
            idle, what, meter = time.monotonic() - self._last, self._what, self._meter
        if meter is not None:
            state = meter.state()
            idle = min(idle, state.idle_seconds)
            what = f"{what} ({state.describe()})"
        return idle, what

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            idle, what = self._idle()
            if idle >= self.timeout:
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
