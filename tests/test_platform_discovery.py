"""Discovery, adoption and the legacy import on real Postgres storage: the sensor through one real sensor-daemon
iteration over workspace.yaml, its cursor over a local folder and moto's S3 over HTTP, and the
`neucodec-platform discover [--adopt]` / `import-legacy` commands."""

from __future__ import annotations

import io
import logging
import re

import dagster as dg
import polars as pl
import psycopg2
import pytest

from gpu_executor.settings import default_of, load_settings
from neucodec_assets import cli
from neucodec_assets.definitions import build_definitions
from neucodec_assets.tokens import discovery_sensor
from neucodec_assets.tokens.checks import VALID_CHECK_KEY
from neucodec_assets.tokens.discovery import DiscoveryCursor
from neucodec_assets.tokens.metadata import TOKENS_ASSET_KEY, metadata_value, tokens_key
from neucodec_assets.tokens.partitions import shards_partitions
from resources.bucket import Bucket, LocalBucket, S3Bucket, open_bucket
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


def test_sensor_on_by_default_adds_shards_and_requests_no_runs(
    pg_instance, tiny_shards_dir, tmp_path, monkeypatch,
):
    from gpu_executor.launch.dagster_internals import (
        SENSOR_NAME_TAG,
        InstigatorType,
        WorkspaceFileTarget,
        create_test_daemon_workspace_context,
        execute_sensor_iteration,
    )

    bucket_dir = tmp_path / "bucket"
    shards = copy_tiny_shards(tiny_shards_dir, str(bucket_dir), count=3)
    monkeypatch.setenv("NEUCODEC_BUCKET", bucket_dir.as_uri())
    monkeypatch.chdir(REPO_ROOT)
    logger = logging.getLogger("test_sensor")

    target = WorkspaceFileTarget(paths=[str(REPO_ROOT / "workspace.yaml")])
    with create_test_daemon_workspace_context(target, pg_instance) as workspace:
        list(execute_sensor_iteration(workspace, logger, None, None))  # default status RUNNING: it ticks
    assert sorted(pg_instance.get_dynamic_partitions(shards_partitions.name)) == sorted(s.prefix for s in shards)
    states = {s.instigator_name: s for s in pg_instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)}
    state = states["shard_discovery_sensor"]
    # Encoding is automation's business: the discovery tick asked for nothing. The automation sensor is ticked by the
    # same daemon iteration (it runs in the code server), so any backfill there is its, never a direct run.
    (tick,) = pg_instance.get_ticks(state.instigator_origin_id, state.selector_id)
    assert tick.run_ids == [] and tick.tick_data.reserved_run_ids in (None, [])
    assert not pg_instance.get_runs()
    assert all(b.tags.get(SENSOR_NAME_TAG) == "neucodec_automation" for b in pg_instance.get_backfills())
    cursor = DiscoveryCursor.parse(state.instigator_data.cursor)
    assert cursor.tail == f"{shards[-1].prefix}/metadata.parquet"  # the daemon kept the sensor's place

    # The interval comes from the environment of the code location, read when the definitions are built.
    monkeypatch.setenv("NEUCODEC_DISCOVERY_INTERVAL_SECONDS", "45")
    sensor = build_definitions(load_settings()).resolve_sensor_def("shard_discovery_sensor")
    assert sensor.minimum_interval_seconds == 45
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    monkeypatch.delenv("NEUCODEC_DISCOVERY_INTERVAL_SECONDS")
    assert discovery_sensor.shard_discovery_sensor.minimum_interval_seconds == default_of("discovery_interval_seconds")


def fake_shard(bucket: Bucket, prefix: str) -> None:
    """What listing looks at: an ``audio.tar`` (a few bytes) and a ``metadata.parquet`` in the shard's folder."""
    bucket.put_bytes(f"{prefix}/audio.tar", b"tar")
    bucket.put_bytes(f"{prefix}/metadata.parquet", b"pq")


class SensorTicks:
    """The real sensor evaluated as the daemon does: its cursor carried from tick to tick, its partition
    requests applied to the instance, the keys each tick read from the bucket counted."""

    def __init__(self, instance: dg.DagsterInstance, url: str):
        from resources.dagster_resources import BucketResource

        self.instance, self.resources, self.cursor = instance, {"bucket": BucketResource(url=url)}, None

    def tick(self) -> tuple[list[str], int | None]:
        """The keys added, and the keys read from the bucket when the tick found nothing (its skip message)."""
        context = dg.build_sensor_context(instance=self.instance, cursor=self.cursor, resources=self.resources)
        result = discovery_sensor.shard_discovery_sensor(context)
        assert not result.run_requests
        self.cursor = result.cursor
        added = [k for r in result.dynamic_partitions_requests for k in r.partition_keys]
        if added:
            self.instance.add_dynamic_partitions(shards_partitions.name, added)
        if result.skip_reason is None:
            return added, None
        return added, int(re.search(r"in (\d+) keys listed", result.skip_reason.skip_message).group(1))


