"""The sample bucket: real espeak-ng speech in the 12 corpus languages, in the input contract, deterministic."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import soundfile as sf

from neucodec_assets.cli import main
from resources.bucket import open_bucket
from resources.sample_bucket import LANGUAGES, SENTENCES, write_sample_bucket
from resources.shard_reader import read_shard


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_every_language_in_the_input_contract(tmp_path: Path) -> None:
    report = write_sample_bucket(str(tmp_path), shards=12, segments_per_shard=3, seed=3)
    assert [s.language for s in report.shards] == list(LANGUAGES)
    formats: set[tuple[int, int]] = set()
    first_waves: list[np.ndarray] = []
    for shard in report.shards:
        dataset, language, name = shard.prefix.split("/")
        assert (dataset, language) == (shard.dataset, shard.language) and name.startswith("shard_")
        meta = pl.read_parquet(tmp_path / shard.prefix / "metadata.parquet")
        assert meta.columns == ["segment_id", "text", "language", "speaker", "duration", "dataset"]
        assert meta.get_column("segment_id").to_list() == shard.segment_ids
        assert set(meta.get_column("language")) == {language} and set(meta.get_column("dataset")) == {dataset}
        assert meta.get_column("speaker").n_unique() >= 2
        with tarfile.open(tmp_path / shard.prefix / "audio.tar") as tar:
            assert [m.name for m in tar.getmembers()] == [s.member for s in shard.segments]
            for row, sample in zip(meta.iter_rows(named=True), shard.segments):
                assert all(sentence in SENTENCES[language] for sentence in _sentences(row["text"], language))
                data = tar.extractfile(sample.member).read()
                assert data[:4] == b"fLaC"
                x, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
                formats.add((sr, x.shape[1]))
                assert row["duration"] == pytest.approx(x.shape[0] / sr, abs=1e-5)
                assert 1.0 <= row["duration"] <= 6.0
                rms = float(np.sqrt(np.mean(x**2)))
                assert rms > 0.02  # speech, not silence
            first_waves.append(sf.read(io.BytesIO(tar.extractfile(shard.segments[0].member).read()))[0])
    assert {(16_000, 1), (44_100, 2), (48_000, 2)} <= formats
    assert len({w.tobytes() for w in first_waves}) == 12  # each language sounds different


def _sentences(text: str, language: str) -> list[str]:
    """Split a transcript back into the module's sentences (one or two were spoken)."""
    for a in SENTENCES[language]:
        if text == a:
            return [a]
        for b in SENTENCES[language]:
            if text == f"{a} {b}":
                return [a, b]
    return [text]


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for root, seed in ((a, 5), (b, 5), (c, 6)):
        write_sample_bucket(str(root), shards=2, segments_per_shard=3, seed=seed, languages=["bn", "mr"])
    assert files_of(a) == files_of(b)
    differing = {k for k, v in files_of(a).items() if files_of(c)[k] != v}
    assert any(k.endswith("audio.tar") for k in differing)


def test_cli_writes_a_readable_bucket(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "bucket"
    assert main(["sample-bucket", str(dest), "--shards", "2", "--segments", "2", "--languages", "ta", "kn"]) == 0
    out = capsys.readouterr().out
    assert "espeak_read/ta/shard_000000\t2 segments" in out and f"wrote 2 shards to {dest}" in out
    shards = open_bucket(str(dest)).list_shards()
    assert [(s.dataset, s.language, s.has_tokens) for s in shards] == [
        ("espeak_chat", "kn", False), ("espeak_read", "ta", False)]
    for shard in shards:
        with read_shard(str(dest), shard.prefix) as reader:
            assert len(list(reader.segments())) == 2 and not reader.failures
            assert reader.stats.audio_without_metadata == 0


def test_cli_writes_to_s3(s3_env: dict[str, str], tmp_path: Path) -> None:
    url = f"s3://{s3_env['bucket']}/samples"
    assert main(["sample-bucket", url, "--shards", "1", "--segments", "2", "--languages", "or"]) == 0
    bucket = open_bucket(url)
    assert [s.prefix for s in bucket.list_shards()] == ["espeak_read/or/shard_000000"]
    with read_shard(bucket, "espeak_read/or/shard_000000", spool_dir=tmp_path) as reader:
        assert [s.seconds > 1.0 for s in reader.segments()] == [True, True]
        assert reader.metadata is not None and reader.metadata.get_column("language").to_list() == ["or", "or"]


def test_unknown_language_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no sample sentences for \\['xx'\\]"):
        write_sample_bucket(str(tmp_path), shards=1, languages=["xx"])
