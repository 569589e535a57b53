"""Bucket access: the shard bucket as an S3/R2 bucket or a local folder, chosen by ``NEUCODEC_BUCKET``.

``open_bucket()`` with nothing set opens the embedded default, the local folder ``./.data/bucket``
(relative to the working directory), so the pipeline runs on a fresh machine without any service.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from gpu_executor.settings import load_settings
from resources.bucket.base import (
    AUDIO_TAR,
    METADATA_PARQUET,
    TOKENS_PARQUET,
    Bucket,
    BucketError,
    ObjectHead,
    ShardInfo,
    ShardLayout,
    ShardPage,
)
from resources.bucket.local import LocalBucket
from resources.bucket.retry import RetryPolicy
from resources.bucket.s3 import S3Bucket

BUCKET_ENV = "NEUCODEC_BUCKET"
DEFAULT_LOCAL_BUCKET = Path(".data") / "bucket"

__all__ = [
    "AUDIO_TAR", "METADATA_PARQUET", "TOKENS_PARQUET", "BUCKET_ENV", "DEFAULT_LOCAL_BUCKET", "Bucket",
    "BucketError", "LocalBucket", "ObjectHead", "RetryPolicy", "S3Bucket", "ShardInfo", "ShardLayout", "ShardPage",
    "bucket_url", "open_bucket",
]


def bucket_url(url: str | None = None) -> str:
    """The bucket URL in force: ``url``, else ``NEUCODEC_BUCKET``, else the embedded local default."""
    return url or load_settings().bucket or str((Path.cwd() / DEFAULT_LOCAL_BUCKET).resolve())


def open_bucket(url: str | None = None, *, layout: ShardLayout | None = None,
                retry: RetryPolicy | None = None) -> Bucket:
    """Open ``s3://BUCKET[/PREFIX]``, ``file:///ABS/PATH`` or a plain local path (default: see module doc)."""
    url = bucket_url(url)
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        return S3Bucket(parsed.netloc, unquote(parsed.path), layout=layout, retry=retry)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise BucketError(f"unsupported file URL {url!r}: use file:///ABS/PATH")
        return LocalBucket(unquote(parsed.path), layout=layout)
    if parsed.scheme and len(parsed.scheme) > 1:  # one letter would be a Windows drive
        raise BucketError(f"unsupported bucket URL {url!r}: use s3://BUCKET[/PREFIX], file:///ABS/PATH or a path")
    return LocalBucket(url, layout=layout)
