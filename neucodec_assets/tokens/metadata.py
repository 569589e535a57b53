"""The per-shard figures of a tokens file and their shape as Dagster materialization metadata.

One shape for every way a shard becomes materialized (encoded here, found existing, adopted from the old fleet's
files, imported from its `neucodec_shards` table), so the UI, the demo summary and downstream code read the same
keys whichever path recorded them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from resources.bucket.base import TOKENS_PARQUET

TOKENS_ASSET_KEY = dg.AssetKey("neucodec_tokens")

# How a partition came to be materialized.
STATUS_ENCODED = "encoded"
STATUS_EXISTING = "existing"
STATUS_ADOPTED = "adopted"
STATUS_LEGACY = "legacy"

FAILED_TABLE_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn("segment_id", "string", description="segment id (tar member name without extension)"),
        dg.TableColumn("reason", "string", description="why the segment has no tokens"),
    ]
)
from gpu_executor.codec import SAMPLE_RATE, SAMPLES_PER_TOKEN

# A shard with thousands of bad segments would make one event row enormous: the table shows the first ones;
# the tokens file's own metadata always holds all of them.
MAX_FAILED_ROWS = 500


def tokens_key(prefix: str) -> str:
    """The bucket key of a shard's tokens file."""
    return f"{prefix.rstrip('/')}/{TOKENS_PARQUET}"


def audio_seconds_from_tokens(total_tokens: int) -> float:
    """Audio length implied by a token count (each token covers 320 samples at 16 kHz)."""
    return total_tokens * SAMPLES_PER_TOKEN / SAMPLE_RATE


@dataclass
class ShardFigures:
    """What the platform records about one shard's tokens file."""

    prefix: str
    status: str
    dataset: str
    language: str
    segment_count: int
    total_audio_seconds: float
    total_tokens: int
    output_key: str
    failed: Sequence[tuple[str, str]] | None = None  # None: not known (files or rows of the old fleet)
    encode_wall_seconds: float | None = None
    provenance: Mapping[str, str] = field(default_factory=dict)
    model: str | None = None
    device: str | None = None
    gpu: str | None = None
    output_uri: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def real_time_factor(self) -> float | None:
        if not self.encode_wall_seconds or self.encode_wall_seconds <= 0:
            return None
        return self.total_audio_seconds / self.encode_wall_seconds

    def to_metadata(self) -> dict[str, Any]:
        """Dagster metadata for an AssetMaterialization of this shard's partition."""
        meta: dict[str, Any] = {
            "status": self.status,
            "dataset": self.dataset,
            "language": self.language,
            "segment_count": dg.MetadataValue.int(int(self.segment_count)),
            "total_audio_seconds": dg.MetadataValue.float(round(float(self.total_audio_seconds), 3)),
            "total_audio_hours": dg.MetadataValue.float(round(float(self.total_audio_seconds) / 3600, 4)),
            "total_tokens": dg.MetadataValue.int(int(self.total_tokens)),
            "output_key": self.output_key,
        }
        if self.output_uri:
            meta["output_uri"] = dg.MetadataValue.url(self.output_uri) if self.output_uri.startswith(
                ("http://", "https://")) else dg.MetadataValue.path(self.output_uri)
        if self.failed is not None:
            failed = list(self.failed)
            meta["failed_count"] = dg.MetadataValue.int(len(failed))
            meta["failed_segments"] = dg.MetadataValue.table(
                records=[dg.TableRecord({"segment_id": sid, "reason": reason})
                         for sid, reason in failed[:MAX_FAILED_ROWS]],
                schema=FAILED_TABLE_SCHEMA,
            )
        if self.encode_wall_seconds is not None:
            meta["encode_wall_seconds"] = dg.MetadataValue.float(round(float(self.encode_wall_seconds), 3))
        rtf = self.real_time_factor
        if rtf is not None:
            meta["real_time_factor"] = dg.MetadataValue.float(round(rtf, 3))
        if self.provenance:
            meta["provenance"] = dg.MetadataValue.json(dict(self.provenance))
        if self.model:
            meta["model"] = self.model
        if self.device:
            meta["device"] = self.device
        if self.gpu:
            meta["gpu"] = self.gpu
        meta.update(self.extra)
        return meta


def metadata_value(metadata: Mapping[str, Any], key: str) -> Any:
    """The plain Python value of a recorded metadata entry (``None`` when absent)."""
    entry = metadata.get(key)
    if entry is None:
        return None
    return getattr(entry, "value", entry)


@dataclass(frozen=True)
class RecordedShard:
    """A shard's figures read back from the metadata of a `neucodec_tokens` materialization: what readers of the
    records (progress) need, without knowing the metadata's key names."""

    status: str
    dataset: str
    language: str
    audio_seconds: float
    tokens: int
    segments: int
    failed_count: int | None  # None: not known (files or rows of the old fleet)
    failed_reasons: tuple[str, ...]  # of the listed failures (the table holds the first MAX_FAILED_ROWS)
    provenance: Mapping[str, str]
    roundtrip: Mapping[str, float]  # decode round-trip means (tokens.roundtrip.FIGURES present)
    roundtrip_segments: int
    roundtrip_random: bool

    @property
    def encoding_run_id(self) -> str | None:
        """The Dagster run that wrote the tokens file (its provenance names it); None for a file made elsewhere."""
        return str(self.provenance.get("dagster_run_id") or "") or None

    @property
    def encoded_here(self) -> bool:
        """Encoded by one of this platform's runs: recorded as encoded, or recorded later as existing with a file
        one of its runs wrote (that run crashed after the upload, or the shard was run again)."""
        return self.status == STATUS_ENCODED or (self.status == STATUS_EXISTING and self.encoding_run_id is not None)


def recorded_shard(metadata: Mapping[str, Any]) -> RecordedShard:
    """ShardFigures.to_metadata read back (absent numbers are 0, absent labels `unknown`)."""
    from neucodec_assets.tokens.roundtrip import figures_from_metadata

    def number(key: str) -> float:
        value = metadata_value(metadata, key)
        return float(value) if isinstance(value, (int, float)) else 0.0

    failed_count = metadata_value(metadata, "failed_count")
    table = metadata.get("failed_segments")
    provenance = metadata_value(metadata, "provenance")
    return RecordedShard(
        status=str(metadata_value(metadata, "status") or "unknown"),
        dataset=str(metadata_value(metadata, "dataset") or "unknown"),
        language=str(metadata_value(metadata, "language") or "unknown"),
        audio_seconds=number("total_audio_seconds"), tokens=int(number("total_tokens")),
        segments=int(number("segment_count")),
        failed_count=int(failed_count) if isinstance(failed_count, (int, float)) else None,
        failed_reasons=tuple(str(row.data.get("reason", "")) for row in getattr(table, "records", None) or []),
        provenance={str(k): str(v) for k, v in provenance.items()} if isinstance(provenance, Mapping) else {},
        roundtrip=figures_from_metadata(metadata), roundtrip_segments=int(number("roundtrip_segments")),
        roundtrip_random=bool(metadata_value(metadata, "roundtrip_random_weights")),
    )
