"""Cheap, correct re-runs: a done shard costs one GET of its tokens file, one HEAD of its audio.tar and one GET of
metadata.parquet, never a download of the tar; a file made differently (any identity key) or from a tar that has
changed since is encoded again. Measured on moto's S3 server over HTTP through a byte-counting proxy, with the
project's own S3 client and the full-size random model on the CPU.
"""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest

from gpu_executor.encoder import provenance as engine_provenance
from neucodec_assets.tokens import encoding
from neucodec_assets.tokens.checks import tar_audio_ids
from neucodec_assets.tokens.encoding import (
    encode_shard,
    existing_result,
    existing_tokens,
)
from neucodec_assets.tokens.metadata import tokens_key
from resources.bucket import (
    AUDIO_TAR,
    METADATA_PARQUET,
    TOKENS_PARQUET,
    Bucket,
    LocalBucket,
    S3Bucket,
    open_bucket,
)
from resources.dagster_resources import EncoderResource, LoadedEncoder
from resources.shard_reader import read_shard
from resources.tokens_file import TokensFileWriter, read_tokens_file
from tests.fixtures.platform import copy_tiny_shards
from tests.fixtures.transfer import CountingProxy, s3_client_via, write_done_tokens


@pytest.fixture(scope="module")
def loaded() -> LoadedEncoder:
    """The full-size random model on the CPU in exact fp32 (cached on disk; loaded once for the module)."""
    return EncoderResource(model="random", device="cpu", precision="fp32").load()


def rewrite_tokens(bucket: Bucket, prefix: str, tmp_path, *, provenance: dict | None = None,
                   keep_tar_record: bool = True) -> None:
    """Store the shard's tokens file again with the same rows, changing only what the test names."""
    frame, meta = read_tokens_file(bucket.read_bytes(tokens_key(prefix)))
    writer = TokensFileWriter(tmp_path / "rewritten" / TOKENS_PARQUET,
                              provenance if provenance is not None else meta["provenance"])
    for sid, blob in zip(frame["segment_id"], frame["neucodec_tokens"]):
        writer.add(sid, np.frombuffer(blob, dtype="<u2"))
    path = writer.close(meta["failures"], audio_tar=meta["audio_tar"] if keep_tar_record else None)
    bucket.upload_file(path, tokens_key(prefix))


def encode(bucket: Bucket, prefix: str, loaded: LoadedEncoder, tmp_path, log) -> encoding.ShardResult:
    with read_shard(bucket, prefix) as reader:
        return encode_shard(reader, bucket, loaded, tmp_path / "work", log)


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_head_gives_etag_and_size(backend, tmp_path, request):
    if backend == "local":
        bucket: Bucket = LocalBucket(tmp_path / "bucket")
    else:
        bucket = open_bucket(f"s3://{request.getfixturevalue('s3_env')['bucket']}/corpus")
    key = "ds/xx/shard_1/audio.tar"
    bucket.put_bytes(key, b"x" * 100)
    first = bucket.head(key)
    assert first.size == 100 and first.etag and bucket.head(key) == first
    bucket.put_bytes(key, b"y" * 100)  # same size, other content: the ETag tells them apart
    second = bucket.head(key)
    assert second.size == 100 and second.etag != first.etag
    with pytest.raises(FileNotFoundError):
        bucket.head("ds/xx/shard_1/nothing.tar")


def test_identity_comes_from_the_engine(loaded):
    always = {"model", "model_revision", "model_sha256", "semantic_model", "semantic_layers", "precision",
              "acoustic_activation", "chunking", "max_clip_seconds", "device_class"}
    assert always <= set(engine_provenance.IDENTITY_KEYS)  # each honoured: test_a_file_made_differently_is_not_current
    assert always <= set(loaded.provenance)  # the engine states each of them
    assert loaded.provenance["device_class"] == "cpu" and loaded.provenance["acoustic_activation"] == "reference"
    assert engine_provenance.device_class("cuda:3") == "cuda"


