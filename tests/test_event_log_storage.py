"""The caching event log storage on real Postgres, as the repository's dagster.yaml configures it: two instances
are two processes' views (a webserver or discovery sensor that adds and deletes shards, a daemon that reads them).
Each read answers what an uncached read answers, whatever the other process changed; the daemon's backfills run
over keys added after its cache was filled and notice a target deleted mid-backfill."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

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


def test_a_read_sees_every_add_and_delete_of_another_process(two_processes) -> None:
    writer, reader = two_processes
    storage = reader.event_log_storage
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


def test_one_process_reuses_its_connection_and_a_fork_does_not(two_processes) -> None:
    """The storage keeps one connection per process: consecutive statements share a backend; a forked child gets
    its own (never its parent's socket)."""
    import os

    import sqlalchemy as sa

    _, reader = two_processes
    storage = reader.event_log_storage

    def backend() -> int:
        with storage.index_connection() as conn:
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
    assert backend() == first  # the parent's connection was left alone
