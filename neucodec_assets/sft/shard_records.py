"""The work of `sft_pairs` for one shard, without Dagster: read, pair, add input_ids, write records + index.

The records file is the product; the small index file beside it (segment ids, labels, durations, token counts,
drop counts in its metadata) lets `sft_dataset` total and split thousands of shards without downloading tokens.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl

from neucodec_assets.sft.layout import SftLayout
from neucodec_assets.sft.pairing import PairingConfig, PairingResult, pair_shard
from neucodec_assets.sft.parquet_io import read_frame, write_parquet
from neucodec_assets.sft.training_ids import TrainingIdsBuilder
from neucodec_assets.tokens.metadata import tokens_key
from resources.bucket.base import METADATA_PARQUET, Bucket
from resources.tokens_file import TokensFileError, read_tokens_file

INDEX_COLUMNS = ("segment_id", "dataset", "language", "speaker", "audio_seconds", "token_count", "input_ids_count")


@dataclass
class ShardRecordsOutcome:
    """What was written for one shard, for the materialization metadata."""

    shard: str
    records_key: str | None  # None: every segment was dropped, no records file
    index_key: str
    pairing: PairingResult
    records_bytes: int
    speech_tokens: int
    training_tokens: int | None
    hours: float
    tokenizer: str | None
    had_metadata: bool
    seconds: float
    by_language: dict[str, int] = field(default_factory=dict)
    by_dataset: dict[str, int] = field(default_factory=dict)


def index_frame(records: pl.DataFrame) -> pl.DataFrame:
    """The light columns of the records; input_ids_count is null without a tokenizer."""
    count = (
        pl.col("input_ids").list.len().cast(pl.Int64)
        if "input_ids" in records.columns
        else pl.lit(None, dtype=pl.Int64)
    )
    return records.select(
        "segment_id", "dataset", "language", "speaker", "audio_seconds", "token_count", count.alias("input_ids_count")
    )


def read_shard_inputs(bucket: Bucket, shard: str) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """The shard's tokens frame and its metadata frame (None when the shard has no metadata.parquet)."""
    key = tokens_key(shard)
    try:
        tokens, _ = read_tokens_file(bucket.read_bytes(key))
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"shard {shard!r} has no tokens file at {bucket.url}/{key}: materialize neucodec_tokens for it first"
        ) from exc
    except TokensFileError as exc:
        raise ValueError(f"tokens file {bucket.url}/{key} is unreadable: {exc}") from exc
    metadata_key = f"{shard.rstrip('/')}/{METADATA_PARQUET}"
    metadata = read_frame(bucket.read_bytes(metadata_key)) if bucket.exists(metadata_key) else None
    return tokens, metadata


def write_shard_records(
    bucket: Bucket,
    shard: str,
    layout: SftLayout,
    config: PairingConfig,
    builder: TrainingIdsBuilder | None = None,
    tokenizer_source: str | None = None,
) -> ShardRecordsOutcome:
    """Pair one shard and upload `{prefix}/{shard}.parquet` and its index (each written locally, then one PUT)."""
    start = time.perf_counter()
    tokens, metadata = read_shard_inputs(bucket, shard)
    result = pair_shard(shard, tokens, metadata, config)
    records = result.records
    if builder is not None:
        records = records.with_columns(builder.column(records))
        result.records = records
    index = index_frame(records)
    training_tokens = int(index.get_column("input_ids_count").sum()) if builder is not None else None
    provenance: dict[str, Any] = {
        "shard": shard,
        "source": f"{bucket.url}/{tokens_key(shard)}",
        "tokenizer": tokenizer_source,
        "pairing": {
            "text_column": config.text_column,
            "shard_layout": config.shard_layout,
            "min_chars_per_second": config.min_chars_per_second,
            "max_chars_per_second": config.max_chars_per_second,
        },
        "token_rows": result.token_rows,
        "metadata_rows": result.metadata_rows,
        "had_metadata": metadata is not None,
        "kept": result.kept,
        "dropped": result.dropped,
        "created_at": datetime.now(timezone.utc).isoformat(),
    }
    if builder is not None:
        provenance["speech_offset"] = builder.layout.speech_offset
        provenance["unknown_speaker"] = builder.unknown_speaker
    records_key, index_key = layout.records_key(shard), layout.index_key(shard)
    with tempfile.TemporaryDirectory(prefix="sft-") as tmp:
        records_path, index_path = Path(tmp) / "records.parquet", Path(tmp) / "index.parquet"
        write_parquet(index, index_path, provenance)
        if records.height:
            records_bytes = write_parquet(records, records_path, provenance)
            bucket.upload_file(records_path, records_key)
        else:
            # No file rather than an empty one: `datasets` cannot read a parquet file without rows.
            records_bytes = 0
            bucket.delete(records_key)
        bucket.upload_file(index_path, index_key)  # last: sft_dataset only sees shards whose records exist

    def counts(column: str) -> dict[str, int]:
        grouped = index.group_by(column).len().sort("len", descending=True)
        return {str(k): int(v) for k, v in grouped.iter_rows()}

    return ShardRecordsOutcome(
        shard=shard,
        records_key=records_key if records.height else None,
        index_key=index_key,
        pairing=result,
        records_bytes=records_bytes,
        speech_tokens=int(index.get_column("token_count").sum()),
        training_tokens=training_tokens,
        hours=float(index.get_column("audio_seconds").sum()) / 3600,
        tokenizer=tokenizer_source,
        had_metadata=metadata is not None,
        seconds=time.perf_counter() - start,
        by_language=counts("language"),
        by_dataset=counts("dataset"),
    )
