"""An S3-compatible bucket (Cloudflare R2 in production, moto in tests) through boto3.

Requests are retried by ``call_with_retries`` (botocore's own retries are off so one policy governs all);
object reads resume with a ``Range`` request after a dropped connection, so large objects are streamed
and never held whole in memory. Downloads report every read to a ``TransferMeter``, in small pieces, so that a
watchdog on a slow link sees bytes arriving.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

from gpu_executor.settings import Settings, load_settings
from resources.bucket.base import (
    Bucket,
    BucketError,
    ObjectHead,
    ShardLayout,
    check_key,
)
from resources.bucket.retry import RetryPolicy, call_with_retries, is_transient
from resources.bucket.transfer import TransferMeter

log = logging.getLogger(__name__)

MAX_SINGLE_PUT_BYTES = 5 * 1024**3  # S3's limit for one PUT
STREAM_BUFFER_BYTES = 1 << 20
#: The most one read of a response body waits for: progress is reported per piece (a slow link shows as alive).
READ_PIECE_BYTES = 32 << 10


def _pair(settings: Settings, id_field: str, secret_field: str) -> tuple[str, str] | None:
    key_id, secret = settings.secret(id_field), settings.secret(secret_field)
    id_var, secret_var = Settings.env_names(id_field)[0], Settings.env_names(secret_field)[0]
    if key_id and secret:
        return key_id, secret
    if key_id or secret:
        missing = secret_var if key_id else id_var
        present = id_var if key_id else secret_var
        raise BucketError(f"{present} is set but {missing} is not: set both to reach the S3/R2 bucket")
    return None


def client_settings(settings: Settings | None = None) -> dict[str, Any]:
    """boto3 client arguments from the settings (R2_* first, then the standard AWS_* variables)."""
    settings = settings if settings is not None else load_settings()
    endpoint = settings.r2_endpoint_url
    creds = _pair(settings, "r2_access_key_id", "r2_secret_access_key")
    if creds is None:
        creds = _pair(settings, "aws_access_key_id", "aws_secret_access_key")
    if creds is None and not (settings.aws_profile or Path("~/.aws/credentials").expanduser().is_file()):
        raise BucketError(
            "no S3/R2 credentials: set R2_ACCESS_KEY_ID and R2_SECRET_ACCESS_KEY "
            "(or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or an AWS profile)"
        )
    if endpoint is None and settings.r2_access_key_id is not None:
        raise BucketError("R2_ENDPOINT_URL is not set: R2 credentials need the account's endpoint URL")
    region = "auto" if endpoint else (settings.aws_region or "us-east-1")
    out: dict[str, Any] = {"endpoint_url": endpoint, "region_name": region}
    if creds is not None:
        out["aws_access_key_id"], out["aws_secret_access_key"] = creds
    return out


def make_client(settings: dict[str, Any] | None = None):
    import boto3
    from botocore.config import Config

    settings = settings if settings is not None else client_settings()
    config = Config(
        region_name=settings["region_name"],
        signature_version="s3v4",
        retries={"total_max_attempts": 1, "mode": "standard"},  # RetryPolicy retries, with its own backoff
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        connect_timeout=10,
        read_timeout=60,
        max_pool_connections=16,
        s3={"addressing_style": "path"},
    )
    return boto3.session.Session().client("s3", config=config, **settings)


def _is_not_found(exc: BaseException) -> bool:
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return False
    code = str(exc.response.get("Error", {}).get("Code"))
    return code in ("404", "NoSuchKey", "NotFound")


class S3Bucket(Bucket):
    """``s3://BUCKET[/PREFIX]``: keys are relative to PREFIX."""

    def __init__(self, bucket: str, prefix: str = "", *, layout: ShardLayout | None = None,
                 retry: RetryPolicy | None = None, client=None):
        if not bucket:
            raise BucketError("an S3 bucket URL needs a bucket name: s3://BUCKET[/PREFIX]")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.layout = layout or ShardLayout.from_env()
        self.retry = retry or RetryPolicy()
        self.list_page_size = 1000  # S3's maximum; listing is paginated with continuation tokens
        # Objects of two parts or more download in parallel ranges.
        self.download_part_bytes = int(load_settings().download_part_mib * 2**20)
        self.download_workers = 4
        self.client = client if client is not None else make_client()

    def full_key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, what: str, fn):
        try:
            return call_with_retries(fn, self.retry, f"{what} {self.url}")
        except BucketError:
            raise
        except Exception as exc:
            if _is_not_found(exc):
                raise FileNotFoundError(f"{what}: no object {self.url}") from exc
            raise BucketError(f"{what} on {self.url} failed: {type(exc).__name__}: {exc}") from exc

    def list_keys(self, prefix: str = "", start_after: str = "") -> Iterator[tuple[str, int]]:
        base = f"{self.prefix}/" if self.prefix else ""
        full_prefix = base + prefix.lstrip("/")
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full_prefix, "MaxKeys": self.list_page_size}
            if token:
                kwargs["ContinuationToken"] = token
            elif start_after:
                kwargs["StartAfter"] = base + start_after  # S3 skips to it server-side: no pages to read past
            page = self._call("list", lambda: self.client.list_objects_v2(**kwargs))
            for obj in page.get("Contents", []):
                yield obj["Key"][len(base):], int(obj["Size"])
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    def _head(self, key: str) -> dict[str, Any]:
        full = self.full_key(key)
        return self._call(f"head {key}", lambda: self.client.head_object(Bucket=self.bucket, Key=full))

    def exists(self, key: str) -> bool:
        try:
            self._head(key)
        except FileNotFoundError:
            return False
        return True

    def size(self, key: str) -> int:
        return int(self._head(key)["ContentLength"])

    def head(self, key: str) -> ObjectHead:
        resp = self._head(key)
        return ObjectHead(etag=str(resp.get("ETag", "")), size=int(resp["ContentLength"]))

    def read_bytes(self, key: str) -> bytes:
        with self.open_stream(key) as stream:
            return stream.read()

    def open_stream(self, key: str) -> BinaryIO:
        raw = ResumableObjectStream(self, key)
        raw.open()
        return io.BufferedReader(raw, buffer_size=STREAM_BUFFER_BYTES)  # type: ignore[return-value]

    def download_to(self, key: str, local_path: str | os.PathLike[str], meter: TransferMeter | None = None) -> Path:
        """Stream the object to ``local_path``; large objects come in parallel ranged parts, each resumable, each a
        stream of ``meter``."""
        dest = Path(local_path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        head = self._head(key)
        size, etag = int(head["ContentLength"]), head.get("ETag")
        meter = meter if meter is not None else TransferMeter()
        meter.expected = size
        fd, tmp = tempfile.mkstemp(prefix=".tmp-download-", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                if size < 2 * self.download_part_bytes or self.download_workers < 2:
                    with meter.stream() as received, self._stream(key, 0, None, etag, received) as stream:
                        shutil.copyfileobj(stream, out, length=8 << 20)
                else:
                    out.truncate(size)
                    parts = [(start, min(start + self.download_part_bytes, size))
                             for start in range(0, size, self.download_part_bytes)]
                    with ThreadPoolExecutor(self.download_workers, thread_name_prefix="s3-download") as pool:
                        for _ in pool.map(lambda part: self._download_part(key, etag, fd, meter, *part), parts):
                            pass
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return dest

    def _stream(self, key: str, start: int, end: int | None, etag: str | None,
                received: Callable[[int], None] | None) -> io.BufferedReader:
        raw = ResumableObjectStream(self, key, start=start, end=end, etag=etag, on_read=received)
        return io.BufferedReader(raw, buffer_size=STREAM_BUFFER_BYTES)

    def _download_part(self, key: str, etag: str | None, fd: int, meter: TransferMeter, start: int, end: int) -> None:
        with meter.stream() as received, self._stream(key, start, end, etag, received) as stream:
            pos = start
            while chunk := stream.read(8 << 20):
                os.pwrite(fd, chunk, pos)
                pos += len(chunk)
        if pos != end:
            raise BucketError(f"download of {self.url}/{key} stopped at byte {pos} of part {start}-{end}")

    def upload_file(self, local_path: str | os.PathLike[str], key: str) -> None:
        src = Path(local_path)
        if not src.is_file():
            raise BucketError(f"cannot upload {src}: not a file")
        size = src.stat().st_size
        if size > MAX_SINGLE_PUT_BYTES:
            raise BucketError(f"cannot upload {src}: {size} bytes is over the 5 GiB limit of one PUT")
        full = self.full_key(key)

        def put() -> None:
            with open(src, "rb") as body:  # reopened per attempt: a retry sends the whole file again
                self.client.put_object(Bucket=self.bucket, Key=full, Body=body, ContentLength=size)

        self._call(f"upload {key}", put)

    def put_bytes(self, key: str, data: bytes) -> None:
        full = self.full_key(key)
        self._call(f"put {key}", lambda: self.client.put_object(Bucket=self.bucket, Key=full, Body=data))

    def delete(self, key: str) -> None:
        full = self.full_key(key)
        self._call(f"delete {key}", lambda: self.client.delete_object(Bucket=self.bucket, Key=full))


class ResumableObjectStream(io.RawIOBase):
    """Reads one object (or the byte range ``start``..``end``) sequentially; a dropped connection resumes at
    the current offset with ``Range``.

    Resumed requests are pinned to the first response's ETag, so a concurrently replaced object fails loudly
    instead of splicing two versions together.
    """

    def __init__(self, bucket: S3Bucket, key: str, start: int = 0, end: int | None = None,
                 etag: str | None = None, on_read: Callable[[int], None] | None = None):
        self._bucket = bucket
        self._key = key
        self._full = bucket.full_key(key)
        self._pos = start
        self._end = end
        self._etag = etag
        self._on_read = on_read
        self._body = None

    def readable(self) -> bool:
        return True

    def open(self) -> None:
        kwargs: dict[str, Any] = {"Bucket": self._bucket.bucket, "Key": self._full}
        if self._pos or self._end is not None:
            last = str(self._end - 1) if self._end is not None else ""
            kwargs["Range"] = f"bytes={self._pos}-{last}"
        if self._etag:
            kwargs["IfMatch"] = self._etag
        resp = self._bucket._call(f"get {self._key}", lambda: self._bucket.client.get_object(**kwargs))
        self._body = resp["Body"]
        if self._etag is None:
            self._etag = resp.get("ETag")
        if self._end is None:
            self._end = self._pos + int(resp["ContentLength"])

    def readinto(self, buffer) -> int:  # type: ignore[override]
        if self._end is not None and self._pos >= self._end:
            return 0
        view = memoryview(buffer).cast("B")
        attempt = 1
        while True:
            try:
                if self._body is None:
                    self.open()
                    if self._end is not None and self._pos >= self._end:
                        return 0
                want = min(len(view), READ_PIECE_BYTES)
                if self._end is not None:
                    want = min(want, self._end - self._pos)
                data = self._body.read(want)
                if not data:
                    raise ConnectionError(f"stream ended at byte {self._pos} of {self._end}")
                view[: len(data)] = data
                self._pos += len(data)
                if self._on_read is not None:
                    self._on_read(len(data))
                return len(data)
            except Exception as exc:  # noqa: BLE001 - classified below
                from botocore.exceptions import IncompleteReadError

                self._drop_body()
                transient = is_transient(exc) or isinstance(exc, IncompleteReadError)
                if not transient or attempt >= self._bucket.retry.max_attempts:
                    if isinstance(exc, (BucketError, FileNotFoundError)):
                        raise
                    raise BucketError(
                        f"reading {self._bucket.url}/{self._key} failed at byte {self._pos}: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
                pause = self._bucket.retry.delay(attempt)
                log.warning("reading %s/%s: %s at byte %d; resuming in %.2f s", self._bucket.url, self._key,
                            type(exc).__name__, self._pos, pause)
                time.sleep(pause)
                attempt += 1

    def _drop_body(self) -> None:
        if self._body is not None:
            try:
                self._body.close()
            except Exception:  # noqa: BLE001 - the connection is already broken
                pass
            self._body = None

    def close(self) -> None:
        self._drop_body()
        super().close()
