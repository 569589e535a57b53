"""Encode one shard into its tokens file, or recognise a tokens file that is already there.

The file is written completely on local disk, validated, and only then uploaded in one PUT: a run killed at any
point leaves either no tokens file or a complete one. Every segment ends up in the file or in the failures.

A tokens file keeps the identity of the audio.tar it was made from (ETag, size, member ids), so deciding on a
re-run that a shard is done costs one GET of the tokens file, one HEAD of the tar and one GET of metadata.parquet:
the tar itself is not downloaded again unless it changed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

import dagster as dg
import polars as pl

from gpu_executor.encoder.provenance import IDENTITY_KEYS
from gpu_executor.settings import load_settings
from neucodec_assets.tokens.checks import (
    Completeness,
    complete_evaluation,
    completeness_of,
    shard_audio_ids,
    tar_audio_ids,
    valid_evaluation,
)
from neucodec_assets.tokens.metadata import (
    STATUS_ENCODED,
    STATUS_EXISTING,
    ShardFigures,
    audio_seconds_from_tokens,
    tokens_key,
)
from neucodec_assets.tokens.roundtrip import RoundtripSample, roundtrip_for_shard
from resources.bucket import (
    AUDIO_TAR,
    METADATA_PARQUET,
    Bucket,
    BucketError,
    ObjectHead,
)
from resources.bucket.base import TOKENS_PARQUET
from resources.dagster_resources import LoadedEncoder
from resources.shard_reader import ShardReader, metadata_label
from resources.tokens_file import (
    AudioTarRecord,
    TokensFileError,
    TokensFileReport,
    TokensFileWriter,
    read_tokens_metadata,
    validate_tokens_file,
)

# IDENTITY_KEYS comes from the engine: the provenance entries that decide whether an existing tokens file was made
# "the same way" - everything that can change a token, down to the activation kernel and the device class.

Log = Callable[[str], None]


def progress_interval_seconds() -> float:
    """How often a shard logs progress (NEUCODEC_PROGRESS_SECONDS), read now."""
    return load_settings().progress_seconds


def encoding_identity(provenance: Mapping[str, object]) -> dict[str, str]:
    return {k: str(provenance[k]) for k in IDENTITY_KEYS if k in provenance}


def same_encoding(file_provenance: Mapping[str, object], encoder_provenance: Mapping[str, object]) -> bool:
    """True when a file's provenance agrees with the encoder at hand on every identity key (an entry the file lacks,
    e.g. the device class of a file written before it was recorded, is a difference)."""
    wanted = encoding_identity(encoder_provenance)
    return bool(wanted) and encoding_identity(file_provenance) == wanted


@dataclass
class ShardResult:
    """A shard's recorded figures and its check evaluations."""

    figures: ShardFigures
    checks: list[dg.AssetCheckEvaluation] = field(default_factory=list)


class Progress:
    """Logs segments, hours and the real-time factor every ``interval`` seconds while a shard encodes."""

    def __init__(self, prefix: str, total_segments: int, log: Log, interval: float):
        self.prefix, self.total, self.log, self.interval = prefix, total_segments, log, interval
        self.start = self.last = time.perf_counter()
        self.segments = 0
        self.seconds = 0.0

    def update(self, audio_seconds: float) -> None:
        self.segments += 1
        self.seconds += audio_seconds
        now = time.perf_counter()
        if now - self.last >= self.interval:
            self.last = now
            self.log(self.line(now))

    def line(self, now: float | None = None) -> str:
        wall = (now or time.perf_counter()) - self.start
        rtf = self.seconds / wall if wall > 0 else 0.0
        return (f"{self.prefix}: {self.segments}/{self.total} segments encoded, {self.seconds / 3600:.4f} h of "
                f"audio, {rtf:.2f}x real time")


@dataclass(frozen=True)
class ShardMetadata:
    """What the existing-file path needs of a shard's metadata.parquet, read once per shard: the durations the
    validity check compares with, and the dataset and language labels (None where the metadata has none)."""

    durations: dict[str, float] | None = None
    dataset: str | None = None
    language: str | None = None


class ShardMetadataUnreadable(RuntimeError):
    """metadata.parquet is there but could not be read: the request failed or the bytes are not a parquet file."""


