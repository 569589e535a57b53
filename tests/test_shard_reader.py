"""Reading shards: sample shards on both backends, every bad input of issue 4, and bounded memory on a
two-hour shard."""

from __future__ import annotations

import io
import tarfile
import tracemalloc
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import soundfile as sf
import soxr

from resources.bucket import LocalBucket, RetryPolicy, open_bucket
from resources.sample_bucket import SampleBucketReport
from resources.shard_reader import ShardError, read_shard
from tests.fixtures.shards import FlakyProxy, copy_bucket

SR = 16_000


def tone(seconds: float, sr: int = SR, channels: int = 1, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    x = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([x, 0.5 * x], axis=1) if channels == 2 else x


def encode(x: np.ndarray, sr: int, fmt: str = "FLAC", subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def reference_wave(data: bytes) -> np.ndarray:
    """DESIGN.md's preparation, written out independently of resources.audio."""
    x, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    mono = x.mean(axis=1)
    return soxr.resample(mono, sr, 16000, quality="HQ") if sr != 16000 else mono


def write_tar(path: Path, members: list[tuple[str, bytes | str | None]]) -> None:
    """``None``: a directory; ``str``: a symlink to that target; bytes: a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            if content is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))


def write_metadata(path: Path, ids: list[str], **columns: list) -> None:
    pl.DataFrame({"segment_id": ids, **columns}).write_parquet(path)


# -- sample shards -----------------------------------------------------------------------------------------

def check_sample_shard(bucket, shard, root: Path) -> None:
    with read_shard(bucket, shard.prefix, workers=2) as reader:
        assert reader.dataset == shard.dataset and reader.language == shard.language
        assert reader.metadata is not None and reader.metadata.height == shard.segment_count
        segments = list(reader.segments())
        assert reader.complete and reader.failures == []
        stats = reader.stats
    assert [s.segment_id for s in segments] == shard.segment_ids
    assert stats.segments_read == stats.audio_members == stats.members == shard.segment_count
    assert stats.audio_without_metadata == stats.metadata_rows_without_audio == 0
    with tarfile.open(root / shard.prefix / "audio.tar") as tar:
        for seg, sample in zip(segments, shard.segments):
            data = tar.extractfile(sample.member).read()
            assert seg.wave.dtype == np.float32 and seg.wave.ndim == 1 and seg.has_metadata
            np.testing.assert_array_equal(seg.wave, reference_wave(data))
            assert seg.seconds == pytest.approx(sample.duration, abs=1e-3)
            assert (seg.source_sample_rate, seg.source_channels) == (sample.sample_rate, sample.channels)


def test_sample_shards_local(sample_bucket_dir: Path, sample_bucket_report: SampleBucketReport) -> None:
    bucket = open_bucket(str(sample_bucket_dir))
    assert [s.prefix for s in bucket.list_shards()] == sorted(s.prefix for s in sample_bucket_report.shards)
    for shard in sample_bucket_report.shards:
        check_sample_shard(bucket, shard, sample_bucket_dir)


def test_sample_shard_s3_through_flaky_endpoint(flaky_s3: FlakyProxy, s3_env: dict[str, str],
                                                sample_bucket_dir: Path, sample_bucket_report: SampleBucketReport,
                                                tmp_path: Path) -> None:
    url = f"s3://{s3_env['bucket']}/corpus"
    copy_bucket(sample_bucket_dir, url)
    bucket = open_bucket(url, retry=RetryPolicy(max_attempts=5, base_delay_s=0.01))
    shard = sample_bucket_report.shards[1]
    flaky_s3.fail_next(503, "drop", "cut", method="GET")
    spool = tmp_path / "spool"
    with read_shard(bucket, shard.prefix, spool_dir=spool) as reader:
        assert any(spool.iterdir())  # the tar is spooled to local disk, not memory
        assert [s.segment_id for s in reader.segments()] == shard.segment_ids
        assert reader.failures == [] and reader.metadata is not None
    assert flaky_s3.faults_applied == 3
    assert list(spool.iterdir()) == []  # and removed on close


# -- bad input --------------------------------------------------------------------------------------------

@pytest.fixture
def bad_shard(tmp_path: Path) -> tuple[LocalBucket, str]:
    good16 = encode(tone(1.0), SR)
    good48 = encode(tone(1.2, 48_000, 2), 48_000)
    flac_long = encode(tone(2.0), SR)
    wav_long = encode(tone(2.0), SR, "WAV", "PCM_16")
    nan = tone(0.5)
    nan[100] = np.nan
    inf = tone(0.5)
    inf[7] = np.inf
    members: list[tuple[str, bytes | str | None]] = [
        ("x", None),
        ("x/good_a.flac", good16),
        ("x/good_b.flac", good48),
        ("good_wav.wav", encode(tone(0.6, 22_050), 22_050, "WAV", "PCM_16")),
        ("good_ogg.ogg", encode(tone(0.8, 44_100), 44_100, "OGG", "VORBIS")),
        ("good_opus.opus", encode(tone(0.8, 48_000), 48_000, "OGG", "OPUS")),
        ("good_mp3.mp3", encode(tone(0.8, 44_100), 44_100, "MP3", "MPEG_LAYER_III")),
        ("../escape.flac", good16),
        ("/abs/üñí côdé.flac", good16),
        ("dir/name with spaces.v2.flac", good16),
        ("corrupt.flac", np.random.default_rng(0).bytes(5000)),
        ("truncated.flac", flac_long[: len(flac_long) * 6 // 10]),
        ("cut_wav.wav", wav_long[: len(wav_long) * 6 // 10]),
        ("zero_bytes.flac", b""),
        ("no_frames.wav", encode(np.zeros(0, np.float32), SR, "WAV", "PCM_16")),
        ("short.flac", encode(tone(100 / SR), SR)),
        ("short44.flac", encode(tone(800 / 44_100, 44_100), 44_100)),
        ("nan.wav", encode(nan, SR, "WAV", "FLOAT")),
        ("inf.wav", encode(inf, SR, "WAV", "FLOAT")),
        ("clip.m4a", b"\x00\x00\x00\x20ftypM4A " + b"\x00" * 100),
        ("a/dup.flac", good16),
        ("b/dup.flac", good48),
        ("notes.txt", b"not audio"),
        ("meta.json", b"{}"),
        ("x/._good_a.flac", b"\x00\x05\x16\x07 AppleDouble"),
        ("link.flac", "x/good_a.flac"),
    ]
    root = tmp_path / "bucket"
    prefix = "bad_ds/hi/shard_000007"
    write_tar(root / prefix / "audio.tar", members)
    write_metadata(root / prefix / "metadata.parquet", ["good_a", "good_b", "corrupt", "ghost", "dup"],
                   text=["a", "b", "c", "g", "d"])
    return LocalBucket(root), prefix


GOOD = ["good_a", "good_b", "good_wav", "good_ogg", "good_opus", "good_mp3", "escape", "üñí côdé",
        "name with spaces.v2"]
FAILED = {"corrupt": "corrupt", "truncated": "corrupt", "zero_bytes": "empty", "no_frames": "empty",
          "short": "too_short", "short44": "too_short", "nan": "non_finite", "inf": "non_finite",
          "clip": "unsupported_format", "dup": "duplicate", "cut_wav": "truncated"}


def test_every_bad_member_is_reported_and_nothing_else_is_lost(bad_shard: tuple[LocalBucket, str]) -> None:
    bucket, prefix = bad_shard
    with read_shard(bucket, prefix, workers=2, prefetch=3) as reader:
        assert reader.dataset == "bad_ds" and reader.language == "hi"  # from the prefix: no such columns
        segments = {s.segment_id: s for s in reader.segments()}
        failures = {f.segment_id: f for f in reader.failures}
        stats = reader.stats
    assert sorted(segments) == sorted(GOOD)
    assert {sid: f.kind for sid, f in failures.items()} == FAILED
    for f in failures.values():
        assert f.reason.startswith(f.kind + ": ") and len(f.reason) > len(f.kind) + 3
    assert "a/dup.flac" in failures["dup"].reason and "b/dup.flac" in failures["dup"].reason
    assert "fewer than 320" in failures["short44"].reason
    assert "truncated or damaged" in failures["truncated"].reason
    assert "bytes short of its declared size" in failures["cut_wav"].reason
    assert all(np.isfinite(s.wave).all() and len(s.wave) >= 320 for s in segments.values())
    assert segments["good_b"].source_channels == 2 and segments["good_b"].has_metadata
    assert not segments["good_wav"].has_metadata

    assert stats.members == 26
    assert stats.directories_and_links == 2
    assert stats.non_audio_members == 3  # notes.txt, meta.json, the AppleDouble file
    assert stats.audio_members == 21
    assert stats.segments_read == len(GOOD) and stats.failed_segments == len(FAILED)
    assert stats.duplicate_ids == 1 and stats.duplicate_members == 2
    assert stats.metadata_rows == 5
    assert stats.metadata_rows_without_audio == 1 and stats.metadata_ids_without_audio == ["ghost"]
    # every audio id but good_a, good_b, corrupt and dup lacks a metadata row
    assert stats.audio_without_metadata == len(GOOD) + len(FAILED) - 4
    assert stats.peak_buffered_bytes > 0


def test_missing_or_unusable_metadata_still_reads_audio(bad_shard: tuple[LocalBucket, str]) -> None:
    bucket, prefix = bad_shard
    meta_path = bucket.path(f"{prefix}/metadata.parquet")
    cases = {
        "missing": (None, "no metadata.parquet"),
        "no_segment_id": (lambda p: pl.DataFrame({"id": ["good_a"], "text": ["a"]}).write_parquet(p),
                          "no segment_id column (columns: id, text)"),
        "corrupt": (lambda p: p.write_bytes(b"PAR1 this is not parquet"), "not a readable parquet file"),
    }
    for name, (write, message) in cases.items():
        meta_path.unlink(missing_ok=True)
        if write is not None:
            write(meta_path)
        with read_shard(bucket, prefix) as reader:
            assert reader.metadata is None, name
            assert message in (reader.stats.metadata_problem or ""), name
            assert sorted(s.segment_id for s in reader.segments()) == sorted(GOOD), name
            assert reader.stats.audio_without_metadata == 0 and reader.stats.metadata_rows_without_audio == 0


def test_metadata_gives_dataset_and_language(tmp_path: Path) -> None:
    bucket = LocalBucket(tmp_path)
    write_tar(tmp_path / "p/q/s1/audio.tar", [("seg1.flac", encode(tone(0.5), SR)), ("seg2.flac",
                                                                                       encode(tone(0.5), SR))])
    write_metadata(tmp_path / "p/q/s1/metadata.parquet", ["seg1", "seg2", "seg2"],
                   dataset=["kathbath", "kathbath", None], language=["kn", "kn", "kn"])
    with read_shard(bucket, "p/q/s1") as reader:
        assert (reader.dataset, reader.language) == ("kathbath", "kn")
        assert reader.stats.metadata_duplicate_ids == 2
        assert [s.segment_id for s in reader.segments()] == ["seg1", "seg2"]


def test_shard_level_failures_raise_clear_errors(tmp_path: Path) -> None:
    bucket = LocalBucket(tmp_path)
    good = encode(tone(1.0), SR)
    write_tar(tmp_path / "ok/audio.tar", [("a.flac", good), ("b.flac", good)])
    full = (tmp_path / "ok/audio.tar").read_bytes()
    cases = {
        "missing": None,
        "empty": b"",
        "garbage": np.random.default_rng(1).bytes(10_000),
        "truncated": full[: 512 + len(good) // 2],
        "corrupt_header": full[: 512 + -(-len(good) // 512) * 512] + b"\x7fgarbage" * 64 + full[-2048:],
    }
    expected = {"missing": "has no audio.tar", "empty": "not a readable tar", "garbage": "not a readable tar",
                "truncated": "truncated", "corrupt_header": "corrupt: unreadable tar header"}
    for name, content in cases.items():
        if content is not None:
            (tmp_path / name).mkdir()
            (tmp_path / name / "audio.tar").write_bytes(content)
        with pytest.raises(ShardError, match=expected[name]) as err:
            with read_shard(bucket, name):
                pass
        assert name in str(err.value)


def test_missing_and_corrupt_tar_on_s3(s3_env: dict[str, str], tmp_path: Path) -> None:
    bucket = open_bucket(f"s3://{s3_env['bucket']}")
    with pytest.raises(ShardError, match="has no audio.tar"):
        read_shard(bucket, "d/l/none", spool_dir=tmp_path).__enter__()
    bucket.put_bytes("d/l/bad/audio.tar", b"not a tar" * 100)
    with pytest.raises(ShardError, match="not a readable tar"):
        read_shard(bucket, "d/l/bad", spool_dir=tmp_path).__enter__()
    assert list(tmp_path.iterdir()) == []  # nothing spooled stays behind


def test_stopping_early_and_reading_twice(bad_shard: tuple[LocalBucket, str]) -> None:
    bucket, prefix = bad_shard
    with read_shard(bucket, prefix, workers=2) as reader:
        first = next(iter(reader.segments()))
        assert first.segment_id == "good_a" and not reader.complete
        with pytest.raises(RuntimeError, match="only once"):
            next(reader.segments())


# -- bounded memory ---------------------------------------------------------------------------------------

def test_two_hour_shard_keeps_buffers_bounded(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    member_seconds, count = 30, 240  # 2 hours
    x = tone(member_seconds) + (0.01 * rng.standard_normal(member_seconds * SR)).astype(np.float32)
    member = encode(x, SR)
    tar_path = tmp_path / "big/en/shard_000000/audio.tar"
    tar_path.parent.mkdir(parents=True)
    with tarfile.open(tar_path, "w") as tar:
        for i in range(count):
            info = tarfile.TarInfo(f"seg_{i:05d}.flac")
            info.size = len(member)
            tar.addfile(info, io.BytesIO(member))
    wave_bytes = member_seconds * SR * 4
    total_audio_bytes = count * wave_bytes  # 460 MB of float32 audio if it were held at once

    tracemalloc.start()
    try:
        with read_shard(LocalBucket(tmp_path), "big/en/shard_000000", workers=2, prefetch=4) as reader:
            seconds = 0.0
            for seg in reader.segments():
                seconds += seg.seconds
            _, peak = tracemalloc.get_traced_memory()
            stats = reader.stats
    finally:
        tracemalloc.stop()
    assert seconds == pytest.approx(2 * 3600) and stats.segments_read == count
    assert stats.peak_buffered_bytes <= 4 * (len(member) + wave_bytes)
    print(f"2 h shard: peak_buffered_bytes={stats.peak_buffered_bytes} tracemalloc_peak={peak} "
          f"audio_if_held={total_audio_bytes}")
    assert peak < 64 * 1024**2 and peak * 7 < total_audio_bytes
