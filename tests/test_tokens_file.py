"""The tokens file contract: three columns, little-endian uint16 bytes, zstd, provenance and failures in the
key-value metadata, never visible half-written, and a validator that also accepts the old fleet's files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from resources.bucket import open_bucket
from resources.bucket.base import TOKENS_PARQUET
from resources.shard_reader import SegmentFailure
from resources.tokens_file import (
    AUDIO_TAR_KEY,
    AudioTarRecord,
    TokensFileError,
    TokensFileWriter,
    read_tokens_file,
    read_tokens_metadata,
    validate_tokens_file,
)

PROVENANCE = {"model_id": "neuphonic/neucodec", "model_revision": "abc123", "precision": "fp32"}


def codes(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 65536, size=n, dtype=np.uint16)


def write_file(path: Path, rows: dict[str, np.ndarray], row_group_rows: int = 2) -> Path:
    w = TokensFileWriter(path, PROVENANCE, row_group_rows=row_group_rows)
    for sid, c in rows.items():
        w.add(sid, c)
    assert not path.exists() and w.partial_path.exists()  # nothing under the final name until complete
    return w.close([SegmentFailure("bad1", "too_short: 12 samples at 16 kHz", "too_short", "x/bad1.flac"),
                    ("bad2", "corrupt: lost sync")])


def test_contract_round_trip(tmp_path: Path) -> None:
    rows = {"seg_a": codes(50, 0), "seg_b": codes(1, 1), "seg_c": codes(0, 2), "seg_d": codes(333, 3),
            "seg_e": codes(7, 4)}
    path = write_file(tmp_path / TOKENS_PARQUET, rows)
    assert TOKENS_PARQUET == "neucodec_tokens.parquet"

    schema = pq.read_schema(path)
    assert schema.names == ["segment_id", "neucodec_tokens", "token_count"]
    assert [schema.field(n).type for n in schema.names] == [pa.string(), pa.binary(), pa.int64()]
    meta = pq.read_metadata(path)
    assert meta.num_row_groups == 3  # streamed in row groups of 2
    assert {meta.row_group(0).column(i).compression for i in range(3)} == {"ZSTD"}

    table = pq.read_table(path)  # the old fleet's consumers read it like this
    for sid, blob, count in zip(*(table.column(n).to_pylist() for n in schema.names)):
        np.testing.assert_array_equal(np.frombuffer(blob, dtype=np.uint16), rows[sid])
        assert blob == rows[sid].astype("<u2").tobytes() and count == len(rows[sid])

    frame, kv = read_tokens_file(path)
    assert isinstance(frame, pl.DataFrame) and frame.get_column("segment_id").to_list() == list(rows)
    assert kv["provenance"] == PROVENANCE
    assert kv["failures"] == [
        {"segment_id": "bad1", "reason": "too_short: 12 samples at 16 kHz", "kind": "too_short",
         "member": "x/bad1.flac"},
        {"segment_id": "bad2", "reason": "corrupt: lost sync"},
    ]
    assert read_tokens_metadata(path.read_bytes()) == kv

    durations = {sid: len(c) * 320 / 16000 for sid, c in rows.items()}
    report = validate_tokens_file(path, durations)
    assert report.ok, report.problems
    assert report.rows == 5 and report.total_tokens == sum(len(c) for c in rows.values())
    assert report.provenance == PROVENANCE and len(report.failures) == 2


def test_audio_tar_record_round_trip(tmp_path: Path) -> None:
    """The tar identity a re-run compares with a HEAD, and the member ids (with repeats) completeness needs."""
    ids = {f"SPK_{i:04d}_0.00-{i + 1}.50": 1 for i in range(3000)}
    ids.update({"dup": 2, "trip/le": 3})
    etag = f'"{hashlib.md5(b"audio.tar").hexdigest()}"'  # an S3 ETag is the quoted MD5 of a single-part object
    other = f'"{hashlib.md5(b"another audio.tar").hexdigest()}"'
    record = AudioTarRecord(etag=etag, size=123_456_789, member_ids=ids)
    w = TokensFileWriter(tmp_path / "t.parquet", PROVENANCE)
    w.add("SPK_0000_0.00-1.50", codes(75, 0))
    path = w.close([("dup", "duplicate: 2 members share this segment id")], audio_tar=record)

    meta = read_tokens_metadata(path)
    assert meta["audio_tar"] == record and dict(meta["audio_tar"].member_ids) == ids
    assert validate_tokens_file(path).audio_tar == record
    assert pq.read_schema(path).names == ["segment_id", "neucodec_tokens", "token_count"]  # the contract holds
    raw = pq.read_metadata(path).metadata[AUDIO_TAR_KEY.encode()]
    assert len(raw) < 10_000  # 3,002 ids compressed, not ~100 kB of JSON in every footer
    assert record.matches(etag, 123_456_789)
    assert not record.matches(etag, 123_456_788)
    assert not record.matches(other, 123_456_789)

    # A record that cannot be read makes the file fall back to reading the tar; the file itself stays valid.
    broken = TokensFileWriter(tmp_path / "b.parquet", PROVENANCE)
    broken.add("a", codes(3, 1))
    path = broken.close(extra_metadata={AUDIO_TAR_KEY: json.dumps({"etag": "x", "size": 1, "ids": "!!"})})
    report = validate_tokens_file(path)
    assert report.ok and report.audio_tar is None
    assert "audio_tar_problem" in read_tokens_metadata(path)


def test_codes_are_checked(tmp_path: Path) -> None:
    w = TokensFileWriter(tmp_path / "t.parquet", PROVENANCE)
    w.add("three_dim", np.array([[[1, 2, 3]]], dtype=np.int64))  # encode_code's [B=1, 1, T] output
    with pytest.raises(TokensFileError, match="added twice"):
        w.add("three_dim", np.array([1]))
    with pytest.raises(TokensFileError, match="out of uint16 range"):
        w.add("big", np.array([70_000]))
    with pytest.raises(TokensFileError, match="integers"):
        w.add("float", np.array([1.5]))
    with pytest.raises(TokensFileError, match="one-dimensional"):
        w.add("batch", np.zeros((2, 3), dtype=np.uint16))
    frame, _ = read_tokens_file(w.close())
    assert frame.get_column("token_count").to_list() == [3]


def test_an_error_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / TOKENS_PARQUET
    with pytest.raises(RuntimeError, match="encoder crashed"):
        with TokensFileWriter(path, PROVENANCE) as w:
            w.add("a", codes(5, 0))
            raise RuntimeError("encoder crashed")
    assert list(tmp_path.iterdir()) == []


def test_validator_finds_contract_breaks(tmp_path: Path) -> None:
    def write(name: str, columns: dict, schema: pa.Schema | None = None) -> Path:
        path = tmp_path / name
        pq.write_table(pa.table(columns, schema=schema), path)
        return path

    good_blob = codes(4, 0).tobytes()
    bad_count = write("bad_count.parquet", {"segment_id": ["a", "b"], "neucodec_tokens": [good_blob, b"\x01"],
                                            "token_count": pa.array([3, 0], pa.int64())})
    report = validate_tokens_file(bad_count)
    assert not report.ok
    assert "2 rows where token_count != len(neucodec_tokens) / 2" in report.problems
    assert "1 odd byte lengths" in report.problems
    assert report.bad_token_counts[0] == "a: token_count 3, 8 bytes"

    extra = write("extra.parquet", {"segment_id": ["a"], "neucodec_tokens": [good_blob],
                                    "token_count": pa.array([4], pa.int64()), "text": ["hi"]})
    assert "expected exactly" in validate_tokens_file(extra).problems[0]
    wrong_type = write("wrong_type.parquet", {"segment_id": ["a"], "neucodec_tokens": [good_blob],
                                              "token_count": pa.array([4], pa.int32())})
    assert validate_tokens_file(wrong_type).problems == ["column token_count has type int32, expected int64"]
    dup = write("dup.parquet", {"segment_id": ["a", "a", None], "neucodec_tokens": [good_blob] * 3,
                                "token_count": pa.array([4, 4, 4], pa.int64())})
    assert set(validate_tokens_file(dup).problems) == {"1 rows with nulls", "1 duplicate segment ids"}
    not_parquet = tmp_path / "junk.parquet"
    not_parquet.write_bytes(b"junk")
    assert "not a readable parquet file" in validate_tokens_file(not_parquet).problems[0]


def test_old_fleet_file_with_durations(tmp_path: Path) -> None:
    """A file as the old fleet wrote it (polars, large_string/large_binary, no key-value metadata)."""
    rows = {f"SPK_{i:02d}_0.00-{i + 1}.00": codes(50 * (i + 1), i) for i in range(4)}
    path = tmp_path / "old.parquet"
    pl.DataFrame({
        "segment_id": list(rows),
        "neucodec_tokens": [c.tobytes() for c in rows.values()],
        "token_count": pl.Series([len(c) for c in rows.values()], dtype=pl.Int64),
    }).write_parquet(path)
    durations = {sid: float(i + 1) for i, sid in enumerate(rows)}
    report = validate_tokens_file(path, durations)
    assert report.ok and report.rows == 4 and report.provenance == {} and report.failures == []

    durations[next(iter(rows))] = 3.0  # 150 tokens expected, 50 present
    durations.pop(list(rows)[-1])
    report = validate_tokens_file(path, durations)
    assert report.problems == ["1 token counts off their durations by more than 1"]
    assert report.duration_mismatches == ["SPK_00_0.00-1.00: 50 tokens, 3.000 s implies 150"]
    assert report.missing_durations == 1


def test_upload_and_validate_from_s3(s3_env: dict[str, str], tmp_path: Path) -> None:
    path = write_file(tmp_path / TOKENS_PARQUET, {"a": codes(10, 0)})
    bucket = open_bucket(f"s3://{s3_env['bucket']}")
    bucket.upload_file(path, f"ds/hi/shard_000001/{TOKENS_PARQUET}")
    data = bucket.read_bytes(f"ds/hi/shard_000001/{TOKENS_PARQUET}")
    assert data == path.read_bytes()
    report = validate_tokens_file(data, {"a": 0.2})
    assert report.ok and report.rows == 1
