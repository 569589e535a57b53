"""The work of `sft_pairs` for one shard, without Dagster: read, pair, add input_ids, write records + index.

The records files (one per split the shard has rows in) are the product; the small index file beside them
(segment ids, labels, durations, token counts, split; drop counts in its metadata) lets `sft_dataset` total and
check the split of thousands of shards without downloading tokens.
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
from neucodec_assets.sft.split import DEFAULT_VALIDATION_FRACTION, SPLITS, assign_split
from neucodec_assets.sft.training_ids import TrainingIdsBuilder
from neucodec_assets.tokens.metadata import tokens_key
from resources.bucket.base import METADATA_PARQUET, Bucket
from resources.tokens_file import TokensFileError, read_tokens_file


@dataclass
class ShardRecordsOutcome:
    """What was written for one shard, for the materialization metadata."""

    shard: str
    records_keys: dict[str, str]  # split -> key, for the splits the shard has rows in (none: all dropped)
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


def split_provenance(fraction: float, seed: str) -> dict[str, Any]:
    """The split settings a shard's files were filed under, kept in their provenance."""
    return {"validation_fraction": fraction, "seed": seed}


def upload_records(bucket: Bucket, layout: SftLayout, shard: str, records: pl.DataFrame, split: pl.Series,
                   provenance: dict[str, Any], tmp: Path) -> dict[str, int]:
    """Upload each split's rows as its own file (one PUT each) and remove the files the shard no longer has;
    returns the size of every file written, by key."""
    sizes: dict[str, int] = {}
    for name in SPLITS:
        rows = records.filter(split == name)
        if rows.height:  # no file rather than an empty one: `datasets` cannot read a parquet file without rows
            key, path = layout.records_key(shard, name), tmp / f"{name}.parquet"
            sizes[key] = write_parquet(rows, path, provenance)
            bucket.upload_file(path, key)
            path.unlink()
    for name in SPLITS:
        if layout.records_key(shard, name) not in sizes:
            bucket.delete(layout.records_key(shard, name))
    unsplit = layout.unsplit_records_key(shard)
    if unsplit is not None:
        bucket.delete(unsplit)
    return sizes


def upload_index(bucket: Bucket, layout: SftLayout, shard: str, index: pl.DataFrame, provenance: dict[str, Any],
                 tmp: Path) -> str:
    """Upload the shard's index; callers do it last, as `sft_dataset` only sees shards whose records exist."""
    key, path = layout.index_key(shard), tmp / "index.parquet"
    write_parquet(index, path, provenance)
    bucket.upload_file(path, key)
    path.unlink()
    return key


def _pairing_provenance(bucket: Bucket, shard: str, config: PairingConfig, result: PairingResult,
                        had_metadata: bool, builder: TrainingIdsBuilder | None, tokenizer_source: str | None,
                        split: dict[str, Any]) -> dict[str, Any]:
    """What made the shard's records, stored in its records and index files."""
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
        "split": split,
        "token_rows": result.token_rows,
        "metadata_rows": result.metadata_rows,
        "had_metadata": had_metadata,
        "kept": result.kept,
        "dropped": result.dropped,
        "created_at": datetime.now(timezone.utc).isoformat(),
    }
    if builder is not None:
        provenance["speech_offset"] = builder.layout.speech_offset
        provenance["unknown_speaker"] = builder.unknown_speaker
    return provenance


def _counts(index: pl.DataFrame, column: str) -> dict[str, int]:
    """Segments per value of `column`, most first."""
    grouped = index.group_by(column).len().sort("len", descending=True)
    return {str(k): int(v) for k, v in grouped.iter_rows()}


def write_shard_records(
    bucket: Bucket,
    shard: str,
    layout: SftLayout,
    config: PairingConfig,
    builder: TrainingIdsBuilder | None = None,
    tokenizer_source: str | None = None,
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
    split_seed: str = "",
) -> ShardRecordsOutcome:
    """Pair one shard, file its records by split (`{prefix}/{split}/{shard}.parquet`) and upload its index."""
    start = time.perf_counter()
    tokens, metadata = read_shard_inputs(bucket, shard)
    result = pair_shard(shard, tokens, metadata, config)
    if builder is not None:
        result.records = result.records.with_columns(builder.column(result.records))
    records = result.records
    split = assign_split(records, validation_fraction, split_seed)
    index = index_frame(records).with_columns(split)
    provenance = _pairing_provenance(bucket, shard, config, result, metadata is not None, builder,
                                     tokenizer_source, split_provenance(validation_fraction, split_seed))
    with tempfile.TemporaryDirectory(prefix="sft-") as tmp:
        sizes = upload_records(bucket, layout, shard, records, split, provenance, Path(tmp))
        index_key = upload_index(bucket, layout, shard, index, provenance, Path(tmp))
    return ShardRecordsOutcome(
        shard=shard,
        records_keys={name: layout.records_key(shard, name) for name in SPLITS
                      if layout.records_key(shard, name) in sizes},
        index_key=index_key,
        pairing=result,
        records_bytes=sum(sizes.values()),
        speech_tokens=int(index.get_column("token_count").sum()),
        training_tokens=int(index.get_column("input_ids_count").sum()) if builder is not None else None,
        hours=float(index.get_column("audio_seconds").sum()) / 3600,
        tokenizer=tokenizer_source,
        had_metadata=metadata is not None,
        seconds=time.perf_counter() - start,
        by_language=_counts(index, "language"),
        by_dataset=_counts(index, "dataset"),
    )


def _stored_records(bucket: Bucket, layout: SftLayout, shard: str, tmp: Path) -> pl.DataFrame | None:
    """Every record file the shard has (split files and an unsplit one), one row per segment; None: no file."""
    keys = [layout.records_key(shard, name) for name in SPLITS] + [layout.unsplit_records_key(shard)]
    frames = []
    for key in keys:
        if key is not None and bucket.exists(key):
            path = bucket.download_to(key, tmp / "stored.parquet")
            frames.append(read_frame(path))
            path.unlink()
    if not frames:
        return None
    return pl.concat(frames, how="vertical_relaxed").unique("segment_id", keep="first", maintain_order=True)


def refile_shard_records(bucket: Bucket, layout: SftLayout, shard: str, index: pl.DataFrame,
                         provenance: dict[str, Any], split: pl.Series,
                         split_settings: dict[str, Any]) -> dict[str, int]:
    """File a shard's stored records by `split` again, when the split settings changed since it was paired (or
    its records predate split folders), so that the split folders agree with the split file; returns the sizes
    of the files written, by key."""
    provenance = {**provenance, "split": split_settings}
    with tempfile.TemporaryDirectory(prefix="sft-refile-") as tmp_name:
        tmp = Path(tmp_name)
        stored = _stored_records(bucket, layout, shard, tmp) if index.height else None
        records = index.select("segment_id").join(
            stored if stored is not None else pl.DataFrame(schema={"segment_id": pl.String}),
            on="segment_id", how="inner", maintain_order="left",
        )
        if records.height != index.height:
            raise ValueError(f"records and index of shard {shard!r} disagree: rematerialize sft_pairs for it")
        sizes = upload_records(bucket, layout, shard, records, split, provenance, tmp)
        upload_index(bucket, layout, shard, index.drop("split", strict=False).with_columns(split), provenance, tmp)
    return sizes
