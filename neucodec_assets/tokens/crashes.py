"""A crash costs one shard, not a run's eight: the shard a crashed run was encoding is found and isolated.

A run worker that dies (OOM killer, segfault, the hang watchdog) takes the whole run down, and run retries start it
again with all its shards. Each run records the shard it is encoding in a run tag, so a retry can read, along its
chain of parent runs, which shard was in flight at each crash. Shards that were never started or already finished
go first; a shard in flight at one crash goes last, alone after its run-mates are recorded; a shard in flight at
``ISOLATE_AFTER_CRASHES`` crashes is not encoded again: it fails alone, with the crashes named, and since that is the
shard's own failure (a step failure), run retries and the automation condition leave it for a person.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from gpu_executor.launch.dagster_internals import PARENT_RUN_ID_TAG
from gpu_executor.launch.names import WORKER_LOG_TAG

#: The shard the run is encoding now ("" between shards).
IN_FLIGHT_TAG = "neucodec/shard_in_flight"
ISOLATE_AFTER_CRASHES = 2
MAX_ANCESTORS = 20
LOG_TAIL_LINES = 8
LOG_TAIL_BYTES = 16_000


@dataclass(frozen=True)
class Crash:
    """A run of this run's chain that died while encoding ``shard``."""

    run_id: str
    shard: str
    description: str  # the run's failure message, and the last lines of its worker's log where the host kept it


def _log_tail(path: str | None) -> str:
    if not path or not Path(path).is_file():
        return ""
    with open(path, "rb") as handle:
        handle.seek(max(0, Path(path).stat().st_size - LOG_TAIL_BYTES))
        lines = handle.read().decode(errors="replace").splitlines()
    return "\n".join(line.rstrip() for line in lines[-LOG_TAIL_LINES:])


def _failure_message(instance: dg.DagsterInstance, run_id: str) -> str:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_FAILURE, ascending=False,
                                           limit=1).records
    return records[0].event_log_entry.message.strip() if records else "the run failed"


def crashes_before(instance: dg.DagsterInstance, run: dg.DagsterRun) -> list[Crash]:
    """The crashes of ``run``'s parent runs (a retry's chain), newest first, that had a shard in flight."""
    crashes: list[Crash] = []
    parent_id = run.tags.get(PARENT_RUN_ID_TAG)
    for _ in range(MAX_ANCESTORS):
        parent = instance.get_run_by_id(parent_id) if parent_id else None
        if parent is None:
            break
        shard = parent.tags.get(IN_FLIGHT_TAG)
        if parent.status == dg.DagsterRunStatus.FAILURE and shard:
            description = _failure_message(instance, parent.run_id)
            tail = _log_tail(parent.tags.get(WORKER_LOG_TAG))
            if tail:
                description += f"\nlast lines of its worker's log:\n{tail}"
            crashes.append(Crash(parent.run_id, shard, description))
        parent_id = parent.tags.get(PARENT_RUN_ID_TAG)
    return crashes


@dataclass(frozen=True)
class CrashPlan:
    """The run's shards in the order to encode them, and those not to encode again (shard -> why)."""

    order: list[str]
    isolated: dict[str, str]
    suspects: list[str]  # in flight at one crash: encoded last


def plan_after_crashes(keys: Sequence[str], crashes: Sequence[Crash]) -> CrashPlan:
    counts = Counter(crash.shard for crash in crashes)
    isolated = {}
    for shard, n in counts.items():
        if n >= ISOLATE_AFTER_CRASHES and shard in keys:
            named = [c for c in crashes if c.shard == shard]
            isolated[shard] = (
                f"the run worker died {n} times while encoding this shard (runs "
                f"{', '.join(c.run_id for c in named)}); it is not encoded again, so that its run-mates are not "
                f"lost with it. Last crash: {named[0].description}")
    suspects = [k for k in keys if counts.get(k) and k not in isolated]
    order = [k for k in keys if not counts.get(k)] + suspects + [k for k in keys if k in isolated]
    return CrashPlan(order, isolated, suspects)
