"""The platform's event log and run storages on real Postgres, as the repository's dagster.yaml configures them: two
instances are two processes' views (a webserver or discovery sensor that adds and deletes shards, a daemon that reads
them). Each read answers what an uncached read answers, whatever the other process changed; the daemon's backfills
run over keys added after its cache was filled and notice a target deleted mid-backfill; a run's planned events
written in one statement are what one-by-one writes leave; each process holds its own connections."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from gpu_executor.launch.dagster_internals import (
    BulkActionStatus,
    WorkspaceFileTarget,
    WorkspaceProcessContext,
    execute_backfill_iteration,
)
from gpu_executor.launch.event_log_storage import CachingPostgresEventLogStorage
from neucodec_assets.tokens.metadata import TOKENS_ASSET_KEY
from neucodec_assets.tokens.partitions import shards_partitions
from tests.fixtures.backfills import WORKSPACE, backfill_runs, run_keys
from tests.fixtures.dagster_api import launch_asset_backfill

NAME = shards_partitions.name
KEYS = [f"ds/hi/shard_{i:06d}" for i in range(11)]


def uncached(instance: dg.DagsterInstance) -> list[str]:
    """What dagster-postgres's own storage reads."""
    storage = instance.event_log_storage
    return list(super(CachingPostgresEventLogStorage, storage).get_dynamic_partitions(NAME))


@pytest.fixture
def two_processes(pg_dagster_home: Path):
    writer = dg.DagsterInstance.from_config(str(pg_dagster_home))
    reader = dg.DagsterInstance.from_config(str(pg_dagster_home))
    try:
        assert isinstance(reader.event_log_storage, CachingPostgresEventLogStorage)
        yield writer, reader
    finally:
        reader.dispose()
        writer.dispose()


@pytest.mark.parametrize("revalidation", ["trigger", "aggregate"])
def test_a_read_sees_every_add_and_delete_of_another_process(two_processes, revalidation: str) -> None:
    """Both ways of revalidating: the trigger's counter (the default) and the aggregate over the rows (where the
    trigger cannot be installed)."""
    writer, reader = two_processes
    storage = reader.event_log_storage
    storage.revalidation = revalidation  # before its first partition call, which would install the trigger
    writer.add_dynamic_partitions(NAME, KEYS[:3])
    assert reader.get_dynamic_partitions(NAME) == KEYS[:3]
    reads = storage.partition_reads
    assert reader.get_dynamic_partitions(NAME) == KEYS[:3]
    assert storage.partition_reads == reads, "an unchanged definition was read again"

    changes = [
        lambda: writer.add_dynamic_partitions(NAME, KEYS[3:5]),  # count up
        lambda: writer.delete_dynamic_partition(NAME, KEYS[1]),  # count down
        lambda: (writer.delete_dynamic_partition(NAME, KEYS[0]),  # same count, a new id
                 writer.add_dynamic_partitions(NAME, [KEYS[5]])),
        lambda: (writer.delete_dynamic_partition(NAME, KEYS[5]),  # the newest deleted and added back: same
                 writer.add_dynamic_partitions(NAME, [KEYS[5]])),  # keys, same count, a new max id
    ]
    for change in changes:
        change()
        assert reader.get_dynamic_partitions(NAME) == uncached(writer)
        # Which keys exist (the partition view's question) is answered from the same keys.
        assert reader.get_existing_dynamic_partitions(NAME, [*KEYS, "not a shard"]) == set(uncached(writer))
    # A change by someone who is not this storage (plain SQL, as another Dagster version's storage would write).
    with writer.event_log_storage.index_connection() as conn:
        conn.execute(sa.text("DELETE FROM dynamic_partitions WHERE partition = :key"), {"key": KEYS[5]})
        conn.execute(sa.text("INSERT INTO dynamic_partitions (partitions_def_name, partition) VALUES (:n, :k)"),
                     {"n": NAME, "k": KEYS[5]})
    assert reader.get_dynamic_partitions(NAME) == uncached(writer) == [KEYS[2], KEYS[3], KEYS[4], KEYS[5]]
    assert reader.get_existing_dynamic_partitions(NAME, KEYS) == {KEYS[2], KEYS[3], KEYS[4], KEYS[5]}
    assert storage.revalidation == revalidation
    assert reader.get_dynamic_partitions(NAME) == [KEYS[2], KEYS[3], KEYS[4], KEYS[5]]

    # Its own writes are seen at once; other definitions are kept apart; a caller cannot change the cache.
    reader.add_dynamic_partitions(NAME, [KEYS[6]])
    reader.add_dynamic_partitions("other", ["x"])
    keys = reader.get_dynamic_partitions(NAME)
    assert keys == [KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]]
    keys.append("not a shard")
    assert reader.get_dynamic_partitions(NAME) == uncached(writer)
    reader.delete_dynamic_partition(NAME, KEYS[6])
    assert reader.get_dynamic_partitions(NAME) == uncached(writer) == [KEYS[2], KEYS[3], KEYS[4], KEYS[5]]
    assert reader.get_dynamic_partitions("other") == ["x"]


