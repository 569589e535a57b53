"""Dagster's Postgres event log storage, with each dynamic partitions definition's keys read once per process.

Why: Dagster's backfill daemon reads every key of the shards' dynamic partitions definition several times for each
run it creates (``_log_asset_planned_events`` resolves the run's partition range against the full key list), which
is ~0.4 s a read at 100,000 shards on local Postgres: the run-creation rate then falls with the bucket. Here
``get_dynamic_partitions`` keeps the keys in process memory per definition and revalidates them on every call with
one primary-key read of a counter that a trigger on the partitions table bumps with every change, whoever makes it
(``gpu_executor.launch.partitions_version``; an aggregate over the rows where the trigger cannot be installed): any
other process's add or delete makes the next read fetch the keys again. Its own adds and deletes drop the entry at
once. The list returned holds what the base class would return, every key in insertion order, and finds a key's
position by a lookup (``KeyList``: Dagster finds each run's range by ``index``). Which of a set of
keys exist (the asset page's partition view asks for every shard in flight) is answered from the same keys, and
which shards are in flight (the view's status cache asks on every read while any is) in one pass over the events.

It also keeps one connection open per process (``gpu_executor.launch.pg_pool``) where dagster-postgres opens a new
one for every statement.

And it writes a run's planned events in one transaction. Creating a run logs one ASSET_MATERIALIZATION_PLANNED event
per partition of the run (and one per asset check), each a separate insert, index update and NOTIFY in
dagster-postgres (its batch write takes materializations and observations only): a 64-shard run cost ~70 statements.
Dagster hands them over as one batch when ``DAGSTER_EVENT_BATCH_SIZE`` is set in the process that creates runs (the
daemon, the webserver); ``store_event_batch`` then inserts them in one multi-row INSERT, updates the asset's row once
(with the batch's last event, as dagster-postgres does for a batch of materializations) and inserts the planned
checks' rows (one per check and partition) in one more statement, all in one transaction. What lands in the tables
is what the one-by-one path writes, bar the NOTIFY that no reader listens to since Dagster polls (dagster-postgres
keeps it "to support version skew").

Configured in ``dagster.yaml`` as ``event_log_storage: {module: gpu_executor.launch.event_log_storage, class:
CachingPostgresEventLogStorage, config: {postgres_db: ...}}``, the same config as dagster-postgres's storage.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Hashable, Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Any

import dagster as dg
import sqlalchemy as sa
from dagster_postgres.event_log import PostgresEventLogStorage

from gpu_executor.launch.dagster_internals import (
    AssetCheckExecutionRecordStatus,
    AssetCheckExecutionsTable,
    SqlEventLogStorageTable,
)
from gpu_executor.launch.partitions_version import aggregate_version, install_trigger, read_counter
from gpu_executor.launch.pg_pool import HeldConnection

# What creating a run logs, and all this storage writes in one statement (anything else goes to dagster-postgres).
PLANNED_EVENTS = frozenset({dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
                            dg.DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED})


@dataclass
class CachedKeys:
    """One definition's keys in insertion order, the version they were read at, and their set and positions once
    asked for."""

    version: Hashable
    keys: tuple[str, ...]
    _positions: dict[str, int] | None = None

    def as_set(self) -> Set[str]:
        return self.positions().keys()

    def positions(self) -> dict[str, int]:
        if self._positions is None:  # keys are unique (a unique index on the table)
            self._positions = {key: i for i, key in enumerate(self.keys)}
        return self._positions

    def as_list(self) -> KeyList:
        return KeyList(self.keys, self.positions())


class KeyList(list):
    """A list of partition keys whose ``index`` is a dict lookup. Dagster finds a run's partition range with
    ``keys.index(start)`` and ``keys.index(end)`` over every key, three times per run it creates: at 100,000 shards
    the scans cost a quarter of a run's creation. Any change to the list drops the lookup (plain ``list.index``)."""

    def __init__(self, keys: Sequence[str], positions: Mapping[str, int]) -> None:
        super().__init__(keys)
        self._positions: Mapping[str, int] | None = positions

    def index(self, value: Any, *bounds: Any) -> int:
        position = self._positions.get(value) if self._positions is not None and not bounds else None
        return position if position is not None else super().index(value, *bounds)