@pytest.fixture(params=["local", "s3"])
def discovery_bucket(request: pytest.FixtureRequest, tmp_path) -> tuple[Bucket, str]:
    if request.param == "local":
        url = (tmp_path / "bucket").as_uri()
    else:
        url = f"s3://{request.getfixturevalue('s3_env')['bucket']}/fleet"
    bucket = open_bucket(url)
    if isinstance(bucket, S3Bucket):
        bucket.list_page_size = 7  # several list requests per tick, as at scale
    return bucket, url


def test_sensor_cursor_lists_new_shards_only(discovery_bucket, pg_instance, monkeypatch):
    bucket, url = discovery_bucket
    first = [f"ds/hi/shard_{i:04d}" for i in range(30)]  # 60 objects
    for prefix in first:
        fake_shard(bucket, prefix)
    monkeypatch.setenv("NEUCODEC_DISCOVERY_KEYS_PER_TICK", "25")
    ticks = SensorTicks(pg_instance, url)

    found: list[str] = []
    for _ in range(3):  # the first pass over a new bucket is paged too: 25 keys (whole shards) a tick
        added, _ = ticks.tick()
        found += added
    assert found == first and len(pg_instance.get_dynamic_partitions(shards_partitions.name)) == 30

    later = [f"ds/hi/shard_{i:04d}" for i in range(30, 33)]
    for prefix in later:
        fake_shard(bucket, prefix)
    added, _ = ticks.tick()
    assert added == later  # found on the next tick, by the tail pass (they sort after every key seen)
    cursor = DiscoveryCursor.parse(ticks.cursor)
    assert cursor.tail == f"{later[-1]}/metadata.parquet"

    # With nothing new, a tick reads at most its budget (the sweep's share), never the whole bucket.
    added, keys_listed = ticks.tick()
    assert added == [] and 0 < keys_listed <= 26  # 25, or one folder past it: pages end between folders


def test_sensor_cursor_finds_shards_sorting_before_it(discovery_bucket, pg_instance, monkeypatch):
    bucket, url = discovery_bucket
    for i in range(40):
        fake_shard(bucket, f"ds/hi/shard_{i:04d}")  # 80 objects
    monkeypatch.setenv("NEUCODEC_DISCOVERY_KEYS_PER_TICK", "100")
    ticks = SensorTicks(pg_instance, url)
    assert len(ticks.tick()[0]) == 40

    monkeypatch.setenv("NEUCODEC_DISCOVERY_KEYS_PER_TICK", "20")
    early = ["aa/new/shard_0000", "ds/hi/shard_0007b", "ds/en/shard_0000"]  # all before the cursor's tail
    for prefix in early:
        fake_shard(bucket, prefix)
    before = DiscoveryCursor.parse(ticks.cursor)
    assert all(f"{p}/audio.tar" < before.tail for p in early)

    found: list[str] = []
    sweep_ticks = -(-(80 + 2 * len(early)) // 20) + 1  # one sweep period, plus the tick that may start it late
    for _ in range(sweep_ticks):
        added, keys_listed = ticks.tick()
        assert added or keys_listed <= 21  # 20, or the rest of a shard's folder
        found += added
    assert sorted(found) == sorted(early)  # each found once, nothing known added again
    assert DiscoveryCursor.parse(ticks.cursor).sweeps >= 1


def test_cursor_survives_bad_input_and_new_versions():
    assert DiscoveryCursor.parse(None) == DiscoveryCursor() == DiscoveryCursor.parse("not json")
    assert DiscoveryCursor.parse('{"tail": "a"}') == DiscoveryCursor()  # an incomplete cursor starts over
    cursor = DiscoveryCursor(tail="d/l/s/metadata.parquet", sweep="c/x", sweeps=4)
    assert DiscoveryCursor.parse(cursor.serialize()) == cursor


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


def test_import_legacy_records_completed_rows(pg_instance, postgres_db, capsys, tmp_path, monkeypatch):
    bucket = LocalBucket(tmp_path / "bucket")
    monkeypatch.setenv("NEUCODEC_BUCKET", bucket.url)
    bucket.put_bytes(LEGACY_ROWS[0][9], b"the old fleet's tokens file")  # row 3's file is gone
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

    # A completed row counts only where its tokens file exists (one HEAD each); the others are listed.
    assert cli.main(["import-legacy", "--dsn", dsn]) == 0
    out = capsys.readouterr().out
    assert ("4 rows, 2 'completed'; added 2 partitions, recorded 1 materializations, 0 already materialized, "
            f"1 without their tokens file in {bucket.url}") in out
    assert "not recorded emilia/en/shard_000003: emilia/en/shard_000003/neucodec_tokens.parquet not in the bucket" \
        in out
    assert pg_instance.get_materialized_partitions(TOKENS_ASSET_KEY) == {"indicvoices/hi/shard_000001"}
    assert "emilia/en/shard_000003" in pg_instance.get_dynamic_partitions(shards_partitions.name)  # to encode

    bucket.put_bytes("emilia/en/shard_000003/neucodec_tokens.parquet", b"found again")
    assert cli.main(["import-legacy", "--dsn", dsn]) == 0
    assert "recorded 1 materializations, 1 already materialized, 0 without" in capsys.readouterr().out
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