def test_the_version_never_vouches_for_changes_it_did_not_count(two_processes, pg_dagster_home: Path,
                                                                  caplog) -> None:
    """Someone removes or disables the trigger, or the counter: changes made meanwhile are still seen by a process
    whose cache predates them (its reads fall back to the aggregate, once logged), also after another process has
    put the trigger back."""
    from gpu_executor.launch.partitions_version import TRIGGER, UNINSTALL

    writer, reader = two_processes

    def sql(statement: str) -> None:
        with writer.event_log_storage.index_connection() as conn:
            conn.execute(sa.text(statement))

    def restart_another_process() -> None:  # its first partition call puts back what is missing
        with dg.DagsterInstance.from_config(str(pg_dagster_home)) as other:
            assert other.get_dynamic_partitions(NAME) == uncached(writer)

    def sees_everything() -> bool:
        return reader.get_dynamic_partitions(NAME) == uncached(writer)

    writer.add_dynamic_partitions(NAME, KEYS[:2])
    with caplog.at_level("WARNING"):
        assert reader.get_dynamic_partitions(NAME) == KEYS[:2]  # cached, the trigger installed
        # The trigger disabled: a change is not counted, and the counter is not trusted; enabled again, it counts.
        sql(f"ALTER TABLE dynamic_partitions DISABLE TRIGGER {TRIGGER}")
        writer.add_dynamic_partitions(NAME, [KEYS[2]])
        assert sees_everything()
        sql(f"ALTER TABLE dynamic_partitions ENABLE TRIGGER {TRIGGER}")
        writer.add_dynamic_partitions(NAME, [KEYS[3]])
        assert sees_everything()
        # The trigger dropped, a change, the trigger put back by another process, all before the reader reads again.
        sql(f"DROP TRIGGER {TRIGGER} ON dynamic_partitions")
        writer.add_dynamic_partitions(NAME, [KEYS[4]])
        restart_another_process()
        assert sees_everything()
        # Everything removed: reads fall back; put back by another process, changes are counted again.
        sql(UNINSTALL)
        writer.add_dynamic_partitions(NAME, [KEYS[5]])
        assert sees_everything()
        restart_another_process()
        writer.delete_dynamic_partition(NAME, KEYS[0])
        assert sees_everything()
        # The counter's row deleted (the trigger then updates nothing), a change, the row made again.
        sql("DELETE FROM neucodec_dynamic_partitions_version")
        writer.add_dynamic_partitions(NAME, [KEYS[6]])
        assert sees_everything()
        restart_another_process()
        writer.add_dynamic_partitions(NAME, [KEYS[7]])
        assert sees_everything()
    assert reader.get_dynamic_partitions(NAME) == KEYS[1:8]
    assert reader.event_log_storage.revalidation == "trigger"  # it trusts the counter again where it can
    warnings = [r.getMessage() for r in caplog.records if "dynamic partitions:" in r.getMessage()]
    assert len(warnings) == 1 and "aggregate" in warnings[0], warnings  # once per process


