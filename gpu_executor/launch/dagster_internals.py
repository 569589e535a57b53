"""Every Dagster import of the project that is not public API, in one room, each with why no public API serves.

Dagster's underscore modules change between releases without notice. Keeping them here means one file to read when
Dagster is upgraded: `tests/test_dagster_internals.py` pins this module to the Dagster version of `pyproject.toml`
and imports every name, so an upgrade that moves one fails there, by name, instead of deep in a daemon. Everything
else in the project (and its tests) imports Dagster as `import dagster as dg` or from here.

Checked against Dagster 1.13.27.
"""

# ruff: noqa: I001 - grouped by purpose, each group with its reason, not sorted
from __future__ import annotations

from typing import TYPE_CHECKING

# --- Run launchers (gpu_executor.launch.host_launcher, celery_launcher) -------------------------------------------
# A custom run launcher subclasses RunLauncher and implements its health-check protocol; Dagster exports neither.
from dagster._core.launcher.base import (
    CheckRunHealthResult,
    LaunchRunContext,
    RunLauncher,
    WorkerStatus,
)

# The command line and serialized arguments of `dagster api execute_run`, which a launcher that spawns the run worker
# itself must build (Dagster's own launchers do the same); Celery sends them packed (dagster-celery's format).
from dagster._grpc.types import ExecuteRunArgs

# Structured data on the engine events a launcher writes into a run's event log.
from dagster._core.events import EngineEventData

# Instance-configurable classes (dagster.yaml `module`/`class`/`config`): the base class and its stored config.
from dagster._serdes import ConfigurableClass, ConfigurableClassData

# dagster-celery packs its task arguments with pack_value; the worker unpacks them the same way.
from dagster._serdes import unpack_value

# --- The caching event log storage (gpu_executor.launch.event_log_storage) ---------------------------------------
# A subclass of PostgresEventLogStorage must build itself from the same `postgres_db` config; dagster-postgres's
# from_config_value constructs its own class, and these two helpers (not in its documented API) turn the config into
# the URL and token provider its constructor takes; create_pg_engine builds an engine as dagster-postgres does (its
# token provider hook included), here with a connection pool.
from dagster_postgres.utils import create_pg_engine, get_token_provider_from_config, pg_url_from_config

# Its batch write of a run's planned events inserts into the event log table and the asset check executions table
# (planned rows, with Dagster's status value) in one statement each, as dagster-postgres's own batch write of
# materializations does with these table objects.
from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable, SqlEventLogStorageTable
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
# Not imports, so not checked below, but read them on an upgrade too: the storage subclasses call or override these
# private methods of dagster-postgres's storages: _event_to_row, _event_insert_timestamp, _store_asset_event,
# _store_asset_event_tags, _check_partitions_table, _get_assets_details, _add_assets_wipe_filter_to_query (event log);
# has_run_stats_index_cols (run storage). tests/test_event_log_storage.py compares their results with the base's.

# --- Failing a hung run from inside it (neucodec_assets.tokens.asset) -------------------------------------------
# report_run_failed takes the failure's reason as JobFailureData; run retries read UNEXPECTED_TERMINATION as a crash.
from dagster._core.events import JobFailureData, RunFailureReason

# --- Backfills and run tags (CLI, demo, alerts, progress) -------------------------------------------------------
# The CLI records a backfill as the UI's mutation does (PartitionBackfill) and reads its state (BulkActionStatus).
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill

# The tags Dagster puts on runs: which partitions and which backfill a run holds, which run a retry re-executes.
from dagster._core.storage.tags import (
    ASSET_EVALUATION_ID_TAG,
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    AUTOMATION_CONDITION_TAG,
    BACKFILL_ID_TAG,
    PARENT_RUN_ID_TAG,
    PARTITION_NAME_TAG,
    SENSOR_NAME_TAG,
)

