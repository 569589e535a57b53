"""Download the next shard of a run while the current one encodes.

A run encodes several shards with one loaded model; without this, the GPU would sit idle while each multi-gigabyte
`audio.tar` comes down from R2. Each shard is fetched into its own local folder (a `LocalBucket` with the same key
layout), so the shard reader reads the tar in place and the folder is dropped as soon as the shard is done.
A local-folder bucket needs no copy: its shards are handed out as they are. Every download has a TransferMeter
(bytes as they arrive), which the hang watchdog watches and the progress log reports.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from resources.bucket import (
    AUDIO_TAR,
    METADATA_PARQUET,
    Bucket,
    BucketError,
    LocalBucket,
    ObjectHead,
)
from resources.bucket.transfer import TransferMeter
from resources.shard_reader import ShardError


@dataclass
class FetchedShard:
    """One shard ready to read: ``source`` holds its audio.tar (and metadata.parquet when the shard has one)."""

    prefix: str
    source: Bucket
    local_dir: Path | None  # the folder to drop after use (None: the bucket itself is local)
    fetch_seconds: float = 0.0
    fetch_bytes: int = 0
    error: ShardError | None = None  # the shard could not be fetched; the caller reports it and goes on
    audio_head: ObjectHead | None = None  # the tar's ETag and size when it was fetched (recorded with the tokens)

    def release(self) -> None:
        if self.local_dir is not None:
            shutil.rmtree(self.local_dir, ignore_errors=True)
            self.local_dir = None


class ShardPrefetcher:
    """Iterate over ``prefixes`` as FetchedShards, fetching shard i+1 in a background thread while the caller
    works on shard i. A shard that cannot be fetched comes with its ``error`` set, in its turn."""

    def __init__(self, bucket: Bucket, prefixes: Sequence[str], workdir: Path, *,
                 log: Callable[[str], None] | None = None, progress_seconds: float = 30.0):
        self.bucket = bucket
        self.prefixes = list(prefixes)
        self.workdir = Path(workdir)
        self.log, self.progress_seconds = log, progress_seconds
        self._meters = {prefix: TransferMeter() for prefix in self.prefixes}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-prefetch")
        self._pending: dict[int, Future[FetchedShard]] = {}

    def meter(self, prefix: str) -> TransferMeter | None:
        """The bytes of ``prefix``'s download as they arrive (None: a local bucket, nothing to download)."""
        return None if isinstance(self.bucket, LocalBucket) else self._meters[prefix]

    def _log_progress(self, prefix: str, done: threading.Event) -> None:
        while not done.wait(self.progress_seconds):
            if self.log is not None:
                state = self._meters[prefix].state()
                self.log(f"downloading {self.bucket.url}/{prefix}/{AUDIO_TAR}: {state.describe()}")

    def _fetch(self, index: int) -> FetchedShard:
        prefix = self.prefixes[index]
        if isinstance(self.bucket, LocalBucket):
            return FetchedShard(prefix, self.bucket, None)
        start = time.perf_counter()
        root = self.workdir / f"shard-{index:05d}"
        done = threading.Event()
        threading.Thread(target=self._log_progress, args=(prefix, done), name="download-progress", daemon=True).start()
        try:
            # The HEAD just before the download names the bytes the tokens will come from (the download itself is
            # pinned to an ETag), so a tar replaced later is noticed on the next run.
            head = self.bucket.head(f"{prefix}/{AUDIO_TAR}")
            self.bucket.download_to(f"{prefix}/{AUDIO_TAR}", root / prefix / AUDIO_TAR, self._meters[prefix])
        except FileNotFoundError:
            shutil.rmtree(root, ignore_errors=True)
            return FetchedShard(prefix, self.bucket, None, error=ShardError(
                f"shard {prefix} has no {AUDIO_TAR} ({self.bucket.url}/{prefix}/{AUDIO_TAR} does not exist)"))
        except (BucketError, OSError) as exc:
            shutil.rmtree(root, ignore_errors=True)
            return FetchedShard(prefix, self.bucket, None, error=ShardError(
                f"cannot download {self.bucket.url}/{prefix}/{AUDIO_TAR}: {exc}"))
        finally:
            done.set()
        try:
            self.bucket.download_to(f"{prefix}/{METADATA_PARQUET}", root / prefix / METADATA_PARQUET)
        except FileNotFoundError:
            pass  # the reader reports a missing metadata.parquet; tokens are still produced
        local = LocalBucket(root, layout=self.bucket.layout)
        return FetchedShard(prefix, local, root, fetch_seconds=time.perf_counter() - start,
                            fetch_bytes=self._meters[prefix].state().received, audio_head=head)

    def _submit(self, index: int) -> None:
        if index < len(self.prefixes) and index not in self._pending:
            self._pending[index] = self._pool.submit(self._fetch, index)

    def __iter__(self) -> Iterator[FetchedShard]:
        for index in range(len(self.prefixes)):
            self._submit(index)
            future = self._pending[index]
            try:
                fetched = future.result()
            finally:
                del self._pending[index]
                self._submit(index + 1)  # the next download overlaps this shard's encoding
            try:
                yield fetched
            finally:
                fetched.release()

    def close(self) -> None:
        for future in self._pending.values():
            future.cancel()
        self._pool.shutdown(wait=True)
        for future in self._pending.values():
            if future.done() and not future.cancelled() and future.exception() is None:
                future.result().release()
        self._pending.clear()

    def __enter__(self) -> "ShardPrefetcher":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