def load_shard_metadata(bucket: Bucket, prefix: str) -> ShardMetadata:
    """One GET of metadata.parquet, for readers that must not take a failed read for a shard without durations
    (a later read may succeed): ``FileNotFoundError`` when there is none, ``ShardMetadataUnreadable`` otherwise."""
    key = f"{prefix}/{METADATA_PARQUET}"
    try:
        frame = pl.read_parquet(bucket.read_bytes(key))
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - a failed request (BucketError, OSError) or polars' several parse errors
        raise ShardMetadataUnreadable(f"{key}: {type(exc).__name__}: {exc}") from exc
    durations = None
    if "segment_id" in frame.columns and "duration" in frame.columns:
        pairs = frame.select(pl.col("segment_id").cast(pl.Utf8), pl.col("duration").cast(pl.Float64)).drop_nulls()
        durations = dict(zip(pairs["segment_id"].to_list(), pairs["duration"].to_list()))
    return ShardMetadata(durations, metadata_label(frame, "dataset"), metadata_label(frame, "language"))


def read_shard_metadata(bucket: Bucket, prefix: str) -> ShardMetadata:
    """One GET of metadata.parquet; a missing or unreadable file gives no durations and no labels."""
    try:
        return load_shard_metadata(bucket, prefix)
    except (FileNotFoundError, ShardMetadataUnreadable):  # validate without durations, label by prefix
        return ShardMetadata()


def durations_from_metadata(bucket: Bucket, prefix: str) -> dict[str, float] | None:
    """segment id -> duration from the shard's metadata.parquet, when it has a usable `duration` column."""
    return read_shard_metadata(bucket, prefix).durations


def shard_labels(bucket: Bucket, prefix: str, *, metadata: ShardMetadata | None = None) -> tuple[str, str]:
    """Dataset and language of a shard without opening its audio: metadata.parquet first (``metadata`` when the
    caller has read it already), else the prefix."""
    values = bucket.layout.parse(prefix)
    meta = metadata if metadata is not None else read_shard_metadata(bucket, prefix)
    return (meta.dataset or values.get("dataset", "unknown"), meta.language or values.get("language", "unknown"))


def validate_existing(bucket: Bucket, prefix: str, data: bytes, *,
                      metadata: ShardMetadata | None = None) -> tuple[TokensFileReport, TokensFileReport]:
    """Two validations of a stored tokens file: against the contract alone (decides whether the file is usable),
    and also against the metadata's durations where it has them (what the `tokens_file_valid` check reports).

    Durations in metadata.parquet are the dataset's own figures and may be rounded: a mismatch is reported by the
    check, never a reason to encode a structurally sound file again. ``metadata``: already read by the caller."""
    structural = validate_tokens_file(data)
    durations = (metadata if metadata is not None else read_shard_metadata(bucket, prefix)).durations
    return structural, (validate_tokens_file(data, durations) if durations is not None else structural)


@dataclass
class ExistingTokensReport(TokensFileReport):
    """The check report of a stored tokens file judged current, with what ``existing_tokens`` learned on the way
    (the shard's metadata, the HEAD of its tar), so that ``existing_result`` reads nothing a second time."""

    shard_metadata: ShardMetadata | None = field(default=None, repr=False)
    audio_tar_head: ObjectHead | None = None


def _audio_key(prefix: str) -> str:
    return f"{prefix.rstrip('/')}/{AUDIO_TAR}"


