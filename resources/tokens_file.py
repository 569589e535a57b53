"""The per-shard tokens file ``neucodec_tokens.parquet``: written exactly per contract, read and validated.

Exactly three columns (``segment_id`` string, ``neucodec_tokens`` binary = little-endian uint16 bytes,
``token_count`` int64), zstd. Provenance and the failed segments with reasons travel in the parquet key-value
metadata. The writer streams row groups to a local file that appears under its final name only when complete;
the caller uploads that file in one PUT. The validator also serves files written by the old fleet.
"""

from __future__ import annotations

import base64
import io
import json
import lzma
import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from gpu_executor.codec import SAMPLE_RATE, SAMPLES_PER_TOKEN

PROVENANCE_KEY = "neucodec.provenance"
FAILURES_KEY = "neucodec.failures"
FORMAT_KEY = "neucodec.tokens_format"
AUDIO_TAR_KEY = "neucodec.audio_tar"
FORMAT_VERSION = "1"
COLUMNS = ("segment_id", "neucodec_tokens", "token_count")
SCHEMA = pa.schema([
    pa.field("segment_id", pa.string()),  # nullable, as pandas/polars write it: the old fleet's files match
    pa.field("neucodec_tokens", pa.binary()),
    pa.field("token_count", pa.int64()),
])
EXAMPLES = 20


class TokensFileError(RuntimeError):
    """A tokens file cannot be written or read as the contract demands."""


def expected_token_count(seconds: float) -> int:
    """Tokens for a clip of ``seconds`` at 16 kHz: floor(samples / 320)."""
    return int(round(seconds * SAMPLE_RATE)) // SAMPLES_PER_TOKEN


def codes_to_bytes(codes: Any) -> bytes:
    """Little-endian uint16 bytes of a 1-D code array (leading size-1 axes, as in ``[1, 1, T]``, are dropped)."""
    arr = np.asarray(codes)
    if arr.ndim > 1 and all(d == 1 for d in arr.shape[:-1]):
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise TokensFileError(f"codes must be one-dimensional, got shape {arr.shape}")
    if arr.dtype != np.uint16:
        if not np.issubdtype(arr.dtype, np.integer):
            raise TokensFileError(f"codes must be integers, got {arr.dtype}")
        if arr.size and (arr.min() < 0 or arr.max() > 0xFFFF):
            raise TokensFileError(f"codes out of uint16 range [{arr.min()}, {arr.max()}]")
    return arr.astype("<u2", copy=False).tobytes()


@dataclass(frozen=True)
class AudioTarRecord:
    """The shard's audio.tar as it was when the file was made: its ETag and size, and the segment ids of its audio
    members with their counts (duplicates matter for completeness). A re-run that finds the same ETag and size
    with a HEAD evaluates completeness from these ids instead of downloading the tar again."""

    etag: str
    size: int
    member_ids: Mapping[str, int]

    def to_json(self) -> str:
        """ETag and size in plain JSON; the ids sorted, newline-joined, xz-compressed and base64'd (they would
        otherwise be a large part of a big shard's footer), with the counts of the ids that occur more than once."""
        ids = "\n".join(sorted(self.member_ids)).encode()
        return json.dumps({
            "etag": self.etag, "size": int(self.size), "audio_members": int(sum(self.member_ids.values())),
            "ids": base64.b64encode(lzma.compress(ids, preset=9)).decode("ascii"), "ids_encoding": "xz+base64 lines",
            "repeated": {k: int(n) for k, n in sorted(self.member_ids.items()) if n != 1},
        }, ensure_ascii=False)

    @classmethod
    def from_json(cls, value: str) -> "AudioTarRecord":
        d = json.loads(value)
        text = lzma.decompress(base64.b64decode(d["ids"])).decode() if d["ids"] else ""
        ids: Counter = Counter({sid: 1 for sid in text.split("\n")} if text else {})
        ids.update({k: int(n) - 1 for k, n in d.get("repeated", {}).items()})
        if sum(ids.values()) != int(d["audio_members"]):
            raise ValueError(f"{sum(ids.values())} member ids recorded, {d['audio_members']} announced")
        return cls(etag=str(d["etag"]), size=int(d["size"]), member_ids=ids)

    def matches(self, etag: str, size: int) -> bool:
        return bool(self.etag) and self.etag == etag and self.size == size


def _failure_dict(failure: Any) -> dict[str, str]:
    if is_dataclass(failure) and not isinstance(failure, type):
        d = asdict(failure)
    elif isinstance(failure, Mapping):
        d = dict(failure)
    else:
        segment_id, reason = failure
        d = {"segment_id": segment_id, "reason": reason}
    return {k: str(v) for k, v in d.items() if v not in (None, "")}


