"""Discovery, adoption and the legacy import on real Postgres storage: the sensor through one real sensor-daemon
iteration over workspace.yaml, and the `neucodec-platform discover [--adopt]` / `import-legacy` commands."""

from __future__ import annotations

import importlib
import io
import logging

import polars as pl
import psycopg2
import pytest

import dagster as dg
from neucodec_assets import cli, sensors
from neucodec_assets.checks import VALID_CHECK_KEY
from neucodec_assets.partitions import shards_partitions
from neucodec_assets.tokens_metadata import TOKENS_ASSET_KEY, metadata_value, tokens_key
from resources.bucket import LocalBucket
from tests.fixtures.platform import REPO_ROOT, TinyShard, copy_tiny_shards


def latest_metadata(instance: dg.DagsterInstance, key: str) -> dict:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=TOKENS_ASSET_KEY, asset_partitions=[key]), limit=1).records
    assert records, f"no materialization of {key}"
    meta = records[0].asset_materialization.metadata
    return {k: metadata_value(meta, k) for k in meta}


def write_old_fleet_tokens(bucket: LocalBucket, shard: TinyShard, *, corrupt: bool = False) -> None:
    """A tokens file as the old fleet wrote it: the three columns, no key-value metadata."""
    counts = list(shard.token_counts)
    blobs = [bytes(2 * n) for n in counts]
    if corrupt:
        counts[0] += 5  # token_count no longer matches the bytes
    buf = io.BytesIO()
    pl.DataFrame({"segment_id": list(shard.segment_ids), "neucodec_tokens": blobs, "token_count": counts},
                 schema={"segment_id": pl.Utf8, "neucodec_tokens": pl.Binary, "token_count": pl.Int64}
                 ).write_parquet(buf)
    bucket.put_bytes(tokens_key(shard.prefix), buf.getvalue())


def test_sensor_on_by_default_adds_shards_and_requests_a_backfill(
    pg_instance, tiny_shards_dir, tmp_path, monkeypatch,
):
    from dagster._core.test_utils import create_test_daemon_workspace_context
    from dagster._core.workspace.load_target import WorkspaceFileTarget
    from dagster._daemon.sensor import execute_sensor_iteration

    bucket_dir = tmp_path / "bucket"
    shards = copy_tiny_shards(tiny_shards_dir, str(bucket_dir), count=3)
    write_old_fleet_tokens(LocalBucket(bucket_dir), shards[0])  # already encoded: no backfill for it
    monkeypatch.setenv("NEUCODEC_BUCKET", bucket_dir.as_uri())
    monkeypatch.setenv(sensors.LAUNCH_ENV, "backfill")
    monkeypatch.chdir(REPO_ROOT)
    logger = logging.getLogger("test_sensor")

    target = WorkspaceFileTarget(paths=[str(REPO_ROOT / "workspace.yaml")])
    with create_test_daemon_workspace_context(target, pg_instance) as workspace:
        list(execute_sensor_iteration(workspace, logger, None, None))  # default status RUNNING: it ticks
        assert sorted(pg_instance.get_dynamic_partitions(shards_partitions.name)) == sorted(
            s.prefix for s in shards)
        backfills = pg_instance.get_backfills()
        assert len(backfills) == 1
        target_subset = backfills[0].asset_backfill_data.target_subset
        assert set(target_subset.partitions_subsets_by_asset_key[TOKENS_ASSET_KEY].get_partition_keys()) == {
            s.prefix for s in shards[1:]}
        assert backfills[0].tags["neucodec/requested_by"] == "shard_discovery_sensor"

    # The interval comes from the environment of the code location.
    monkeypatch.setenv(sensors.INTERVAL_ENV, "45")
    try:
        assert importlib.reload(sensors).shard_discovery_sensor.minimum_interval_seconds == 45
    finally:
        monkeypatch.delenv(sensors.INTERVAL_ENV)
        reloaded = importlib.reload(sensors)
    assert reloaded.shard_discovery_sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert reloaded.shard_discovery_sensor.minimum_interval_seconds == sensors.DEFAULT_INTERVAL_SECONDS


def test_sensor_skips_when_nothing_is_new(pg_instance, tiny_shards_dir, tmp_path, monkeypatch):
    from resources.dagster_resources import BucketResource

    bucket_dir = tmp_path / "bucket"
    shards = copy_tiny_shards(tiny_shards_dir, str(bucket_dir), count=2)
    monkeypatch.delenv(sensors.LAUNCH_ENV, raising=False)
    pg_instance.add_dynamic_partitions(shards_partitions.name, [shards[0].prefix])
    context = dg.build_sensor_context(instance=pg_instance,
                                      resources={"bucket": BucketResource(url=bucket_dir.as_uri())})
    result = sensors.shard_discovery_sensor(context)
    assert result.dynamic_partitions_requests[0].partition_keys == [shards[1].prefix]
    assert not result.run_requests  # launching is off unless NEUCODEC_DISCOVERY_LAUNCH=backfill
    pg_instance.add_dynamic_partitions(shards_partitions.name, [shards[1].prefix])
    again = sensors.shard_discovery_sensor(context)
    assert again.skip_reason and "no new shards among 2" in again.skip_reason.skip_message


