"""The completeness check against a hand-made audio.tar (duplicates, an unsupported format, non-audio members) and
the validity check against files that break the contract; local folder and S3 give the same answer."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import polars as pl
import pytest

from neucodec_assets.tokens.checks import (
    complete_evaluation,
    completeness_of,
    recorded_audio_ids,
    shard_audio_ids,
    tar_audio_ids,
    valid_evaluation,
)
from resources.bucket import AUDIO_TAR, LocalBucket, open_bucket
from resources.shard_reader import ShardError
from resources.tokens_file import AudioTarRecord, TokensFileWriter, validate_tokens_file

PREFIX = "ds/xx/shard_000001"
MEMBERS = ["a.flac", "b.flac", "spk1/dup.flac", "spk2/dup.flac", "c.m4a", "README.txt", "._a.flac"]


def _tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        dirinfo = tarfile.TarInfo("spk1")
        dirinfo.type = tarfile.DIRTYPE
        tar.addfile(dirinfo)
        for name in MEMBERS:
            info = tarfile.TarInfo(name)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"data"))
    return buf.getvalue()


def _tokens(tmp_path, rows: dict[str, int], failures: list[tuple[str, str]],
            audio_tar: AudioTarRecord | None = None) -> bytes:
    writer = TokensFileWriter(tmp_path / "t.parquet", {"model": "test"})
    for sid, n in rows.items():
        writer.add(sid, np.arange(n, dtype=np.uint16))
    return writer.close(failures, audio_tar=audio_tar).read_bytes()


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_completeness(backend, tmp_path, request):
    if backend == "local":
        bucket = LocalBucket(tmp_path / "bucket")
    else:
        bucket = open_bucket(f"s3://{request.getfixturevalue('s3_env')['bucket']}")
    bucket.put_bytes(f"{PREFIX}/{AUDIO_TAR}", _tar())
    ids = tar_audio_ids(bucket, PREFIX)
    assert ids == {"a": 1, "b": 1, "dup": 2, "c": 1}  # no README, no macOS fork, no directory

    failures = [("dup", "duplicate: 2 members share this segment id"), ("c", "unsupported_format: .m4a")]
    complete = validate_tokens_file(_tokens(tmp_path, {"a": 3, "b": 5}, failures))
    evaluation = complete_evaluation(PREFIX, completeness_of(ids, complete))
    assert evaluation.passed and evaluation.partition == PREFIX

    missing = validate_tokens_file(_tokens(tmp_path, {"a": 3}, failures))
    evaluation = complete_evaluation(PREFIX, completeness_of(ids, missing))
    assert not evaluation.passed and "1 segments neither encoded nor reported: b" in evaluation.description

    wrong = validate_tokens_file(_tokens(tmp_path, {"a": 3, "b": 5, "dup": 2, "zzz": 1}, failures[1:]))
    evaluation = complete_evaluation(PREFIX, completeness_of(ids, wrong))
    assert not evaluation.passed
    assert "rows for segments not in audio.tar: zzz" in evaluation.description
    assert "duplicate segment ids have a row: dup" in evaluation.description


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_completeness_from_the_recorded_tar(backend, tmp_path, request):
    """Member ids kept with the tokens file stand in for the tar while its ETag and size hold, duplicates included;
    once the tar changes, the tar itself is listed again."""
    if backend == "local":
        bucket = LocalBucket(tmp_path / "bucket")
    else:
        bucket = open_bucket(f"s3://{request.getfixturevalue('s3_env')['bucket']}")
    bucket.put_bytes(f"{PREFIX}/{AUDIO_TAR}", _tar())
    head = bucket.head(f"{PREFIX}/{AUDIO_TAR}")
    record = AudioTarRecord(head.etag, head.size, tar_audio_ids(bucket, PREFIX))
    failures = [("dup", "duplicate: 2 members share this segment id"), ("c", "unsupported_format: .m4a")]
    report = validate_tokens_file(_tokens(tmp_path, {"a": 3, "b": 5}, failures, audio_tar=record))
    assert report.audio_tar == record
    assert recorded_audio_ids(bucket, PREFIX, report.audio_tar) == {"a": 1, "b": 1, "dup": 2, "c": 1}
    assert complete_evaluation(PREFIX, completeness_of(shard_audio_ids(bucket, PREFIX, report), report)).passed

    buf = io.BytesIO()  # the shard's audio changes: one more member, which the tokens file knows nothing of
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in MEMBERS + ["new.flac"]:
            info = tarfile.TarInfo(name)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"data"))
    bucket.put_bytes(f"{PREFIX}/{AUDIO_TAR}", buf.getvalue())
    assert recorded_audio_ids(bucket, PREFIX, report.audio_tar) is None
    evaluation = complete_evaluation(PREFIX, completeness_of(shard_audio_ids(bucket, PREFIX, report), report))
    assert not evaluation.passed and "neither encoded nor reported: new" in evaluation.description


def test_validity_and_an_unreadable_tar(tmp_path):
    bucket = LocalBucket(tmp_path / "bucket")
    bucket.put_bytes(f"{PREFIX}/{AUDIO_TAR}", b"\x01" * 2048)
    with pytest.raises(ShardError, match="cannot be listed"):
        tar_audio_ids(bucket, PREFIX)

    buf = io.BytesIO()
    pl.DataFrame({"segment_id": ["a"], "tokens": [b"\x00\x00"]}).write_parquet(buf)
    evaluation = valid_evaluation(PREFIX, validate_tokens_file(buf.getvalue()))
    assert not evaluation.passed and "expected exactly" in evaluation.description
    good = valid_evaluation(PREFIX, validate_tokens_file(_tokens(tmp_path, {"a": 2}, []), {"a": 2 * 320 / 16000}))
    assert good.passed and good.metadata["rows"].value == 1
