"""neucodec_tokens end to end through Dagster on real Postgres storage (the production dagster.yaml), against a
local folder bucket and moto's S3 server, with the full-size random model (loaded once for this module's tests).
"""

from __future__ import annotations

import dagster as dg
import numpy as np
import pytest

from neucodec_assets.definitions import defs
from neucodec_assets.tokens.checks import (
    COMPLETE_CHECK,
    COMPLETE_CHECK_KEY,
    VALID_CHECK,
    VALID_CHECK_KEY,
)
from neucodec_assets.tokens.discovery import add_shard_partitions
from neucodec_assets.tokens.metadata import TOKENS_ASSET_KEY, metadata_value, tokens_key
from neucodec_assets.tokens.shard_loop import ENCODED, EXISTING, FAILED, TokensRun
from resources.bucket import AUDIO_TAR, open_bucket
from resources.dagster_resources import RANDOM_LABEL, EncoderResource
from resources.tokens_file import (
    TokensFileWriter,
    read_tokens_file,
    validate_tokens_file,
)
from tests.fixtures.platform import copy_tiny_shards


@pytest.fixture
def encoder_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a deployment sets: the random model (cached on disk, labelled random), CPU, exact fp32."""
    monkeypatch.setenv("NEUCODEC_MODEL", "random")
    monkeypatch.setenv("NEUCODEC_DEVICE", "cpu")
    monkeypatch.setenv("NEUCODEC_PRECISION", "fp32")


def run_tokens(instance: dg.DagsterInstance, key: str, run_config: dict | None = None,
               job: dg.JobDefinition | None = None) -> dg.ExecuteInProcessResult:
    """One run of one shard in this process, as `dagster asset materialize --partition KEY` makes it.
    (Runs of several shards come from backfills: tests/test_platform_backfills.py.)"""
    job = job or defs.resolve_job_def("neucodec_tokens_job")
    return job.execute_in_process(instance=instance, partition_key=key, run_config=run_config or {},
                                  raise_on_error=False)


def latest_metadata(instance: dg.DagsterInstance, key: str) -> dict:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=TOKENS_ASSET_KEY, asset_partitions=[key]), limit=1).records
    assert records, f"no materialization of {key}"
    return {k: metadata_value(records[0].asset_materialization.metadata, k)
            for k in records[0].asset_materialization.metadata}


def check_results(result: dg.ExecuteInProcessResult) -> dict[tuple[str, str], bool]:
    return {(e.check_name, e.partition): e.passed for e in result.get_asset_check_evaluations()}


def assert_encoded(instance, bucket, shard, meta) -> None:
    assert meta["status"] == "encoded"
    assert meta["segment_count"] == len(shard.segment_ids)
    assert meta["failed_count"] == 0
    assert meta["total_tokens"] == sum(shard.token_counts)
    assert meta["total_audio_seconds"] == pytest.approx(shard.audio_seconds, abs=1e-3)
    assert meta["dataset"] == shard.dataset and meta["language"] == shard.language
    assert meta["output_key"] == tokens_key(shard.prefix)
    assert meta["model"] == RANDOM_LABEL
    assert meta["provenance"]["weights"] == RANDOM_LABEL and meta["provenance"]["precision"] == "fp32"
    assert meta["device"] == "cpu" and "CUDA_VISIBLE_DEVICES" in meta["gpu"]
    assert meta["encode_wall_seconds"] > 0
    assert meta["real_time_factor"] == pytest.approx(meta["total_audio_seconds"] / meta["encode_wall_seconds"],
                                                     rel=1e-2)
    frame, file_meta = read_tokens_file(bucket.read_bytes(tokens_key(shard.prefix)))
    assert frame.columns == ["segment_id", "neucodec_tokens", "token_count"]
    counts = dict(zip(frame["segment_id"], frame["token_count"]))
    assert counts == dict(zip(shard.segment_ids, shard.token_counts))
    for blob, count in zip(frame["neucodec_tokens"], frame["token_count"]):
        assert len(np.frombuffer(blob, dtype=np.uint16)) == count
    assert file_meta["provenance"]["weights"] == RANDOM_LABEL


def test_local_bucket_several_shards_idempotent_and_forced(
    pg_instance, tiny_shards_dir, tmp_path, monkeypatch, encoder_env,
):
    bucket_dir = tmp_path / "bucket"
    shards = copy_tiny_shards(tiny_shards_dir, str(bucket_dir), count=2)
    monkeypatch.setenv("NEUCODEC_BUCKET", bucket_dir.as_uri())
    bucket = open_bucket()
    keys = add_shard_partitions(pg_instance, [s.prefix for s in shards])
    assert keys == sorted(s.prefix for s in shards)
    by_key = {s.prefix: s for s in shards}

    first = [run_tokens(pg_instance, key) for key in keys]
    assert all(result.success for result in first)
    assert pg_instance.get_materialized_partitions(TOKENS_ASSET_KEY) == set(keys)
    for key in keys:
        assert_encoded(pg_instance, bucket, by_key[key], latest_metadata(pg_instance, key))
        assert validate_tokens_file(bucket.read_bytes(tokens_key(key))).ok
    checks = {k: v for result in first for k, v in check_results(result).items()}
    assert checks == {(name, key): True for name in (VALID_CHECK, COMPLETE_CHECK) for key in keys}
    files = {key: bucket.read_bytes(tokens_key(key)) for key in keys}

    # Run again: the files exist with the same model, precision and chunking -> reported as existing, untouched.
    for key in keys:
        second = run_tokens(pg_instance, key)
        assert second.success
        meta = latest_metadata(pg_instance, key)
        assert meta["status"] == "existing"
        assert "encode_wall_seconds" not in meta
        assert meta["segment_count"] == len(by_key[key].segment_ids)
        assert meta["total_tokens"] == sum(by_key[key].token_counts)
        assert bucket.read_bytes(tokens_key(key)) == files[key]
        assert set(check_results(second).values()) == {True}

    # force: true encodes again; fp32 tokens are identical, the file is new (its provenance names the new run).
    forced = run_tokens(pg_instance, keys[0], run_config={"ops": {"neucodec_tokens": {"config": {"force": True}}}})
    assert forced.success
    meta = latest_metadata(pg_instance, keys[0])
    assert meta["status"] == "encoded"
    assert meta["provenance"]["dagster_run_id"] == forced.run_id
    new_bytes = bucket.read_bytes(tokens_key(keys[0]))
    assert new_bytes != files[keys[0]]
    old_frame, _ = read_tokens_file(files[keys[0]])
    new_frame, _ = read_tokens_file(new_bytes)
    assert old_frame.equals(new_frame)

    # A checks-only run re-reads the files; a file that lost a row is incomplete and names the segment.
    frame, file_meta = read_tokens_file(bucket.read_bytes(tokens_key(keys[1])))
    dropped = frame["segment_id"][0]
    tampered = tmp_path / "tampered.parquet"
    writer = TokensFileWriter(tampered, file_meta["provenance"])
    for sid, blob in zip(frame["segment_id"][1:], frame["neucodec_tokens"][1:]):
        writer.add(sid, np.frombuffer(blob, dtype="<u2"))
    writer.close(file_meta["failures"])
    bucket.upload_file(tampered, tokens_key(keys[1]))
    only_checks = defs.resolve_job_def("neucodec_tokens_job").get_subset(
        asset_selection=set(), asset_check_selection={VALID_CHECK_KEY, COMPLETE_CHECK_KEY})
    evaluations = {}
    for key in keys:
        checked = run_tokens(pg_instance, key, job=only_checks)
        assert checked.success
        assert not checked.get_asset_materialization_events()
        evaluations.update({(e.check_name, e.partition): e for e in checked.get_asset_check_evaluations()})
    assert evaluations[(VALID_CHECK, keys[1])].passed
    assert evaluations[(COMPLETE_CHECK, keys[0])].passed
    incomplete = evaluations[(COMPLETE_CHECK, keys[1])]
    assert not incomplete.passed and dropped in incomplete.description


def test_tokens_run_over_s3_with_prefetch_and_a_broken_shard(tiny_shards_dir, s3_env, monkeypatch, encoder_env):
    """The shard loop of one run, without Dagster: three shards, one of them broken, one model load."""
    url = f"s3://{s3_env['bucket']}/corpus"
    monkeypatch.setenv("NEUCODEC_BUCKET", url)
    bucket = open_bucket()
    shards = copy_tiny_shards(tiny_shards_dir, bucket, count=2)
    broken = "zz_broken/xx/shard_999999"
    bucket.put_bytes(f"{broken}/{AUDIO_TAR}", b"this is not a tar file" * 100)
    keys = sorted([s.prefix for s in shards]) + [broken]
    lines: list[str] = []

    outcomes = list(TokensRun(bucket, EncoderResource().load(), log=lines.append, gpu="slot 3").run(keys))
    assert [o.prefix for o in outcomes] == keys
    assert [o.status for o in outcomes] == [ENCODED, ENCODED, FAILED]
    # The broken shard fails alone and says why; the good ones have their files, figures and passing checks.
    assert "ShardError" in outcomes[-1].error and any(broken in line for line in lines)
    by_key = {s.prefix: s for s in shards}
    for shard_outcome in outcomes[:2]:
        figures = shard_outcome.result.figures
        shard = by_key[shard_outcome.prefix]
        assert figures.segment_count == len(shard.segment_ids)
        assert figures.total_tokens == sum(shard.token_counts)
        assert figures.output_uri == f"{url}/{tokens_key(shard.prefix)}"
        # Fetched by the prefetcher, every byte of the tar counted as it arrived (not streamed twice).
        assert figures.extra["download_bytes"] == bucket.size(f"{shard.prefix}/{AUDIO_TAR}")
        assert figures.extra["download_seconds"] > 0
        assert figures.gpu == "slot 3"
        assert all(check.passed for check in shard_outcome.result.checks)
        assert validate_tokens_file(bucket.read_bytes(tokens_key(shard.prefix))).ok
    assert not bucket.exists(tokens_key(broken))

    # Again: both good shards are current (no encoding); the broken one still fails.
    again = list(TokensRun(bucket, EncoderResource().load(), log=lines.append).run(keys))
    assert [o.status for o in again] == [EXISTING, EXISTING, FAILED]