def test_discover_and_adopt_from_the_command_line(pg_instance, tiny_shards_dir, tmp_path, monkeypatch, capsys):
    bucket_dir = tmp_path / "bucket"
    bucket = LocalBucket(bucket_dir)
    good, bad, fresh = copy_tiny_shards(tiny_shards_dir, bucket, count=3)
    write_old_fleet_tokens(bucket, good)
    write_old_fleet_tokens(bucket, bad, corrupt=True)
    monkeypatch.setenv("NEUCODEC_BUCKET", bucket_dir.as_uri())

    assert cli.main(["discover"]) == 0
    assert "3 shards (2 with a tokens file); added 3 partitions" in capsys.readouterr().out
    assert sorted(pg_instance.get_dynamic_partitions(shards_partitions.name)) == sorted(
        s.prefix for s in (good, bad, fresh))
    assert not pg_instance.get_materialized_partitions(TOKENS_ASSET_KEY)

    assert cli.main(["discover", "--adopt"]) == 0
    out = capsys.readouterr().out
    assert "added 0 partitions" in out and "adopted 1 shards" in out
    assert f"not adopted {bad.prefix}: 1 rows where token_count != len(neucodec_tokens) / 2" in out
    assert pg_instance.get_materialized_partitions(TOKENS_ASSET_KEY) == {good.prefix}
    meta = latest_metadata(pg_instance, good.prefix)
    assert meta["status"] == "adopted"
    assert meta["segment_count"] == len(good.segment_ids)
    assert meta["total_tokens"] == sum(good.token_counts)
    assert meta["total_audio_seconds"] == pytest.approx(sum(good.token_counts) * 320 / 16000)
    assert meta["dataset"] == good.dataset and meta["language"] == good.language
    assert "failed_count" not in meta  # the old fleet's files do not list failures: unknown, not zero
    history = pg_instance.event_log_storage.get_asset_check_execution_history(VALID_CHECK_KEY, limit=5)
    assert [(r.partition, r.event.asset_check_evaluation.passed) for r in history] == [(good.prefix, True)]

    assert cli.main(["discover", "--adopt"]) == 0
    assert "adopted 0 shards; 1 already materialized" in capsys.readouterr().out


def test_discover_needs_dagster_home(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.setenv("NEUCODEC_BUCKET", tmp_path.as_uri())
    assert cli.main(["discover"]) == 2
    assert "DAGSTER_HOME is not set" in capsys.readouterr().err


LEGACY_ROWS = [
    # id, shard_prefix, dataset, language, status, segments, seconds, tokens, wall, output_key
    (1, "indicvoices/hi/shard_000001", "indicvoices", "hi", "completed", 5120, 100321.5, 5016075, 910.2,
     "indicvoices/hi/shard_000001/neucodec_tokens.parquet"),
    (2, "indicvoices/hi/shard_000002", "indicvoices", "hi", "failed", None, None, None, None, None),
    (3, "emilia/en/shard_000003", "emilia", "en", "completed", 4800, 98000.25, 4900012, 1203.0, None),
    (4, "emilia/en/shard_000004", "emilia", "en", "processing", None, None, None, None, None),
]


def test_import_legacy_records_completed_rows(pg_instance, postgres_db, capsys):
    conn = psycopg2.connect(host=postgres_db["host"], port=postgres_db["port"], user=postgres_db["user"],
                            dbname=postgres_db["db"])
    with conn, conn.cursor() as cur:
        cur.execute("""CREATE TABLE neucodec_shards (
            id serial PRIMARY KEY, shard_prefix text UNIQUE NOT NULL, dataset text, language text,
            status text NOT NULL DEFAULT 'pending', segment_count integer, total_audio_seconds double precision,
            total_tokens bigint, encode_wall_seconds double precision, output_key text,
            claimed_by text, claimed_at timestamptz)""")
        cur.executemany("INSERT INTO neucodec_shards (id, shard_prefix, dataset, language, status, segment_count,"
                        " total_audio_seconds, total_tokens, encode_wall_seconds, output_key)"
                        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", LEGACY_ROWS)
    conn.close()
    dsn = postgres_db["url"]  # the SQLAlchemy form (postgresql+psycopg2://) is accepted as well

    assert cli.main(["import-legacy", "--dsn", dsn]) == 0
    assert "4 rows, 2 'completed'; added 2 partitions, recorded 2 materializations" in capsys.readouterr().out
    assert pg_instance.get_materialized_partitions(TOKENS_ASSET_KEY) == {
        "indicvoices/hi/shard_000001", "emilia/en/shard_000003"}
    meta = latest_metadata(pg_instance, "indicvoices/hi/shard_000001")
    assert meta["status"] == "legacy" and meta["legacy_id"] == 1
    assert (meta["segment_count"], meta["total_tokens"]) == (5120, 5016075)
    assert meta["total_audio_seconds"] == pytest.approx(100321.5)
    assert meta["encode_wall_seconds"] == pytest.approx(910.2)
    assert meta["real_time_factor"] == pytest.approx(100321.5 / 910.2, rel=1e-3)
    assert meta["output_key"] == "indicvoices/hi/shard_000001/neucodec_tokens.parquet"
    assert latest_metadata(pg_instance, "emilia/en/shard_000003")["output_key"] == (
        "emilia/en/shard_000003/neucodec_tokens.parquet")

    assert cli.main(["import-legacy", "--dsn", dsn]) == 0  # importing again records nothing twice
    assert "recorded 0 materializations, 2 already materialized" in capsys.readouterr().out

    bad = "postgresql://legacy:s3cret-pw@127.0.0.1:1/nothing"
    assert cli.main(["import-legacy", "--dsn", bad]) == 2
    err = capsys.readouterr().err
    assert "cannot connect to postgresql://legacy:***@127.0.0.1:1/nothing" in err and "s3cret" not in err
