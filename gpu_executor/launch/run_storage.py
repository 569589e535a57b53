"""Dagster's Postgres run storage on one held connection per process, its schema asked about once.

Why: every run the daemon creates and every dequeue pass reads runs (``get_run_by_id``, run records), and
dagster-postgres opens a connection for each read (NullPool) and asks the catalog whether the runs table has its
stats columns on every run-records read. At fleet scale that was a seventh of the daemon's time per run created
(``bench/fleet_scale.py``). Here the connection is ``gpu_executor.launch.pg_pool``'s, and a column once seen stays
known (migrations add columns; none removes them).

Configured in ``dagster.yaml`` as ``run_storage: {module: gpu_executor.launch.run_storage, class:
PooledPostgresRunStorage, config: {postgres_db: ...}}``, the same config as dagster-postgres's storage.
"""

from __future__ import annotations

from typing import Any

from dagster_postgres.run_storage import PostgresRunStorage

from gpu_executor.launch.pg_pool import HeldConnection


class PooledPostgresRunStorage(HeldConnection, PostgresRunStorage):
    """PostgresRunStorage with a held connection and the stats columns' presence remembered once seen."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._run_stats_cols = False
        super().__init__(*args, **kwargs)

    def has_run_stats_index_cols(self) -> bool:
        if not self._run_stats_cols:
            self._run_stats_cols = super().has_run_stats_index_cols()
        return self._run_stats_cols