def test_the_daemon_backfills_keys_added_after_its_cache_filled_and_sees_targets_deleted(
        deployment, pg_dagster_home: Path) -> None:
    """Another process (the discovery sensor's, ``web``) adds and deletes shards; the backfill daemon's instance,
    its cache filled before the keys were added, runs the backfills launched through GraphQL; a shard deleted
    mid-backfill fails that backfill, as Dagster fails one whose target partitions were removed, while a shard
    added mid-backfill leaves it running."""
    web = dg.DagsterInstance.from_config(str(pg_dagster_home))
    daemon = dg.DagsterInstance.from_config(str(pg_dagster_home))
    target = WorkspaceFileTarget(paths=[WORKSPACE])
    try:
        web.add_dynamic_partitions(NAME, KEYS[:6])
        assert daemon.get_dynamic_partitions(NAME) == KEYS[:6]  # the daemon's cache holds six keys
        web.add_dynamic_partitions(NAME, KEYS[6:10])
        with WorkspaceProcessContext(daemon, target) as daemons:
            def iterate() -> None:
                errors = [e for e in execute_backfill_iteration(daemons, dg.get_dagster_logger()) if e is not None]
                assert not errors, errors

            late = launch_asset_backfill(daemons, TOKENS_ASSET_KEY, KEYS[6:10])
            early = launch_asset_backfill(daemons, TOKENS_ASSET_KEY, KEYS[:6])
            iterate()
            runs = backfill_runs(web, late)
            assert sorted(k for r in runs for k in run_keys(r, KEYS)) == KEYS[6:10]
            assert len(runs) == 2  # NEUCODEC_SHARDS_PER_RUN=2
            assert sorted(k for r in backfill_runs(web, early) for k in run_keys(r, KEYS)) == KEYS[:6]

            # Their runs are queued (nothing launches them here): both backfills are in progress. Another process
            # adds a shard and deletes one of the early backfill's targets.
            web.add_dynamic_partitions(NAME, [KEYS[10]])
            web.delete_dynamic_partition(NAME, KEYS[1])
            list(execute_backfill_iteration(daemons, dg.get_dagster_logger()))
            failed = daemon.get_backfill(early)
            assert failed.status in (BulkActionStatus.FAILING, BulkActionStatus.FAILED), failed.status
            assert KEYS[1] in failed.error.message
            assert daemon.get_backfill(late).status == BulkActionStatus.REQUESTED
            assert len(backfill_runs(web, late)) == 2
            assert daemon.get_dynamic_partitions(NAME) == [k for k in KEYS if k != KEYS[1]]
    finally:
        daemon.dispose()
        web.dispose()


@pytest.mark.parametrize("storage", ["event_log_storage", "run_storage"])
def test_one_process_reuses_its_connection_and_a_fork_does_not(two_processes, storage: str) -> None:
    """The event log and run storages keep one connection each per process: consecutive statements share a backend;
    a forked child gets its own (never its parent's socket)."""
    import os

    _, reader = two_processes
    connect = {"event_log_storage": reader.event_log_storage.index_connection,
               "run_storage": reader.run_storage.connect}[storage]

    def backend() -> int:
        with connect() as conn:
            return conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()

    first = backend()
    assert backend() == first
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child: report its backend, or -1 on any error, and leave without cleanup
        try:
            os.write(write, str(backend()).encode())
        except BaseException:
            os.write(write, b"-1")
        os._exit(0)
    os.close(write)
    answer = int(os.read(read, 64) or b"-2")
    os.waitpid(child, 0)
    assert answer > 0 and answer != first
    # The child sent nothing on the parent's socket (not even the pool's ping): the parent's backend last ran the
    # parent's statement (asked over a connection of its own, so as not to change that).
    with two_processes[0].event_log_storage.index_connection() as other:
        last = other.execute(sa.text("SELECT query FROM pg_stat_activity WHERE pid = :pid"), {"pid": first}).scalar()
    assert last == "SELECT pg_backend_pid()", last
    assert backend() == first  # the parent's connection was left alone


