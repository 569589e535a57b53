"""Import the old fleet's bookkeeping: completed rows of its `neucodec_shards` Postgres table become materialized
partitions of `neucodec_tokens`, with the figures the fleet recorded, so nothing it encoded is encoded again.

A completed row counts only where its tokens file is in the bucket (one HEAD per row): a row whose file is gone
(deleted, never uploaded, a shard moved) is listed, not recorded, so its shard stays missing and gets encoded.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import dagster as dg

from neucodec_assets.tokens.metadata import (
    STATUS_LEGACY,
    TOKENS_ASSET_KEY,
    ShardFigures,
    tokens_key,
)
from neucodec_assets.tokens.partitions import shards_partitions
from resources.bucket import Bucket, BucketError

LEGACY_TABLE = "neucodec_shards"
LEGACY_COLUMNS = (
    "id", "shard_prefix", "dataset", "language", "status", "segment_count", "total_audio_seconds",
    "total_tokens", "encode_wall_seconds", "output_key",
)
DEFAULT_COMPLETED_STATUS = "completed"


class LegacyImportError(RuntimeError):
    """The legacy table could not be read; the message says why (never the DSN's password)."""


@dataclass(frozen=True)
class LegacyShard:
    """One row of the legacy `neucodec_shards` table."""

    id: int
    shard_prefix: str
    dataset: str | None
    language: str | None
    status: str
    segment_count: int | None
    total_audio_seconds: float | None
    total_tokens: int | None
    encode_wall_seconds: float | None
    output_key: str | None

    def figures(self) -> ShardFigures:
        prefix = self.shard_prefix.strip("/")
        return ShardFigures(
            prefix=prefix,
            status=STATUS_LEGACY,
            dataset=self.dataset or "unknown",
            language=self.language or "unknown",
            segment_count=int(self.segment_count or 0),
            total_audio_seconds=float(self.total_audio_seconds or 0.0),
            total_tokens=int(self.total_tokens or 0),
            encode_wall_seconds=float(self.encode_wall_seconds) if self.encode_wall_seconds else None,
            output_key=self.output_key or tokens_key(prefix),
            extra={"legacy_id": dg.MetadataValue.int(int(self.id)), "source": f"legacy table {LEGACY_TABLE}"},
        )


@dataclass
class LegacyImportReport:
    """What an import did: rows read, partitions added, materializations recorded, rows skipped and why
    (``missing``: completed rows whose tokens file is not in the bucket, as (prefix, output key, reason))."""

    rows: int = 0
    completed: int = 0
    partitions_added: list[str] = field(default_factory=list)
    recorded: list[str] = field(default_factory=list)
    already_materialized: list[str] = field(default_factory=list)
    missing: list[tuple[str, str, str]] = field(default_factory=list)


def redact_dsn(dsn: str) -> str:
    """The DSN without its password, for messages."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", dsn)


def _psycopg2_dsn(dsn: str) -> str:
    # SQLAlchemy-style URLs name a driver (postgresql+psycopg2://); libpq does not understand that.
    return re.sub(r"^postgres(ql)?\+[a-z0-9_]+://", "postgresql://", dsn)


def read_legacy_shards(dsn: str, table: str = LEGACY_TABLE) -> list[LegacyShard]:
    """Every row of the legacy table, ordered by id."""
    import psycopg2
    from psycopg2 import sql

    try:
        conn = psycopg2.connect(_psycopg2_dsn(dsn), connect_timeout=10)
    except psycopg2.Error as exc:
        raise LegacyImportError(f"cannot connect to {redact_dsn(dsn)}: {str(exc).strip()}") from exc
    try:
        with conn.cursor() as cur:
            query = sql.SQL("SELECT {cols} FROM {table} ORDER BY id").format(
                cols=sql.SQL(", ").join(sql.Identifier(c) for c in LEGACY_COLUMNS),
                table=sql.Identifier(*table.split(".")),
            )
            try:
                cur.execute(query)
            except psycopg2.Error as exc:
                raise LegacyImportError(
                    f"cannot read table {table} ({', '.join(LEGACY_COLUMNS)}) at {redact_dsn(dsn)}: "
                    f"{str(exc).strip()}"
                ) from exc
            return [LegacyShard(*row) for row in cur.fetchall()]
    finally:
        conn.close()


def import_legacy(
    instance: dg.DagsterInstance,
    dsn: str,
    *,
    table: str = LEGACY_TABLE,
    completed_status: str = DEFAULT_COMPLETED_STATUS,
    force: bool = False,
    log: Callable[[str], None] = lambda _msg: None,
    bucket: Bucket | None = None,
) -> LegacyImportReport:
    """Record every completed legacy row whose tokens file exists in ``bucket`` (default: ``NEUCODEC_BUCKET``) as a
    materialized partition of `neucodec_tokens`; list the completed rows whose file is gone in ``missing``.

    Rows whose partition is already materialized (by an earlier import, adoption or a run) are left alone unless
    ``force``; re-running an import is therefore harmless.
    """
    if bucket is None:
        from resources.bucket import open_bucket

        bucket = open_bucket()
    rows = read_legacy_shards(dsn, table)
    report = LegacyImportReport(rows=len(rows))
    completed = [r for r in rows if str(r.status).strip().lower() == completed_status.lower()]
    report.completed = len(completed)
    partitions_name = shards_partitions.name
    existing = set(instance.get_dynamic_partitions(partitions_name))
    new_keys = sorted({r.shard_prefix.strip("/") for r in completed} - existing)
    if new_keys:
        instance.add_dynamic_partitions(partitions_name, new_keys)
        report.partitions_added = new_keys
    materialized = set() if force else set(instance.get_materialized_partitions(TOKENS_ASSET_KEY))
    for row in completed:
        figures = row.figures()
        if figures.prefix in materialized:
            report.already_materialized.append(figures.prefix)
            continue
        key = figures.output_key
        if key.startswith(f"{bucket.url.rstrip('/')}/"):  # a full URL of this bucket
            key = key[len(bucket.url.rstrip("/")) + 1:]
        try:
            bucket.head(key)
        except (FileNotFoundError, BucketError) as exc:
            reason = "not in the bucket" if isinstance(exc, FileNotFoundError) else f"cannot be checked: {exc}"
            report.missing.append((figures.prefix, figures.output_key, reason))
            log(f"not recorded {figures.prefix}: {bucket.url}/{figures.output_key} {reason}")
            continue
        instance.report_runless_asset_event(
            dg.AssetMaterialization(
                asset_key=TOKENS_ASSET_KEY, partition=figures.prefix, metadata=figures.to_metadata(),
                description=f"imported from the legacy {table} table (row {row.id})",
            )
        )
        materialized.add(figures.prefix)
        report.recorded.append(figures.prefix)
        log(f"recorded {figures.prefix}: {figures.segment_count} segments, {figures.total_tokens} tokens")
    return report
