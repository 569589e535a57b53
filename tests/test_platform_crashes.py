"""Boxes that die and a shard that kills its worker, through the daemon with the repository's dagster.yaml (Postgres,
the run queue, GpuRunLauncher, run monitoring, run retries): a run's finished shards are recorded as they finish,
a crash costs the shard in flight and no other, and the shard that keeps crashing its worker fails alone, named,
without a retry loop. And a checks-only run needs no GPU slot.

The worker is killed from outside with SIGKILL when its run's log says it started the poisoned shard, as an OOM
killer would strike: nothing in the product knows about the fault.
"""

from __future__ import annotations

import os
import signal
import threading
from types import TracebackType

import dagster as dg

from gpu_executor.launch.dagster_internals import (
    PARENT_RUN_ID_TAG,
    BulkActionStatus,
    WorkspaceFileTarget,
    WorkspaceProcessContext,
)
from gpu_executor.launch.names import PID_TAG
from neucodec_assets.cli.backfills import DaemonLoop
from neucodec_assets.definitions import defs
from neucodec_assets.tokens.checks import COMPLETE_CHECK_KEY, VALID_CHECK_KEY
from neucodec_assets.tokens.crashes import ISOLATE_AFTER_CRASHES
from neucodec_assets.tokens.discovery import add_shard_partitions
from neucodec_assets.tokens.metadata import TOKENS_ASSET_KEY, metadata_value
from tests.fixtures.backfills import (
    WORKSPACE,
    backfill_runs,
    materialization_status,
    partition_statuses,
    wait_backfill,
)
from tests.fixtures.dagster_api import launch_asset_backfill, launch_checks_run, wait_for
from tests.fixtures.platform import copy_tiny_shards


class OomKiller:
    """Watches every started run's event log; when one says it started encoding ``shard``, SIGKILLs that run's
    worker process group. ``kills`` lists the runs it killed."""

    def __init__(self, instance: dg.DagsterInstance, shard: str):
        self.instance, self.marker = instance, f"{shard}: encoding"
        self.kills: list[str] = []
        self._cursors: dict[str, str | None] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="oom-killer", daemon=True)

    def _strike(self, run: dg.DagsterRun) -> bool:
        while True:
            page = self.instance.get_records_for_run(run.run_id, cursor=self._cursors.get(run.run_id), limit=500)
            self._cursors[run.run_id] = page.cursor
            if any(r.event_log_entry.user_message == self.marker for r in page.records):
                return True
            if not page.has_more:
                return False

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            for run in self.instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
                if run.run_id not in self.kills and self._strike(run):
                    os.killpg(int(self.instance.get_run_by_id(run.run_id).tags[PID_TAG]), signal.SIGKILL)
                    self.kills.append(run.run_id)

    def __enter__(self) -> "OomKiller":
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _materialization(instance: dg.DagsterInstance, key: str) -> dg.EventLogRecord:
    return instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=TOKENS_ASSET_KEY, asset_partitions=[key]), limit=1).records[0]


def test_a_shard_that_kills_its_worker_costs_only_itself(deployment, pg_dagster_home, tiny_shards_dir, monkeypatch):
    monkeypatch.setenv("NEUCODEC_AUTOMATION", "off")
    monkeypatch.setenv("NEUCODEC_SHARDS_PER_RUN", "3")
    shards = copy_tiny_shards(tiny_shards_dir, deployment, count=3)
    with dg.DagsterInstance.from_config(str(pg_dagster_home)) as instance, \
            WorkspaceProcessContext(instance, WorkspaceFileTarget(paths=[WORKSPACE])) as context:
        keys = add_shard_partitions(instance, [s.prefix for s in shards])
        first, poisoned, last = keys
        daemons = DaemonLoop(context)
        tries = ISOLATE_AFTER_CRASHES + 1  # one run of the three shards, then its retries

        def all_tries_ended() -> bool:
            records = instance.get_run_records()
            return len(records) >= tries and all(r.dagster_run.is_finished for r in records)

        def explain() -> str:
            return "\n".join(f"{r.dagster_run.run_id} {r.dagster_run.status} {dict(r.dagster_run.tags)}"
                             for r in instance.get_run_records())

        with OomKiller(instance, poisoned) as killer:
            backfill = launch_asset_backfill(context, TOKENS_ASSET_KEY, keys)
            assert wait_backfill(instance, daemons, backfill) == BulkActionStatus.COMPLETED_FAILED
            wait_for("the run and its retries to end", all_tries_ended, timeout=600, tick=daemons.tick,
                     explain=explain, every=0.5)
        runs = sorted(instance.get_run_records(), key=lambda r: r.create_timestamp)
        print("runs:", [(r.dagster_run.run_id[:8], r.dagster_run.status.value) for r in runs],
              "killed:", [k[:8] for k in killer.kills])
        # Killed twice on the poisoned shard, then it is isolated: no fourth try.
        assert len(runs) == tries
        assert killer.kills == [r.dagster_run.run_id for r in runs[:ISOLATE_AFTER_CRASHES]]
        for parent, child in zip(runs, runs[1:]):
            assert child.dagster_run.tags[PARENT_RUN_ID_TAG] == parent.dagster_run.run_id
        assert {r.dagster_run.status for r in runs} == {dg.DagsterRunStatus.FAILURE}

        # The first shard was recorded by the first run as soon as it was done, before that run died and before
        # its retry was even created; the retry encoded the third shard before the poisoned one.
        recorded = _materialization(instance, first)
        first_record = instance.get_event_records(dg.EventRecordsFilter(
            event_type=dg.DagsterEventType.ASSET_MATERIALIZATION, asset_key=TOKENS_ASSET_KEY,
            asset_partitions=[first]), ascending=True, limit=1)[0]
        assert first_record.run_id == runs[0].dagster_run.run_id
        assert first_record.timestamp < runs[1].create_timestamp.timestamp()
        assert recorded.run_id == runs[2].dagster_run.run_id  # found current by the last try: "existing"
        third = instance.get_event_records(dg.EventRecordsFilter(
            event_type=dg.DagsterEventType.ASSET_MATERIALIZATION, asset_key=TOKENS_ASSET_KEY,
            asset_partitions=[last]), ascending=True, limit=1)[0]
        assert third.run_id == runs[1].dagster_run.run_id
        assert metadata_value(third.asset_materialization.metadata, "status") == "encoded"
        assert materialization_status(instance, first) == materialization_status(instance, last) == "existing"

        # The poisoned shard failed alone in the last try, without being encoded again, the crashes named.
        statuses = partition_statuses(context)
        assert statuses["materializedPartitions"] == {first, last}
        assert statuses["failedPartitions"] == {poisoned}
        failure = instance.all_logs(runs[-1].dagster_run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)[0]
        text = failure.dagster_event.step_failure_data.user_failure_data.description
        assert f"1 of 3 shards failed: {poisoned}: the run worker died {ISOLATE_AFTER_CRASHES} times" in text, text
        assert "killed by signal SIGKILL" in text and "last lines of its worker's log" in text, text
        assert not any(e.user_message == f"{poisoned}: encoding" for e in instance.all_logs(runs[-1].dagster_run.run_id))

        # Not a loop: the daemons go on ticking and start nothing more; automation would not ask for any of the
        # three again (the poisoned one's own failure waits for a person).
        for _ in range(6):
            daemons.tick()
        assert len(instance.get_run_records()) == len(runs)
        evaluation = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        assert evaluation.get_requested_partitions(TOKENS_ASSET_KEY) == set()