def test_a_rerun_reads_no_tar_until_the_tar_changes(loaded, tiny_shards_dir, s3_env, tmp_path):
    bucket = open_bucket(f"s3://{s3_env['bucket']}/corpus")
    shard = copy_tiny_shards(tiny_shards_dir, bucket, count=1)[0]
    logs: list[str] = []
    encoded = encode(bucket, shard.prefix, loaded, tmp_path, logs.append)
    assert encoded.figures.status == "encoded" and all(c.passed for c in encoded.checks)

    # The file keeps the tar it was made from: ETag and size as a HEAD gives them, and the member ids.
    tar = bucket.head(f"{shard.prefix}/{AUDIO_TAR}")
    _, meta = read_tokens_file(bucket.read_bytes(tokens_key(shard.prefix)))
    record = meta["audio_tar"]
    assert (record.etag, record.size) == (tar.etag, tar.size)
    assert dict(record.member_ids) == dict(tar_audio_ids(bucket, shard.prefix)) == {s: 1 for s in shard.segment_ids}
    assert meta["provenance"]["device_class"] == "cpu"

    def rerun() -> tuple[encoding.ShardResult | None, list]:
        with CountingProxy(s3_env["R2_ENDPOINT_URL"]) as proxy:
            via = S3Bucket(s3_env["bucket"], "corpus", client=s3_client_via(proxy.url))
            report = existing_tokens(via, shard.prefix, loaded.provenance, logs.append)
            result = existing_result(via, shard.prefix, report) if report is not None else None
            return result, proxy.snapshot()

    result, exchanges = rerun()
    assert result is not None and result.figures.status == "existing"
    assert (result.figures.dataset, result.figures.language) == (shard.dataset, shard.language)
    assert result.figures.total_tokens == sum(shard.token_counts)
    assert [c.check_name for c in result.checks if c.passed] == ["tokens_file_valid", "tokens_file_complete"]
    calls = [(e.method, e.key.rpartition("/")[2]) for e in exchanges]
    assert calls == [("GET", TOKENS_PARQUET), ("HEAD", AUDIO_TAR), ("GET", METADATA_PARQUET)]
    received = sum(e.received_bytes for e in exchanges)
    assert received < tar.size  # everything the re-run read weighs less than the tar alone

    # The shard's audio is replaced (one member fewer): the tokens file is still valid on its own, but not current.
    tar_key = f"{shard.prefix}/{AUDIO_TAR}"
    buf = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(bucket.read_bytes(tar_key))) as src, \
            tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as dest:
        first = next(m for m in src.getmembers() if m.isfile())
        dest.addfile(first, src.extractfile(first))
    bucket.put_bytes(tar_key, buf.getvalue())
    result, exchanges = rerun()
    assert result is None and f"{AUDIO_TAR} changed since" in logs[-1]
    assert [(e.method, e.key.rpartition("/")[2]) for e in exchanges] == [("GET", TOKENS_PARQUET), ("HEAD", AUDIO_TAR)]

    again = encode(bucket, shard.prefix, loaded, tmp_path, logs.append)  # what the run loop does with None
    assert again.figures.segment_count == 1 and all(c.passed for c in again.checks)
    tar = bucket.head(tar_key)
    _, meta = read_tokens_file(bucket.read_bytes(tokens_key(shard.prefix)))
    assert (meta["audio_tar"].etag, dict(meta["audio_tar"].member_ids)) == (tar.etag, {shard.segment_ids[0]: 1})
    result, exchanges = rerun()
    assert result is not None and all(c.passed for c in result.checks)
    assert not [e for e in exchanges if e.method == "GET" and e.key.endswith(AUDIO_TAR)]

    # A file without the record (the old fleet's, or written before it existed) falls back: the tar is read whole.
    rewrite_tokens(bucket, shard.prefix, tmp_path, keep_tar_record=False)
    result, exchanges = rerun()
    assert result is not None and all(c.passed for c in result.checks)
    tar_gets = [e for e in exchanges if e.method == "GET" and e.key.endswith(AUDIO_TAR)]
    assert [e.body_bytes for e in tar_gets] == [tar.size]
    assert [e.key.rpartition("/")[2] for e in exchanges].count(METADATA_PARQUET) == 1


def test_a_file_made_differently_is_not_current(loaded, tiny_shards_dir, tmp_path):
    """Every key of the engine's identity that differs (or that the file lacks) makes the file stale (the run loop
    encodes the shards for which existing_tokens gives None); other provenance entries do not. The file is written as
    encode_shard writes it, with the encoder's provenance and the tar record, but without running the model."""
    bucket = LocalBucket(tmp_path / "bucket")
    shard = copy_tiny_shards(tiny_shards_dir, bucket, count=1)[0]
    logs: list[str] = []
    write_done_tokens(bucket, shard.prefix, shard.token_counts, shard.segment_ids, loaded.provenance, tmp_path)
    original = bucket.read_bytes(tokens_key(shard.prefix))
    assert existing_tokens(bucket, shard.prefix, loaded.provenance, logs.append) is not None

    _, meta = read_tokens_file(original)
    other_values = {"precision": "bf16", "acoustic_activation": "fused-triton", "device_class": "cuda",
                    "model_sha256": "0" * 64, "chunking": "none", "semantic_graphs": "cuda"}
    changes = [{key: other_values.get(key, "made another way")} for key in engine_provenance.IDENTITY_KEYS]
    changes += [{key: None} for key in engine_provenance.IDENTITY_KEYS if key in meta["provenance"]]  # left out
    for change in changes:
        provenance = {k: v for k, v in {**meta["provenance"], **change}.items() if v is not None}
        rewrite_tokens(bucket, shard.prefix, tmp_path, provenance=provenance)
        assert existing_tokens(bucket, shard.prefix, loaded.provenance, logs.append) is None, change
        (key,) = change
        assert "made differently" in logs[-1] and repr(key) in logs[-1]

    # Not identity: another run id leaves the file current.
    rewrite_tokens(bucket, shard.prefix, tmp_path, provenance={**meta["provenance"], "dagster_run_id": "another"})
    assert existing_tokens(bucket, shard.prefix, loaded.provenance, logs.append) is not None
