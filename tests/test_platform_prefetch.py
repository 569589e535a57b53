"""The shard prefetcher against moto's S3 server: the next shard downloads while the current one is in use, a
shard that cannot be fetched comes with its error in its turn, and local copies are dropped after use."""

from __future__ import annotations

import time
from pathlib import Path

from neucodec_assets.tokens.prefetch import ShardPrefetcher
from resources.bucket import AUDIO_TAR, METADATA_PARQUET, LocalBucket, open_bucket
from resources.shard_reader import read_shard
from tests.fixtures.platform import copy_tiny_shards


def _wait_for(path: Path, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file():
            return True
        time.sleep(0.05)
    return False


def test_next_shard_downloads_while_the_current_one_is_used(s3_env, tiny_shards_dir, tmp_path):
    bucket = open_bucket(f"s3://{s3_env['bucket']}")
    first, second = copy_tiny_shards(tiny_shards_dir, bucket, count=2)
    missing = "nowhere/xx/shard_000404"
    work = tmp_path / "prefetch"
    seen = []
    with ShardPrefetcher(bucket, [first.prefix, missing, second.prefix], work) as prefetcher:
        for index, fetched in enumerate(prefetcher):
            seen.append(fetched.prefix)
            if fetched.prefix == first.prefix:
                assert fetched.error is None and isinstance(fetched.source, LocalBucket)
                # Reading the prefetched copy gives the shard's segments, dataset and language.
                with read_shard(fetched.source, fetched.prefix) as reader:
                    assert [s.segment_id for s in reader.segments()] == list(first.segment_ids)
                    assert reader.dataset == first.dataset and reader.language == first.language
                first_dir = fetched.local_dir
                assert first_dir is not None and (first_dir / first.prefix / METADATA_PARQUET).is_file()
            elif fetched.prefix == missing:
                assert first_dir is not None and not first_dir.exists()  # released after use
                assert fetched.error is not None and "has no audio.tar" in str(fetched.error)
                # The next real shard is already coming down while this turn is handled.
                assert _wait_for(work / "shard-00002" / second.prefix / AUDIO_TAR)
            else:
                assert fetched.error is None and fetched.fetch_seconds > 0
                assert (fetched.local_dir / second.prefix / AUDIO_TAR).read_bytes() == (
                    LocalBucket(tiny_shards_dir[0]).path(f"{second.prefix}/{AUDIO_TAR}").read_bytes())
    assert seen == [first.prefix, missing, second.prefix]
    assert not any(work.iterdir())  # nothing left behind


def test_local_bucket_shards_are_used_in_place(tiny_shards_dir, tmp_path):
    root, _ = tiny_shards_dir
    bucket = LocalBucket(root)
    shards = tiny_shards_dir[1][:2]
    with ShardPrefetcher(bucket, [s.prefix for s in shards], tmp_path / "prefetch") as prefetcher:
        fetched = list(prefetcher)
    assert [f.source for f in fetched] == [bucket, bucket] and all(f.local_dir is None for f in fetched)
    assert not (tmp_path / "prefetch").exists()