def test_a_checks_only_run_takes_no_gpu_slot(deployment, pg_dagster_home, tiny_shards_dir, monkeypatch):
    """One slot (this GPU-less host's CPU slot), held by an encoding run: a second encoding run waits in the queue,
    a checks-only run of the same asset starts at once and ends while the encoder still holds the slot."""
    monkeypatch.setenv("NEUCODEC_AUTOMATION", "off")
    shards = copy_tiny_shards(tiny_shards_dir, deployment, count=2)
    with dg.DagsterInstance.from_config(str(pg_dagster_home)) as instance, \
            WorkspaceProcessContext(instance, WorkspaceFileTarget(paths=[WORKSPACE])) as context:
        keys = add_shard_partitions(instance, [s.prefix for s in shards])
        assert instance.run_launcher.total_capacity == 1
        daemons = DaemonLoop(context)
        encoding = launch_asset_backfill(context, TOKENS_ASSET_KEY, keys[:1])

        def runs_of(backfill_id: str) -> list[dg.DagsterRun]:
            return backfill_runs(instance, backfill_id)

        def started(backfill_id: str) -> bool:
            return any(r.status == dg.DagsterRunStatus.STARTED for r in runs_of(backfill_id))

        wait_for("the encoding run to start", lambda: started(encoding), timeout=300, tick=daemons.tick)
        waiting = launch_asset_backfill(context, TOKENS_ASSET_KEY, keys[1:])
        checks = launch_checks_run(context, keys[0], [VALID_CHECK_KEY, COMPLETE_CHECK_KEY])

        def checks_done() -> bool:
            return instance.get_run_by_id(checks).status in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE)

        wait_for("the checks-only run to end", checks_done, timeout=300, tick=daemons.tick)
        holder = runs_of(encoding)[0]
        assert instance.get_run_by_id(holder.run_id).status == dg.DagsterRunStatus.STARTED, "slot no longer held"
        assert [r.status for r in runs_of(waiting)] == [dg.DagsterRunStatus.QUEUED]  # the slot really is taken
        checks_run = instance.get_run_by_id(checks)
        assert checks_run.status == dg.DagsterRunStatus.SUCCESS
        assert checks_run.tags.get("neucodec/gpu") == "none"  # started with no GPU, outside the pool
        assert not checks_run.run_op_concurrency or "gpu" not in checks_run.run_op_concurrency.all_pools
        # It read the shard's tokens file (not written yet while the encoder holds the slot: the check says so).
        evaluations = instance.all_logs(checks, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
        valid = [e.dagster_event.event_specific_data for e in evaluations
                 if e.dagster_event.event_specific_data.check_name == VALID_CHECK_KEY.name]
        assert len(valid) == 1 and valid[0].partition == keys[0]
        wait_for("both encoding runs to end", lambda: not any(
            r.status in (dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED)
            for b in (encoding, waiting) for r in runs_of(b)), timeout=300, tick=daemons.tick)
        assert instance.get_materialized_partitions(TOKENS_ASSET_KEY) == set(keys)
