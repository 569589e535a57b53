"""What a progress pass keeps of Dagster's records and the bucket: one row per done shard (its latest
materialization), per not-done shard's durations (its metadata.parquet), per encoding run. Flat rows, so that the
cache stores them as parquet tables."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

import dagster as dg

from neucodec_assets.tokens.metadata import recorded_shard

UNKNOWN = "unknown"
DONE, FAILED, IN_FLIGHT, PENDING = "done", "failed", "in_flight", "pending"
STATES = (DONE, FAILED, IN_FLIGHT, PENDING)


@dataclass
class DoneShard:
    """A shard's latest materialization, reduced to what progress needs."""

    key: str
    storage_id: int
    timestamp: float
    status: str
    dataset: str
    language: str
    audio_seconds: float
    tokens: int
    segments: int
    failed_count: int
    failed_reasons: str = "{}"  # JSON {kind: count} of the listed failures (the table holds the first 500)
    roundtrip: str = "{}"  # JSON of the shard's decode round-trip means, sample size and random-weights flag
    encoded_here: bool = False  # encoded by one of this platform's runs (tokens.metadata.RecordedShard)
    encoding_run_id: str | None = None  # the run that wrote the tokens file, where its provenance names one

    def reasons(self) -> dict[str, int]:
        return json.loads(self.failed_reasons or "{}")

    def roundtrip_figures(self) -> dict:
        return json.loads(self.roundtrip or "{}")


@dataclass
class ShardDuration:
    """Labels and summed `duration` of a shard's metadata.parquet (seconds None: no usable durations).

    ``problem`` set: the file could not be read this time (missing, a failed request, unreadable bytes). That is
    no fact about the shard: the row only keeps its labels from the prefix, and the next pass reads it again."""

    key: str
    dataset: str
    language: str
    seconds: float | None
    segments: int | None
    problem: str | None = None


@dataclass
class RunSpan:
    """A run that materializes `neucodec_tokens`: one GPU from start to end (end None: still running)."""

    run_id: str
    status: str
    start: float | None
    end: float | None
    updated: float


def reason_kind(reason: str) -> str:
    """`corrupt: LibsndfileError ...` -> `corrupt` (the reader writes `kind: detail`)."""
    kind = str(reason).split(":", 1)[0].strip()
    return kind or UNKNOWN


def done_shard_from_record(record: dg.EventLogRecord) -> DoneShard | None:
    """The row of a materialization of `neucodec_tokens` (read through tokens.metadata.recorded_shard)."""
    materialization = record.asset_materialization
    if materialization is None or record.partition_key is None:
        return None
    shard = recorded_shard(materialization.metadata)
    reasons = Counter(reason_kind(reason) for reason in shard.failed_reasons)
    failed_count = shard.failed_count or 0
    if failed_count > len(shard.failed_reasons):
        reasons["not listed"] += failed_count - len(shard.failed_reasons)
    return DoneShard(
        key=record.partition_key, storage_id=record.storage_id, timestamp=record.timestamp, status=shard.status,
        dataset=shard.dataset, language=shard.language, audio_seconds=shard.audio_seconds, tokens=shard.tokens,
        segments=shard.segments, failed_count=failed_count, failed_reasons=json.dumps(dict(sorted(reasons.items()))),
        roundtrip=json.dumps({**shard.roundtrip, "segments": shard.roundtrip_segments,
                              "random": shard.roundtrip_random}),
        encoded_here=shard.encoded_here, encoding_run_id=shard.encoding_run_id,
    )
