"""The progress summary: what `encoding_progress` computes, as data.

It is recorded in the asset's materialization (metadata `summary`) and written to the bucket
(`<NEUCODEC_PROGRESS_PREFIX>/progress.json`); `status --json` prints the same object. Readers (the SFT card, the
demo, `status --recorded`) get it through ``read_progress_summary`` and never parse metadata key names. The JSON
carries a ``version``: a reader refuses a version it does not know rather than misread it.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Annotated, Any

import dagster as dg
from pydantic import BaseModel, ConfigDict, PlainSerializer, field_validator

from neucodec_assets.progress import PROGRESS_ASSET_KEY, progress_prefix
from neucodec_assets.progress.records import STATES
from neucodec_assets.tokens.roundtrip import FIGURES as ROUNDTRIP_FIGURES
from resources.bucket import Bucket

SUMMARY_VERSION = 1
SUMMARY_METADATA_KEY = "summary"
SUMMARY_FILE = "progress.json"

# ISO 8601 with an explicit +00:00, as the report always wrote its times.
UtcTime = Annotated[datetime, PlainSerializer(lambda t: t.astimezone(timezone.utc).isoformat(), return_type=str)]


def utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc)


class UnsupportedSummary(ValueError):
    """A summary this code cannot read: another version, or not a summary at all."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class GroupSummary(_Frozen):
    """Progress of one language, one dataset, or all shards."""

    shards: dict[str, int] = dict.fromkeys(STATES, 0)
    hours_done: float = 0.0
    hours_encoded: float = 0.0  # of the done hours, encoded by this platform's runs (not adopted or imported)
    hours_remaining: float = 0.0  # pending and in-flight shards with known durations
    hours_remaining_estimated: float = 0.0  # plus shards without durations, at the mean of those with
    hours_failed: float = 0.0
    shards_without_duration: int = 0
    tokens: int = 0
    segments: int = 0
    failed_segments: int = 0
    failed_by_reason: dict[str, int] = {}
    throughput_hours_per_hour: float | None = None
    eta_seconds: float | None = None
    roundtrip_sums: dict[str, float] = {}  # figure -> sum over sampled segments
    roundtrip_segments: dict[str, int] = {}  # figure -> sampled segments with it
    roundtrip_random: bool = False  # some figures came from random weights
    hours_total: float = 0.0
    roundtrip_means: dict[str, float] = {}  # figure -> mean weighted by sampled segments

    @field_validator("roundtrip_sums", "roundtrip_segments", "roundtrip_means")
    @classmethod
    def _in_figure_order(cls, figures: dict) -> dict:
        """STOI first, as everywhere figures are shown (the event log stores JSON with its keys sorted)."""
        rank = {name: i for i, name in enumerate(ROUNDTRIP_FIGURES)}
        return {name: figures[name] for name in sorted(figures, key=lambda n: (rank.get(n, len(rank)), n))}

    @property
    def roundtrip_sampled(self) -> int:
        """Sampled segments behind the round-trip figures (the most of any figure)."""
        return max(self.roundtrip_segments.values(), default=0)


class ThroughputSummary(_Frozen):
    """Audio hours encoded per wall hour (and per GPU-hour) over the recent window."""

    window_start: UtcTime
    window_hours: float
    audio_hours: float
    gpu_hours: float
    audio_hours_per_wall_hour: float | None
    audio_hours_per_gpu_hour: float | None


class PassReads(_Frozen):
    """What the pass that made the summary read (the cache spares the rest)."""

    materializations: int = 0
    run_records: int = 0
    run_record_pages: int = 0
    metadata_files: int = 0
    metadata_failures: int = 0  # not cached: read again by the next pass


class ProgressSummary(_Frozen):
    version: int = SUMMARY_VERSION
    generated_at: UtcTime
    total: GroupSummary
    by_language: dict[str, GroupSummary]
    by_dataset: dict[str, GroupSummary]
    throughput: ThroughputSummary
    gpu_hours: float
    runs_active: int
    gpu_hour_price: float | None  # None: no price set, no cost shown
    cost: float | None
    cost_per_1000_hours: float | None
    hourly_audio_hours: list[tuple[UtcTime, float]]  # (hour start, audio hours encoded in it), oldest first
    notes: list[str] = []
    reads: PassReads = PassReads()

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_json(cls, data: Any) -> ProgressSummary:
        """The summary in ``data``; UnsupportedSummary for another version or a malformed object."""
        version = data.get("version") if isinstance(data, dict) else None
        if version != SUMMARY_VERSION:
            raise UnsupportedSummary(f"progress summary version {version!r}: this code reads version "
                                     f"{SUMMARY_VERSION} (refresh encoding_progress with this code)")
        try:
            return cls.model_validate(data)
        except ValueError as exc:
            raise UnsupportedSummary(f"not a progress summary of version {SUMMARY_VERSION}: {exc}") from exc


def summary_key(prefix: str) -> str:
    return f"{prefix}/{SUMMARY_FILE}"


def write_summary(bucket: Bucket, prefix: str, summary: ProgressSummary) -> str:
    """progress.json in the bucket; its key."""
    key = summary_key(prefix)
    bucket.put_bytes(key, json.dumps(summary.to_json(), indent=1).encode())
    return key


def read_progress_summary(instance: dg.DagsterInstance, bucket: Bucket | None = None) -> ProgressSummary | None:
    """The summary `encoding_progress` last recorded: from its latest materialization, else (none, or one made
    before summaries were recorded) from progress.json in ``bucket``. None when neither holds one; raises
    UnsupportedSummary for a summary of another version."""
    event = instance.get_latest_materialization_event(PROGRESS_ASSET_KEY)
    entry = event.asset_materialization.metadata.get(SUMMARY_METADATA_KEY) \
        if event is not None and event.asset_materialization is not None else None
    if entry is not None:
        return ProgressSummary.from_json(entry.value)
    if bucket is None:
        return None
    key = summary_key(progress_prefix())
    try:
        data = bucket.read_bytes(key)
    except FileNotFoundError:
        return None
    try:
        parsed = json.loads(data)
    except ValueError as exc:
        raise UnsupportedSummary(f"{bucket.url_of(key)} is not JSON: {exc}") from exc
    return ProgressSummary.from_json(parsed)
