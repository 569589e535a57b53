"""The Dagster command line with nothing but environment variables: `dagster definitions validate` and
`dagster asset materialize --partition KEY` on the production dagster.yaml (Postgres), including a run killed
with SIGKILL in the middle of a shard, which must leave no tokens file, and a rerun that completes the shard."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
from neucodec_assets.discovery import add_shard_partitions
from neucodec_assets.tokens_metadata import TOKENS_ASSET_KEY, metadata_value, tokens_key
from resources.bucket import AUDIO_TAR, METADATA_PARQUET, LocalBucket
from resources.tokens_file import read_tokens_file, validate_tokens_file
from tests.fixtures.platform import REPO_ROOT, copy_tiny_shards

DAGSTER = str(Path(sys.executable).parent / "dagster")
LINE_DEADLINE_S = 400


def deployment_env(bucket_dir: Path) -> dict[str, str]:
    """os.environ (DAGSTER_HOME and DAGSTER_PG_* set by pg_dagster_home) plus the NEUCODEC_* settings."""
    env = dict(os.environ)
    env.update({
        "NEUCODEC_BUCKET": bucket_dir.as_uri(),
        "NEUCODEC_MODEL": "random",
        "NEUCODEC_DEVICE": "cpu",
        "NEUCODEC_PROGRESS_SECONDS": "0",  # log after every encode call
        "NEUCODEC_STREAM_BUFFER_SECONDS": "0.5",  # one segment per encode call
    })
    return env


def test_definitions_validate_with_only_env(pg_dagster_home, tmp_path):
    proc = subprocess.run([DAGSTER, "definitions", "validate", "-w", "workspace.yaml"], cwd=REPO_ROOT,
                          env=deployment_env(tmp_path / "bucket"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Validation successful for code location neucodec_assets" in proc.stdout + proc.stderr


def _lines(proc: subprocess.Popen) -> queue.Queue:
    out: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            out.put(line)
        out.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return out


def test_materialize_killed_mid_shard_then_rerun(pg_dagster_home, pg_instance, tiny_shards_dir, tmp_path):
    bucket_dir = tmp_path / "bucket"
    shard = copy_tiny_shards(tiny_shards_dir, str(bucket_dir), count=1)[0]
    bucket = LocalBucket(bucket_dir)
    add_shard_partitions(pg_instance, [shard.prefix])
    env = deployment_env(bucket_dir)
    cmd = [DAGSTER, "asset", "materialize", "-m", "neucodec_assets.definitions", "--select", "neucodec_tokens",
           "--partition", shard.prefix]

    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    lines, seen = _lines(proc), []
    deadline = time.monotonic() + LINE_DEADLINE_S
    try:
        while time.monotonic() < deadline:
            line = lines.get(timeout=max(1.0, deadline - time.monotonic()))
            if line is None:
                break
            seen.append(line)
            if f"{shard.prefix}: 1/2 segments encoded" in line:
                break
        else:
            raise AssertionError("no progress line before the deadline")
        assert f"{shard.prefix}: 1/2 segments encoded" in seen[-1], "".join(seen[-40:])
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the worker dies mid-shard: the second segment is encoding
        proc.wait(timeout=60)

    # Nothing half-written: the shard folder holds only its inputs, and the run never succeeded.
    assert sorted(p.name for p in (bucket_dir / shard.prefix).iterdir()) == [AUDIO_TAR, METADATA_PARQUET]
    assert not bucket.exists(tokens_key(shard.prefix))
    runs = pg_instance.get_runs()
    assert len(runs) == 1 and runs[0].status == dg.DagsterRunStatus.STARTED
    assert shard.prefix not in pg_instance.get_materialized_partitions(TOKENS_ASSET_KEY)

    # The rerun (what run retries do after run monitoring marks the dead run failed) completes the shard; this time
    # with DESIGN.md's form of the command (`-m neucodec_assets`).
    rerun = [DAGSTER, "asset", "materialize", "-m", "neucodec_assets", "--select", "neucodec_tokens",
             "--partition", shard.prefix]
    done = subprocess.run(rerun, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    data = bucket.read_bytes(tokens_key(shard.prefix))
    assert validate_tokens_file(data).ok
    frame, _ = read_tokens_file(data)
    assert dict(zip(frame["segment_id"], frame["token_count"])) == dict(zip(shard.segment_ids, shard.token_counts))
    latest = pg_instance.get_runs(limit=1)[0]
    assert latest.status == dg.DagsterRunStatus.SUCCESS and latest.run_id != runs[0].run_id
    record = pg_instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=TOKENS_ASSET_KEY, asset_partitions=[shard.prefix]), limit=1).records[0]
    meta = record.asset_materialization.metadata
    assert metadata_value(meta, "status") == "encoded"
    assert metadata_value(meta, "segment_count") == 2
    assert metadata_value(meta, "total_tokens") == sum(shard.token_counts)
    assert record.run_id == latest.run_id
