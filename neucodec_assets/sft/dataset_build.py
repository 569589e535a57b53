"""The work of `sft_dataset`, without Dagster: split, manifest, totals, charts, card and optional packing.

It walks the shards' index files one at a time and keeps only per-shard partial totals and histogram counts,
so memory does not grow with the number of segments. Records are read only where needed: packing reads each
shard's records once, and a shard filed under other split settings is filed again. Each build writes a new
version and publishes it by replacing the card (neucodec_assets/sft/publish.py).
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
from neucodec_assets.sft.publish import Publication, new_version, publish_card
from neucodec_assets.sft.shard_records import refile_shard_records, split_provenance
from neucodec_assets.sft.split import (
    DEFAULT_VALIDATION_FRACTION,
    SPLITS,
    VALIDATION,
    assign_split,
)
from neucodec_assets.sft.stats import combine_overall, combine_totals, partial_totals
from resources.bucket.base import Bucket

SPLIT_SCHEMA = pa.schema([("shard", pa.large_string()), ("segment_id", pa.large_string()), ("split", pa.large_string())])
BLOCKS_PER_PART = 1_024  # packed blocks per part file: parts a reader can stream, few enough to list
HOURS_CHART = "hours_per_language.png"
DURATION_CHART = "clip_duration_histogram.png"


@dataclass
class DatasetSettings:
    """How the dataset is split and packed."""

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
    card: str
    keys: dict[str, str]
    publication: Publication
    packed: dict[str, Any] | None = None
    packed_parts: dict[str, list[str]] = field(default_factory=dict)
    seconds: float = 0.0


class _PackedWriter:
    """Packs one split and uploads a part file of the version every `blocks_per_part` blocks."""

    def __init__(self, bucket: Bucket, layout: SftLayout, version: str, split: str, settings: DatasetSettings,
                 tmp: Path) -> None:
        self.bucket, self.layout, self.version, self.split, self.tmp = bucket, layout, version, split, tmp
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
        key = self.layout.packed_key(self.version, self.split, len(self.keys))
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


def read_shard_index(bucket: Bucket, layout: SftLayout, shard: str, index_key: str, settings: DatasetSettings,
                     sizes: dict[str, int]) -> tuple[pl.DataFrame, dict[str, Any]]:
    """The shard's index with its `split` under the current settings, and its provenance; records filed under
    other settings are filed again first, so the split folders always agree with the split file."""
    data = bucket.read_bytes(index_key)
    provenance, index = read_provenance(data), read_frame(data)
    split = assign_split(index, settings.validation_fraction, settings.split_seed)
    if "split" not in index.columns or index.get_column("split").to_list() != split.to_list():
        sizes.update(refile_shard_records(bucket, layout, shard, index, provenance, split,
                                          split_provenance(settings.validation_fraction, settings.split_seed)))
    return index.drop("split", strict=False).with_columns(split), provenance


def _split_table(shard: str, index: pl.DataFrame) -> pa.Table:
    """The shard's rows of the split file, which records every segment's side for provenance."""
    return pa.table(
        {
            "shard": pa.array([shard] * index.height, pa.large_string()),
            "segment_id": index.get_column("segment_id").to_arrow().cast(pa.large_string()),
            "split": index.get_column("split").to_arrow().cast(pa.large_string()),
        },
        schema=SPLIT_SCHEMA,
    )


@dataclass
class _Tally:
    """What the walk over the shards keeps: small per-shard sums, never the segments themselves."""

    partials: list[pl.DataFrame] = field(default_factory=list)
    manifest_rows: list[dict[str, Any]] = field(default_factory=list)
    histogram: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    dropped: dict[str, int] = field(default_factory=lambda: {reason: 0 for reason in DROP_REASONS})
    tokenizers: set[str | None] = field(default_factory=set)

    def add(self, shard: str, index: pl.DataFrame, provenance: dict[str, Any], layout: SftLayout,
            sizes: dict[str, int]) -> None:
        """Count one shard's segments, durations, drops and tokenizer, and add its manifest row."""
        self.tokenizers.add(provenance.get("tokenizer"))
        for reason, count in (provenance.get("dropped") or {}).items():
            self.dropped[reason] = self.dropped.get(reason, 0) + int(count)
        partial = partial_totals(index, ["language", "dataset", "split"])
        self.partials.append(partial)
        counts = duration_histogram(index.get_column("audio_seconds").to_numpy())
        self.histogram = counts if self.histogram.size == 0 else self.histogram + counts
        total = combine_overall(partial)
        keys = {name: layout.records_key(shard, name) for name in set(index.get_column("split").to_list())}
        self.manifest_rows.append(
            {
                "shard": shard,
                **{f"{name}_key": keys.get(name) for name in SPLITS},
                "records_bytes": sum(sizes.get(key, 0) for key in keys.values()),
                "segments": int(total["segments"]),
                "validation_segments": index.filter(pl.col("split") == VALIDATION).height,
                "hours": float(total["hours"]),
                "speech_tokens": int(total["speech_tokens"]),
                "training_tokens": total.get("training_tokens"),
                "tokenizer": provenance.get("tokenizer"),
            }
        )

    def tokenizer_list(self) -> list[str | None]:
        """The tokenizers seen, None (no input_ids) last."""
        return sorted(self.tokenizers, key=lambda t: (t is None, str(t)))


