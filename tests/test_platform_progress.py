"""Fleet progress (`encoding_progress`, `neucodec-platform status`); the alerts are in test_platform_alerts.py.

Shard states are put on a real Postgres instance the way the platform records them: done shards as
materializations carrying ShardFigures metadata (the shape every materializing path writes), a failed shard as a
run of `neucodec_tokens_job` that started and was failed the way run monitoring fails a dead worker, an in-flight
shard as a started run, pending shards as partitions whose metadata.parquet holds durations. No audio is encoded.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest

from neucodec_assets.cli import main
from neucodec_assets.progress.compute import compute_progress, eta_seconds, throughput
from neucodec_assets.progress.records import (
    DONE,
    FAILED,
    IN_FLIGHT,
    PENDING,
    DoneShard,
    RunSpan,
    ShardDuration,
)
from neucodec_assets.progress.render import format_text
from neucodec_assets.progress.summary import (
    SUMMARY_VERSION,
    ProgressSummary,
    UnsupportedSummary,
    read_progress_summary,
    utc,
)
from neucodec_assets.tokens.metadata import (
    STATUS_ADOPTED,
    STATUS_ENCODED,
    STATUS_EXISTING,
    TOKENS_ASSET_KEY,
    ShardFigures,
    metadata_value,
)
from resources.bucket import METADATA_PARQUET, TOKENS_PARQUET, LocalBucket, RetryPolicy, open_bucket
from resources.tokens_file import TokensFileWriter
from tests.fixtures.platform import copy_tiny_shards, started_tokens_run
from tests.fixtures.transfer import write_done_tokens

H = 3600.0

# Decode round-trip figures of the encoded Hindi shards (sampled segments, STOI), as encode_shard records them.
ROUNDTRIP = {"corpus_a/hi/shard_000": (4, 0.9), "corpus_a/hi/shard_001": (2, 0.6)}
# Done shards: (key, status, audio seconds, tokens, failed segments with reasons)
DONE_SHARDS = [
    ("corpus_a/hi/shard_000", STATUS_ENCODED, 1800.0, 90_000, [("s1", "corrupt: LibsndfileError bad header"),
                                                                ("s2", "too_short: 100 samples")]),
    ("corpus_a/hi/shard_001", STATUS_ENCODED, 3600.0, 180_000, [("s3", "corrupt: truncated FLAC")]),
    ("corpus_b/en/shard_000", STATUS_ADOPTED, 7200.0, 360_000, []),
]
FAILED_SHARD = ("corpus_a/hi/shard_002", [600.0, 1200.0])  # durations in its metadata.parquet
IN_FLIGHT_SHARD = ("corpus_b/en/shard_001", [900.0, 900.0])
PENDING_SHARDS = [("corpus_a/hi/shard_003", [1000.0, 2600.0]), ("corpus_b/en/shard_002", [5400.0])]
PENDING_NO_METADATA = "corpus_b/en/shard_003"


def _write_metadata(bucket: LocalBucket, key: str, durations: list[float]) -> None:
    frame = pl.DataFrame({"segment_id": [f"seg{i}" for i in range(len(durations))], "duration": durations,
                          "text": ["x"] * len(durations)})
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    bucket.put_bytes(f"{key}/{METADATA_PARQUET}", buffer.getvalue())


def _end_run(instance: dg.DagsterInstance, run: dg.DagsterRun, at: float | None = None) -> None:
    instance.report_dagster_event(dg.DagsterEvent(dg.DagsterEventType.RUN_SUCCESS.value, job_name=run.job_name),
                                  run_id=run.run_id, timestamp=at)


@pytest.fixture
def fleet(pg_instance: dg.DagsterInstance, pg_dagster_home: Path, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> tuple[dg.DagsterInstance, LocalBucket, dict]:
    """An instance with done, failed, in-flight and pending shards, and their bucket (metadata only)."""
    bucket_dir = tmp_path / "bucket"
    bucket_dir.mkdir()
    monkeypatch.setenv("NEUCODEC_BUCKET", bucket_dir.as_uri())
    monkeypatch.delenv("NEUCODEC_GPU_HOUR_PRICE", raising=False)
    bucket = LocalBucket(bucket_dir)
    instance = pg_instance
    keys = ([k for k, *_ in DONE_SHARDS] + [FAILED_SHARD[0], IN_FLIGHT_SHARD[0]]
            + [k for k, _ in PENDING_SHARDS] + [PENDING_NO_METADATA])
    instance.add_dynamic_partitions("shards", keys)
    for key, durations in [FAILED_SHARD, IN_FLIGHT_SHARD, *PENDING_SHARDS]:
        _write_metadata(bucket, key, durations)

    failed_run = started_tokens_run(instance, FAILED_SHARD[0])
    instance.report_run_failed(failed_run, "run worker exited unexpectedly")  # what run monitoring writes
    in_flight_run = started_tokens_run(instance, IN_FLIGHT_SHARD[0])
    for key, status, seconds, tokens, failed in DONE_SHARDS:
        dataset, language = key.split("/")[:2]
        figures = ShardFigures(prefix=key, status=status, dataset=dataset, language=language, segment_count=7,
                               total_audio_seconds=seconds, total_tokens=tokens, output_key=f"{key}/t.parquet",
                               failed=failed, encode_wall_seconds=seconds / 50)
        if key in ROUNDTRIP:
            samples, stoi = ROUNDTRIP[key]
            figures.extra = {"roundtrip_segments": samples, "roundtrip_stoi": stoi, "roundtrip_random_weights": True}
        instance.report_runless_asset_event(dg.AssetMaterialization(
            asset_key=TOKENS_ASSET_KEY, partition=key, metadata=figures.to_metadata()))
    return instance, bucket, {"failed_run": failed_run, "in_flight_run": in_flight_run}


def _check_report(data: dict, instance: dg.DagsterInstance) -> None:
    assert data["version"] == SUMMARY_VERSION
    total = data["total"]
    assert total["shards"] == {DONE: 3, FAILED: 1, IN_FLIGHT: 1, PENDING: 3}
    assert total["hours_done"] == pytest.approx(sum(s for _, _, s, _, _ in DONE_SHARDS) / H)
    assert total["hours_encoded"] == pytest.approx((1800 + 3600) / H)  # the adopted shard was not encoded here
    assert total["tokens"] == sum(t for _, _, _, t, _ in DONE_SHARDS)
    assert total["failed_segments"] == 3
    assert total["failed_by_reason"] == {"corrupt": 2, "too_short": 1}
    known = (sum(IN_FLIGHT_SHARD[1]) + sum(sum(d) for _, d in PENDING_SHARDS)) / H
    assert total["hours_remaining"] == pytest.approx(known)
    assert total["shards_without_duration"] == 1
    assert total["hours_remaining_estimated"] == pytest.approx(known + known / 3)  # mean of the 3 known shards
    assert total["hours_failed"] == pytest.approx(sum(FAILED_SHARD[1]) / H)

    hi, en = data["by_language"]["hi"], data["by_language"]["en"]
    assert hi["shards"] == {DONE: 2, FAILED: 1, IN_FLIGHT: 0, PENDING: 1}
    assert hi["hours_done"] == pytest.approx(1.5) and hi["hours_remaining"] == pytest.approx(1.0)
    assert hi["failed_by_reason"] == {"corrupt": 2, "too_short": 1}
    assert en["shards"] == {DONE: 1, FAILED: 0, IN_FLIGHT: 1, PENDING: 2}
    # en's shard without durations is estimated at the mean of en's known not-done shards ((1800 + 5400) / 2 s)
    assert en["hours_remaining_estimated"] == pytest.approx((1800 + 5400) * 1.5 / H)
    assert data["by_dataset"]["corpus_a"]["shards"] == hi["shards"]

    # The two encoded shards were recorded after the fleet's first run started: all of them are in the window.
    window = data["throughput"]
    assert window["audio_hours"] == pytest.approx(1.5)
    assert window["audio_hours_per_wall_hour"] == pytest.approx(1.5 / window["window_hours"])
    assert data["runs_active"] == 1
    eta = total["eta_seconds"]
    assert eta == pytest.approx(total["hours_remaining_estimated"] / window["audio_hours_per_wall_hour"] * H)
    assert data["cost"] is None  # no price configured: no cost shown


def test_status_reads_done_failed_in_flight_and_pending_shards(fleet, capsys) -> None:
    instance, bucket, runs = fleet
    before = time.time()
    assert main(["status", "--json"]) == 0
    after = time.time()
    data = json.loads(capsys.readouterr().out)
    _check_report(data, instance)
    # GPU-hours: the two tokens runs from their recorded start to their end (or to now, for the running one).
    failed = instance.get_run_record_by_id(runs["failed_run"].run_id)
    running = instance.get_run_record_by_id(runs["in_flight_run"].run_id)
    assert failed.end_time is not None and running.end_time is None
    finished = failed.end_time - failed.start_time
    low, high = finished + before - running.start_time, finished + after - running.start_time
    assert low / H <= data["gpu_hours"] <= high / H

    assert main(["status"]) == 0
    text = capsys.readouterr().out
    assert "language hi" in text and "dataset corpus_b" in text and "failed segments by reason: corrupt 2" in text
    # The round-trip figures per language, weighted by sampled segments, and labelled when the weights are random.
    assert data["by_language"]["hi"]["roundtrip_means"] == {"stoi": pytest.approx((4 * 0.9 + 2 * 0.6) / 6)}
    assert data["by_language"]["en"]["roundtrip_means"] == {}
    assert "round trip hi (random weights: meaningless): stoi 0.800" in text
    assert "GPU-hours used" in text and "cost" not in text


def test_status_shows_cost_at_a_price(fleet, capsys, monkeypatch) -> None:
    instance, _, _ = fleet
    monkeypatch.setenv("NEUCODEC_GPU_HOUR_PRICE", "2.5")
    assert main(["status", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["gpu_hours"] > 0
    assert data["cost"] == pytest.approx(data["gpu_hours"] * 2.5)
    assert data["cost_per_1000_hours"] == pytest.approx(data["cost"] / 1.5 * 1000)


def test_encoding_progress_records_its_summary_links_its_charts_and_keeps_a_cache(fleet) -> None:
    from neucodec_assets.progress.asset import encoding_progress
    from resources.dagster_resources import BucketResource

    instance, bucket, _ = fleet
    resources = {"bucket": BucketResource(url=bucket.url)}
    reads = []
    for attempt in range(2):  # the second pass starts from the first one's cache
        result = dg.materialize([encoding_progress], instance=instance, resources=resources)
        assert result.success
        meta = result.asset_materializations_for_node("encoding_progress")[0].metadata
        assert meta["shards_done"].value == 3 and meta["shards_failed"].value == 1
        assert meta["shards_in_flight"].value == 1 and meta["shards_pending"].value == 3
        assert meta["hours_done/hi"].value == pytest.approx(1.5)
        assert meta["hours_remaining/hi"].value == pytest.approx(1.0)
        assert meta["shards_done/dataset/corpus_b"].value == 1
        assert meta["tokens"].value == 630_000
        assert "| language" not in meta["by_language"].value and "| hi |" in meta["by_language"].value
        # Charts are bucket objects, linked by URL: no image in the event log.
        assert meta["progress_by_language_chart"].value == bucket.url_of("progress/progress_by_language.png")
        assert meta["throughput_chart"].value == bucket.url_of("progress/throughput.png")
        assert not [k for k, v in meta.items() if "base64" in str(v.value)]
        _check_report(meta["summary"].value, instance)
        reads.append({k: meta[k].value for k in ("materializations_read", "metadata_files_read",
                                                 "metadata_read_failures")})
    for key in ("progress/progress_by_language.png", "progress/throughput.png"):
        assert bucket.read_bytes(key)[:8] == b"\x89PNG\r\n\x1a\n"
    # The same summary in the bucket and in the materialization, read back as one typed object.
    in_bucket = json.loads(bucket.read_bytes("progress/progress.json"))
    assert in_bucket == meta["summary"].value and in_bucket["version"] == SUMMARY_VERSION
    assert read_progress_summary(instance) == ProgressSummary.from_json(in_bucket)
    cursors = json.loads(bucket.read_bytes("progress/cache/cursors.json"))
    assert cursors["event_cursor"] > 0 and cursors["version"] == 2
    # Done shards' durations are not kept; the not-done ones are, so the next pass reads no metadata again but
    # the one file that is missing (a failed read is no fact: it is tried again).
    cached = pl.read_parquet(bucket.read_bytes("progress/cache/durations.parquet"))
    assert set(cached["key"]) == {FAILED_SHARD[0], IN_FLIGHT_SHARD[0], *(k for k, _ in PENDING_SHARDS),
                                  PENDING_NO_METADATA}
    assert reads == [{"materializations_read": 3, "metadata_files_read": 5, "metadata_read_failures": 1},
                     {"materializations_read": 0, "metadata_files_read": 1, "metadata_read_failures": 1}]


def test_metadata_reads_are_capped_and_said(fleet, capsys) -> None:
    assert main(["status", "--json", "--max-reads", "2"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert any("2 of 5" in note for note in data["notes"])
    assert data["total"]["shards"][PENDING] == 3  # states never depend on the reads


# ---------------------------------------------------------------------------------------------------------------
# Rate and ETA on a synthetic timeline (explicit timestamps, no clock).

NOW = 1_800_000_000.0


def _done(key: str, ts: float, seconds: float, status: str = STATUS_ENCODED, run_id: str | None = None) -> DoneShard:
    dataset, language = key.split("/")[:2]
    return DoneShard(key, 1, ts, status, dataset, language, seconds, int(seconds * 50), 1, 0,
                     encoded_here=status == STATUS_ENCODED or (status == STATUS_EXISTING and run_id is not None),
                     encoding_run_id=run_id)


def test_eta_on_a_synthetic_timeline() -> None:
    # The fleet started 30 minutes ago: two GPUs, one finished 10 minutes ago, one still running.
    runs = [RunSpan("r1", "SUCCESS", NOW - 1800, NOW - 600, NOW), RunSpan("r2", "STARTED", NOW - 1800, None, NOW),
            RunSpan("old", "SUCCESS", NOW - 20000, NOW - 16400, NOW)]  # an hour of GPU long ago
    done = {k: _done(k, ts, s) for k, ts, s in [("d/hi/1", NOW - 1500, 3600), ("d/hi/2", NOW - 900, 7200),
                                                ("d/en/3", NOW - 100, 3600), ("d/en/4", NOW - 17000, 3600)]}
    durations = {"d/hi/5": ShardDuration("d/hi/5", "d", "hi", 10 * H, 3),
                 "d/en/6": ShardDuration("d/en/6", "d", "en", 6 * H, 2)}
    states = {**dict.fromkeys(done, DONE), **dict.fromkeys(durations, PENDING)}
    summary = compute_progress(states, done, durations, runs, NOW, price=2.0)

    # Window: from the fleet's start (30 min), not the whole hour: 4 audio hours in 0.5 wall hours.
    window = summary.throughput
    assert window.window_start == utc(NOW - 1800)
    assert window.audio_hours_per_wall_hour == pytest.approx(8.0)
    assert window.gpu_hours == pytest.approx((1200 + 1800) / H)
    assert window.audio_hours_per_gpu_hour == pytest.approx(4 / (3000 / H))
    assert summary.total.eta_seconds == pytest.approx(16 / 8 * H)  # 16 h left at 8 h per hour: 2 h
    hi = summary.by_language["hi"]  # 3 h in the window -> 6 h/h; 10 h left
    assert hi.throughput_hours_per_hour == pytest.approx(6.0)
    assert hi.eta_seconds == pytest.approx(10 / 6 * H)
    assert summary.gpu_hours == pytest.approx((1200 + 1800 + 3600) / H)
    assert summary.cost == pytest.approx(summary.gpu_hours * 2.0)
    assert summary.cost_per_1000_hours == pytest.approx(summary.cost / 5.0 * 1000)
    assert sum(h for _, h in summary.hourly_audio_hours) == pytest.approx(5.0)  # all four within the 48 hours
    assert "2 h 00 min" in format_text(summary)

    # A fleet older than the window is measured over exactly the last hour.
    long_runs = [RunSpan("r", "STARTED", NOW - 5 * H, None, NOW)]
    rate = throughput([(NOW - 4000, 3600), (NOW - 1000, 1800)], long_runs, NOW)
    assert rate.window_start == NOW - H and rate.per_wall_hour == pytest.approx(0.5)
    assert rate.per_gpu_hour == pytest.approx(0.5)


def test_eta_edges() -> None:
    assert eta_seconds(0.0, None) == 0.0  # nothing left: done, whatever the rate
    assert eta_seconds(5.0, None) is None and eta_seconds(5.0, 0.0) is None  # no rate: no ETA
    assert eta_seconds(5.0, 10.0) == pytest.approx(1800)
    # Adopted shards count as done but not as throughput.
    done = {"d/hi/1": _done("d/hi/1", NOW - 60, 3600, STATUS_ADOPTED)}
    summary = compute_progress({"d/hi/1": DONE}, done, {}, [], NOW)
    assert summary.total.hours_done == pytest.approx(1.0) and summary.throughput.audio_hours == 0.0
    assert summary.total.eta_seconds == 0.0


def test_a_summary_read_back_renders_as_it_was_computed() -> None:
    """The event log keeps JSON with its keys sorted: read back, the summary still shows STOI first."""
    shard = _done("d/hi/1", NOW - 60, 3600)
    shard.roundtrip = json.dumps({"stoi": 0.9, "pesq": 1.5, "segments": 4, "random": False})
    summary = compute_progress({"d/hi/1": DONE}, {"d/hi/1": shard}, {}, [], NOW)
    stored = json.loads(json.dumps(summary.to_json(), sort_keys=True))
    assert list(stored["total"]["roundtrip_means"]) == ["pesq", "stoi"]
    again = ProgressSummary.from_json(stored)
    assert again == summary and list(again.total.roundtrip_means) == ["stoi", "pesq"]
    assert format_text(again) == format_text(summary) and "round trip hi: stoi 0.900, pesq 1.500" in format_text(again)


def test_a_shard_recorded_existing_counts_when_its_run_encoded_it() -> None:
    """Encoded by a run that crashed after the upload 2 hours ago, recorded as existing by a run a minute ago: its
    hours count as encoded here, in the hour its run ended, not in the last hour's throughput."""
    crashed = RunSpan("crashed", "FAILURE", NOW - 3 * H, NOW - 2 * H, NOW)
    done = {"d/hi/1": _done("d/hi/1", NOW - 60, 3600, STATUS_EXISTING, run_id="crashed"),
            "d/hi/2": _done("d/hi/2", NOW - 60, 1800, STATUS_EXISTING)}  # a file no run of ours wrote
    summary = compute_progress(dict.fromkeys(done, DONE), done, {}, [crashed], NOW, price=1.0)
    assert summary.total.hours_done == pytest.approx(1.5) and summary.total.hours_encoded == pytest.approx(1.0)
    assert summary.throughput.audio_hours == 0.0
    hour = next(h for t, h in summary.hourly_audio_hours if t == utc((NOW - 2 * H) // H * H))
    assert hour == pytest.approx(1.0) and sum(h for _, h in summary.hourly_audio_hours) == pytest.approx(1.0)
    assert summary.cost_per_1000_hours == pytest.approx(1.0 / 1.0 * 1000)  # 1 GPU-hour for 1 hour encoded


# ---------------------------------------------------------------------------------------------------------------
# Progress that heals, reads only what is new, and reads back as data.


def test_a_failed_read_is_not_cached_but_read_again_next_pass(pg_instance, flaky_s3, s3_env, monkeypatch) -> None:
    """On moto's S3 through a proxy: a metadata.parquet that is missing, one cut short, and one fine. Each pass
    reads again what it could not read; the figure is right on the first pass that can read it."""
    from neucodec_assets.progress.asset import encoding_progress
    from neucodec_assets.progress.refresh import refresh
    from resources.dagster_resources import BucketResource

    url = f"s3://{s3_env['bucket']}"
    monkeypatch.setenv("NEUCODEC_BUCKET", url)
    bucket = open_bucket(url)
    durations = {"d/hi/missing": [1800.0], "d/hi/cut": [3600.0], "d/hi/fine": [900.0, 900.0]}
    pg_instance.add_dynamic_partitions("shards", list(durations))
    _write_metadata(bucket, "d/hi/fine", durations["d/hi/fine"])
    bucket.put_bytes(f"d/hi/cut/{METADATA_PARQUET}", b"PAR1 and then nothing")  # an upload cut short

    def progress_pass() -> ProgressSummary:
        assert dg.materialize([encoding_progress], instance=pg_instance,
                              resources={"bucket": BucketResource(url=url)}).success
        return read_progress_summary(pg_instance)

    first = progress_pass()
    assert first.total.hours_remaining == pytest.approx(0.5) and first.total.shards_without_duration == 2
    assert (first.reads.metadata_files, first.reads.metadata_failures) == (3, 2)
    (note,) = [n for n in first.notes if "could not be read" in n]
    assert "d/hi/missing: no metadata.parquet" in note and "d/hi/cut/metadata.parquet: " in note

    _write_metadata(bucket, "d/hi/missing", durations["d/hi/missing"])  # it arrives
    second = progress_pass()
    assert second.total.hours_remaining == pytest.approx(1.0) and second.total.shards_without_duration == 1
    assert (second.reads.metadata_files, second.reads.metadata_failures) == (2, 1)  # the cut one: still unreadable

    _write_metadata(bucket, "d/hi/cut", durations["d/hi/cut"])  # uploaded again, whole
    third = progress_pass()
    assert third.total.hours_remaining == pytest.approx(2.0) and third.total.shards_without_duration == 0
    assert (third.reads.metadata_files, third.reads.metadata_failures) == (1, 0)
    assert progress_pass().reads.metadata_files == 0  # facts now: not read again

    # The cache itself cannot be read this time (its first GET fails, one attempt): the pass reads everything
    # again, gives the same figures, and leaves the cache alone.
    flaky_s3.fail_next(503, method="GET")
    requests_before = len(flaky_s3.log)
    fresh = refresh(pg_instance, open_bucket(url, retry=RetryPolicy(max_attempts=1)), "progress", save=True)
    assert flaky_s3.faults_applied == 1
    assert fresh.total.hours_remaining == pytest.approx(2.0) and fresh.reads.metadata_files == 3
    assert any("progress cache could not be read" in n for n in fresh.notes)
    assert not [method for method, _, _ in flaky_s3.log[requests_before:] if method == "PUT"]
    assert progress_pass().reads.metadata_files == 0  # the cache is as it was


def test_run_records_are_read_in_pages_and_only_newer_ones_again(pg_instance, tmp_path) -> None:
    from neucodec_assets.progress.refresh import refresh

    bucket = LocalBucket(tmp_path / "bucket")
    pg_instance.add_dynamic_partitions("shards", ["d/hi/a"])
    now = time.time()
    for hours_ago in (3, 2, 1):  # three tokens runs of an hour each, the last one ended an hour ago
        run = started_tokens_run(pg_instance, "d/hi/a", at=now - (hours_ago + 1) * H)
        _end_run(pg_instance, run, at=now - hours_ago * H)
    other = started_tokens_run(pg_instance, "d/hi/a", at=now - 3.5 * H, job="encoding_progress_job")  # no GPU
    _end_run(pg_instance, other, at=now - 2.5 * H)

    def progress_pass() -> ProgressSummary:
        return refresh(pg_instance, bucket, "progress", save=True, page_size=2)

    first = progress_pass()
    assert (first.reads.run_records, first.reads.run_record_pages) == (4, 3)  # every run, two at a time
    assert first.gpu_hours == pytest.approx(3.0) and first.runs_active == 0

    started = [started_tokens_run(pg_instance, "d/hi/a") for _ in range(2)]
    second = progress_pass()
    # The two new runs, and the one record within a minute of the newest seen before (clocks of other boxes).
    assert (second.reads.run_records, second.reads.run_record_pages) == (3, 2)
    assert second.runs_active == 2 and second.gpu_hours >= 3.0

    _end_run(pg_instance, started[0])
    third = progress_pass()  # an updated record is read again
    assert third.runs_active == 1 and 1 <= third.reads.run_records <= 2


def test_a_shard_whose_run_crashed_after_the_upload_counts_as_encoded_here(
    pg_instance, tiny_shards_dir, tmp_path, monkeypatch,
) -> None:
    """Run A uploads a shard's tokens file and dies before recording it (run monitoring fails the run); run B finds
    the file current and records it as existing. Its hours are this platform's: encoded, in the throughput and
    in the cost per 1,000 hours. A file made the same way outside the platform's runs is done but not encoded here."""
    from neucodec_assets.definitions import defs
    from neucodec_assets.progress.asset import encoding_progress
    from resources.dagster_resources import BucketResource, EncoderResource

    bucket_dir = tmp_path / "bucket"
    crashed, elsewhere = copy_tiny_shards(tiny_shards_dir, str(bucket_dir), count=2)
    for name, value in {"NEUCODEC_BUCKET": bucket_dir.as_uri(), "NEUCODEC_MODEL": "random", "NEUCODEC_DEVICE": "cpu",
                        "NEUCODEC_PRECISION": "fp32", "NEUCODEC_GPU_HOUR_PRICE": "2.0"}.items():
        monkeypatch.setenv(name, value)
    bucket = LocalBucket(bucket_dir)
    pg_instance.add_dynamic_partitions("shards", [crashed.prefix, elsewhere.prefix])
    provenance = EncoderResource().load().provenance  # the encoder run B loads (cached in this process)

    run_a = started_tokens_run(pg_instance, crashed.prefix)
    write_done_tokens(bucket, crashed.prefix, crashed.token_counts, crashed.segment_ids,
                      {**provenance, "dagster_run_id": run_a.run_id}, tmp_path / "work")
    pg_instance.report_run_failed(run_a, "run worker exited unexpectedly")  # what run monitoring writes
    write_done_tokens(bucket, elsewhere.prefix, elsewhere.token_counts, elsewhere.segment_ids, provenance,
                      tmp_path / "work")

    keys = pg_instance.get_dynamic_partitions("shards")  # one run B for both, as a backfill makes it
    assert defs.resolve_job_def("neucodec_tokens_job").execute_in_process(instance=pg_instance, tags={
        "dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}).success
    for shard in (crashed, elsewhere):
        (record,) = pg_instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=TOKENS_ASSET_KEY, asset_partitions=[shard.prefix]), limit=1).records
        shard_meta = record.asset_materialization.metadata
        assert metadata_value(shard_meta, "status") == STATUS_EXISTING
        assert metadata_value(shard_meta, "provenance").get("dagster_run_id") == (
            run_a.run_id if shard is crashed else None)

    assert dg.materialize([encoding_progress], instance=pg_instance, resources={"bucket": BucketResource()}).success
    summary = read_progress_summary(pg_instance)
    crashed_hours, elsewhere_hours = (sum(s.token_counts) * 320 / 16000 / H for s in (crashed, elsewhere))
    assert summary.total.shards[DONE] == 2
    assert summary.total.hours_done == pytest.approx(crashed_hours + elsewhere_hours)
    assert summary.total.hours_encoded == pytest.approx(crashed_hours)
    assert summary.by_language[crashed.language].hours_encoded == pytest.approx(crashed_hours)
    assert summary.throughput.audio_hours == pytest.approx(crashed_hours)
    assert summary.gpu_hours > 0 and summary.cost == pytest.approx(summary.gpu_hours * 2.0)
    assert summary.cost_per_1000_hours == pytest.approx(summary.cost / crashed_hours * 1000)


def test_the_card_and_status_read_the_recorded_summary(fleet, capsys, tmp_path) -> None:
    from neucodec_assets.progress.asset import encoding_progress
    from neucodec_assets.sft import SftResource, sft_dataset, sft_pairs
    from resources.dagster_resources import BucketResource

    instance, bucket, _ = fleet
    resources = {"bucket": BucketResource(url=bucket.url), "sft": SftResource(tokenizer="none")}
    assert main(["status", "--recorded"]) == 2  # nothing recorded yet, and it says so
    assert "encoding_progress has recorded no summary yet" in capsys.readouterr().err
    assert dg.materialize([encoding_progress], instance=instance, resources=resources).success
    recorded = read_progress_summary(instance)
    assert main(["status", "--json", "--recorded"]) == 0
    assert json.loads(capsys.readouterr().out) == recorded.to_json()

    # The SFT card's quality table: the languages with round-trip figures, as the summary has them.
    shard = DONE_SHARDS[0][0]
    writer = TokensFileWriter(tmp_path / TOKENS_PARQUET, {"model": "test"})
    for i in range(3):
        writer.add(f"s{i}", np.arange(50 + i, dtype=np.uint16))
    bucket.upload_file(writer.close(), f"{shard}/{TOKENS_PARQUET}")
    frame = pl.DataFrame({"segment_id": ["s0", "s1", "s2"], "text": ["one", "two", "three"], "speaker": ["a"] * 3})
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    bucket.put_bytes(f"{shard}/{METADATA_PARQUET}", buffer.getvalue())
    assert dg.materialize([sft_pairs], instance=instance, resources=resources, partition_key=shard).success
    assert dg.materialize([sft_dataset], instance=instance, resources=resources).success
    card = bucket.read_bytes("sft/README.md").decode()
    quality = card[card.index("## Token quality (decode round trip)"):].split("\n\n")[2].splitlines()
    assert quality[0] == "| language | stoi | random_weights | segments |"
    assert quality[2:] == ["| hi | 0.80 | yes | 6 |"]  # en has no round-trip figures

    # An instance without the materialization reads progress.json; a version this code does not know is refused.
    with dg.DagsterInstance.ephemeral() as other:
        assert read_progress_summary(other, bucket) == recorded
        bucket.put_bytes("progress/progress.json", json.dumps({**recorded.to_json(), "version": 99}).encode())
        with pytest.raises(UnsupportedSummary, match="version 99"):
            read_progress_summary(other, bucket)


def test_progress_refreshes_after_a_tokens_backfill_ends(pg_instance) -> None:
    from gpu_executor.launch.dagster_internals import BulkActionStatus
    from neucodec_assets.cli.backfills import submit_backfill
    from neucodec_assets.definitions import defs
    from neucodec_assets.progress.asset import encoding_progress_after_backfills

    pg_instance.add_dynamic_partitions("shards", ["d/hi/a"])
    graph = defs.resolve_asset_graph()
    first = submit_backfill(pg_instance, graph, [TOKENS_ASSET_KEY], ["d/hi/a"], title="earlier")
    pg_instance.update_backfill(pg_instance.get_backfill(first).with_status(BulkActionStatus.COMPLETED_SUCCESS)
                                .with_end_timestamp(time.time()))
    context = dg.build_sensor_context(instance=pg_instance)
    assert isinstance(encoding_progress_after_backfills(context), dg.SkipReason)  # first tick: cursor only
    assert isinstance(encoding_progress_after_backfills(context), dg.SkipReason)  # nothing new

    second = submit_backfill(pg_instance, graph, [TOKENS_ASSET_KEY], ["d/hi/a"], title="now")
    assert isinstance(encoding_progress_after_backfills(context), dg.SkipReason)  # still running
    pg_instance.update_backfill(pg_instance.get_backfill(second).with_status(BulkActionStatus.COMPLETED_FAILED)
                                .with_end_timestamp(time.time() + 1))
    request = encoding_progress_after_backfills(context)
    assert isinstance(request, dg.RunRequest) and request.run_key == f"progress-after-{second}"
    assert isinstance(encoding_progress_after_backfills(context), dg.SkipReason)  # once per backfill
