"""Backfills the way the UI makes them, for the command line and the demo.

`submit_backfill` records an asset backfill through the instance (what the UI's "Materialize" dialog does through
GraphQL); the daemon's backfill loop turns it into runs grouped by the backfill policies, the run queue holds them
for the `gpu` pool, and the run launcher starts them. `DaemonLoop` runs one iteration of those daemons in this
process, for the demo, which has no daemon of its own.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence

import dagster as dg

from gpu_executor.launch.dagster_internals import BulkActionStatus, PartitionBackfill

#: Backfill states after which nothing more happens.
TERMINAL = frozenset({BulkActionStatus.COMPLETED_SUCCESS, BulkActionStatus.COMPLETED_FAILED,
                      BulkActionStatus.FAILED, BulkActionStatus.CANCELED, BulkActionStatus.COMPLETED})
logger = logging.getLogger(__name__)


def submit_backfill(
    instance: dg.DagsterInstance, asset_graph, asset_keys: Sequence[dg.AssetKey], partition_keys: Sequence[str],
    *, title: str, tags: Mapping[str, str] | None = None,
) -> str:
    """Record a backfill of ``asset_keys`` over ``partition_keys`` (downstream unpartitioned assets included once
    their partitions are done); returns its id. The backfill daemon executes it."""
    if not partition_keys:
        raise ValueError("a backfill needs at least one partition")
    backfill_id = uuid.uuid4().hex[:8]
    instance.add_backfill(PartitionBackfill.from_asset_partitions(
        backfill_id=backfill_id, asset_graph=asset_graph, partition_names=list(partition_keys),
        asset_selection=list(asset_keys), backfill_timestamp=time.time(), tags=dict(tags or {}),
        dynamic_partitions_store=instance, all_partitions=False, title=title, description=None, run_config=None,
    ))
    return backfill_id


class DaemonLoop:
    """One iteration each of the daemons that carry a backfill (backfill, run queue, run monitoring, run retries),
    in this process: Dagster's own daemon code, called faster than `dagster-daemon`'s 30-second backfill cadence."""

    def __init__(self, context):
        from gpu_executor.launch.dagster_internals import QueuedRunCoordinatorDaemon

        self.context = context  # a WorkspaceProcessContext
        self.queue = QueuedRunCoordinatorDaemon(interval_seconds=1)
        self._seen_failures: set[str] = set()  # failed runs already handed to the run retries step
        self._event_cursors: dict[str, str] = {}  # run id -> cursor of the last event log entry handed on

    def tick(self) -> None:
        from gpu_executor.launch.dagster_internals import (
            consume_new_runs_for_automatic_reexecution,
            execute_backfill_iteration,
            execute_run_monitoring_iteration,
        )

        for error in execute_backfill_iteration(self.context, logger):
            if error is not None:
                raise RuntimeError(f"backfill daemon iteration failed: {error.message}")
        list(self.queue.run_iteration(self.context))
        list(execute_run_monitoring_iteration(self.context, logger))
        failed = [r for r in self.context.instance.get_run_records(
            dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE])) if r.dagster_run.run_id not in self._seen_failures]
        if failed:
            list(consume_new_runs_for_automatic_reexecution(self.context, failed, logger))
            self._seen_failures.update(r.dagster_run.run_id for r in failed)

    def _new_events(self, run_id: str) -> Iterator[dg.EventLogEntry]:
        """The run's event log entries since the last call for it."""
        while True:
            page = self.context.instance.get_records_for_run(run_id, cursor=self._event_cursors.get(run_id),
                                                              limit=1000)
            self._event_cursors[run_id] = page.cursor
            yield from (record.event_log_entry for record in page.records)
            if not page.has_more:
                return

    def until_done(self, backfill_id: str, *, timeout: float, every: float = 0.5,
                   progress: Callable[[str], None] | None = None,
                   events: Callable[[dg.EventLogEntry], None] | None = None) -> BulkActionStatus:
        """Tick until the backfill ends; ``progress`` hears each change of its runs' states, ``events`` each new
        entry of their event logs (the run workers write them to the instance, in their own processes)."""
        instance = self.context.instance
        deadline, last = time.monotonic() + timeout, ""
        while True:
            self.tick()
            status = instance.get_backfill(backfill_id).status
            if progress is not None or events is not None:
                runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
                for run in reversed(runs) if events is not None else ():  # oldest first
                    for entry in self._new_events(run.run_id):
                        events(entry)
                counts = Counter(r.status.value.lower() for r in runs)
                line = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
                if progress is not None and line and line != last:
                    progress(f"backfill {backfill_id}: runs {line}")
                    last = line
            if status in TERMINAL:
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"backfill {backfill_id} still {status.value} after {timeout:.0f} s")
            time.sleep(every)

