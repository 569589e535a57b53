"""Pair a shard's tokens file with its metadata.parquet into SFT records (DESIGN.md "SFT records").

Every segment of either side ends up either as a record or counted under exactly one drop reason, so the
materialization can show where each segment went ("nothing is lost").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl
import pyarrow as pa

from resources.bucket.base import DEFAULT_SHARD_LAYOUT, ShardLayout
from resources.bucket.base import UNKNOWN as UNKNOWN_LABEL

SAMPLE_RATE = 16_000
HOP_SAMPLES = 320
TOKENS_PER_SECOND = SAMPLE_RATE / HOP_SAMPLES  # 50 neucodec frames per second of 16 kHz audio

TEXT_COLUMN_CANDIDATES = ("text", "transcript", "transcription", "sentence", "normalized_text")
SPEAKER_COLUMN_CANDIDATES = ("speaker", "speaker_id")

# Drop reasons, in the order they are tested: a segment is counted under the first that applies.
NO_METADATA_ROW = "no_metadata_row"
NO_TOKENS = "no_audio_or_tokens"
DUPLICATE_METADATA_ROW = "duplicate_metadata_row"
BAD_TOKEN_BYTES = "bad_token_bytes"
EMPTY_TRANSCRIPT = "empty_transcript"
MORE_WORDS_THAN_TOKENS = "more_words_than_speech_tokens"
TOO_FEW_CHARS_PER_SECOND = "chars_per_second_below_min"
TOO_MANY_CHARS_PER_SECOND = "chars_per_second_above_max"
DROP_REASONS = (
    NO_METADATA_ROW,
    NO_TOKENS,
    DUPLICATE_METADATA_ROW,
    BAD_TOKEN_BYTES,
    EMPTY_TRANSCRIPT,
    MORE_WORDS_THAN_TOKENS,
    TOO_FEW_CHARS_PER_SECOND,
    TOO_MANY_CHARS_PER_SECOND,
)

RECORD_SCHEMA: dict[str, pl.DataType] = {
    "segment_id": pl.String(),
    "dataset": pl.String(),
    "language": pl.String(),
    "speaker": pl.String(),
    "text": pl.String(),
    "audio_seconds": pl.Float64(),
    "token_count": pl.Int64(),
    "neucodec_tokens": pl.List(pl.UInt16()),
}


@dataclass(frozen=True)
class PairingConfig:
    """How transcripts are found and which text-to-audio ratios count as outliers."""

    text_column: str | None = None  # None: the first present of TEXT_COLUMN_CANDIDATES
    shard_layout: str = DEFAULT_SHARD_LAYOUT  # how dataset/language are read from the shard key
    # Characters (of the stripped transcript) per second of audio. Speech in the 12 languages lies around
    # 3 (Chinese, Japanese) to 20 (fast Latin-script speech); values far outside mean a wrong transcript.
    min_chars_per_second: float = 1.0
    max_chars_per_second: float = 40.0

    def __post_init__(self) -> None:
        if not 0 <= self.min_chars_per_second < self.max_chars_per_second:
            raise ValueError(
                f"need 0 <= min_chars_per_second < max_chars_per_second, got "
                f"{self.min_chars_per_second} and {self.max_chars_per_second}"
            )


@dataclass
class PairingResult:
    """The kept records and, for every drop reason, how many segments it took and a few of their ids."""

    records: pl.DataFrame
    token_rows: int
    metadata_rows: int
    dropped: dict[str, int] = field(default_factory=dict)
    dropped_examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def kept(self) -> int:
        return self.records.height


def shard_labels(shard: str, layout: str = DEFAULT_SHARD_LAYOUT) -> dict[str, str]:
    """`dataset` and `language` of a shard key laid out as `layout` (matched from the key's end; missing -> unknown)."""
    parsed = ShardLayout(layout).parse(shard)
    return {"dataset": parsed.get("dataset", UNKNOWN_LABEL), "language": parsed.get("language", UNKNOWN_LABEL)}


def pick_text_column(columns: list[str], configured: str | None) -> str:
    """The transcript column: the configured one, else the first present candidate."""
    if configured is not None:
        if configured not in columns:
            raise ValueError(f"metadata has no transcript column {configured!r}; columns: {columns}")
        return configured
    for name in TEXT_COLUMN_CANDIDATES:
        if name in columns:
            return name
    raise ValueError(
        f"metadata has none of the transcript columns {list(TEXT_COLUMN_CANDIDATES)}; columns: {columns}. "
        "Configure the text column."
    )


def tokens_to_lists(blobs: pl.Series) -> pl.Series:
    """Little-endian uint16 byte blobs -> list<uint16>, in one copy (no per-row Python arrays)."""
    lengths = blobs.bin.size().fill_null(0).to_numpy().astype(np.int64)
    if np.any(lengths % 2):
        raise ValueError("a neucodec_tokens blob has an odd number of bytes")
    joined = b"".join(b for b in blobs.to_list() if b)
    values = np.frombuffer(joined, dtype="<u2").astype(np.uint16, copy=False)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths // 2, out=offsets[1:])
    arrow = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values, type=pa.uint16()))
    return pl.Series(blobs.name, arrow).cast(pl.List(pl.UInt16()))


def _empty_records() -> pl.DataFrame:
    return pl.DataFrame(schema=RECORD_SCHEMA)


