"""The work of `sft_dataset`, without Dagster: manifest, split, totals, charts, card and optional packing.

It walks the shards' index files one at a time and keeps only per-shard partial totals and histogram counts,
so memory does not grow with the number of segments. Packing (optional) reads each shard's records once.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from neucodec_assets.sft.card import CardInputs, render_card
from neucodec_assets.sft.charts import (
    duration_histogram,
    duration_histogram_png,
    hours_per_language_png,
)
from neucodec_assets.sft.layout import SftLayout
from neucodec_assets.sft.packing import (
    DEFAULT_BLOCK_SIZE,
    PackedBlock,
    Packer,
    blocks_to_arrow,
)
from neucodec_assets.sft.pairing import DROP_REASONS
from neucodec_assets.sft.parquet_io import read_frame, read_provenance
from neucodec_assets.sft.split import (
    DEFAULT_VALIDATION_FRACTION,
    TRAIN,
    VALIDATION,
    assign_split,
)
from neucodec_assets.sft.stats import combine_overall, combine_totals, partial_totals
from resources.bucket.base import Bucket

SPLITS = (TRAIN, VALIDATION)
SPLIT_SCHEMA = pa.schema([("shard", pa.large_string()), ("segment_id", pa.large_string()), ("split", pa.large_string())])
BLOCKS_PER_PART = 1_024  # ~10.5M tokens per packed part file at the default block size
HOURS_CHART = "hours_per_language.png"
DURATION_CHART = "clip_duration_histogram.png"


@dataclass
class DatasetSettings:
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION
    split_seed: str = ""
    pack: bool = False
    block_size: int = DEFAULT_BLOCK_SIZE
    blocks_per_part: int = BLOCKS_PER_PART


@dataclass
class DatasetOutcome:
    """Everything the materialization reports."""

    shards: int
    totals: dict[str, float | int]
    by_language: pl.DataFrame
    by_dataset: pl.DataFrame
    by_split: pl.DataFrame
    manifest: pl.DataFrame
    dropped: dict[str, int]
    tokenizers: list[str | None]
    charts: dict[str, bytes]
    card: str
    keys: dict[str, str]
    packed: dict[str, Any] | None = None
    packed_parts: dict[str, list[str]] = field(default_factory=dict)
    seconds: float = 0.0


class _PackedWriter:
    """Packs one split and uploads a part file every `blocks_per_part` blocks."""

    def __init__(self, bucket: Bucket, layout: SftLayout, split: str, settings: DatasetSettings, tmp: Path) -> None:
        self.bucket, self.layout, self.split, self.tmp = bucket, layout, split, tmp
        self.packer = Packer(settings.block_size)
        self.blocks_per_part = settings.blocks_per_part
        self.pending: list[PackedBlock] = []
        self.keys: list[str] = []

    def add(self, document: np.ndarray) -> None:
        block = self.packer.add(document)
        if block is not None:
            self.pending.append(block)
            if len(self.pending) >= self.blocks_per_part:
                self._flush()

    def finish(self) -> None:
        block = self.packer.finish()
        if block is not None:
            self.pending.append(block)
        if self.pending:
            self._flush()

    def _flush(self) -> None:
        key = self.layout.packed_key(self.split, len(self.keys))
        path = self.tmp / f"packed-{self.split}.parquet"
        pq.write_table(blocks_to_arrow(self.pending), path, compression="zstd", row_group_size=64)
        self.bucket.upload_file(path, key)
        path.unlink()
        self.keys.append(key)
        self.pending = []


def index_shards(bucket: Bucket, layout: SftLayout) -> list[tuple[str, str]]:
    """(shard, index key) of every shard with SFT records, sorted by shard."""
    found = []
    for key, _ in bucket.list_keys(layout.index_prefix):
        shard = layout.shard_of_index_key(key)
        if shard is not None:
            found.append((shard, key))
    return sorted(found)


def _pack_shard(bucket: Bucket, layout: SftLayout, shard: str, index: pl.DataFrame,
                writers: dict[str, _PackedWriter], tmp: Path) -> None:
    path = bucket.download_to(layout.records_key(shard), tmp / "records.parquet")
    table = pq.read_table(path, columns=["segment_id", "input_ids"])
    path.unlink()
    if table.column("segment_id").to_pylist() != index.get_column("segment_id").to_list():
        raise ValueError(f"records and index of shard {shard!r} disagree: rematerialize sft_pairs for it")
    ids = table.column("input_ids").combine_chunks()
    offsets = np.asarray(ids.offsets, dtype=np.int64)
    values = np.asarray(ids.values, dtype=np.uint32)
    for row, split in enumerate(index.get_column("split").to_list()):
        writers[split].add(values[offsets[row] : offsets[row + 1]])


def build_dataset(
    bucket: Bucket,
    layout: SftLayout,
    settings: DatasetSettings,
    log: Callable[[str], None] = lambda message: None,
    quality: pl.DataFrame | None = None,
) -> DatasetOutcome:
    """Write manifest, split, totals, charts, card (and packed blocks) under the SFT prefix."""
    start = time.perf_counter()
    shards = index_shards(bucket, layout)
    if not shards:
        raise ValueError(
            f"no SFT records under {bucket.url}/{layout.index_prefix}: materialize sft_pairs for some shards first"
        )
    sizes = dict(bucket.list_keys(f"{layout.prefix}/"))
    partials: list[pl.DataFrame] = []
    manifest_rows: list[dict[str, Any]] = []
    histogram = np.zeros(0, dtype=np.int64)
    dropped = {reason: 0 for reason in DROP_REASONS}
    tokenizers: set[str | None] = set()
    with tempfile.TemporaryDirectory(prefix="sft-dataset-") as tmp_name:
        tmp = Path(tmp_name)
        split_path = tmp / "split.parquet"
        writers = {s: _PackedWriter(bucket, layout, s, settings, tmp) for s in SPLITS} if settings.pack else {}
        with pq.ParquetWriter(split_path, SPLIT_SCHEMA, compression="zstd") as split_writer:
            for number, (shard, index_key) in enumerate(shards, start=1):
                data = bucket.read_bytes(index_key)
                provenance = read_provenance(data)
                tokenizers.add(provenance.get("tokenizer"))
                for reason, count in (provenance.get("dropped") or {}).items():
                    dropped[reason] = dropped.get(reason, 0) + int(count)
                index = read_frame(data)
                index = index.with_columns(assign_split(index, settings.validation_fraction, settings.split_seed))
                split_writer.write_table(
                    pa.table(
                        {
                            "shard": pa.array([shard] * index.height, pa.large_string()),
                            "segment_id": index.get_column("segment_id").to_arrow().cast(pa.large_string()),
                            "split": index.get_column("split").to_arrow().cast(pa.large_string()),
                        },
                        schema=SPLIT_SCHEMA,
                    )
                )
                partial = partial_totals(index, ["language", "dataset", "split"])
                partials.append(partial)
                counts = duration_histogram(index.get_column("audio_seconds").to_numpy())
                histogram = counts if histogram.size == 0 else histogram + counts
                shard_total = combine_overall(partial)
                validation = index.filter(pl.col("split") == VALIDATION)
                manifest_rows.append(
                    {
                        "shard": shard,
                        "records_key": layout.records_key(shard) if index.height else None,
                        "records_bytes": sizes.get(layout.records_key(shard), 0),
                        "segments": int(shard_total["segments"]),
                        "validation_segments": validation.height,
                        "hours": float(shard_total["hours"]),
                        "speech_tokens": int(shard_total["speech_tokens"]),
                        "training_tokens": shard_total.get("training_tokens"),
                        "tokenizer": provenance.get("tokenizer"),
                    }
                )
                if settings.pack:
                    if provenance.get("tokenizer") is None:
                        raise ValueError(
                            f"packing needs input_ids, but shard {shard!r} was paired without a tokenizer: set "
                            "NEUCODEC_SFT_TOKENIZER and rematerialize sft_pairs"
                        )
                    if len(tokenizers) > 1:
                        raise ValueError(f"shards were tokenized with different tokenizers {sorted(map(str, tokenizers))}")
                    if index.height:
                        _pack_shard(bucket, layout, shard, index, writers, tmp)
                if number % 100 == 0:
                    log(f"sft_dataset: {number}/{len(shards)} shards read")
        for writer in writers.values():
            writer.finish()

        all_partials = pl.concat(partials, how="vertical_relaxed")
        by_language = combine_totals(all_partials, "language")
        by_dataset = combine_totals(all_partials, "dataset")
        by_split = combine_totals(all_partials, "split")
        totals = combine_overall(all_partials)
        manifest = pl.DataFrame(manifest_rows, infer_schema_length=None)
        charts = {HOURS_CHART: hours_per_language_png(by_language), DURATION_CHART: duration_histogram_png(histogram)}

        keys = {
            "manifest": layout.meta_key("manifest.parquet"),
            "split": layout.meta_key("split.parquet"),
            "totals": layout.meta_key("totals.json"),
            "card": layout.card_key,
        }
        bucket.upload_file(split_path, keys["split"])
        manifest_path = tmp / "manifest.parquet"
        manifest.write_parquet(manifest_path)
        bucket.upload_file(manifest_path, keys["manifest"])
        totals_doc = {
            "overall": totals,
            "by_language": by_language.to_dicts(),
            "by_dataset": by_dataset.to_dicts(),
            "by_split": by_split.to_dicts(),
            "dropped": dropped,
            "shards": len(shards),
        }
        bucket.put_bytes(keys["totals"], json.dumps(totals_doc, indent=1, default=str).encode())
        for name, png in charts.items():
            keys[name] = layout.chart_key(name)
            bucket.put_bytes(keys[name], png)

    packed = None
    packed_parts: dict[str, list[str]] = {}
    if settings.pack:
        packed_parts = {split: writer.keys for split, writer in writers.items()}
        written = {key for part in packed_parts.values() for key in part}
        for key, _ in list(bucket.list_keys(layout.packed_prefix)):
            if key not in written:
                bucket.delete(key)  # parts of an earlier, larger packing
        blocks = sum(w.packer.stats.blocks for w in writers.values())
        tokens = sum(w.packer.stats.tokens for w in writers.values())
        packed = {
            "block_size": settings.block_size,
            "blocks": blocks,
            "tokens": tokens,
            "documents": sum(w.packer.stats.documents for w in writers.values()),
            "oversized_documents": sum(w.packer.stats.oversized_documents for w in writers.values()),
            "fill_ratio": tokens / (blocks * settings.block_size) if blocks else 0.0,
        }
        for split, writer in writers.items():
            packed[f"{split}_blocks"] = writer.packer.stats.blocks
    tokenizer_list = sorted(tokenizers, key=lambda t: (t is None, str(t)))
    card = render_card(
        CardInputs(
            totals=totals,
            by_language=by_language,
            by_dataset=by_dataset,
            by_split=by_split,
            shards=len(shards),
            validation_fraction=settings.validation_fraction,
            split_seed=settings.split_seed,
            tokenizer=", ".join(str(t) for t in tokenizer_list if t) or None,
            dropped=dropped,
            packed=packed,
            packed_paths={s: layout.packed_glob(s) for s, parts in packed_parts.items() if parts},
            split_path=f"{keys['split'].removeprefix(layout.prefix + '/')}",
            quality=quality,
            chart_paths={
                "Hours per language": keys[HOURS_CHART].removeprefix(layout.prefix + "/"),
                "Clip durations": keys[DURATION_CHART].removeprefix(layout.prefix + "/"),
            },
        )
    )
    bucket.put_bytes(keys["card"], card.encode())  # last: the card describes files that all exist
    return DatasetOutcome(
        shards=len(shards),
        totals=totals,
        by_language=by_language,
        by_dataset=by_dataset,
        by_split=by_split,
        manifest=manifest,
        dropped=dropped,
        tokenizers=tokenizer_list,
        charts=charts,
        card=card,
        keys=keys,
        packed=packed,
        packed_parts=packed_parts,
        seconds=time.perf_counter() - start,
    )
