"""The TF32 switch: exact fp32 and tf32 calls on different threads never see each other's flags, it works in a
process that used torch's ``fp32_precision`` API (or the legacy ``allow_tf32`` flags), and it puts the flags back.

torch's CPU build carries the CUDA flags too, so all of this runs here: the switch only sets flags.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch

from gpu_executor.encoder.tf32_switch import TF32_SWITCH, read_tf32_flags, tf32_mode

CUDA = torch.device("cuda")  # tf32_mode acts on a CUDA device only; no GPU is touched
B = torch.backends


@pytest.fixture(autouse=True)
def restored_flags():
    """Leave the process's flags as found: legacy values first (their setters write the new API too), then the
    new API's own strings."""
    legacy = torch.get_float32_matmul_precision(), B.cudnn.allow_tf32
    new = read_tf32_flags()
    yield
    torch.set_float32_matmul_precision(legacy[0])
    B.cudnn.allow_tf32 = legacy[1]
    B.cuda.matmul.fp32_precision, B.cudnn.conv.fp32_precision, B.cudnn.rnn.fp32_precision = new
    assert TF32_SWITCH.state()["holders"] == 0


def test_each_mode_sets_the_new_api_and_the_flags_come_back():
    before = read_tf32_flags()
    with tf32_mode(CUDA, False):
        assert read_tf32_flags() == ("ieee", "ieee", "ieee")
    assert read_tf32_flags() == before
    with tf32_mode(CUDA, True):
        assert read_tf32_flags() == ("tf32", "tf32", "tf32")
    assert read_tf32_flags() == before
    with tf32_mode(torch.device("cpu"), True):  # a CPU call leaves CUDA's flags alone
        assert read_tf32_flags() == before


def test_works_where_the_legacy_flags_raise_on_reading():
    """The issue's case: once something used the fp32_precision API in a way the legacy flags cannot express,
    reading ``allow_tf32`` raises (the old per-call switch read them first)."""
    torch.set_float32_matmul_precision("high")  # legacy: TF32 on
    B.cuda.matmul.fp32_precision = "none"  # new API: inherit (off)
    B.cudnn.conv.fp32_precision = "ieee"  # conv and RNN now differ
    with pytest.raises(RuntimeError, match="mix of the legacy and new APIs"):
        _ = B.cuda.matmul.allow_tf32
    with pytest.raises(RuntimeError, match="mix of the legacy and new APIs"):
        _ = B.cudnn.allow_tf32
    with tf32_mode(CUDA, True):
        assert read_tf32_flags() == ("tf32", "tf32", "tf32")
    assert read_tf32_flags() == ("none", "ieee", "tf32")


def test_legacy_flags_read_the_same_after_a_call():
    B.cuda.matmul.allow_tf32 = True
    B.cudnn.allow_tf32 = False
    for enabled in (False, True):
        with tf32_mode(CUDA, enabled):
            pass
        assert B.cuda.matmul.allow_tf32 is True and B.cudnn.allow_tf32 is False  # readable, unchanged


def test_nested_calls_share_a_mode_and_refuse_the_other():
    with tf32_mode(CUDA, False):
        with tf32_mode(CUDA, False):
            assert read_tf32_flags() == ("ieee", "ieee", "ieee")
        assert TF32_SWITCH.state()["holders"] == 1
        with pytest.raises(RuntimeError, match="one thread cannot hold both modes"):
            with tf32_mode(CUDA, True):
                pass
        assert read_tf32_flags() == ("ieee", "ieee", "ieee")


def _wait_until(condition, what: str, limit_s: float = 30.0) -> None:
    """Liveness guard: a thread that never gets there fails the test instead of hanging it."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.001)


def test_a_call_in_the_other_mode_waits_for_the_holder_then_runs():
    seen: list[tuple] = []
    entered = threading.Event()

    def tf32_call():
        with tf32_mode(CUDA, True):
            entered.set()
            seen.append(read_tf32_flags())

    with tf32_mode(CUDA, False):
        worker = threading.Thread(target=tf32_call)
        worker.start()
        _wait_until(lambda: TF32_SWITCH.state()["waiting"][True] == 1, "the tf32 call queues")
        assert not entered.is_set() and read_tf32_flags() == ("ieee", "ieee", "ieee")
        # A second exact call arriving now queues behind the waiting tf32 call (no starvation).
        late_seen: list[tuple] = []

        def fp32_call():
            with tf32_mode(CUDA, False):
                late_seen.append((entered.is_set(), read_tf32_flags()))

        late = threading.Thread(target=fp32_call)
        late.start()
        _wait_until(lambda: TF32_SWITCH.state()["waiting"][False] == 1, "the late fp32 call queues")
    worker.join(30)
    late.join(30)
    assert not worker.is_alive() and not late.is_alive()
    assert seen == [("tf32", "tf32", "tf32")]
    assert late_seen == [(True, ("ieee", "ieee", "ieee"))]  # it ran after the tf32 call, in its own mode


def test_threads_in_both_modes_always_see_their_own_flags():
    before = read_tf32_flags()
    wrong: list[str] = []
    active = {True: 0, False: 0}
    overlap = []
    lock = threading.Lock()
    start = threading.Barrier(6)

    def caller(enabled: bool) -> None:
        start.wait()
        want = ("tf32" if enabled else "ieee",) * 3
        for _ in range(150):
            with tf32_mode(CUDA, enabled):
                with lock:
                    active[enabled] += 1
                    if active[not enabled]:
                        overlap.append(enabled)
                for _ in range(3):
                    time.sleep(0)  # let the other threads run inside this call
                    if read_tf32_flags() != want:
                        wrong.append(f"{'tf32' if enabled else 'fp32'} call saw {read_tf32_flags()}")
                with lock:
                    active[enabled] -= 1

    threads = [threading.Thread(target=caller, args=(i % 2 == 0,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert not wrong, wrong[:5]
    assert not overlap
    assert read_tf32_flags() == before