class TokensFileWriter:
    """Streams rows into ``local_path`` (via ``<name>.partial``, renamed by ``close``)."""

    def __init__(self, local_path: str | os.PathLike[str], provenance: Mapping[str, str], *,
                 row_group_rows: int = 2048):
        self.path = Path(local_path)
        self.partial_path = self.path.with_name(self.path.name + ".partial")
        self.provenance = {str(k): str(v) for k, v in provenance.items()}
        self.row_group_rows = row_group_rows
        self.rows = 0
        self.total_tokens = 0
        self._ids: set[str] = set()
        self._buffer: dict[str, list] = {c: [] for c in COLUMNS}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer: pq.ParquetWriter | None = pq.ParquetWriter(
            self.partial_path, SCHEMA, compression="zstd", use_dictionary=["segment_id"])

    def add(self, segment_id: str, codes: Any) -> None:
        if self._writer is None:
            raise TokensFileError("the tokens file is already closed")
        if segment_id in self._ids:
            raise TokensFileError(f"segment {segment_id!r} added twice")
        data = codes_to_bytes(codes)
        self._ids.add(segment_id)
        self._buffer["segment_id"].append(segment_id)
        self._buffer["neucodec_tokens"].append(data)
        self._buffer["token_count"].append(len(data) // 2)
        self.rows += 1
        self.total_tokens += len(data) // 2
        if len(self._buffer["segment_id"]) >= self.row_group_rows:
            self._flush()

    def _flush(self) -> None:
        if self._buffer["segment_id"] and self._writer is not None:
            self._writer.write_table(pa.table(self._buffer, schema=SCHEMA))
            self._buffer = {c: [] for c in COLUMNS}

    def close(self, failures: Iterable[Any] = (), extra_metadata: Mapping[str, str] | None = None, *,
              audio_tar: AudioTarRecord | None = None) -> Path:
        """Write the last rows and the key-value metadata (with ``audio_tar``: what completeness needs of the
        shard's tar, so that a re-run need not read it), then give the file its final name."""
        if self._writer is None:
            raise TokensFileError("the tokens file is already closed")
        self._flush()
        meta = {
            FORMAT_KEY: FORMAT_VERSION,
            PROVENANCE_KEY: json.dumps(self.provenance, sort_keys=True),
            FAILURES_KEY: json.dumps([_failure_dict(f) for f in failures], ensure_ascii=False),
        }
        if audio_tar is not None:
            meta[AUDIO_TAR_KEY] = audio_tar.to_json()
        meta.update({str(k): str(v) for k, v in (extra_metadata or {}).items()})
        self._writer.add_key_value_metadata(meta)
        self._writer.close()
        self._writer = None
        os.replace(self.partial_path, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the partial file (after an error): nothing half-written stays behind."""
        if self._writer is not None:
            try:
                self._writer.close()
            finally:
                self._writer = None
        self.partial_path.unlink(missing_ok=True)

    def __enter__(self) -> "TokensFileWriter":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None or self._writer is not None:
            self.abort()  # a writer left open by a `with` block was not closed on purpose


def _source(path_or_bytes: str | os.PathLike[str] | bytes):
    return pa.BufferReader(path_or_bytes) if isinstance(path_or_bytes, bytes) else str(path_or_bytes)


def _decode_metadata(raw: Mapping[bytes, bytes] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"provenance": {}, "failures": []}
    for k, v in (raw or {}).items():
        key, value = k.decode(errors="replace"), v.decode(errors="replace")
        if key == "ARROW:schema":
            continue
        if key == PROVENANCE_KEY:
            out["provenance"] = json.loads(value)
        elif key == FAILURES_KEY:
            out["failures"] = json.loads(value)
        elif key == AUDIO_TAR_KEY:
            try:
                out["audio_tar"] = AudioTarRecord.from_json(value)
            except (ValueError, KeyError, TypeError, lzma.LZMAError) as exc:  # unusable: re-runs read the tar instead
                out["audio_tar"] = None
                out["audio_tar_problem"] = f"{type(exc).__name__}: {exc}"
        else:
            out[key] = value
    return out


def read_tokens_metadata(path_or_bytes: str | os.PathLike[str] | bytes) -> dict[str, Any]:
    """The key-value metadata: ``provenance`` (dict), ``failures`` (list of dicts), ``audio_tar`` (an
    AudioTarRecord, when the file has one) and any other keys."""
    try:
        return _decode_metadata(pq.read_metadata(_source(path_or_bytes)).metadata)
    except (pa.ArrowException, OSError, json.JSONDecodeError) as exc:
        raise TokensFileError(f"not a readable tokens file: {exc}") from exc


def read_tokens_file(path_or_bytes: str | os.PathLike[str] | bytes) -> tuple[pl.DataFrame, dict[str, Any]]:
    """The rows as a polars DataFrame and the decoded key-value metadata (see ``read_tokens_metadata``)."""
    meta = read_tokens_metadata(path_or_bytes)
    data = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    return pl.read_parquet(data), meta


@dataclass
class TokensFileReport:
    """What ``validate_tokens_file`` found; ``ok`` when ``problems`` is empty."""

    rows: int = 0
    total_tokens: int = 0
    problems: list[str] = field(default_factory=list)
    bad_token_counts: list[str] = field(default_factory=list)
    duration_mismatches: list[str] = field(default_factory=list)
    missing_durations: int = 0
    provenance: dict[str, Any] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)
    segment_ids: set[str] = field(default_factory=set, repr=False)
    audio_tar: AudioTarRecord | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return not self.problems


_STRING = (pa.string(), pa.large_string())
_BINARY = (pa.binary(), pa.large_binary())


def validate_tokens_file(path_or_bytes: str | os.PathLike[str] | bytes,
                         durations: Mapping[str, float] | None = None, *, tolerance_tokens: int = 1,
                         batch_rows: int = 4096) -> TokensFileReport:
    """Check a tokens file against the contract, batch by batch (bounded memory).

    Schema (exactly the three columns and types), no nulls or duplicate ids, even byte lengths,
    ``token_count == len(bytes) / 2``; with ``durations`` (segment id -> seconds), every count within
    ``tolerance_tokens`` of floor(seconds * 16000 / 320).
    """
    report = TokensFileReport()
    try:
        pfile = pq.ParquetFile(_source(path_or_bytes))
    except (pa.ArrowException, OSError) as exc:
        report.problems.append(f"not a readable parquet file: {exc}")
        return report
    try:
        meta = _decode_metadata(pfile.metadata.metadata)
        report.provenance, report.failures = meta["provenance"], meta["failures"]
        report.audio_tar = meta.get("audio_tar")
    except json.JSONDecodeError as exc:
        report.problems.append(f"key-value metadata is not valid JSON: {exc}")
    schema = pfile.schema_arrow
    names = list(schema.names)
    if sorted(names) != sorted(COLUMNS):
        report.problems.append(f"columns are {names}, expected exactly {list(COLUMNS)}")
    types_ok = True
    for name, allowed in (("segment_id", _STRING), ("neucodec_tokens", _BINARY), ("token_count", (pa.int64(),))):
        if name in names and schema.field(name).type not in allowed:
            report.problems.append(f"column {name} has type {schema.field(name).type}, expected {allowed[0]}")
            types_ok = False
    if not types_ok or not set(COLUMNS) <= set(names):
        return report
    bad_counts = odd = nulls = dups = mismatches = 0
    for batch in pfile.iter_batches(batch_size=batch_rows, columns=list(COLUMNS)):
        ids = batch.column("segment_id").to_pylist()
        blobs = batch.column("neucodec_tokens").to_pylist()
        counts = batch.column("token_count").to_pylist()
        for sid, blob, count in zip(ids, blobs, counts):
            report.rows += 1
            if sid is None or blob is None or count is None:
                nulls += 1
                continue
            if sid in report.segment_ids:
                dups += 1
            report.segment_ids.add(sid)
            if len(blob) % 2:
                odd += 1
            if count != len(blob) // 2 or len(blob) % 2:
                bad_counts += 1
                if len(report.bad_token_counts) < EXAMPLES:
                    report.bad_token_counts.append(f"{sid}: token_count {count}, {len(blob)} bytes")
            report.total_tokens += len(blob) // 2
            if durations is not None:
                seconds = durations.get(sid)
                if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
                    report.missing_durations += 1
                    continue
                expected = expected_token_count(seconds)
                if abs(count - expected) > tolerance_tokens:
                    mismatches += 1
                    if len(report.duration_mismatches) < EXAMPLES:
                        report.duration_mismatches.append(
                            f"{sid}: {count} tokens, {seconds:.3f} s implies {expected}")
    for n, what in ((nulls, "rows with nulls"), (dups, "duplicate segment ids"), (odd, "odd byte lengths"),
                    (bad_counts, "rows where token_count != len(neucodec_tokens) / 2"),
                    (mismatches, f"token counts off their durations by more than {tolerance_tokens}")):
        if n:
            report.problems.append(f"{n} {what}")
    return report
