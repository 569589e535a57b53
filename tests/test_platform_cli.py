"""The Dagster command line with nothing but environment variables: `dagster definitions validate` and
`dagster asset materialize --partition KEY` on the production dagster.yaml (Postgres), including a run killed
with SIGKILL in the middle of a shard, which must leave no tokens file, and a rerun that completes the shard; and
`neucodec-platform`'s quiet default against `-v`."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import yaml

from neucodec_assets.tokens.discovery import add_shard_partitions
from neucodec_assets.tokens.metadata import TOKENS_ASSET_KEY, metadata_value, tokens_key
from resources.bucket import AUDIO_TAR, METADATA_PARQUET, LocalBucket
from resources.tokens_file import read_tokens_file, validate_tokens_file
from tests.fixtures.platform import DAGSTER, REPO_ROOT, copy_tiny_shards, deployment_env

LINE_DEADLINE_S = 400


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


def _gpu_host_home(home: Path, gpus: list[str]) -> None:
    """The production dagster.yaml on a host whose launcher hands out ``gpus`` (fake ids: encoding stays on the
    CPU through NEUCODEC_DEVICE, the slot bookkeeping is what is tested)."""
    config = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
    config["run_launcher"]["config"]["gpus"] = gpus
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))


@contextmanager
def silent_endpoint() -> Iterator[str]:
    """An HTTP endpoint that accepts connections and never answers: a stalled object store, for real."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        server.close()


def test_materialize_beside_the_fleet_and_a_hung_run(pg_dagster_home, pg_instance, tmp_path):
    """`dagster asset materialize` runs outside the queue: on a GPU host it takes a GPU no launched run holds, or
    refuses naming the way to queue; and a run that stops making progress is failed by its watchdog."""
    _gpu_host_home(pg_dagster_home, ["5"])
    stuck, other = "zz_stuck/xx/shard_000001", "zz_stuck/xx/shard_000002"
    add_shard_partitions(pg_instance, [stuck, other])

    with silent_endpoint() as endpoint:
        env = {**deployment_env(tmp_path / "unused"), "NEUCODEC_BUCKET": "s3://stalled-bucket",
               "R2_ENDPOINT_URL": endpoint, "R2_ACCESS_KEY_ID": "testing", "R2_SECRET_ACCESS_KEY": "testing",
               "NEUCODEC_HANG_SECONDS": "30"}

        def materialize(key: str) -> subprocess.Popen:
            return subprocess.Popen(
                [DAGSTER, "asset", "materialize", "-m", "neucodec_assets.definitions", "--select", "neucodec_tokens",
                 "--partition", key], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True, start_new_session=True)

        hung = materialize(stuck)
        try:
            deadline = time.monotonic() + LINE_DEADLINE_S
            while not (runs := pg_instance.get_runs()) or not runs[0].tags.get("neucodec/pid"):
                assert hung.poll() is None and time.monotonic() < deadline, hung.stdout.read()[-3000:]
                time.sleep(0.5)
            # The in-process run took the host's one GPU, tagged like a launched run with its own pid as worker.
            assert runs[0].tags["neucodec/gpu"] == "5" and runs[0].tags["neucodec/pid"] == str(hung.pid)

            # A second one finds no free GPU and says how to queue the shard instead.
            refused = materialize(other)
            out, _ = refused.communicate(timeout=LINE_DEADLINE_S)
            assert refused.returncode != 0
            assert "held by launched runs" in out and f"neucodec-platform enqueue {other}" in out, out[-3000:]

            # The stalled store answers nothing: after NEUCODEC_HANG_SECONDS without progress the watchdog fails
            # the run and ends the process.
            out, _ = hung.communicate(timeout=LINE_DEADLINE_S)
            assert hung.returncode == 75, out[-3000:]
        finally:
            if hung.poll() is None:
                os.killpg(hung.pid, signal.SIGKILL)
    run = pg_instance.get_run_by_id(runs[0].run_id)
    assert run.status == dg.DagsterRunStatus.FAILURE
    failure = pg_instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)[-1]
    assert stuck in failure.message and "no progress for" in failure.message and "limit 30 s" in failure.message
    # Not a step failure: run retries (retry_on_asset_or_op_failure: false) still start it again.
    assert failure.dagster_event.event_specific_data.failure_reason.value == "UNEXPECTED_TERMINATION"


def test_enqueue_records_a_backfill_for_the_daemon(pg_dagster_home, pg_instance, tiny_shards_dir, tmp_path):
    from neucodec_assets import cli

    bucket_dir = tmp_path / "bucket"
    shards = copy_tiny_shards(tiny_shards_dir, str(bucket_dir), count=2)
    keys = add_shard_partitions(pg_instance, [s.prefix for s in shards])

    assert cli.main(["enqueue", keys[1]]) == 0
    assert cli.main(["enqueue", "--missing", "--sft"]) == 0
    assert cli.main(["enqueue", "no/such/shard"]) == 2
    assert cli.main(["enqueue"]) == 2
    backfills = sorted(pg_instance.get_backfills(), key=lambda b: b.backfill_timestamp)
    assert len(backfills) == 2
    targets = [b.asset_backfill_data.target_subset for b in backfills]
    assert set(targets[0].asset_keys) == {TOKENS_ASSET_KEY}
    assert set(targets[0].get_partitions_subset(TOKENS_ASSET_KEY).get_partition_keys()) == {keys[1]}
    assert {k.to_user_string() for k in targets[1].asset_keys} == {"neucodec_tokens", "sft_pairs", "sft_dataset"}
    assert set(targets[1].get_partitions_subset(TOKENS_ASSET_KEY).get_partition_keys()) == set(keys)


def test_subcommands_are_quiet_unless_verbose(tmp_path, monkeypatch, capsys):
    """A subcommand prints its own lines (and errors); `-v`, before or after the subcommand, adds the Dagster and
    debug logs on stderr."""
    from neucodec_assets import cli

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))  # an empty folder: SQLite storage in it
    assert cli.main(["enqueue", "--missing"]) == 0
    quiet = capsys.readouterr()
    assert quiet.out == "nothing to enqueue\n" and quiet.err == ""
    for argv in (["enqueue", "--missing", "-v"], ["-v", "enqueue", "--missing"]):
        assert cli.main(argv) == 0
        verbose = capsys.readouterr()
        assert verbose.out == quiet.out
        assert f"neucodec_assets.cli - DEBUG - Dagster instance of DAGSTER_HOME={tmp_path}: Sqlite" in verbose.err
        assert len(verbose.err.splitlines()) > len(quiet.err.splitlines())
    assert cli.main(["enqueue", "no/such/shard"]) == 2  # errors still reach stderr when quiet
    assert "not partitions of 'shards'" in capsys.readouterr().err
