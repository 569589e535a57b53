"""The default decode-thread rule: scaled to the cores this process may use, one left for the encoder, 2 to 8."""

from __future__ import annotations

import os

from resources.shard_reader import available_cores, default_decode_workers


def test_rule_scales_with_cores_within_bounds():
    assert [default_decode_workers(n) for n in (1, 2, 3, 4, 9, 16, 128)] == [2, 2, 2, 3, 8, 8, 8]


def test_default_follows_this_process_affinity():
    assert available_cores() == len(os.sched_getaffinity(0))
    assert default_decode_workers() == max(2, min(8, available_cores() - 1))