def _dropping_positions(name: str) -> Any:
    method = getattr(list, name)

    def changed(self: KeyList, *args: Any, **kwargs: Any) -> Any:
        self._positions = None
        return method(self, *args, **kwargs)

    return changed


for _name in ("__setitem__", "__delitem__", "__iadd__", "__imul__", "append", "extend", "insert", "pop", "remove",
              "clear", "sort", "reverse"):
    setattr(KeyList, _name, _dropping_positions(_name))


class CachingPostgresEventLogStorage(HeldConnection, PostgresEventLogStorage):
    """PostgresEventLogStorage whose ``get_dynamic_partitions`` answers from memory while the rows are unchanged."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._partitions: dict[str, CachedKeys] = {}
        self._partitions_lock = threading.Lock()
        self._partitions_table = False  # the table's existence (and its version trigger), once seen
        self.revalidation = "trigger"  # or "aggregate", where the trigger cannot be installed
        self._warned = False  # the fallback is logged once per process
        self.partition_reads = 0  # full key reads (cache misses): what the bench counts
        self.partition_checks = 0  # revalidation queries
        self.planned_batches = 0  # runs' planned events written in one statement
        self._check_executions_table = False  # the asset check executions table, once seen
        super().__init__(*args, **kwargs)

    def partitions_version(self, partitions_def_name: str) -> Hashable:
        """What changes whenever the definition's rows change: the trigger's counter (one primary-key read), else
        an aggregate over the rows."""
        self._check_partitions_table()
        self.partition_checks += 1
        if self.revalidation == "trigger":
            try:
                with self.index_connection() as conn:
                    version = read_counter(conn)
                if version is not None:
                    return version
                self._warn_once("the version trigger is missing or disabled")
            except sa.exc.SQLAlchemyError as error:  # e.g. the counter removed under us: this read, the slow way
                self._warn_once(f"the version counter could not be read ({error.__class__.__name__})")
        with self.index_connection() as conn:
            return aggregate_version(conn, partitions_def_name)

    def _warn_once(self, why: str) -> None:
        if not self._warned:
            self._warned = True
            logging.getLogger(__name__).warning(
                "dynamic partitions: %s; reads of the keys are revalidated with an aggregate over the definition's "
                "rows instead (a full scan of them)", why)

    def _check_partitions_table(self) -> None:
        # dagster-postgres asks the catalog on every partition call (a connection and a query each time).
        if self._partitions_table:
            return
        super()._check_partitions_table()
        if self.revalidation == "trigger":
            try:
                with self.index_transaction() as conn:
                    install_trigger(conn)
            except sa.exc.SQLAlchemyError as error:
                self.revalidation = "aggregate"  # for this process's life: a restart tries again
                self._warn_once(f"the version trigger could not be installed ({error.__class__.__name__})")
        self._partitions_table = True

    def get_dynamic_partitions(self, partitions_def_name: str) -> Sequence[str]:
        return self._current_keys(partitions_def_name).as_list()

    def get_existing_dynamic_partitions(self, partitions_def_name: str,
                                        partition_keys: Sequence[str]) -> Set[str]:
        """Which of ``partition_keys`` exist, from the cached keys. dagster-postgres sends them all to Postgres in an
        IN list: 1.8 s for the asset page's partition view at 100,000 shards in flight."""
        known = self._current_keys(partitions_def_name).as_set()
        return {key for key in partition_keys if key in known}

    def get_latest_asset_partition_materialization_attempts_without_materializations(
            self, asset_key: dg.AssetKey, after_storage_id: int | None = None) -> Mapping[str, tuple[str, int]]:
        """Each partition whose latest planned materialization has no later materialization: (run id, event id).
        dagster-postgres's answer, from one DISTINCT ON pass over the asset's events where it groups them twice and
        joins back: the status cache asks this on every read of the asset page while shards are in flight (0.9 s of
        the partition view at 100,000 shards in flight; this query takes 0.2-0.3 s)."""
        events = SqlEventLogStorageTable
        planned, done = (dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED.value,
                         dg.DagsterEventType.ASSET_MATERIALIZATION.value)
        query = (sa.select(events.c.dagster_event_type, events.c.partition, events.c.run_id, events.c.id)
                 .where(events.c.asset_key == asset_key.to_string(), events.c.partition.is_not(None),
                        events.c.dagster_event_type.in_([done, planned]))
                 .distinct(events.c.dagster_event_type, events.c.partition)
                 .order_by(events.c.dagster_event_type, events.c.partition, events.c.id.desc()))
        if after_storage_id is not None:
            query = query.where(events.c.id > after_storage_id)
        query = self._add_assets_wipe_filter_to_query(query, self._get_assets_details([asset_key]), [asset_key])
        with self.index_connection() as conn:
            rows = [tuple(row) for row in conn.execute(query)]
        attempts = {partition: (run_id, event_id) for kind, partition, run_id, event_id in rows if kind == planned}
        for kind, partition, _, event_id in rows:
            if kind == done and partition in attempts and attempts[partition][1] < event_id:
                del attempts[partition]  # materialized after it was planned
        return attempts

    def _current_keys(self, partitions_def_name: str) -> CachedKeys:
        """The definition's keys as of now: the cached ones if the version is unchanged, else read again."""
        version = self.partitions_version(partitions_def_name)
        with self._partitions_lock:
            cached = self._partitions.get(partitions_def_name)
        if cached is not None and cached.version == version:
            return cached
        fresh = CachedKeys(version, tuple(super().get_dynamic_partitions(partitions_def_name)))
        self.partition_reads += 1
        # The keys were read after the version: keep them only if nothing changed in between, else the next call
        # reads again (a stale version never labels newer keys).
        if self.partitions_version(partitions_def_name) == version:
            with self._partitions_lock:
                self._partitions[partitions_def_name] = fresh
        return fresh

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

    def store_event_batch(self, events: Sequence[dg.EventLogEntry]) -> None:
        """A run's planned events in one INSERT, its asset rows updated once per asset, its planned checks in one
        INSERT, all in one transaction: if it fails nothing was written, and Dagster writes the events one by one."""
        if not events or any(e.dagster_event_type not in PLANNED_EVENTS for e in events):
            super().store_event_batch(events)
            return
        if not self._check_executions_table:  # what dagster-postgres asserts before each planned check
            if not self.supports_asset_checks:
                super().store_event_batch(events)
                return
            self._check_executions_table = True
        rows = [self._event_to_row(event) for event in events]
        insert = SqlEventLogStorageTable.insert().returning(SqlEventLogStorageTable.c.id, sort_by_parameter_order=True)
        with self.index_transaction() as conn:
            ids = [int(row[0]) for row in conn.execute(insert, rows).fetchall()]
            if len(ids) != len(events):
                raise RuntimeError(f"inserted {len(events)} planned events, got {len(ids)} ids back")
            assets = [(e, i) for e, i in zip(events, ids)
                      if e.dagster_event_type == dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED]
            self._store_asset_event_tags(conn, [e for e, _ in assets], [i for _, i in assets])
            last = {e.get_dagster_event().asset_key: (e, i) for e, i in assets}
            for event, event_id in last.values():  # the asset's row, from its last planned event
                self._store_asset_event(conn, event, event_id)
            checks = [row for e, i in zip(events, ids)
                      if e.dagster_event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED
                      for row in self._planned_check_rows(e, i)]
            if checks:
                conn.execute(AssetCheckExecutionsTable.insert(), checks)
        self.planned_batches += 1

    def _planned_check_rows(self, event: dg.EventLogEntry, event_id: int) -> list[dict[str, Any]]:
        """The rows dagster's planned-check write inserts (one per partition), the event serialized once."""
        planned = event.get_dagster_event().event_specific_data
        keys = planned.partitions_subset.get_partition_keys() if planned.partitions_subset else [None]
        row = {"asset_key": planned.asset_key.to_string(), "check_name": planned.check_name, "run_id": event.run_id,
               "execution_status": AssetCheckExecutionRecordStatus.PLANNED.value,
               "evaluation_event": dg.serialize_value(event),
               "evaluation_event_timestamp": self._event_insert_timestamp(event),
               "evaluation_event_storage_id": event_id}
        return [{**row, "partition": key} for key in keys]

    def wipe(self) -> None:
        super().wipe()
        with self._partitions_lock:
            self._partitions.clear()