def existing_tokens(
    bucket: Bucket, prefix: str, encoder_provenance: Mapping[str, str] | None, log: Log,
) -> TokensFileReport | None:
    """The check report of the shard's tokens file, when one exists that need not be made again: it is valid per
    the contract, (when ``encoder_provenance`` is given) was made the same way (``IDENTITY_KEYS``), and (when it
    recorded its audio.tar) the tar's ETag and size are still those it was made from.

    Costs one GET of the tokens file, one HEAD of audio.tar and one GET of metadata.parquet (the last two only
    for a file that passed the steps before). Files without a tar record (the old fleet's, adopted ones) are judged
    as before: their completeness is evaluated from the tar itself."""
    key = tokens_key(prefix)
    try:
        data = bucket.read_bytes(key)  # a missing file is one failed GET, not a HEAD and then a GET
    except FileNotFoundError:
        return None
    try:
        file_meta = read_tokens_metadata(data)
    except TokensFileError as exc:
        log(f"{prefix}: existing {key} is unreadable ({exc}); encoding again")
        return None
    if encoder_provenance is not None:
        file_provenance = file_meta.get("provenance", {})
        if not same_encoding(file_provenance, encoder_provenance):
            file_id, wanted = encoding_identity(file_provenance), encoding_identity(encoder_provenance)
            diff = {k: (file_id.get(k), wanted.get(k)) for k in IDENTITY_KEYS if file_id.get(k) != wanted.get(k)}
            log(f"{prefix}: existing {key} was made differently (file vs encoder: {diff}); encoding again")
            return None
    record: AudioTarRecord | None = file_meta.get("audio_tar")
    head = None
    if record is not None:
        try:
            head = bucket.head(_audio_key(prefix))
        except FileNotFoundError:
            log(f"{prefix}: {AUDIO_TAR} is gone; {key} cannot be current; encoding again")
            return None
        if not record.matches(head.etag, head.size):
            log(f"{prefix}: {AUDIO_TAR} changed since {key} was made (ETag {record.etag} -> {head.etag}, "
                f"{record.size} -> {head.size} bytes); encoding again")
            return None
    metadata = read_shard_metadata(bucket, prefix)
    structural, checked = validate_existing(bucket, prefix, data, metadata=metadata)
    if not structural.ok:
        log(f"{prefix}: existing {key} is not valid ({'; '.join(structural.problems)}); encoding again")
        return None
    return ExistingTokensReport(**{f.name: getattr(checked, f.name) for f in fields(TokensFileReport)},
                                shard_metadata=metadata, audio_tar_head=head)


def existing_result(bucket: Bucket, prefix: str, report: TokensFileReport, *, status: str = STATUS_EXISTING,
                    with_completeness: bool = True, extra: Mapping[str, object] | None = None,
                    metadata: ShardMetadata | None = None) -> ShardResult:
    """Figures read from an existing tokens file (no encoding) and its checks. ``with_completeness`` takes the
    tar's member ids from the file's record when the tar is unchanged (no download), else reads the tar's member
    names (headers only in a local folder; a full stream from S3). Nothing ``existing_tokens`` already read (it
    returns an ExistingTokensReport) or the caller passes as ``metadata`` is read again."""
    provenance = {str(k): str(v) for k, v in (report.provenance or {}).items()}
    # Files of the old fleet carry no provenance and no failure list: their failures are unknown, not zero.
    failures = [(str(f.get("segment_id", "")), str(f.get("reason", ""))) for f in report.failures] \
        if (report.provenance or report.failures) else None
    if metadata is None:
        metadata = getattr(report, "shard_metadata", None)
    if metadata is None:
        metadata = read_shard_metadata(bucket, prefix)
    dataset, language = shard_labels(bucket, prefix, metadata=metadata)
    figures = ShardFigures(
        prefix=prefix, status=status, dataset=dataset, language=language, segment_count=report.rows,
        total_audio_seconds=audio_seconds_from_tokens(report.total_tokens), total_tokens=report.total_tokens,
        output_key=tokens_key(prefix), failed=failures, provenance=provenance,
        model=provenance.get("model"), output_uri=f"{bucket.url}/{tokens_key(prefix)}",
        extra=dict(extra or {}),
    )
    checks = [valid_evaluation(prefix, report)]
    if with_completeness:
        audio_ids = shard_audio_ids(bucket, prefix, report, head=getattr(report, "audio_tar_head", None))
        checks.append(complete_evaluation(prefix, completeness_of(audio_ids, report)))
    return ShardResult(figures, checks)


def _head_or_none(bucket: Bucket, key: str) -> ObjectHead | None:
    try:
        return bucket.head(key)
    except (FileNotFoundError, BucketError):
        return None


def tar_record(reader: ShardReader, target: Bucket, before: ObjectHead | None, audio_ids: Mapping[str, int],
               log: Log) -> AudioTarRecord | None:
    """What the tokens file keeps of the tar it was made from, or None when that tar cannot be vouched for: the
    HEAD taken before encoding must still hold, and the copy that was read must have its size. A file without a
    record is still correct; its re-runs just read the tar again."""
    key = _audio_key(reader.prefix)
    if before is None:
        return None
    after = _head_or_none(target, key)
    try:
        read_size = reader.bucket.size(key)
    except (FileNotFoundError, BucketError):
        read_size = None
    if after != before or read_size != before.size:
        log(f"{reader.prefix}: {AUDIO_TAR} changed while the shard was read ({before} -> {after}, {read_size} bytes "
            f"read); the tokens file records no tar identity, so its re-runs read the tar")
        return None
    return AudioTarRecord(etag=before.etag, size=before.size, member_ids=dict(audio_ids))