def _check_packable(shard: str, provenance: dict[str, Any], tokenizers: set[str | None]) -> None:
    """Packing concatenates input_ids, so every shard needs them, all from one tokenizer."""
    if provenance.get("tokenizer") is None:
        raise ValueError(
            f"packing needs input_ids, but shard {shard!r} was paired without a tokenizer: set "
            "NEUCODEC_SFT_TOKENIZER and rematerialize sft_pairs"
        )
    if len(tokenizers) > 1:
        raise ValueError(f"shards were tokenized with different tokenizers {sorted(map(str, tokenizers))}")


def _pack_shard(bucket: Bucket, layout: SftLayout, shard: str, index: pl.DataFrame,
                writers: dict[str, _PackedWriter], tmp: Path) -> None:
    """Feed each split's records of the shard, in index order, to that split's packer."""
    for split, writer in writers.items():
        expected = index.filter(pl.col("split") == split).get_column("segment_id").to_list()
        if not expected:
            continue
        path = bucket.download_to(layout.records_key(shard, split), tmp / "records.parquet")
        table = pq.read_table(path, columns=["segment_id", "input_ids"])
        path.unlink()
        if table.column("segment_id").to_pylist() != expected:
            raise ValueError(f"records and index of shard {shard!r} disagree: rematerialize sft_pairs for it")
        ids = table.column("input_ids").combine_chunks()
        offsets = np.asarray(ids.offsets, dtype=np.int64)
        values = np.asarray(ids.values, dtype=np.uint32)
        for row in range(len(expected)):
            writer.add(values[offsets[row] : offsets[row + 1]])


def _walk_shards(bucket: Bucket, layout: SftLayout, settings: DatasetSettings, version: str,
                 shards: list[tuple[str, str]], tmp: Path,
                 log: Callable[[str], None]) -> tuple[_Tally, dict[str, _PackedWriter]]:
    """One pass over the shards: tally, write the split file to `tmp` and, if asked, pack into the version."""
    sizes = dict(bucket.list_keys(f"{layout.prefix}/"))
    tally = _Tally()
    writers = ({s: _PackedWriter(bucket, layout, version, s, settings, tmp) for s in SPLITS}
               if settings.pack else {})
    with pq.ParquetWriter(tmp / "split.parquet", SPLIT_SCHEMA, compression="zstd") as split_writer:
        for number, (shard, index_key) in enumerate(shards, start=1):
            index, provenance = read_shard_index(bucket, layout, shard, index_key, settings, sizes)
            split_writer.write_table(_split_table(shard, index))
            tally.add(shard, index, provenance, layout, sizes)
            if settings.pack:
                _check_packable(shard, provenance, tally.tokenizers)
                _pack_shard(bucket, layout, shard, index, writers, tmp)
            if number % 100 == 0:
                log(f"sft_dataset: {number}/{len(shards)} shards read")
    for writer in writers.values():
        writer.finish()
    return tally, writers


@dataclass
class _Summary:
    """The dataset's totals, overall and per language, dataset and split."""

    totals: dict[str, float | int]
    by_language: pl.DataFrame
    by_dataset: pl.DataFrame
    by_split: pl.DataFrame

    @classmethod
    def of(cls, tally: _Tally) -> _Summary:
        """Combine the shards' partial totals."""
        partials = pl.concat(tally.partials, how="vertical_relaxed")
        return cls(combine_overall(partials), combine_totals(partials, "language"),
                   combine_totals(partials, "dataset"), combine_totals(partials, "split"))

    def split_segments(self) -> dict[str, int]:
        """Segments per split, for the splits that have any."""
        return {row["split"]: int(row["segments"]) for row in self.by_split.iter_rows(named=True) if row["segments"]}


def _upload_tables(bucket: Bucket, layout: SftLayout, version: str, tmp: Path, tally: _Tally, summary: _Summary,
                   manifest: pl.DataFrame, charts: dict[str, bytes], shards: int) -> dict[str, str]:
    """Upload the version's split file, manifest, totals and charts (each one PUT); returns their keys and the
    card's."""
    keys = {
        "manifest": layout.version_key(version, "manifest.parquet"),
        "split": layout.version_key(version, "split.parquet"),
        "totals": layout.version_key(version, "totals.json"),
        "card": layout.card_key,
    }
    bucket.upload_file(tmp / "split.parquet", keys["split"])
    manifest.write_parquet(tmp / "manifest.parquet")
    bucket.upload_file(tmp / "manifest.parquet", keys["manifest"])
    totals_doc = {
        "overall": summary.totals,
        "by_language": summary.by_language.to_dicts(),
        "by_dataset": summary.by_dataset.to_dicts(),
        "by_split": summary.by_split.to_dicts(),
        "dropped": tally.dropped,
        "shards": shards,
    }
    bucket.put_bytes(keys["totals"], json.dumps(totals_doc, indent=1, default=str).encode())
    for name, png in charts.items():
        keys[name] = layout.chart_key(version, name)
        bucket.put_bytes(keys[name], png)
    return keys


