"""TF32 on or off for one call: torch's process-wide flags, shared safely by every encoder of a process.

Why: TF32 (cuBLAS matmuls, cuDNN convolutions) is a switch of the whole process, but the precision is a choice per
encoder, and an exact fp32 encoder and a tf32 one can run on different threads (a notebook, the bench, a worker
with two GPUs). A call holds the switch in its mode for as long as it launches kernels (kernels read the flags when
they are launched; a CUDA graph keeps the mode it was captured in). Calls in the same mode share it; a call in the
other mode waits until they end, and arrivals in the held mode queue behind it, so neither mode starves. When the
last call ends, the flags are put back as they were found.

The flags are set through torch's ``fp32_precision`` API where torch has it (2.9 and later): torch's kernels read
those, and the legacy ``allow_tf32`` flags raise on reading once a process has mixed both APIs. Inside a call, code
elsewhere that reads the legacy flags sees that mix; after it, everything reads as before. Older torch has only
``allow_tf32``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

__all__ = ["tf32_mode", "read_tf32_flags", "TF32_SWITCH", "Tf32Switch"]

_NEW_API = hasattr(torch.backends.cudnn, "conv") and hasattr(torch.backends.cuda.matmul, "fp32_precision")


def _flag_targets() -> list[tuple[object, str]]:
    if _NEW_API:
        return [(torch.backends.cuda.matmul, "fp32_precision"), (torch.backends.cudnn.conv, "fp32_precision"),
                (torch.backends.cudnn.rnn, "fp32_precision")]
    return [(torch.backends.cuda.matmul, "allow_tf32"), (torch.backends.cudnn, "allow_tf32")]


def read_tf32_flags() -> tuple:
    """The flags the switch sets, as they are now: ``fp32_precision`` of cuBLAS matmul, cuDNN conv and RNN."""
    return tuple(getattr(owner, name) for owner, name in _flag_targets())


def _write(values: tuple) -> None:
    for (owner, name), value in zip(_flag_targets(), values):
        setattr(owner, name, value)


def _mode_values(enabled: bool) -> tuple:
    if _NEW_API:
        return ("tf32" if enabled else "ieee",) * 3
    return (enabled,) * 2


class Tf32Switch:
    """Who holds the process's TF32 flags, in which mode (one instance per process: ``TF32_SWITCH``)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._mode: bool | None = None
        self._holders = 0
        self._waiting = {True: 0, False: 0}
        self._turn: bool | None = None
        self._saved: tuple = ()
        self._local = threading.local()

    def state(self) -> dict:
        """The mode held (None: free), how many calls hold it and how many wait per mode (for tests, diagnostics)."""
        with self._cond:
            return {"mode": self._mode, "holders": self._holders, "waiting": dict(self._waiting)}

    @contextlib.contextmanager
    def hold(self, enabled: bool) -> Iterator[None]:
        """TF32 allowed (``enabled``) or exact fp32 for the block. A nested hold in the same thread shares the outer
        one; one in the other mode would wait for itself, so it raises."""
        outer = getattr(self._local, "mode", None)
        if outer is not None:
            if outer != enabled:
                raise RuntimeError(f"TF32 {'on' if enabled else 'off'} asked for inside a call that holds it "
                                   f"{'on' if outer else 'off'}: one thread cannot hold both modes")
            yield
            return
        self._enter(enabled)
        self._local.mode = enabled
        try:
            yield
        finally:
            self._local.mode = None
            self._leave()

    def _may_enter(self, enabled: bool) -> bool:
        if self._holders:  # join the mode held, unless calls of the other mode are waiting for it
            return self._mode == enabled and not self._waiting[not enabled]
        turn = self._turn  # free: the mode that waited last time goes first (if its callers still wait)
        return turn is None or turn == enabled or not self._waiting[turn]

    def _enter(self, enabled: bool) -> None:
        with self._cond:
            self._waiting[enabled] += 1
            try:
                while not self._may_enter(enabled):
                    self._cond.wait()
            finally:
                self._waiting[enabled] -= 1
            if not self._holders:
                self._saved = read_tf32_flags()
                _write(_mode_values(enabled))
                self._mode, self._turn = enabled, None
            self._holders += 1

    def _leave(self) -> None:
        with self._cond:
            self._holders -= 1
            if not self._holders:
                _write(self._saved)
                other = not self._mode
                self._turn = other if self._waiting[other] else None
                self._mode = None
                self._cond.notify_all()


TF32_SWITCH = Tf32Switch()


@contextlib.contextmanager
def tf32_mode(device: torch.device, enabled: bool) -> Iterator[None]:
    """TF32 matmuls and convolutions on (``tf32``) or off (exact ``fp32``) for one call on ``device``, through the
    process's switch; a CPU call leaves the flags alone (they are CUDA's)."""
    if device.type != "cuda":
        yield
        return
    with TF32_SWITCH.hold(enabled):
        yield
