"""Encode one shard into its tokens file, or recognise a tokens file that is already there.

The file is written completely on local disk, validated, and only then uploaded in one PUT: a run killed at any
point leaves either no tokens file or a complete one. Every segment ends up in the file or in the failures.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import polars as pl

from neucodec_assets.checks import Completeness, complete_evaluation, completeness_of, tar_audio_ids, \
    valid_evaluation
from neucodec_assets.tokens_metadata import STATUS_ENCODED, STATUS_EXISTING, ShardFigures, \
    audio_seconds_from_tokens, tokens_key
from resources.bucket import METADATA_PARQUET, Bucket
from resources.dagster_resources import LoadedEncoder
from resources.env_settings import env_number
from resources.shard_reader import ShardReader
from resources.tokens_file import TOKENS_FILENAME, TokensFileError, TokensFileReport, TokensFileWriter, \
    read_tokens_metadata, validate_tokens_file

PROGRESS_ENV = "NEUCODEC_PROGRESS_SECONDS"
DEFAULT_PROGRESS_SECONDS = 30.0

# Provenance entries that decide whether an existing tokens file was made "the same way" (DESIGN: same model,
# precision and chunking); package versions and creation times do not count.
IDENTITY_KEYS = (
    "model", "model_revision", "model_sha256", "semantic_model", "semantic_model_revision", "semantic_layers",
    "precision", "chunking", "max_clip_seconds",
)

Log = Callable[[str], None]


def progress_interval_seconds() -> float:
    return env_number(PROGRESS_ENV, float, default=DEFAULT_PROGRESS_SECONDS)


def encoding_identity(provenance: Mapping[str, object]) -> dict[str, str]:
    return {k: str(provenance[k]) for k in IDENTITY_KEYS if k in provenance}


def same_encoding(file_provenance: Mapping[str, object], encoder_provenance: Mapping[str, object]) -> bool:
    """True when a file's provenance names the model, precision and chunking of the encoder at hand."""
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


def durations_from_metadata(bucket: Bucket, prefix: str) -> dict[str, float] | None:
    """segment id -> duration from the shard's metadata.parquet, when it has a usable `duration` column."""
    try:
        frame = pl.read_parquet(bucket.read_bytes(f"{prefix}/{METADATA_PARQUET}"))
    except Exception:  # noqa: BLE001 - no or unreadable metadata: validate without durations
        return None
    if "segment_id" not in frame.columns or "duration" not in frame.columns:
        return None
    frame = frame.select(pl.col("segment_id").cast(pl.Utf8), pl.col("duration").cast(pl.Float64)).drop_nulls()
    return dict(zip(frame["segment_id"].to_list(), frame["duration"].to_list()))


def shard_labels(bucket: Bucket, prefix: str) -> tuple[str, str]:
    """Dataset and language of a shard without opening its audio: metadata.parquet first, else the prefix."""
    values = bucket.layout.parse(prefix)
    labels = {"dataset": values.get("dataset", "unknown"), "language": values.get("language", "unknown")}
    try:
        frame = pl.read_parquet(bucket.read_bytes(f"{prefix}/{METADATA_PARQUET}"))
    except Exception:  # noqa: BLE001 - no or unreadable metadata: the prefix names them
        return labels["dataset"], labels["language"]
    for column in labels:
        if column in frame.columns:
            col = frame.get_column(column).drop_nulls().cast(pl.Utf8)
            col = col.filter(col != "")
            if not col.is_empty():
                labels[column] = str(col.mode().sort()[0])
    return labels["dataset"], labels["language"]


def validate_existing(bucket: Bucket, prefix: str, data: bytes) -> tuple[TokensFileReport, TokensFileReport]:
    """Two validations of a stored tokens file: against the contract alone (decides whether the file is usable),
    and also against the metadata's durations where it has them (what the `tokens_file_valid` check reports).

    Durations in metadata.parquet are the dataset's own figures and may be rounded: a mismatch is reported by the
    check, never a reason to encode a structurally sound file again."""
    structural = validate_tokens_file(data)
    durations = durations_from_metadata(bucket, prefix)
    return structural, (validate_tokens_file(data, durations) if durations is not None else structural)


