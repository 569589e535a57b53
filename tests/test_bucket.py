"""The bucket interface on both backends: a local folder and moto's S3 server over HTTP (as boto3 talks to R2),
including transient failures injected by a real proxy in front of moto."""

from __future__ import annotations

from pathlib import Path

import pytest

from resources.bucket import (
    BucketError,
    LocalBucket,
    RetryPolicy,
    S3Bucket,
    ShardInfo,
    ShardLayout,
    open_bucket,
)
from tests.fixtures.shards import FlakyProxy

FAST_RETRY = RetryPolicy(max_attempts=5, base_delay_s=0.01, max_delay_s=0.05)


@pytest.fixture(params=["local", "s3"])
def bucket(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "local":
        return open_bucket(f"file://{tmp_path / 'bucket'}")
    s3_env = request.getfixturevalue("s3_env")
    return open_bucket(f"s3://{s3_env['bucket']}/some/prefix", retry=FAST_RETRY)


def test_objects_round_trip(bucket, tmp_path: Path) -> None:
    assert not bucket.exists("a/b.bin")
    bucket.put_bytes("a/b.bin", b"hello")
    assert bucket.exists("a/b.bin") and bucket.size("a/b.bin") == 5
    assert bucket.read_bytes("a/b.bin") == b"hello"
    with bucket.open_stream("a/b.bin") as stream:
        assert stream.read(2) == b"he" and stream.read() == b"llo"

    src = tmp_path / "big.bin"
    payload = bytes(range(256)) * 40_000  # 10 MB: several stream reads
    src.write_bytes(payload)
    bucket.upload_file(src, "x/big.bin")
    dest = bucket.download_to("x/big.bin", tmp_path / "out" / "big.bin")
    assert dest.read_bytes() == payload
    assert not [p for p in dest.parent.iterdir() if p.name != "big.bin"]  # no temporary file left over

    bucket.delete("a/b.bin")
    bucket.delete("a/b.bin")  # deleting what is gone is fine
    assert not bucket.exists("a/b.bin")
    with pytest.raises(FileNotFoundError):
        bucket.read_bytes("a/b.bin")
    with pytest.raises(FileNotFoundError):
        bucket.size("a/b.bin")


def test_empty_object(bucket, tmp_path: Path) -> None:
    bucket.put_bytes("empty.bin", b"")
    assert bucket.read_bytes("empty.bin") == b""
    assert bucket.download_to("empty.bin", tmp_path / "e.bin").read_bytes() == b""


def test_list_shards_with_layout_and_tokens_state(bucket) -> None:
    for prefix in ("ds1/hi/shard_000001", "ds1/hi/shard_000002", "ds2/ta/shard_000003", "deep/er/ds3/en/s4"):
        bucket.put_bytes(f"{prefix}/audio.tar", b"x" * 3)
        bucket.put_bytes(f"{prefix}/metadata.parquet", b"m")
    bucket.put_bytes("ds1/hi/shard_000002/neucodec_tokens.parquet", b"t")
    bucket.put_bytes("ds1/hi/not_a_shard/metadata.parquet", b"m")
    bucket.put_bytes("audio.tar", b"top level is not a shard")
    if isinstance(bucket, S3Bucket):
        bucket.list_page_size = 3  # force several pages

    shards = bucket.list_shards()
    assert shards == [
        ShardInfo("deep/er/ds3/en/s4", "ds3", "en", False, 3),
        ShardInfo("ds1/hi/shard_000001", "ds1", "hi", False, 3),
        ShardInfo("ds1/hi/shard_000002", "ds1", "hi", True, 3),
        ShardInfo("ds2/ta/shard_000003", "ds2", "ta", False, 3),
    ]
    assert [s.prefix for s in bucket.list_shards("ds1/")] == ["ds1/hi/shard_000001", "ds1/hi/shard_000002"]
    assert bucket.list_shards("nothing-here/") == []

    bucket.layout = ShardLayout("{language}/{dataset}/{shard}")
    assert bucket.list_shards("ds2")[0].language == "ds2"


def test_listing_resumes_after_a_key_in_s3_order(bucket) -> None:
    keys = ["b-2/x", "b/a/audio.tar", "b/a/metadata.parquet", "b/c", "b0", "c/d/e/audio.tar", "c/d/e/z"]
    for key in reversed(keys):
        bucket.put_bytes(key, b"k")
    if isinstance(bucket, S3Bucket):
        bucket.list_page_size = 2
    assert [k for k, _ in bucket.list_keys()] == keys  # the local folder lists in S3's (byte) order too
    for i, after in enumerate(keys):
        assert [k for k, _ in bucket.list_keys(start_after=after)] == keys[i + 1:]
    assert [k for k, _ in bucket.list_keys(start_after="b/")] == keys[1:]  # a key that is not there
    assert [k for k, _ in bucket.list_keys("b/", start_after="b/a/audio.tar")] == ["b/a/metadata.parquet", "b/c"]
    assert [k for k, _ in bucket.list_keys(start_after="c/d/e/z")] == []


def test_shard_pages_stop_between_folders(bucket) -> None:
    prefixes = [f"ds/hi/shard_{i:03d}" for i in range(5)]
    for prefix in prefixes:
        bucket.put_bytes(f"{prefix}/audio.tar", b"abc")
        bucket.put_bytes(f"{prefix}/metadata.parquet", b"m")
        bucket.put_bytes(f"{prefix}/neucodec_tokens.parquet", b"t")
    if isinstance(bucket, S3Bucket):
        bucket.list_page_size = 2

    seen: list[ShardInfo] = []
    cursor, pages = "", 0
    while True:
        page = bucket.list_shards_page(cursor, max_keys=4)  # the budget ends inside the second shard's folder
        pages += 1
        seen += page.shards
        assert page.keys_listed % 3 == 0  # whole folders only
        cursor = page.last_key
        if page.complete:
            break
    assert pages == 3 and [s.prefix for s in seen] == prefixes and all(s.has_tokens for s in seen)

    until = bucket.list_shards_page("", max_keys=100, until="ds/hi/shard_001/zzz")
    assert [s.prefix for s in until.shards] == prefixes[:2] and until.complete
    timed_out = bucket.list_shards_page("", max_keys=100, deadline=0.0)  # past: one folder, then stop
    assert [s.prefix for s in timed_out.shards] == prefixes[:1] and not timed_out.complete


def test_invalid_keys_are_rejected(bucket) -> None:
    for key in ("../escape", "/abs", "a//b", ""):
        with pytest.raises(BucketError, match="invalid object key"):
            bucket.put_bytes(key, b"x")


def test_open_bucket_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_env: dict[str, str]) -> None:
    assert isinstance(open_bucket(str(tmp_path)), LocalBucket)
    assert open_bucket(f"file://{tmp_path}").url == tmp_path.as_uri()
    s3 = open_bucket(f"s3://{s3_env['bucket']}/p/q/")
    assert isinstance(s3, S3Bucket) and s3.url == f"s3://{s3_env['bucket']}/p/q"
    s3.put_bytes("k", b"v")
    assert open_bucket(f"s3://{s3_env['bucket']}").read_bytes("p/q/k") == b"v"
    with pytest.raises(BucketError, match="unsupported bucket URL"):
        open_bucket("gs://elsewhere")

    monkeypatch.setenv("NEUCODEC_BUCKET", f"s3://{s3_env['bucket']}/p")
    assert open_bucket().read_bytes("q/k") == b"v"

    monkeypatch.delenv("NEUCODEC_BUCKET")
    monkeypatch.chdir(tmp_path)
    default = open_bucket()
    assert isinstance(default, LocalBucket) and default.root == tmp_path / ".data" / "bucket"
    with pytest.raises(BucketError, match="sample-bucket"):
        default.list_shards()  # a missing folder says how to fill it instead of listing nothing
    default.put_bytes("d/l/s/audio.tar", b"x")
    assert [s.prefix for s in default.list_shards()] == ["d/l/s"]