def planned_rows(instance: dg.DagsterInstance, run_id: str) -> dict[str, list]:
    """What a run's creation wrote, without ids, times and the run id: its planned events and planned checks."""
    with instance.event_log_storage.index_connection() as conn:
        events = conn.execute(sa.text(
            "SELECT id, dagster_event_type, step_key, asset_key, partition, event FROM event_logs "
            "WHERE run_id = :run AND dagster_event_type LIKE '%PLANNED' ORDER BY id"), {"run": run_id}).all()
        checks = conn.execute(sa.text(
            "SELECT asset_key, check_name, partition, execution_status, evaluation_event_storage_id "
            "FROM asset_check_executions WHERE run_id = :run ORDER BY id"), {"run": run_id}).all()
    types = {row.id: row.dagster_event_type for row in events}
    for row in checks:  # each planned check points at its own planned-check event
        assert types.get(row.evaluation_event_storage_id) == "ASSET_CHECK_EVALUATION_PLANNED", row
    entries = [dg.deserialize_value(row.event, dg.EventLogEntry) for row in events]
    return {
        "events": sorted((row.dagster_event_type, row.step_key, row.asset_key, row.partition) for row in events),
        "data": sorted(repr(e.get_dagster_event().event_specific_data) for e in entries),
        "messages": sorted(e.get_dagster_event().message for e in entries),
        "checks": sorted(tuple(row)[:4] for row in checks),
    }


def test_a_run_s_planned_events_written_as_one_batch_are_what_one_by_one_writes(
        deployment, pg_dagster_home: Path, monkeypatch) -> None:
    """The daemon creates the runs of two backfills over the same shards, the first writing each planned event on its
    own (dagster-postgres's path), the second with DAGSTER_EVENT_BATCH_SIZE (the deploy profiles' setting): each run
    of the second wrote its planned events in one statement, and the tables hold the same rows for both; the asset's
    latest planned run per shard (the UI's "materializing") is the second's."""
    from gpu_executor.launch.dagster_internals import (
        ASSET_PARTITION_RANGE_START_TAG,
        PARTITION_NAME_TAG,
    )
    from neucodec_assets.tokens.checks import VALID_CHECK_KEY

    keys = KEYS[:3]
    with dg.DagsterInstance.from_config(str(pg_dagster_home)) as daemon, \
            WorkspaceProcessContext(daemon, WorkspaceFileTarget(paths=[WORKSPACE])) as daemons:
        storage = daemon.event_log_storage
        daemon.add_dynamic_partitions(NAME, keys)

        def create_runs(batch_size: str | None) -> list[dg.DagsterRun]:
            if batch_size is None:
                monkeypatch.delenv("DAGSTER_EVENT_BATCH_SIZE", raising=False)
            else:
                monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", batch_size)
            backfill = launch_asset_backfill(daemons, TOKENS_ASSET_KEY, keys)
            errors = [e for e in execute_backfill_iteration(daemons, dg.get_dagster_logger()) if e is not None]
            assert not errors, errors
            runs = backfill_runs(daemon, backfill)
            assert sorted(k for r in runs for k in run_keys(r, keys)) == keys  # two runs: two shards and one
            return sorted(runs, key=lambda r: r.tags.get(ASSET_PARTITION_RANGE_START_TAG, r.tags.get(
                PARTITION_NAME_TAG, "")))

        before = storage.planned_batches
        one_by_one = create_runs(None)
        assert storage.planned_batches == before
        batched = create_runs("1000")
        assert storage.planned_batches == before + len(batched) == before + 2

        for single, batch in zip(one_by_one, batched, strict=True):
            assert run_keys(single, keys) == run_keys(batch, keys)
            single_rows, batch_rows = planned_rows(daemon, single.run_id), planned_rows(daemon, batch.run_id)
            assert batch_rows == single_rows
            shards = run_keys(batch, keys)
            planned = [e for e in batch_rows["events"] if e[0] == "ASSET_MATERIALIZATION_PLANNED"]
            assert sorted(e[3] for e in planned) == shards  # one planned event per shard of the run
            assert {(c[1], c[2]) for c in batch_rows["checks"]} >= {(VALID_CHECK_KEY.name, k) for k in shards}

        # The readers of planned events: the UI's in-progress partitions and the asset's last run.
        attempts = storage.get_latest_asset_partition_materialization_attempts_without_materializations(
            TOKENS_ASSET_KEY)
        newest = {k: r.run_id for r in batched for k in run_keys(r, keys)}
        assert {k: run_id for k, (run_id, _) in attempts.items()} == newest
        (record,) = storage.get_asset_records([TOKENS_ASSET_KEY])
        assert record.asset_entry.last_run_id == batched[-1].run_id


