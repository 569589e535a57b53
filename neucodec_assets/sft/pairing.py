"""Pair a shard's tokens file with its metadata.parquet into SFT records (DESIGN.md "SFT records").

Every segment of either side ends up either as a record or counted under exactly one drop reason, so the
materialization can show where each segment went ("nothing is lost").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl
import pyarrow as pa

from gpu_executor.codec import TOKENS_PER_SECOND
from gpu_executor.settings import default_of
from resources.bucket.base import DEFAULT_SHARD_LAYOUT, ShardInfo, ShardLayout

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
    # Characters (of the stripped transcript) per second of audio: real speech lies well inside these bounds in
    # every script, so a value outside them means a transcript that does not belong to the audio.
    min_chars_per_second: float = default_of("sft_min_cps")
    max_chars_per_second: float = default_of("sft_max_cps")

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


class _Drops:
    """Counts (and a few example ids) of dropped segments per reason, filled as the filters run."""

    def __init__(self, examples_per_reason: int) -> None:
        self.counts: dict[str, int] = {reason: 0 for reason in DROP_REASONS}
        self.examples: dict[str, list[str]] = {}
        self.examples_per_reason = examples_per_reason

    def add(self, reason: str, ids: pl.Series) -> None:
        self.counts[reason] += ids.len()
        if ids.len():
            self.examples[reason] = ids.head(self.examples_per_reason).to_list()

    def filter(self, frame: pl.DataFrame, bad: pl.Expr, reason: str) -> pl.DataFrame:
        """`frame` without the rows `bad` selects, which are counted under `reason`."""
        self.add(reason, frame.filter(bad).get_column("segment_id"))
        return frame.filter(~bad)


def _tokens_columns(shard: str, tokens: pl.DataFrame) -> pl.DataFrame:
    """The tokens file's three contract columns with fixed types; a clear error when one is missing."""
    for column in ("segment_id", "neucodec_tokens", "token_count"):
        if column not in tokens.columns:
            raise ValueError(f"tokens file of {shard!r} has no {column} column; columns: {tokens.columns}")
    return tokens.select(
        pl.col("segment_id").cast(pl.String),
        pl.col("neucodec_tokens").cast(pl.Binary),
        pl.col("token_count").cast(pl.Int64),
    )


def _metadata_columns(metadata: pl.DataFrame | None, config: PairingConfig) -> pl.DataFrame:
    """The metadata in the normalized columns; no file counts as no rows, so every token row is "no metadata"."""
    if metadata is None:
        return pl.DataFrame(schema={name: pl.String for name in
                                    ("segment_id", "text", "speaker", "meta_dataset", "meta_language")})
    return _normalize_metadata(metadata, config)


def _drop_duplicate_metadata(tokens: pl.DataFrame, meta: pl.DataFrame,
                             drops: _Drops) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    """Tokens and metadata without segment ids repeated in the metadata (no one transcript can be attributed to
    them), and how many token rows that removed."""
    dup_ids = meta.filter(pl.col("segment_id").is_duplicated()).get_column("segment_id").unique(maintain_order=True)
    is_dup = pl.col("segment_id").is_in(dup_ids.implode())
    dup_in_tokens = tokens.filter(is_dup).get_column("segment_id")
    drops.add(DUPLICATE_METADATA_ROW, pl.concat([dup_in_tokens, dup_ids]).unique(maintain_order=True))
    return tokens.filter(~is_dup), meta.filter(~pl.col("segment_id").is_duplicated()), dup_in_tokens.len()


def _join_sides(tokens: pl.DataFrame, meta: pl.DataFrame, drops: _Drops) -> pl.DataFrame:
    """Segments present on both sides, in tokens-file order; those on one side only are counted."""
    drops.add(NO_METADATA_ROW, tokens.join(meta, on="segment_id", how="anti").get_column("segment_id"))
    drops.add(NO_TOKENS, meta.join(tokens, on="segment_id", how="anti").get_column("segment_id"))
    return tokens.join(meta, on="segment_id", how="inner", maintain_order="left")


def _drop_unusable(joined: pl.DataFrame, config: PairingConfig, drops: _Drops) -> pl.DataFrame:
    """Rows a model should not train on, each counted under the first reason that applies (DROP_REASONS order)."""
    bad_bytes = (pl.col("neucodec_tokens").bin.size().fill_null(-1) != pl.col("token_count") * 2) | (
        pl.col("token_count") <= 0
    )
    joined = drops.filter(joined, bad_bytes, BAD_TOKEN_BYTES)
    joined = joined.with_columns(pl.col("text").str.strip_chars())
    joined = drops.filter(joined, pl.col("text").is_null() | (pl.col("text").str.len_chars() == 0), EMPTY_TRANSCRIPT)
    joined = joined.with_columns(
        (pl.col("token_count") / TOKENS_PER_SECOND).alias("audio_seconds"),
        pl.col("text").str.count_matches(r"\S+").alias("_words"),
    ).with_columns((pl.col("text").str.len_chars() / pl.col("audio_seconds")).alias("_cps"))
    joined = drops.filter(joined, pl.col("_words") > pl.col("token_count"), MORE_WORDS_THAN_TOKENS)
    joined = drops.filter(joined, pl.col("_cps") < config.min_chars_per_second, TOO_FEW_CHARS_PER_SECOND)
    return drops.filter(joined, pl.col("_cps") > config.max_chars_per_second, TOO_MANY_CHARS_PER_SECOND)


def _records(joined: pl.DataFrame, shard: ShardInfo) -> pl.DataFrame:
    """The contract columns; a row's own metadata labels win over the shard key's."""
    if joined.height == 0:
        return _empty_records()
    return joined.select(
        "segment_id",
        pl.col("meta_dataset").fill_null(shard.dataset).alias("dataset"),
        pl.col("meta_language").fill_null(shard.language).alias("language"),
        "speaker",
        "text",
        "audio_seconds",
        "token_count",
        tokens_to_lists(joined.get_column("neucodec_tokens")),
    )


def pair_shard(
    shard: str,
    tokens: pl.DataFrame,
    metadata: pl.DataFrame | None,
    config: PairingConfig = PairingConfig(),
    examples_per_reason: int = 5,
) -> PairingResult:
    """Join one shard's tokens (segment_id, neucodec_tokens, token_count) with its metadata (None: no file)."""
    tokens = _tokens_columns(shard, tokens)
    meta = _metadata_columns(metadata, config)
    drops = _Drops(examples_per_reason)
    tokens, meta, duplicate_token_rows = _drop_duplicate_metadata(tokens, meta, drops)
    joined = _drop_unusable(_join_sides(tokens, meta, drops), config, drops)
    return PairingResult(
        records=_records(joined, ShardLayout(config.shard_layout).shard_info(shard, has_tokens=True)),
        token_rows=tokens.height + duplicate_token_rows,
        metadata_rows=0 if metadata is None else metadata.height,
        dropped=drops.counts,
        dropped_examples=drops.examples,
    )