def existing_tokens(
    bucket: Bucket, prefix: str, encoder_provenance: Mapping[str, str] | None, log: Log,
) -> TokensFileReport | None:
    """The check report of the shard's tokens file, when one exists that need not be made again: it is valid per
    the contract and (when ``encoder_provenance`` is given) was made with the same model, precision, chunking."""
    key = tokens_key(prefix)
    if not bucket.exists(key):
        return None
    data = bucket.read_bytes(key)
    if encoder_provenance is not None:
        try:
            file_provenance = read_tokens_metadata(data).get("provenance", {})
        except TokensFileError as exc:
            log(f"{prefix}: existing {key} is unreadable ({exc}); encoding again")
            return None
        if not same_encoding(file_provenance, encoder_provenance):
            log(f"{prefix}: existing {key} was made differently "
                f"({encoding_identity(file_provenance)} != {encoding_identity(encoder_provenance)}); encoding again")
            return None
    structural, checked = validate_existing(bucket, prefix, data)
    if not structural.ok:
        log(f"{prefix}: existing {key} is not valid ({'; '.join(structural.problems)}); encoding again")
        return None
    return checked


def existing_result(bucket: Bucket, prefix: str, report: TokensFileReport, *, status: str = STATUS_EXISTING,
                    with_completeness: bool = True, extra: Mapping[str, object] | None = None) -> ShardResult:
    """Figures read from an existing tokens file (no encoding) and its checks. ``with_completeness`` reads the
    tar's member names (headers only in a local folder; a full stream from S3)."""
    provenance = {str(k): str(v) for k, v in (report.provenance or {}).items()}
    # Files of the old fleet carry no provenance and no failure list: their failures are unknown, not zero.
    failures = [(str(f.get("segment_id", "")), str(f.get("reason", ""))) for f in report.failures] \
        if (report.provenance or report.failures) else None
    dataset, language = shard_labels(bucket, prefix)
    figures = ShardFigures(
        prefix=prefix, status=status, dataset=dataset, language=language, segment_count=report.rows,
        total_audio_seconds=audio_seconds_from_tokens(report.total_tokens), total_tokens=report.total_tokens,
        output_key=tokens_key(prefix), failed=failures, provenance=provenance,
        model=provenance.get("model"), output_uri=f"{bucket.url}/{tokens_key(prefix)}",
        extra=dict(extra or {}),
    )
    checks = [valid_evaluation(prefix, report)]
    if with_completeness:
        checks.append(complete_evaluation(prefix, completeness_of(tar_audio_ids(bucket, prefix), report)))
    return ShardResult(figures, checks)


def encode_shard(
    reader: ShardReader, target: Bucket, loaded: LoadedEncoder, workdir: Path, log: Log, *,
    gpu: str | None = None, extra_provenance: Mapping[str, str] | None = None,
    progress_seconds: float | None = None, on_segment: Callable[[], None] | None = None,
) -> ShardResult:
    """Encode every segment of an opened shard, write and validate the tokens file, upload it in one PUT."""
    prefix = reader.prefix
    local = workdir / "tokens" / prefix / TOKENS_FILENAME
    provenance = {**loaded.provenance, **(extra_provenance or {})}
    seconds: dict[str, float] = {}
    expected = reader.segment_ids
    progress = Progress(prefix, len(expected), log,
                        progress_interval_seconds() if progress_seconds is None else progress_seconds)
    log(f"encoding shard {prefix}: {len(expected)} segments ({reader.dataset}/{reader.language}) on "
        f"{loaded.device}")
    encoder = loaded.encoder
    chunked_before = len(getattr(encoder, "chunked_ids", []))

    def waves():
        for segment in reader.segments():
            seconds[segment.segment_id] = segment.seconds
            yield segment.segment_id, segment.wave

    start = time.perf_counter()
    with TokensFileWriter(local, provenance) as writer:
        for segment_id, codes in encoder.encode_stream(waves()):
            writer.add(segment_id, codes)
            progress.update(seconds.get(segment_id, 0.0))
            if on_segment is not None:
                on_segment()
        wall = time.perf_counter() - start
        failures = [(f.segment_id, f.reason) for f in reader.failures]
        writer.close(failures)
    log(progress.line())
    chunked = list(getattr(encoder, "chunked_ids", [])[chunked_before:])

    report = validate_tokens_file(local, seconds)
    if not report.ok:
        raise TokensFileError(f"the tokens file written for {prefix} does not validate: {'; '.join(report.problems)}")
    completeness = Completeness(
        audio_ids=tar_audio_ids(reader.bucket, prefix), file_ids=frozenset(report.segment_ids),
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
    figures = ShardFigures(
        prefix=prefix, status=STATUS_ENCODED, dataset=reader.dataset, language=reader.language,
        segment_count=report.rows, total_audio_seconds=sum(seconds[s] for s in report.segment_ids),
        total_tokens=report.total_tokens, output_key=key, failed=failures, encode_wall_seconds=wall,
        provenance=provenance, model=loaded.model_label, device=loaded.device, gpu=gpu,
        output_uri=f"{target.url}/{key}", extra=extra,
    )
    return ShardResult(figures, [valid_evaluation(prefix, report), complete_evaluation(prefix, completeness)])
