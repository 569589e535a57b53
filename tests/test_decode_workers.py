"""Decode threads per shard: `NEUCODEC_DECODE_WORKERS` when set, else every core the process may use but one (left
for the encoder's host thread), from 2 up to 8. The cores are the process's CPU affinity, as a container's cpuset or
`taskset` gives it: checked in child processes started with one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from resources.shard_reader import default_decode_workers

# The documented rule, written out: cores the process may use -> decode threads.
DOCUMENTED = {1: 2, 2: 2, 3: 2, 4: 3, 5: 4, 8: 7, 9: 8, 10: 8, 16: 8, 128: 8}

# What a run of the tokens asset uses, as the child process sees its own cores.
CHILD = """
import json
from resources.shard_reader import available_cores, decode_workers
print(json.dumps({"cores": available_cores(), "workers": decode_workers()}))
"""


def run_child(cores: int, setting: str | None = None) -> subprocess.CompletedProcess[str]:
    """A Python process pinned to the first ``cores`` of our CPUs, with or without NEUCODEC_DECODE_WORKERS."""
    cpus = sorted(os.sched_getaffinity(0))[:cores]
    env = {k: v for k, v in os.environ.items() if k != "NEUCODEC_DECODE_WORKERS"}
    if setting is not None:
        env["NEUCODEC_DECODE_WORKERS"] = setting
    return subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=120,
                          preexec_fn=lambda: os.sched_setaffinity(0, cpus), check=False)


def workers_picked(cores: int, setting: str | None = None) -> int:
    child = run_child(cores, setting)
    assert child.returncode == 0, child.stderr
    reported = json.loads(child.stdout)
    assert reported["cores"] == cores  # the cores it counts are the ones it was given, not the machine's
    return reported["workers"]


def test_rule_for_a_given_core_count_is_the_documented_table():
    assert {n: default_decode_workers(n) for n in DOCUMENTED} == DOCUMENTED


def test_default_follows_the_cores_the_process_is_started_with():
    here = len(os.sched_getaffinity(0))
    sizes = [n for n in DOCUMENTED if n <= min(here, 10)]  # every affinity this machine can give, up to 10 cores
    assert {n: workers_picked(n) for n in sizes} == {n: DOCUMENTED[n] for n in sizes}


def test_setting_overrides_the_cores_rule():
    here = len(os.sched_getaffinity(0))
    assert workers_picked(1, "6") == 6  # more threads than one core's default of 2
    assert workers_picked(here, "1") == 1  # fewer than the rule's floor
    refused = run_child(1, "0")
    assert refused.returncode != 0
    assert "NEUCODEC_DECODE_WORKERS='0' is not accepted" in refused.stderr