def _normalize_metadata(metadata: pl.DataFrame, config: PairingConfig) -> pl.DataFrame:
    """segment_id, text, speaker, dataset, language as strings (missing optional columns -> null)."""
    if "segment_id" not in metadata.columns:
        raise ValueError(f"metadata.parquet has no segment_id column; columns: {metadata.columns}")
    text_column = pick_text_column(metadata.columns, config.text_column)
    speaker_column = next((c for c in SPEAKER_COLUMN_CANDIDATES if c in metadata.columns), None)

    def optional(name: str | None, alias: str) -> pl.Expr:
        if name is None or name not in metadata.columns:
            return pl.lit(None, dtype=pl.String).alias(alias)
        value = pl.col(name).cast(pl.String).str.strip_chars()
        return pl.when(value.str.len_chars() > 0).then(value).otherwise(None).alias(alias)

    return metadata.select(
        pl.col("segment_id").cast(pl.String),
        pl.col(text_column).cast(pl.String).alias("text"),
        optional(speaker_column, "speaker"),
        optional("dataset", "meta_dataset"),
        optional("language", "meta_language"),
    )


def pair_shard(
    shard: str,
    tokens: pl.DataFrame,
    metadata: pl.DataFrame | None,
    config: PairingConfig = PairingConfig(),
    examples_per_reason: int = 5,
) -> PairingResult:
    """Join one shard's tokens (segment_id, neucodec_tokens, token_count) with its metadata (None: no file)."""
    for column in ("segment_id", "neucodec_tokens", "token_count"):
        if column not in tokens.columns:
            raise ValueError(f"tokens file of {shard!r} has no {column} column; columns: {tokens.columns}")
    labels = shard_labels(shard, config.shard_layout)
    tokens = tokens.select(
        pl.col("segment_id").cast(pl.String),
        pl.col("neucodec_tokens").cast(pl.Binary),
        pl.col("token_count").cast(pl.Int64),
    )
    if metadata is None:
        metadata_rows = 0
        meta = pl.DataFrame(
            schema={
                "segment_id": pl.String,
                "text": pl.String,
                "speaker": pl.String,
                "meta_dataset": pl.String,
                "meta_language": pl.String,
            }
        )
    else:
        metadata_rows = metadata.height
        meta = _normalize_metadata(metadata, config)

    dropped: dict[str, int] = {reason: 0 for reason in DROP_REASONS}
    examples: dict[str, list[str]] = {}

    def drop(reason: str, ids: pl.Series) -> None:
        dropped[reason] += ids.len()
        if ids.len():
            examples[reason] = ids.head(examples_per_reason).to_list()

    # A segment id repeated in the metadata cannot be attributed to one transcript: drop all its rows.
    duplicated = meta.filter(pl.col("segment_id").is_duplicated())
    meta = meta.filter(~pl.col("segment_id").is_duplicated())
    dup_ids = duplicated.get_column("segment_id").unique(maintain_order=True)
    dup_in_tokens = tokens.filter(pl.col("segment_id").is_in(dup_ids.implode()))
    tokens = tokens.filter(~pl.col("segment_id").is_in(dup_ids.implode()))
    drop(DUPLICATE_METADATA_ROW, pl.concat([dup_in_tokens.get_column("segment_id"), dup_ids]).unique(maintain_order=True))

    drop(NO_METADATA_ROW, tokens.join(meta, on="segment_id", how="anti").get_column("segment_id"))
    drop(NO_TOKENS, meta.join(tokens, on="segment_id", how="anti").get_column("segment_id"))
    joined = tokens.join(meta, on="segment_id", how="inner", maintain_order="left")

    bad_bytes = pl.col("neucodec_tokens").bin.size().fill_null(-1) != pl.col("token_count") * 2
    bad_bytes = bad_bytes | (pl.col("token_count") <= 0)
    drop(BAD_TOKEN_BYTES, joined.filter(bad_bytes).get_column("segment_id"))
    joined = joined.filter(~bad_bytes)

    joined = joined.with_columns(pl.col("text").str.strip_chars())
    empty = pl.col("text").is_null() | (pl.col("text").str.len_chars() == 0)
    drop(EMPTY_TRANSCRIPT, joined.filter(empty).get_column("segment_id"))
    joined = joined.filter(~empty)

    joined = joined.with_columns(
        (pl.col("token_count") / TOKENS_PER_SECOND).alias("audio_seconds"),
        pl.col("text").str.count_matches(r"\S+").alias("_words"),
    ).with_columns((pl.col("text").str.len_chars() / pl.col("audio_seconds")).alias("_cps"))
    too_many_words = pl.col("_words") > pl.col("token_count")
    drop(MORE_WORDS_THAN_TOKENS, joined.filter(too_many_words).get_column("segment_id"))
    joined = joined.filter(~too_many_words)
    too_slow = pl.col("_cps") < config.min_chars_per_second
    drop(TOO_FEW_CHARS_PER_SECOND, joined.filter(too_slow).get_column("segment_id"))
    joined = joined.filter(~too_slow)
    too_fast = pl.col("_cps") > config.max_chars_per_second
    drop(TOO_MANY_CHARS_PER_SECOND, joined.filter(too_fast).get_column("segment_id"))
    joined = joined.filter(~too_fast)

    if joined.height == 0:
        records = _empty_records()
    else:
        records = joined.select(
            "segment_id",
            pl.col("meta_dataset").fill_null(labels["dataset"]).alias("dataset"),
            pl.col("meta_language").fill_null(labels["language"]).alias("language"),
            "speaker",
            "text",
            "audio_seconds",
            "token_count",
            tokens_to_lists(joined.get_column("neucodec_tokens")),
        )
    return PairingResult(
        records=records,
        token_rows=tokens.height + dup_in_tokens.height,
        metadata_rows=metadata_rows,
        dropped=dropped,
        dropped_examples=examples,
    )
