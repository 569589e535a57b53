"""Reading one shard: every member of ``audio.tar`` becomes a prepared 16 kHz wave or a failure with a reason.

The tar is read in place (a local bucket) or after a streamed, resumable download to a temporary file (S3/R2);
members are never extracted to disk. A header-only pass indexes the members first, so duplicate segment ids and a
truncated or corrupt archive are known before the first segment is yielded. Decoding runs in a small thread pool
that overlaps the consumer (the encoder); at most ``prefetch`` members are held at once, so memory stays bounded
whatever the shard's size.
"""

from __future__ import annotations

import collections
import logging
import os
import shutil
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import numpy as np
import polars as pl

from gpu_executor.codec import SAMPLE_RATE
from gpu_executor.settings import Settings, load_settings
from resources.audio import (
    AudioError,
    PreparedAudio,
    load_wave,
    member_kind,
    segment_id_of,
)
from resources.bucket import (
    AUDIO_TAR,
    METADATA_PARQUET,
    Bucket,
    BucketError,
    LocalBucket,
    ShardLayout,
    open_bucket,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_MEMBER_BYTES = 512 * 1024**2
EXAMPLES = 20  # ids listed in stats for each kind of mismatch; the counts are complete
_BLOCK = tarfile.BLOCKSIZE


class ShardError(RuntimeError):
    """The shard as a whole cannot be read (missing or corrupt ``audio.tar``); the message says which and why."""


@dataclass(frozen=True)
class SegmentFailure:
    """A segment that gets no tokens. ``kind``: empty, corrupt, truncated, non_finite, too_short,
    unsupported_format, duplicate, too_large."""

    segment_id: str
    reason: str
    kind: str = ""
    member: str = ""


@dataclass
class Segment:
    segment_id: str
    member: str
    wave: np.ndarray  # float32, mono, 16 kHz
    source_sample_rate: int
    source_channels: int
    has_metadata: bool

    @property
    def seconds(self) -> float:
        return len(self.wave) / SAMPLE_RATE


@dataclass
class ShardStats:
    """What the reader found; counts are complete once ``segments()`` is exhausted."""

    members: int = 0
    audio_members: int = 0
    non_audio_members: int = 0
    directories_and_links: int = 0
    segments_read: int = 0
    failed_segments: int = 0
    duplicate_ids: int = 0
    duplicate_members: int = 0
    metadata_rows: int = 0
    metadata_duplicate_ids: int = 0
    metadata_rows_without_audio: int = 0
    audio_without_metadata: int = 0
    audio_seconds: float = 0.0
    peak_buffered_bytes: int = 0
    metadata_problem: str | None = None
    metadata_ids_without_audio: list[str] = field(default_factory=list)
    audio_ids_without_metadata: list[str] = field(default_factory=list)
    non_audio_examples: list[str] = field(default_factory=list)


def metadata_label(frame: pl.DataFrame | None, column: str) -> str | None:
    """A shard's `dataset` or `language` from its metadata: the most common non-empty value (ties: the first in
    sort order), None where the column is missing or empty. The one rule for labels read from metadata.parquet."""
    if frame is None or column not in frame.columns:
        return None
    values = frame.get_column(column).drop_nulls().cast(pl.Utf8)
    values = values.filter(values != "")
    if values.is_empty():
        return None
    return str(values.mode().sort()[0])


def member_segment_id(member: tarfile.TarInfo) -> str | None:
    """The segment id of a tar member that holds a segment's audio (supported or not); None for directories,
    links and other files. The one rule for which members are segments."""
    if not member.isfile() or member_kind(member.name) == "other":
        return None
    return segment_id_of(member.name)


class ShardReader:
    """Use through ``read_shard``: ``with read_shard(bucket, prefix) as r: for seg in r.segments(): ...``."""

    def __init__(self, bucket: Bucket | str | None, prefix: str, *, workers: int = 2, prefetch: int | None = None,
                 spool_dir: str | os.PathLike[str] | None = None, layout: ShardLayout | None = None,
                 max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES):
        self.bucket = bucket if isinstance(bucket, Bucket) else open_bucket(bucket)
        self.prefix = prefix.strip("/")
        self.workers = max(1, workers)
        self.prefetch = prefetch if prefetch is not None else 2 * self.workers + 1
        if self.prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        self.spool_dir = spool_dir or load_settings().spool_dir
        self.layout = layout or self.bucket.layout
        self.max_member_bytes = max_member_bytes
        self.metadata: pl.DataFrame | None = None
        self.failures: list[SegmentFailure] = []
        self.stats = ShardStats()
        self.dataset = ""
        self.language = ""
        self.complete = False
        self._tmpdir: str | None = None
        self._tar: tarfile.TarFile | None = None
        self._members: list[tarfile.TarInfo] = []
        self._id_counts: collections.Counter[str] = collections.Counter()
        self._metadata_ids: set[str] = set()
        self._iterated = False
        self._lock = threading.Lock()
        self._buffered = 0

    # -- opening -------------------------------------------------------------------------------------------
    def __enter__(self) -> "ShardReader":
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def audio_key(self) -> str:
        return f"{self.prefix}/{AUDIO_TAR}"

    def open(self) -> None:
        self._load_metadata()
        tar_path = self._local_tar()
        self._index_tar(tar_path)
        self._pair_with_metadata()
        layout = self.layout.parse(self.prefix)
        frame = self.metadata
        self.dataset = metadata_label(frame, "dataset") or layout.get("dataset", "unknown")
        self.language = metadata_label(frame, "language") or layout.get("language", "unknown")

    def _load_metadata(self) -> None:
        key = f"{self.prefix}/{METADATA_PARQUET}"
        try:
            data = self.bucket.read_bytes(key)
        except FileNotFoundError:
            self.stats.metadata_problem = f"no {METADATA_PARQUET} in shard {self.prefix}"
            return
        except BucketError as exc:
            self.stats.metadata_problem = f"{METADATA_PARQUET} could not be read: {exc}"
            return
        try:
            frame = pl.read_parquet(data)
        except Exception as exc:  # noqa: BLE001 - polars raises several types for a bad file
            self.stats.metadata_problem = f"{METADATA_PARQUET} is not a readable parquet file: {exc}"
            return
        if "segment_id" not in frame.columns:
            self.stats.metadata_problem = (
                f"{METADATA_PARQUET} has no segment_id column (columns: {', '.join(frame.columns) or 'none'})")
            return
        frame = frame.with_columns(pl.col("segment_id").cast(pl.Utf8))
        self.metadata = frame
        ids = frame.get_column("segment_id").drop_nulls()
        self._metadata_ids = set(ids.to_list())
        self.stats.metadata_rows = frame.height
        self.stats.metadata_duplicate_ids = int(ids.is_duplicated().sum())

    def _local_tar(self) -> Path:
        """The tar on local disk: in place for a local bucket, else streamed to a temporary file."""
        where = f"{self.bucket.url}/{self.audio_key}"
        if isinstance(self.bucket, LocalBucket):
            path = self.bucket.path(self.audio_key)
            if not path.is_file():
                raise ShardError(f"shard {self.prefix} has no {AUDIO_TAR} ({where} does not exist)")
            return path
        if self.spool_dir:
            Path(self.spool_dir).mkdir(parents=True, exist_ok=True)
        self._tmpdir = tempfile.mkdtemp(prefix="shard-", dir=self.spool_dir)
        try:
            return self.bucket.download_to(self.audio_key, Path(self._tmpdir) / AUDIO_TAR)
        except FileNotFoundError as exc:
            raise ShardError(f"shard {self.prefix} has no {AUDIO_TAR} ({where} does not exist)") from exc
        except (BucketError, OSError) as exc:
            raise ShardError(f"cannot download {where}: {exc}") from exc

    def _index_tar(self, path: Path) -> None:
        file_size = path.stat().st_size
        try:
            self._tar = tarfile.open(path, mode="r:")
            self._members = self._tar.getmembers()  # headers only: data blocks are skipped by seeking
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ShardError(f"{AUDIO_TAR} of shard {self.prefix} is not a readable tar file: {exc}") from exc
        if self._members:
            last = self._members[-1]
            end = last.offset_data + (-(-last.size // _BLOCK) * _BLOCK if last.isfile() else 0)
            if last.offset_data + last.size > file_size:
                raise ShardError(
                    f"{AUDIO_TAR} of shard {self.prefix} is truncated: member {last.name!r} needs "
                    f"{last.offset_data + last.size} bytes, the file has {file_size}")
            stop = self._tar.offset
            if stop < file_size and stop >= end:
                with open(path, "rb") as f:
                    f.seek(stop)
                    block = f.read(_BLOCK)
                if block.strip(b"\0"):
                    raise ShardError(
                        f"{AUDIO_TAR} of shard {self.prefix} is corrupt: unreadable tar header at byte {stop} "
                        f"after {len(self._members)} members")
        for m in self._members:
            self.stats.members += 1
            sid = member_segment_id(m)
            if sid is not None:
                self.stats.audio_members += 1
                self._id_counts[sid] += 1
            elif not m.isfile():
                self.stats.directories_and_links += 1
            else:
                self.stats.non_audio_members += 1
                if len(self.stats.non_audio_examples) < EXAMPLES:
                    self.stats.non_audio_examples.append(m.name)
        dups = [sid for sid, n in self._id_counts.items() if n > 1]
        self.stats.duplicate_ids = len(dups)
        self.stats.duplicate_members = sum(self._id_counts[sid] for sid in dups)

    def _pair_with_metadata(self) -> None:
        if self.metadata is None:
            return
        audio_ids = set(self._id_counts)
        without_audio = sorted(self._metadata_ids - audio_ids)
        without_meta = sorted(audio_ids - self._metadata_ids)
        self.stats.metadata_rows_without_audio = len(without_audio)
        self.stats.metadata_ids_without_audio = without_audio[:EXAMPLES]
        self.stats.audio_without_metadata = len(without_meta)
        self.stats.audio_ids_without_metadata = without_meta[:EXAMPLES]

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    # -- reading ---------------------------------------------------------------------------------------------
    @property
    def segment_ids(self) -> list[str]:
        """Ids of the audio members that can be segments (duplicates excluded), in tar order."""
        return [segment_id_of(m.name) for m in self._members
                if m.isfile() and member_kind(m.name) == "audio" and self._id_counts[segment_id_of(m.name)] == 1]

    def _account(self, delta: int) -> None:
        with self._lock:
            self._buffered += delta
            if self._buffered > self.stats.peak_buffered_bytes:
                self.stats.peak_buffered_bytes = self._buffered

    def _fail(self, segment_id: str, kind: str, reason: str, member: str) -> None:
        self.failures.append(SegmentFailure(segment_id, f"{kind}: {reason}", kind, member))
        self.stats.failed_segments += 1

    def _decode(self, raw: bytes) -> PreparedAudio:
        """Runs in the pool; the buffer accounting swaps the member's bytes for its wave's."""
        size = len(raw)
        try:
            audio = load_wave(raw)
        except BaseException:
            self._account(-size)
            raise
        self._account(audio.wave.nbytes - size)
        return audio

    def segments(self) -> Iterator[Segment]:
        """Yield every good segment in tar order; failures land in ``self.failures``. Iterable once."""
        if self._tar is None:
            raise RuntimeError("open the reader first: `with read_shard(...) as reader:`")
        if self._iterated:
            raise RuntimeError("segments() of a shard reader can be iterated only once")
        self._iterated = True
        reported_dups: set[str] = set()
        pending: collections.deque[tuple[tarfile.TarInfo, str, Future[PreparedAudio]]] = collections.deque()
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="shard-decode") as pool:
            try:
                for member in self._members:
                    if not member.isfile():
                        continue
                    kind = member_kind(member.name)
                    if kind == "other":
                        continue
                    sid = segment_id_of(member.name)
                    if self._id_counts[sid] > 1:
                        if sid not in reported_dups:
                            reported_dups.add(sid)
                            names = [m.name for m in self._members if m.isfile() and member_kind(m.name) != "other"
                                     and segment_id_of(m.name) == sid]
                            self._fail(sid, "duplicate",
                                       f"{len(names)} members share this segment id ({', '.join(names)})",
                                       member.name)
                        continue
                    if kind == "unsupported_audio":
                        self._fail(sid, "unsupported_format",
                                   f"{os.path.splitext(member.name)[1]} cannot be decoded", member.name)
                        continue
                    if member.size > self.max_member_bytes:
                        self._fail(sid, "too_large", f"{member.size} bytes is over the limit of "
                                   f"{self.max_member_bytes}", member.name)
                        continue
                    while len(pending) >= self.prefetch:
                        yield from self._resolve(pending.popleft())
                    try:
                        raw = self._tar.extractfile(member).read()  # type: ignore[union-attr]
                    except (tarfile.TarError, OSError, EOFError) as exc:
                        self._fail(sid, "truncated", f"cannot read member: {exc}", member.name)
                        continue
                    self._account(len(raw))
                    pending.append((member, sid, pool.submit(self._decode, raw)))
                    del raw
                while pending:
                    yield from self._resolve(pending.popleft())
                self.complete = True
            finally:
                for _, _, fut in pending:
                    fut.cancel()

    def _resolve(self, item: tuple[tarfile.TarInfo, str, Future[PreparedAudio]]) -> Iterator[Segment]:
        member, sid, fut = item
        try:
            audio = fut.result()
        except AudioError as exc:
            self._fail(sid, exc.kind, exc.message, member.name)
            return
        except Exception as exc:  # noqa: BLE001 - any decoder crash is this member's failure, not the shard's
            self._fail(sid, "corrupt", f"{type(exc).__name__}: {exc}", member.name)
            return
        seg = Segment(sid, member.name, audio.wave, audio.source_sample_rate, audio.source_channels,
                      sid in self._metadata_ids)
        del audio
        self.stats.segments_read += 1
        self.stats.audio_seconds += seg.seconds
        self._account(-seg.wave.nbytes)
        yield seg


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, as a container or taskset limits it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_decode_workers(cores: int | None = None) -> int:
    """Decode threads per shard when ``NEUCODEC_DECODE_WORKERS`` is unset: every core but one, from 2 up to 8.

    Why: decoding and resampling high-rate stereo costs a core per few hundred times real time
    (``bench/decode_bench.py`` prints the figures), so a fast GPU needs several threads; one core stays with the
    encoder's host thread and the tar reads. soundfile and soxr release the GIL, so threads suffice.
    """
    n = available_cores() if cores is None else cores
    return max(2, min(8, n - 1))


def decode_workers(settings: Settings | None = None) -> int:
    """Decode threads per shard for a run: ``NEUCODEC_DECODE_WORKERS`` when set, else the default for these cores."""
    return (settings or load_settings()).decode_workers or default_decode_workers()


def read_shard(bucket: Bucket | str | None, prefix: str, workers: int = 2, **kwargs) -> ShardReader:
    """A reader for the shard at ``prefix``; use it as a context manager."""
    return ShardReader(bucket, prefix, workers=workers, **kwargs)
