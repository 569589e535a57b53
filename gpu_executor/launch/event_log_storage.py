"""Dagster's Postgres event log storage, with each dynamic partitions definition's keys read once per process.

Why: Dagster's backfill daemon reads every key of the shards' dynamic partitions definition several times for each
run it creates (``_log_asset_planned_events`` resolves the run's partition range against the full key list), which
is ~0.4 s a read at 100,000 shards on local Postgres: the run-creation rate then falls with the bucket. Here
``get_dynamic_partitions`` keeps the keys in process memory per definition and revalidates them on every call with
one aggregate query (``count``, ``max(id)`` and ``sum(id)`` of the definition's rows, answered from its index and
heap in milliseconds): any other process's add (a new id is always larger than every id seen, so ``max`` moves)
or delete (``count`` falls; a delete and an add together move ``max``; ``sum`` catches an add committed late with a
smaller id together with a delete) makes the next read fetch the keys again. Its own adds and deletes drop the
entry at once. The list returned is the one the base class would return: every key, in insertion order.

It also keeps one connection open per process (SQLAlchemy's QueuePool, size 1, overflow unbounded and closed on
return, pre-pinged) where dagster-postgres opens a new one for every statement (NullPool): the backfill daemon made
~47 connections per run it created, half its time on a loaded host. A connection is never used across a fork (the
pool's connect/checkout hooks compare process ids, SQLAlchemy's documented recipe). Behind PgBouncer in transaction
mode the held connection is a client connection only (deploy/README.md, "Postgres connections").

Configured in ``dagster.yaml`` as ``event_log_storage: {module: gpu_executor.launch.event_log_storage, class:
CachingPostgresEventLogStorage, config: {postgres_db: ...}}``, the same config as dagster-postgres's storage.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import sqlalchemy as sa
import sqlalchemy.pool as sa_pool
from dagster_postgres.event_log import PostgresEventLogStorage

from gpu_executor.launch.dagster_internals import (
    ConfigurableClassData,
    create_pg_engine,
    get_token_provider_from_config,
    pg_url_from_config,
)


class PartitionsVersion(NamedTuple):
    """What the revalidation query reads: equal versions mean the same rows (ids are never reused)."""

    count: int
    max_id: int | None
    id_sum: int | None


_VERSION_SQL = sa.text(
    "SELECT count(*), max(id), sum(id) FROM dynamic_partitions WHERE partitions_def_name = :name")


class CachingPostgresEventLogStorage(PostgresEventLogStorage):
    """PostgresEventLogStorage whose ``get_dynamic_partitions`` answers from memory while the rows are unchanged."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._partitions: dict[str, tuple[PartitionsVersion, tuple[str, ...]]] = {}
        self._partitions_lock = threading.Lock()
        self._partitions_table = False  # the table's existence, once seen (it is never dropped)
        self.partition_reads = 0  # full key reads (cache misses): what the bench counts
        self.partition_checks = 0  # revalidation queries
        super().__init__(*args, **kwargs)
        self._engine.dispose()
        self._engine = pooled_engine(self.postgres_url, self._token_provider)

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None,
                          config_value: Mapping[str, Any]) -> CachingPostgresEventLogStorage:
        return cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
        )

    def partitions_version(self, partitions_def_name: str) -> PartitionsVersion:
        """One aggregate over the definition's rows: cheap next to reading 100,000 keys."""
        with self.index_connection() as conn:
            count, max_id, id_sum = conn.execute(_VERSION_SQL, {"name": partitions_def_name}).one()
        self.partition_checks += 1
        return PartitionsVersion(int(count), max_id, None if id_sum is None else int(id_sum))

    def _check_partitions_table(self) -> None:
        # dagster-postgres asks the catalog on every partition call (a connection and a query each time).
        if not self._partitions_table:
            super()._check_partitions_table()
            self._partitions_table = True

    def get_dynamic_partitions(self, partitions_def_name: str) -> Sequence[str]:
        self._check_partitions_table()
        version = self.partitions_version(partitions_def_name)
        with self._partitions_lock:
            cached = self._partitions.get(partitions_def_name)
        if cached is not None and cached[0] == version:
            return list(cached[1])
        keys = tuple(super().get_dynamic_partitions(partitions_def_name))
        self.partition_reads += 1
        # The keys were read after the version: keep them only if nothing changed in between, else the next call
        # reads again (a stale version never labels newer keys).
        if len(keys) == version.count and self.partitions_version(partitions_def_name) == version:
            with self._partitions_lock:
                self._partitions[partitions_def_name] = (version, keys)
        return list(keys)

    def forget_dynamic_partitions(self, partitions_def_name: str) -> None:
        with self._partitions_lock:
            self._partitions.pop(partitions_def_name, None)

    def add_dynamic_partitions(self, partitions_def_name: str, partition_keys: Sequence[str]) -> None:
        try:
            super().add_dynamic_partitions(partitions_def_name, partition_keys)
        finally:
            self.forget_dynamic_partitions(partitions_def_name)

    def delete_dynamic_partition(self, partitions_def_name: str, partition_key: str) -> None:
        try:
            super().delete_dynamic_partition(partitions_def_name, partition_key)
        finally:
            self.forget_dynamic_partitions(partitions_def_name)

    def wipe(self) -> None:
        super().wipe()
        with self._partitions_lock:
            self._partitions.clear()


def pooled_engine(postgres_url: str, token_provider: Any = None) -> sa.engine.Engine:
    """An AUTOCOMMIT engine holding one connection per process; connections from a parent process are dropped."""
    engine = create_pg_engine(postgres_url, token_provider, isolation_level="AUTOCOMMIT",
                              poolclass=sa_pool.QueuePool, pool_size=1, max_overflow=-1, pool_pre_ping=True,
                              pool_recycle=3600)

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, record: Any) -> None:
        record.info["pid"] = os.getpid()

    @sa.event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        if record.info.get("pid") != os.getpid():
            record.dbapi_connection = proxy.dbapi_connection = None
            raise sa.exc.DisconnectionError("connection opened in another process; reconnecting")

    return engine