def encode_shard(
    reader: ShardReader, target: Bucket, loaded: LoadedEncoder, workdir: Path, log: Log, *,
    gpu: str | None = None, extra_provenance: Mapping[str, str] | None = None,
    progress_seconds: float | None = None, on_segment: Callable[[], None] | None = None,
    audio_tar: ObjectHead | None = None,
) -> ShardResult:
    """Encode every segment of an opened shard, write and validate the tokens file, upload it in one PUT.

    The file records the ETag and size of ``target``'s audio.tar and its member ids, so a re-run can tell with one
    HEAD that it is current. ``audio_tar``: the HEAD taken when the shard was fetched (best: just before the
    download); without it the tar is HEADed here, before encoding."""
    prefix = reader.prefix
    tar_before = audio_tar if audio_tar is not None else _head_or_none(target, _audio_key(prefix))
    local = workdir / "tokens" / prefix / TOKENS_PARQUET
    provenance = {**loaded.provenance, **(extra_provenance or {})}
    seconds: dict[str, float] = {}
    expected = reader.segment_ids
    progress = Progress(prefix, len(expected), log,
                        progress_interval_seconds() if progress_seconds is None else progress_seconds)
    log(f"encoding shard {prefix}: {len(expected)} segments ({reader.dataset}/{reader.language}) on "
        f"{loaded.device}")
    encoder = loaded.encoder
    roundtrip = RoundtripSample.for_shard(reader)  # None when NEUCODEC_ROUNDTRIP_SAMPLES=0

    def waves():
        for segment in reader.segments():
            seconds[segment.segment_id] = segment.seconds
            if roundtrip is not None:
                roundtrip.keep_wave(segment.segment_id, segment.wave)
            yield segment.segment_id, segment.wave

    start = time.perf_counter()
    with TokensFileWriter(local, provenance) as writer:
        stream = encoder.encode_stream(waves())
        for segment_id, codes in stream:
            writer.add(segment_id, codes)
            if roundtrip is not None:
                roundtrip.keep_codes(segment_id, codes)
            progress.update(seconds.get(segment_id, 0.0))
            if on_segment is not None:
                on_segment()
        wall = time.perf_counter() - start
        failures = [(f.segment_id, f.reason) for f in reader.failures]
        audio_ids = tar_audio_ids(reader.bucket, prefix)
        writer.close(failures, audio_tar=tar_record(reader, target, tar_before, audio_ids, log))
    log(progress.line())
    chunked = list(stream.chunked_ids)

    report = validate_tokens_file(local, seconds)
    if not report.ok:
        raise TokensFileError(f"the tokens file written for {prefix} does not validate: {'; '.join(report.problems)}")
    completeness = Completeness(
        audio_ids=audio_ids, file_ids=frozenset(report.segment_ids),
        failed_ids=frozenset(sid for sid, _ in failures),
    )
    key = tokens_key(prefix)
    target.upload_file(local, key)
    local.unlink(missing_ok=True)

    stats = reader.stats
    extra: dict[str, object] = {
        "metadata_rows_without_audio": dg.MetadataValue.int(stats.metadata_rows_without_audio),
        "audio_without_metadata": dg.MetadataValue.int(stats.audio_without_metadata),
        "chunked_segments": dg.MetadataValue.int(len(chunked)),
        "model_load_seconds": dg.MetadataValue.float(round(loaded.load_seconds, 3)),
    }
    if stats.metadata_problem:
        extra["metadata_problem"] = stats.metadata_problem
    extra.update(roundtrip_for_shard(roundtrip, target, loaded, log, encode_seconds=wall))
    figures = ShardFigures(
        prefix=prefix, status=STATUS_ENCODED, dataset=reader.dataset, language=reader.language,
        segment_count=report.rows, total_audio_seconds=sum(seconds[s] for s in report.segment_ids),
        total_tokens=report.total_tokens, output_key=key, failed=failures, encode_wall_seconds=wall,
        provenance=provenance, model=loaded.model_label, device=loaded.device, gpu=gpu,
        output_uri=f"{target.url}/{key}", extra=extra,
    )
    return ShardResult(figures, [valid_evaluation(prefix, report), complete_evaluation(prefix, completeness)])
