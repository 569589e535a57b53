"""Backfills as users run them: launched through the GraphQL API the UI's backfill dialog calls, executed by
Dagster's own daemons with the repository's dagster.yaml (Postgres, GpuPoolRunCoordinator, GpuRunLauncher), each
run a `dagster api execute_run` process of its own. And new shards that encode themselves: a real
`dagster-daemon run` with the discovery and automation sensors on.

This host has no GPU, so the launcher has one CPU slot: the pool limit is 1, and no two encoding runs may ever
overlap.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg

from gpu_executor.launch.dagster_internals import (
    ASSET_EVALUATION_ID_TAG,
    AUTOMATION_CONDITION_TAG,
    BACKFILL_ID_TAG,
    SENSOR_NAME_TAG,
    BulkActionStatus,
    WorkspaceFileTarget,
    WorkspaceProcessContext,
)
from neucodec_assets.cli.backfills import DaemonLoop
from neucodec_assets.tokens.discovery import add_shard_partitions
from neucodec_assets.tokens.metadata import TOKENS_ASSET_KEY, tokens_key
from resources.bucket import AUDIO_TAR, METADATA_PARQUET, LocalBucket
from resources.tokens_file import validate_tokens_file
from tests.fixtures.backfills import (
    WORKSPACE,
    assert_never_overlapped,
    backfill_runs,
    materialization_status,
    partition_statuses,
    run_keys,
    wait_backfill,
)
from tests.fixtures.dagster_api import graphql, launch_asset_backfill, wait_for
from tests.fixtures.platform import REPO_ROOT, copy_tiny_shards

BROKEN = "zz_broken/xx/shard_999999"
log = logging.getLogger(__name__)

# What the UI sends besides the backfill dialog (tests/fixtures/dagster_api.py): the backfill page's "Re-execute
# from failure".
REEXECUTE_BACKFILL = """
mutation ReexecuteBackfill($reexecutionParams: ReexecutionParams!) {
  reexecutePartitionBackfill(reexecutionParams: $reexecutionParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
  }
}
"""


def test_graphql_backfills_run_through_the_daemon(deployment, pg_dagster_home, tiny_shards_dir, monkeypatch):
    monkeypatch.setenv("NEUCODEC_AUTOMATION", "off")
    shards = copy_tiny_shards(tiny_shards_dir, deployment, count=3)
    deployment.put_bytes(f"{BROKEN}/{AUDIO_TAR}", b"this is not a tar file" * 100)
    with dg.DagsterInstance.from_config(str(pg_dagster_home)) as instance, \
            WorkspaceProcessContext(instance, WorkspaceFileTarget(paths=[WORKSPACE])) as context:
        keys = add_shard_partitions(instance, [s.prefix for s in shards] + [BROKEN])
        assert keys[-1] == BROKEN
        daemons = DaemonLoop(context)  # Dagster's daemon iterations, ticked in this process
        slots = instance.run_launcher.total_capacity
        assert slots == 1  # one CPU slot on this GPU-less host

        # Non-contiguous keys (the first shard, then the third with the broken one after it): one run per
        # contiguous stretch of at most two shards, the shard between them untouched; the broken shard fails
        # alone (the good shard of its run is recorded) and the backfill ends.
        second = launch_asset_backfill(context, TOKENS_ASSET_KEY, [keys[0], keys[2], BROKEN])
        assert wait_backfill(instance, daemons, second) == BulkActionStatus.COMPLETED_FAILED
        runs = backfill_runs(instance, second)
        by_keys = {tuple(run_keys(r, keys)): r.status for r in runs}
        assert by_keys == {(keys[0],): dg.DagsterRunStatus.SUCCESS,
                           (keys[2], BROKEN): dg.DagsterRunStatus.FAILURE}
        # The queue set the `gpu` pool limit itself, before the first run: nobody ran `concurrency set`.
        assert {p.name: p.limit for p in instance.event_log_storage.get_pool_limits()}["gpu"] == slots
        statuses = partition_statuses(context)
        assert statuses["materializedPartitions"] == {keys[0], keys[2]}
        assert statuses["failedPartitions"] == {BROKEN}
        assert keys[1] in statuses["unmaterializedPartitions"]
        for key in (keys[0], keys[2]):
            assert materialization_status(instance, key) == "encoded"
            assert validate_tokens_file(deployment.read_bytes(tokens_key(key))).ok

        # The shard is repaired; "re-execute from failure" of that backfill re-runs just its failed partition.
        good = tiny_shards_dir[1][3].prefix
        for name in (AUDIO_TAR, METADATA_PARQUET):
            deployment.upload_file(LocalBucket(tiny_shards_dir[0]).path(f"{good}/{name}"), f"{BROKEN}/{name}")
        data = graphql(context, REEXECUTE_BACKFILL, {"reexecutionParams": {"parentRunId": second,
                                                                            "strategy": "FROM_FAILURE"}})
        third = data["reexecutePartitionBackfill"]["backfillId"]
        assert wait_backfill(instance, daemons, third) == BulkActionStatus.COMPLETED_SUCCESS
        runs3 = backfill_runs(instance, third)
        assert [run_keys(r, keys) for r in runs3] == [[BROKEN]]
        assert materialization_status(instance, BROKEN) == "encoded"
        assert partition_statuses(context)["failedPartitions"] == set()

        all_runs = [*runs, *runs3]
        assert_never_overlapped(instance, all_runs, slots)
        for run in all_runs:  # each run was its own worker process on the one CPU slot
            run = instance.get_run_by_id(run.run_id)
            assert run.tags.get("neucodec/gpu") == "cpu0" and run.tags.get("neucodec/pid")
            # Run monitoring's budget: 15 minutes to start and load, 2 hours per shard of the run (the defaults).
            assert int(run.tags["dagster/max_runtime"]) == 900 + 7200 * len(run_keys(run, keys))


@contextmanager
def dagster_daemon(home: Path, log_path: Path) -> Iterator[subprocess.Popen]:
    """`dagster-daemon run` over the repository's workspace, as an operator starts it."""
    exe = Path(sys.executable).with_name("dagster-daemon")
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([str(exe), "run", "-w", WORKSPACE], cwd=REPO_ROOT, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "DAGSTER_HOME": str(home)})
    try:
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_new_shards_encode_and_pair_themselves(deployment, pg_dagster_home, tiny_shards_dir, tmp_path,
                                               monkeypatch):
    """Nobody launches anything: the discovery sensor adds the shards, the automation sensor requests their
    tokens (one grouped run), then their SFT pairs, then the dataset."""
    for key, value in {"NEUCODEC_DISCOVERY_INTERVAL_SECONDS": "5", "NEUCODEC_AUTOMATION_INTERVAL_SECONDS": "5",
                       "NEUCODEC_SFT_DATASET_CRON": "* * * * *"}.items():
        monkeypatch.setenv(key, value)
    shards = copy_tiny_shards(tiny_shards_dir, deployment, count=2)
    keys = sorted(s.prefix for s in shards)
    pairs_key, dataset_key = dg.AssetKey("sft_pairs"), dg.AssetKey("sft_dataset")
    daemon_log = tmp_path / "daemon.log"
    with dg.DagsterInstance.from_config(str(pg_dagster_home)) as instance, \
            dagster_daemon(pg_dagster_home, daemon_log) as daemon:

        def explain() -> str:
            runs = instance.get_runs()
            lines = [f"{r.run_id} {r.job_name} {r.status} {dict(r.tags)}" for r in runs]
            lines += [str(instance.run_launcher.get_run_worker_debug_info(r)) for r in runs]
            return "\n".join(lines) + "\n--- daemon log tail ---\n" + daemon_log.read_text(errors="replace")[-6000:]

        def done() -> bool:
            assert daemon.poll() is None, explain()
            return (instance.get_materialized_partitions(TOKENS_ASSET_KEY) == set(keys)
                    and instance.get_materialized_partitions(pairs_key) == set(keys)
                    and instance.get_latest_materialization_event(dataset_key) is not None)

        wait_for("tokens, pairs and the dataset of the discovered shards", done, timeout=420, explain=explain,
                 every=2.0)
        assert set(instance.get_dynamic_partitions("shards")) == set(keys)
        runs = [r for r in instance.get_runs() if r.status != dg.DagsterRunStatus.QUEUED]
        token_runs = [r for r in runs if TOKENS_ASSET_KEY in (r.asset_selection or set())]
        pair_runs = [r for r in runs if pairs_key in (r.asset_selection or set())]
        # Grouped as the backfill policies say: both shards in one tokens run and one pairs run.
        assert [sorted(run_keys(r, keys)) for r in token_runs] == [keys], explain()
        assert [sorted(run_keys(r, keys)) for r in pair_runs] == [keys], explain()
        # Each asked for by the automation sensor (the UI shows its evaluation), none by hand.
        for run in token_runs + pair_runs:
            assert run.tags[SENSOR_NAME_TAG] == "neucodec_automation", run.tags
            assert run.tags[AUTOMATION_CONDITION_TAG] == "true" and ASSET_EVALUATION_ID_TAG in run.tags
            assert BACKFILL_ID_TAG in run.tags  # emitted as a backfill: the backfill policy grouped the shards
        # SFT runs take no GPU slot; the tokens run holds the one CPU slot.
        assert all(r.tags.get("neucodec/gpu") == "none" for r in pair_runs)
        assert all(r.tags.get("neucodec/gpu") == "cpu0" for r in token_runs)
        assert_never_overlapped(instance, token_runs, instance.run_launcher.total_capacity)