def test_missing_credentials_are_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.aws/credentials
    for var in ("R2_ACCESS_KEY_ID", "R2_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                "AWS_PROFILE", "R2_ENDPOINT_URL", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(BucketError, match="R2_ACCESS_KEY_ID and R2_SECRET_ACCESS_KEY"):
        open_bucket("s3://b")
    monkeypatch.setenv("R2_ACCESS_KEY_ID", "id-value")
    with pytest.raises(BucketError, match="R2_SECRET_ACCESS_KEY is not") as err:
        open_bucket("s3://b")
    assert "id-value" not in str(err.value)  # secrets and ids are never echoed
    monkeypatch.setenv("R2_SECRET_ACCESS_KEY", "secret-value")
    with pytest.raises(BucketError, match="R2_ENDPOINT_URL is not set"):
        open_bucket("s3://b")


def test_client_uses_r2_settings(s3_env: dict[str, str]) -> None:
    bucket = open_bucket(f"s3://{s3_env['bucket']}")
    config = bucket.client.meta.config
    assert bucket.client.meta.endpoint_url == s3_env["R2_ENDPOINT_URL"]
    assert config.region_name == "auto"
    assert config.request_checksum_calculation == "when_required"
    assert config.response_checksum_validation == "when_required"


def test_transient_failures_are_retried(flaky_s3: FlakyProxy, s3_env: dict[str, str], tmp_path: Path) -> None:
    bucket = open_bucket(f"s3://{s3_env['bucket']}", retry=FAST_RETRY)
    src = tmp_path / "f.bin"
    src.write_bytes(b"0123456789" * 1000)

    flaky_s3.fail_next("drop", 503, "slowdown", 500)
    bucket.upload_file(src, "d/l/s/audio.tar")
    flaky_s3.fail_next(500, "drop")
    assert bucket.exists("d/l/s/audio.tar")
    flaky_s3.fail_next("slowdown", 503)
    assert [s.prefix for s in bucket.list_shards()] == ["d/l/s"]
    flaky_s3.fail_next("drop", 500)
    assert bucket.read_bytes("d/l/s/audio.tar") == src.read_bytes()
    assert flaky_s3.faults_applied == 10
    assert not flaky_s3.faults


def test_dropped_download_resumes_with_range(flaky_s3: FlakyProxy, s3_env: dict[str, str],
                                             tmp_path: Path) -> None:
    bucket = open_bucket(f"s3://{s3_env['bucket']}", retry=FAST_RETRY)
    payload = bytes(range(251)) * 20_000  # 5 MB
    bucket.put_bytes("big.bin", payload)

    flaky_s3.fail_next("cut", "cut", method="GET")
    assert bucket.download_to("big.bin", tmp_path / "big.bin").read_bytes() == payload
    gets = [(path, fault) for method, path, fault in flaky_s3.log if method == "GET"]
    assert [f for _, f in gets] == ["cut", "cut", None]
    assert len(gets) == 3  # each cut resumed where it stopped instead of starting over

    bucket.download_part_bytes = 1 << 20  # 5 parts, fetched in parallel byte ranges
    flaky_s3.log.clear()
    flaky_s3.fail_next("cut", "drop", "cut", 503, method="GET")
    assert bucket.download_to("big.bin", tmp_path / "parts.bin").read_bytes() == payload
    ranged = [f for method, _, f in flaky_s3.log if method == "GET"]
    assert len(ranged) == 5 + 4 and ranged.count(None) == 5


def test_failed_upload_leaves_no_object(flaky_s3: FlakyProxy, s3_env: dict[str, str], tmp_path: Path) -> None:
    bucket = open_bucket(f"s3://{s3_env['bucket']}", retry=RetryPolicy(max_attempts=3, base_delay_s=0.01))
    src = tmp_path / "tokens.parquet"
    src.write_bytes(b"x" * 100_000)
    flaky_s3.fail_next("drop", "drop", "drop", method="PUT")
    with pytest.raises(BucketError, match="upload s/neucodec_tokens.parquet"):
        bucket.upload_file(src, "s/neucodec_tokens.parquet")
    assert not bucket.exists("s/neucodec_tokens.parquet")

    permanent = open_bucket(f"s3://{s3_env['bucket']}-does-not-exist", retry=FAST_RETRY)
    with pytest.raises(BucketError, match="NoSuchBucket"):
        permanent.upload_file(src, "k")


def test_local_failed_upload_leaves_no_object(tmp_path: Path) -> None:
    bucket = LocalBucket(tmp_path / "b")
    with pytest.raises(BucketError, match="not a file"):
        bucket.upload_file(tmp_path / "missing.parquet", "s/neucodec_tokens.parquet")
    src = tmp_path / "dir_not_file"
    src.mkdir()
    with pytest.raises(BucketError):
        bucket.upload_file(src, "s/neucodec_tokens.parquet")
    assert not bucket.exists("s/neucodec_tokens.parquet")
    bucket.put_bytes("s/x", b"1")
    assert sorted(p.name for p in (tmp_path / "b" / "s").iterdir()) == ["x"]  # no temporary files remain


def test_sample_shards_uploaded_to_s3(s3_sample_bucket: dict[str, str], sample_bucket_report) -> None:
    shards = open_bucket(s3_sample_bucket["url"]).list_shards()
    assert [(s.prefix, s.dataset, s.language, s.has_tokens) for s in shards] == sorted(
        (s.prefix, s.dataset, s.language, False) for s in sample_bucket_report.shards)