# --- Workspaces and code locations (the demo, the tests) ---------------------------------------------------------
# A workspace (code locations) in this process, as the daemon and webserver hold one.
from dagster._core.workspace.context import WorkspaceProcessContext, WorkspaceRequestContext
from dagster._core.workspace.load_target import (
    InProcessWorkspaceLoadTarget,
    ModuleTarget,
    WorkspaceFileTarget,
)
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

# --- Used by the tests only ------------------------------------------------------------------------------------
# Validating an instance config block against a class's config schema, as the instance does when it loads.
from dagster._config import process_config

# The sensor daemon's instigator type (a sensor's state in storage).
from dagster._core.scheduler.instigation import InstigatorType

# Compute log streams (the S3 compute log manager of the Kubernetes profile).
from dagster._core.storage.compute_log_manager import ComputeIOType


# --- The daemons in one process (neucodec_assets.cli.backfills.DaemonLoop: the demo and the tests) ---------------
# `dagster-daemon` offers no API to run one iteration of its daemons; the demo has no daemon of its own, and tests
# tick them deterministically. These modules take about 0.5 s to import, so they load on first use (PEP 562), not
# in every run worker and launcher that imports this module.
_LAZY = {
    "consume_new_runs_for_automatic_reexecution": "dagster._daemon.auto_run_reexecution.auto_run_reexecution",
    "execute_backfill_iteration": "dagster._daemon.backfill",
    "execute_run_monitoring_iteration": "dagster._daemon.monitoring.run_monitoring",
    "QueuedRunCoordinatorDaemon": "dagster._daemon.run_coordinator.queued_run_coordinator_daemon",
    "execute_sensor_iteration": "dagster._daemon.sensor",
    # Tests only: a daemon workspace context for one sensor iteration, and the daemon's clock set (freeze_time) so
    # that consecutive iterations tick a sensor past its minimum interval without waiting for it.
    "create_test_daemon_workspace_context": "dagster._core.test_utils",
    "freeze_time": "dagster._core.test_utils",
}


if TYPE_CHECKING:  # the lazy names, for type checkers and linters
    from dagster._core.test_utils import create_test_daemon_workspace_context, freeze_time
    from dagster._daemon.auto_run_reexecution.auto_run_reexecution import consume_new_runs_for_automatic_reexecution
    from dagster._daemon.backfill import execute_backfill_iteration
    from dagster._daemon.monitoring.run_monitoring import execute_run_monitoring_iteration
    from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon
    from dagster._daemon.sensor import execute_sensor_iteration


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ASSET_EVALUATION_ID_TAG",
    "ASSET_PARTITION_RANGE_END_TAG",
    "ASSET_PARTITION_RANGE_START_TAG",
    "AUTOMATION_CONDITION_TAG",
    "BACKFILL_ID_TAG",
    "PARENT_RUN_ID_TAG",
    "PARTITION_NAME_TAG",
    "SENSOR_NAME_TAG",
    "AssetCheckExecutionRecordStatus",
    "AssetCheckExecutionsTable",
    "BulkActionStatus",
    "CheckRunHealthResult",
    "ComputeIOType",
    "ConfigurableClass",
    "ConfigurableClassData",
    "EngineEventData",
    "ExecuteRunArgs",
    "InProcessCodeLocationOrigin",
    "InProcessWorkspaceLoadTarget",
    "InstigatorType",
    "JobFailureData",
    "LaunchRunContext",
    "LoadableTargetOrigin",
    "ModuleTarget",
    "PartitionBackfill",
    "QueuedRunCoordinatorDaemon",
    "RunFailureReason",
    "RunLauncher",
    "SqlEventLogStorageTable",
    "WorkerStatus",
    "WorkspaceFileTarget",
    "WorkspaceProcessContext",
    "WorkspaceRequestContext",
    "consume_new_runs_for_automatic_reexecution",
    "create_pg_engine",
    "create_test_daemon_workspace_context",
    "execute_backfill_iteration",
    "execute_run_monitoring_iteration",
    "execute_sensor_iteration",
    "freeze_time",
    "get_token_provider_from_config",
    "pg_url_from_config",
    "process_config",
    "unpack_value",
]