def _packing_figures(writers: dict[str, _PackedWriter],
                     settings: DatasetSettings) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The packing figures and the parts per split."""
    parts = {split: writer.keys for split, writer in writers.items()}
    stats = [writer.packer.stats for writer in writers.values()]
    blocks, tokens = sum(s.blocks for s in stats), sum(s.tokens for s in stats)
    packed: dict[str, Any] = {
        "block_size": settings.block_size,
        "blocks": blocks,
        "tokens": tokens,
        "documents": sum(s.documents for s in stats),
        "oversized_documents": sum(s.oversized_documents for s in stats),
        "fill_ratio": tokens / (blocks * settings.block_size) if blocks else 0.0,
    }
    for split, writer in writers.items():
        packed[f"{split}_blocks"] = writer.packer.stats.blocks
    return packed, parts


def _card(layout: SftLayout, settings: DatasetSettings, version: str, tally: _Tally, summary: _Summary,
          shards: int, keys: dict[str, str], packed: dict[str, Any] | None, packed_parts: dict[str, list[str]],
          quality: pl.DataFrame | None) -> str:
    """The card's text, with paths relative to the card's folder."""

    def relative(key: str) -> str:
        return key.removeprefix(layout.prefix + "/")

    return render_card(
        CardInputs(
            totals=summary.totals,
            by_language=summary.by_language,
            by_dataset=summary.by_dataset,
            by_split=summary.by_split,
            shards=shards,
            validation_fraction=settings.validation_fraction,
            split_seed=settings.split_seed,
            tokenizer=", ".join(str(t) for t in tally.tokenizer_list() if t) or None,
            dropped=tally.dropped,
            records_paths={s: layout.records_glob(s) for s in SPLITS if s in summary.split_segments()},
            packed=packed,
            packed_paths={s: layout.packed_glob(version, s) for s, parts in packed_parts.items() if parts},
            split_path=relative(keys["split"]),
            quality=quality,
            version=version,
            version_path=relative(layout.version_prefix(version)),
            chart_paths={
                "Hours per language": relative(keys[HOURS_CHART]),
                "Clip durations": relative(keys[DURATION_CHART]),
            },
        )
    )


def build_dataset(
    bucket: Bucket,
    layout: SftLayout,
    settings: DatasetSettings,
    log: Callable[[str], None] = lambda message: None,
    quality: pl.DataFrame | None = None,
) -> DatasetOutcome:
    """Write a new version (split, manifest, totals, charts and packed blocks) under the SFT prefix, then publish
    it: the card that names it replaces the previous one."""
    start = time.perf_counter()
    version = new_version()
    shards = index_shards(bucket, layout)
    if not shards:
        raise ValueError(
            f"no SFT records under {bucket.url}/{layout.index_prefix}: materialize sft_pairs for some shards first"
        )
    with tempfile.TemporaryDirectory(prefix="sft-dataset-") as tmp_name:
        tally, writers = _walk_shards(bucket, layout, settings, version, shards, Path(tmp_name), log)
        summary = _Summary.of(tally)
        manifest = pl.DataFrame(tally.manifest_rows, infer_schema_length=None)
        charts = {HOURS_CHART: hours_per_language_png(summary.by_language),
                  DURATION_CHART: duration_histogram_png(tally.histogram)}
        keys = _upload_tables(bucket, layout, version, Path(tmp_name), tally, summary, manifest, charts,
                              len(shards))
    packed, packed_parts = _packing_figures(writers, settings) if settings.pack else (None, {})
    card = _card(layout, settings, version, tally, summary, len(shards), keys, packed, packed_parts, quality)
    publication = publish_card(bucket, layout, version, card)  # last: every file the card names exists
    log(f"sft_dataset: published version {version}"
        + (f", kept {publication.replaced} until the next build" if publication.replaced else "")
        + (f", deleted {publication.deleted_keys} files of older builds" if publication.deleted_keys else ""))
    return DatasetOutcome(
        shards=len(shards),
        totals=summary.totals,
        by_language=summary.by_language,
        by_dataset=summary.by_dataset,
        by_split=summary.by_split,
        manifest=manifest,
        dropped=tally.dropped,
        tokenizers=tally.tokenizer_list(),
        card=card,
        keys=keys,
        publication=publication,
        packed=packed,
        packed_parts=packed_parts,
        seconds=time.perf_counter() - start,
    )