def test_partitions_in_flight_are_what_dagster_postgres_answers(pg_instance) -> None:
    """The asset page's in-flight question (latest planned materialization per shard with no materialization after
    it), answered in one pass, equals dagster-postgres's answer in every state a shard goes through, from every
    cursor, and after the asset is wiped."""
    from tests.fixtures.platform import started_tokens_run

    storage = pg_instance.event_log_storage
    keys = KEYS[:5]
    pg_instance.add_dynamic_partitions(NAME, keys)

    def materialize(key: str) -> None:
        pg_instance.report_runless_asset_event(dg.AssetMaterialization(TOKENS_ASSET_KEY, partition=key))

    def compare() -> dict[str, str]:
        """Ours against theirs from every cursor; the shards in flight and their runs."""
        ours = storage.get_latest_asset_partition_materialization_attempts_without_materializations(TOKENS_ASSET_KEY)
        with storage.index_connection() as conn:
            ids = conn.execute(sa.text("SELECT id FROM event_logs ORDER BY id")).scalars().all()
        for cursor in [None, 0, *ids]:
            theirs = super(CachingPostgresEventLogStorage, storage) \
                .get_latest_asset_partition_materialization_attempts_without_materializations(TOKENS_ASSET_KEY, cursor)
            assert storage.get_latest_asset_partition_materialization_attempts_without_materializations(
                TOKENS_ASSET_KEY, cursor) == theirs, cursor
        return {key: run_id for key, (run_id, _) in ours.items()}

    runs = {key: started_tokens_run(pg_instance, key) for key in keys[:3]}  # planned, in flight
    materialize(keys[1])  # done after it was planned
    materialize(keys[3])  # done, never planned
    again = started_tokens_run(pg_instance, keys[1])  # planned again after it was done
    assert compare() == {keys[0]: runs[keys[0]].run_id, keys[1]: again.run_id, keys[2]: runs[keys[2]].run_id}

    pg_instance.wipe_assets([TOKENS_ASSET_KEY])  # everything before the wipe is forgotten
    assert compare() == {}
    later = started_tokens_run(pg_instance, keys[4])
    assert compare() == {keys[4]: later.run_id}


def test_a_key_list_finds_keys_as_a_list_does() -> None:
    """The keys Dagster gets back find a run's range by a lookup, and stay a plain list in every other way: after any
    change to the list, ``index`` answers as ``list.index`` does."""
    from gpu_executor.launch.event_log_storage import CachedKeys

    cached = CachedKeys(version=1, keys=tuple(KEYS))
    keys = cached.as_list()
    assert isinstance(keys, list) and keys == KEYS and keys[2:4] == KEYS[2:4]
    assert [keys.index(k) for k in KEYS] == list(range(len(KEYS)))
    assert keys.index(KEYS[3], 1, 5) == 3
    with pytest.raises(ValueError):
        keys.index("not a shard")
    for change in (lambda k: k.insert(0, KEYS[5]), lambda k: k.__setitem__(0, KEYS[5]), lambda k: k.reverse(),
                   lambda k: k.remove(KEYS[0]), lambda k: k.sort(reverse=True), lambda k: k.extend([KEYS[5]])):
        changed, plain = cached.as_list(), list(KEYS)
        change(changed)
        change(plain)
        assert [changed.index(k) for k in KEYS if k in plain] == [plain.index(k) for k in KEYS if k in plain]
    assert cached.as_list() == KEYS  # the cache is untouched
