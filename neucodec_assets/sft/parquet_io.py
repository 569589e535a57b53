"""Parquet reading/writing for the SFT files: plain Arrow types (large_string, large_list) that polars,
pyarrow and Hugging Face `datasets` all read, plus platform provenance in the key-value metadata."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

PROVENANCE_KEY = b"neucodec_sft"
ROW_GROUP_ROWS = 1_000  # rows per row group: readers can stream a shard file instead of loading it whole


def frame_to_arrow(frame: pl.DataFrame, provenance: dict[str, Any]) -> pa.Table:
    table = frame.to_arrow(compat_level=pl.CompatLevel.oldest())
    metadata = dict(table.schema.metadata or {})
    metadata[PROVENANCE_KEY] = json.dumps(provenance, sort_keys=True, default=str).encode()
    return table.replace_schema_metadata(metadata)


def write_parquet(frame: pl.DataFrame, path: str | Path, provenance: dict[str, Any]) -> int:
    """Write `frame` with `provenance` to `path`; returns the file size in bytes."""
    pq.write_table(frame_to_arrow(frame, provenance), path, compression="zstd", row_group_size=ROW_GROUP_ROWS)
    return Path(path).stat().st_size


def read_provenance(data: bytes | str | Path) -> dict[str, Any]:
    """The platform provenance of a parquet file ({} when it has none)."""
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    metadata = pq.read_schema(source).metadata or {}
    raw = metadata.get(PROVENANCE_KEY)
    return json.loads(raw) if raw else {}


def read_frame(data: bytes | str | Path, columns: list[str] | None = None) -> pl.DataFrame:
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    return pl.from_arrow(pq.read_table(source, columns=columns))  # type: ignore[return-value]
