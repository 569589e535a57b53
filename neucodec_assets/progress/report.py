"""Fleet progress from what Dagster already stores: the old fleet's status script, without its tracking tables.

Sources, all of them Dagster's own records:
- shard states: the partitions of `shards` and the asset's partition status cache (the UI's partition bar: done,
  failed, in flight), updated incrementally by Dagster itself;
- done shards' figures: the latest materialization of each partition of `neucodec_tokens` (ShardFigures metadata);
- GPU time: the run records of runs that materialize `neucodec_tokens` (one GPU per run, start to end);
- remaining hours: `metadata.parquet` durations of shards not done yet (the bucket; only those shards are read).

At 100,000 shards reading every materialization and run again every ten minutes would be the cost, so what was read
is kept in a cache beside the asset's outputs (`<prefix>/cache/` in the bucket): the next pass reads only events and
runs after the cache's cursors, and metadata of shards whose durations it does not know yet (at most
NEUCODEC_PROGRESS_METADATA_READS per pass; the report says when it capped). The cache is derived data: deleting it
only makes the next pass slower.

``compute_progress`` is a pure function of those inputs and an explicit ``now`` (tests drive it on synthetic
timelines); ``collect`` reads them from an instance and a bucket.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone

import dagster as dg
import polars as pl

from gpu_executor.settings import default_of, load_settings
from neucodec_assets.tokens.metadata import (
    STATUS_ENCODED,
    TOKENS_ASSET_KEY,
    metadata_value,
)
from neucodec_assets.tokens.partitions import shards_partitions
from neucodec_assets.tokens.roundtrip import FIGURES as ROUNDTRIP_FIGURES
from neucodec_assets.tokens.roundtrip import figures_from_metadata
from resources.bucket import Bucket, BucketError
from resources.bucket.base import ShardLayout

DEFAULT_CRON = default_of("progress_cron")
READ_THREADS = 16
WINDOW_SECONDS = 3600.0
HISTORY_HOURS = 48
UNKNOWN = "unknown"
EVENT_PAGE = 1000

DONE, FAILED, IN_FLIGHT, PENDING = "done", "failed", "in_flight", "pending"
STATES = (DONE, FAILED, IN_FLIGHT, PENDING)


def gpu_hour_price() -> float:
    """Price of one GPU-hour in the user's currency; 0 (default) hides the cost."""
    return load_settings().gpu_hour_price


def progress_prefix() -> str:
    return load_settings().progress_prefix.strip("/")


def metadata_reads_cap() -> int:
    return load_settings().progress_metadata_reads


# ---------------------------------------------------------------------------------------------------------------
# What is read: one row per done shard, per not-done shard's durations, per run.


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

    def reasons(self) -> dict[str, int]:
        return json.loads(self.failed_reasons or "{}")

    def roundtrip_figures(self) -> dict:
        return json.loads(self.roundtrip or "{}")


@dataclass
class ShardDuration:
    """Labels and summed `duration` of a shard's metadata.parquet (seconds None: no usable durations)."""

    key: str
    dataset: str
    language: str
    seconds: float | None
    segments: int | None


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
    """The figures a materialization of `neucodec_tokens` carries (tokens.metadata.ShardFigures)."""
    materialization = record.asset_materialization
    if materialization is None or record.partition_key is None:
        return None
    meta = materialization.metadata

    def number(key: str, kind: type = float) -> float | int:
        value = metadata_value(meta, key)
        return kind(value) if isinstance(value, (int, float)) else kind(0)

    failed_count = number("failed_count", int)
    reasons: Counter[str] = Counter()
    for row in getattr(meta.get("failed_segments"), "records", None) or []:
        reasons[reason_kind(row.data.get("reason", UNKNOWN))] += 1
    listed = sum(reasons.values())
    if failed_count > listed:
        reasons["not listed"] += failed_count - listed
    return DoneShard(
        key=record.partition_key, storage_id=record.storage_id, timestamp=record.timestamp,
        status=str(metadata_value(meta, "status") or UNKNOWN),
        dataset=str(metadata_value(meta, "dataset") or UNKNOWN),
        language=str(metadata_value(meta, "language") or UNKNOWN),
        audio_seconds=float(number("total_audio_seconds")), tokens=int(number("total_tokens", int)),
        segments=int(number("segment_count", int)), failed_count=int(failed_count),
        failed_reasons=json.dumps(dict(sorted(reasons.items()))),
        roundtrip=json.dumps({**figures_from_metadata(meta), "segments": number("roundtrip_segments", int),
                              "random": bool(metadata_value(meta, "roundtrip_random_weights"))}),
    )


# ---------------------------------------------------------------------------------------------------------------
# The cache: what earlier passes read, with their cursors.


@dataclass
class ProgressCache:
    done: dict[str, DoneShard] = field(default_factory=dict)
    event_cursor: int = 0  # storage id of the last materialization read
    durations: dict[str, ShardDuration] = field(default_factory=dict)
    runs: dict[str, RunSpan] = field(default_factory=dict)
    runs_updated: float = 0.0  # latest update time of the runs read

    _FILES = ("done", "durations", "runs")

    @staticmethod
    def _frame(rows: Iterable[object], kind: type) -> pl.DataFrame:
        rows = [asdict(r) for r in rows]
        schema = {f.name: None for f in fields(kind)}
        return pl.DataFrame(rows) if rows else pl.DataFrame({name: [] for name in schema})

    def save(self, bucket: Bucket, prefix: str) -> None:
        for name, rows, kind in (("done", self.done.values(), DoneShard),
                                 ("durations", self.durations.values(), ShardDuration),
                                 ("runs", self.runs.values(), RunSpan)):
            buffer = io.BytesIO()
            self._frame(rows, kind).write_parquet(buffer)
            bucket.put_bytes(f"{prefix}/cache/{name}.parquet", buffer.getvalue())
        cursors = {"event_cursor": self.event_cursor, "runs_updated": self.runs_updated}
        bucket.put_bytes(f"{prefix}/cache/cursors.json", json.dumps(cursors).encode())

    @classmethod
    def load(cls, bucket: Bucket, prefix: str) -> ProgressCache:
        """The cache of an earlier pass; an empty one when there is none or it cannot be read."""
        try:
            cursors = json.loads(bucket.read_bytes(f"{prefix}/cache/cursors.json"))
            tables = {name: pl.read_parquet(bucket.read_bytes(f"{prefix}/cache/{name}.parquet"))
                      for name in cls._FILES}
        except (FileNotFoundError, BucketError, OSError, ValueError, pl.exceptions.PolarsError):
            return cls()

        def rows(name: str, kind: type) -> list:
            names = {f.name for f in fields(kind)}
            return [kind(**{k: v for k, v in row.items() if k in names}) for row in tables[name].iter_rows(named=True)]

        try:
            return cls(
                done={r.key: r for r in rows("done", DoneShard)}, event_cursor=int(cursors["event_cursor"]),
                durations={r.key: r for r in rows("durations", ShardDuration)},
                runs={r.run_id: r for r in rows("runs", RunSpan)}, runs_updated=float(cursors["runs_updated"]),
            )
        except (KeyError, TypeError, ValueError):
            return cls()


# ---------------------------------------------------------------------------------------------------------------
# Reading from the instance and the bucket.


def shard_states(instance: dg.DagsterInstance, keys: Sequence[str]) -> dict[str, str]:
    """done / failed / in flight / pending per partition, from the asset's partition status cache (the same
    answer as the UI's partition bar; Dagster keeps it current incrementally)."""

    statuses = instance.get_status_by_partition(TOKENS_ASSET_KEY, list(keys), shards_partitions) or {}
    names = {dg.AssetPartitionStatus.MATERIALIZED: DONE, dg.AssetPartitionStatus.FAILED: FAILED,
             dg.AssetPartitionStatus.IN_PROGRESS: IN_FLIGHT}
    return {key: names.get(statuses.get(key), PENDING) for key in keys}


def read_new_materializations(instance: dg.DagsterInstance, cache: ProgressCache) -> int:
    """Materializations of `neucodec_tokens` after the cache's cursor, oldest first (a later one replaces an earlier
    one of the same shard). Returns how many were read."""
    count = 0
    while True:
        result = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=TOKENS_ASSET_KEY, after_storage_id=cache.event_cursor or None),
            limit=EVENT_PAGE, ascending=True,
        )
        for record in result.records:
            shard = done_shard_from_record(record)
            if shard is not None:
                cache.done[shard.key] = shard
            cache.event_cursor = max(cache.event_cursor, record.storage_id)
            count += 1
        if len(result.records) < EVENT_PAGE:
            return count


def is_tokens_run(run: dg.DagsterRun) -> bool:
    from neucodec_assets.tokens.job import neucodec_tokens_job

    return run.job_name == neucodec_tokens_job.name or TOKENS_ASSET_KEY in (run.asset_selection or ())


def read_runs(instance: dg.DagsterInstance, cache: ProgressCache) -> int:
    """Run records of `neucodec_tokens` runs updated since the cache's cursor (a minute of overlap)."""
    after = datetime.fromtimestamp(cache.runs_updated - 60, tz=timezone.utc) if cache.runs_updated else None
    records = instance.get_run_records(filters=dg.RunsFilter(updated_after=after))
    for record in records:
        updated = record.update_timestamp.timestamp()
        cache.runs_updated = max(cache.runs_updated, updated)
        if is_tokens_run(record.dagster_run):
            cache.runs[record.dagster_run.run_id] = RunSpan(
                run_id=record.dagster_run.run_id, status=record.dagster_run.status.value,
                start=record.start_time, end=record.end_time, updated=updated,
            )
    return len(records)


def read_durations(bucket: Bucket, keys: Sequence[str], threads: int = READ_THREADS) -> list[ShardDuration]:
    """Labels and summed durations of each shard's metadata.parquet (one GET each, in a thread pool)."""
    from neucodec_assets.tokens.encoding import read_shard_metadata, shard_labels

    def one(key: str) -> ShardDuration:
        meta = read_shard_metadata(bucket, key)
        dataset, language = shard_labels(bucket, key, metadata=meta)
        seconds = float(sum(meta.durations.values())) if meta.durations else None
        return ShardDuration(key, dataset, language, seconds, len(meta.durations) if meta.durations else None)

    if not keys:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(keys)))) as pool:
        return list(pool.map(one, keys))


@dataclass
class Collected:
    """Everything compute_progress needs, as read from the instance and the bucket."""

    states: dict[str, str]
    cache: ProgressCache
    notes: list[str]
    layout: ShardLayout


def collect(instance: dg.DagsterInstance, bucket: Bucket | None, cache: ProgressCache | None = None, *,
            max_reads: int | None = None, log: Callable[[str], None] = lambda _: None) -> Collected:
    """Read shard states, new materializations, new runs and the durations of not-done shards not read before."""
    cache = cache or ProgressCache()
    notes: list[str] = []
    keys = instance.get_dynamic_partitions(shards_partitions.name)
    states = shard_states(instance, keys)
    started = time.perf_counter()
    events = read_new_materializations(instance, cache)
    runs = read_runs(instance, cache)
    log(f"{len(keys)} shards; read {events} materializations and {runs} run records "
        f"in {time.perf_counter() - started:.1f} s")
    layout = bucket.layout if bucket is not None else ShardLayout.from_env()
    # Durations of done shards are no longer needed: their figures are the truth.
    cache.durations = {k: v for k, v in cache.durations.items() if states.get(k, DONE) != DONE}
    if bucket is None:
        notes.append("no bucket: remaining hours unknown")
    else:
        wanted = [k for k in keys if states[k] != DONE and k not in cache.durations]
        cap = metadata_reads_cap() if max_reads is None else max_reads
        if len(wanted) > cap:
            notes.append(f"read metadata.parquet of {cap} of {len(wanted)} unread not-done shards this pass "
                         f"(NEUCODEC_PROGRESS_METADATA_READS); remaining hours of the rest are estimated")
        started = time.perf_counter()
        for item in read_durations(bucket, wanted[:cap]):
            cache.durations[item.key] = item
        if wanted:
            log(f"read metadata.parquet of {min(cap, len(wanted))} shards in {time.perf_counter() - started:.1f} s")
    return Collected(states=states, cache=cache, notes=notes, layout=layout)


# ---------------------------------------------------------------------------------------------------------------
# The pure computation.


def overlap(start: float | None, end: float | None, lo: float, hi: float) -> float:
    """Seconds of [start, end] inside [lo, hi] (end None: up to hi)."""
    if start is None:
        return 0.0
    return max(0.0, min(end if end is not None else hi, hi) - max(start, lo))


@dataclass
class Throughput:
    """Audio hours encoded per wall hour (and per GPU-hour) over a recent window."""

    window_start: float
    window_end: float
    audio_hours: float
    gpu_hours: float

    @property
    def wall_hours(self) -> float:
        return max(0.0, self.window_end - self.window_start) / 3600

    @property
    def per_wall_hour(self) -> float | None:
        return self.audio_hours / self.wall_hours if self.wall_hours > 0 else None

    @property
    def per_gpu_hour(self) -> float | None:
        return self.audio_hours / self.gpu_hours if self.gpu_hours > 0 else None


def throughput(encoded: Iterable[tuple[float, float]], runs: Iterable[RunSpan], now: float,
               window: float = WINDOW_SECONDS) -> Throughput:
    """Over the last ``window`` seconds: audio encoded (``encoded``: (timestamp, audio seconds) of encoded shards)
    per wall hour and per GPU-hour of the runs in the window. A fleet that started inside the window is measured
    from its first run's start, not diluted over the whole window."""
    runs = list(runs)
    lo = now - window
    starts = [r.start for r in runs if r.start is not None and (r.end is None or r.end > lo) and r.start < now]
    start = max(lo, min(starts)) if starts and min(starts) > lo else lo
    audio = sum(seconds for ts, seconds in encoded if start < ts <= now)
    gpu = sum(overlap(r.start, r.end, start, now) for r in runs)
    return Throughput(window_start=start, window_end=now, audio_hours=audio / 3600, gpu_hours=gpu / 3600)


def eta_seconds(remaining_hours: float, per_wall_hour: float | None) -> float | None:
    """Seconds until the remaining hours are encoded at the current rate (None: no rate; 0: nothing left)."""
    if remaining_hours <= 0:
        return 0.0
    if not per_wall_hour or per_wall_hour <= 0:
        return None
    return remaining_hours / per_wall_hour * 3600


@dataclass
class GroupProgress:
    """Progress of one language, one dataset, or all shards."""

    shards: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATES, 0))
    hours_done: float = 0.0
    hours_encoded: float = 0.0  # of the done hours, encoded by this platform's runs (not adopted or imported)
    hours_remaining: float = 0.0  # pending and in-flight shards with known durations
    hours_remaining_estimated: float = 0.0  # plus shards without durations, at the mean of those with
    hours_failed: float = 0.0
    shards_without_duration: int = 0
    tokens: int = 0
    segments: int = 0
    failed_segments: int = 0
    failed_by_reason: dict[str, int] = field(default_factory=dict)
    throughput_hours_per_hour: float | None = None
    eta_seconds: float | None = None
    roundtrip_sums: dict[str, float] = field(default_factory=dict)  # figure -> sum over sampled segments
    roundtrip_segments: dict[str, int] = field(default_factory=dict)  # figure -> sampled segments with it
    roundtrip_random: bool = False  # some figures came from random weights

    @property
    def hours_total(self) -> float:
        return self.hours_done + self.hours_remaining_estimated + self.hours_failed

    def add_roundtrip(self, figures: Mapping) -> None:
        """Fold in one shard's round-trip means, weighted by its sampled segments."""
        segments = int(figures.get("segments") or 0)
        for name in ROUNDTRIP_FIGURES:
            if segments and isinstance(figures.get(name), (int, float)):
                self.roundtrip_sums[name] = self.roundtrip_sums.get(name, 0.0) + figures[name] * segments
                self.roundtrip_segments[name] = self.roundtrip_segments.get(name, 0) + segments
        self.roundtrip_random |= bool(segments and figures.get("random"))

    @property
    def roundtrip_means(self) -> dict[str, float]:
        return {name: self.roundtrip_sums[name] / n for name, n in self.roundtrip_segments.items() if n}

    def to_json(self) -> dict:
        data = asdict(self)
        data["hours_total"] = self.hours_total
        data["roundtrip_means"] = self.roundtrip_means
        return data


@dataclass
class ProgressReport:
    now: float
    total: GroupProgress
    by_language: dict[str, GroupProgress]
    by_dataset: dict[str, GroupProgress]
    window: Throughput
    gpu_hours: float
    runs_active: int
    gpu_hour_price: float
    hourly: list[tuple[float, float]]  # (hour start, audio hours encoded in that hour), oldest first
    notes: list[str] = field(default_factory=list)

    @property
    def cost(self) -> float | None:
        return self.gpu_hours * self.gpu_hour_price if self.gpu_hour_price > 0 else None

    @property
    def cost_per_1000_hours(self) -> float | None:
        if self.cost is None or self.total.hours_encoded <= 0:
            return None
        return self.cost / self.total.hours_encoded * 1000

    def to_json(self) -> dict:
        return {
            "generated_at": datetime.fromtimestamp(self.now, tz=timezone.utc).isoformat(),
            "total": self.total.to_json(),
            "by_language": {k: v.to_json() for k, v in self.by_language.items()},
            "by_dataset": {k: v.to_json() for k, v in self.by_dataset.items()},
            "throughput": {
                "window_start": datetime.fromtimestamp(self.window.window_start, tz=timezone.utc).isoformat(),
                "window_hours": self.window.wall_hours, "audio_hours": self.window.audio_hours,
                "gpu_hours": self.window.gpu_hours, "audio_hours_per_wall_hour": self.window.per_wall_hour,
                "audio_hours_per_gpu_hour": self.window.per_gpu_hour,
            },
            "gpu_hours": self.gpu_hours, "runs_active": self.runs_active,
            "gpu_hour_price": self.gpu_hour_price or None, "cost": self.cost,
            "cost_per_1000_hours": self.cost_per_1000_hours,
            "hourly_audio_hours": [[datetime.fromtimestamp(t, tz=timezone.utc).isoformat(), h] for t, h in self.hourly],
            "notes": self.notes,
        }


def compute_progress(states: Mapping[str, str], done: Mapping[str, DoneShard], durations: Mapping[str, ShardDuration],
                     runs: Iterable[RunSpan], now: float, *, layout: ShardLayout | None = None,
                     price: float = 0.0, window: float = WINDOW_SECONDS, notes: Sequence[str] = ()) -> ProgressReport:
    """Progress per language, per dataset and in total, from shard states (partition -> done/failed/in_flight/
    pending), done shards' figures, not-done shards' durations and the encoding runs, at time ``now``."""
    layout = layout or ShardLayout()
    runs = list(runs)
    total = GroupProgress()
    by_language: dict[str, GroupProgress] = defaultdict(GroupProgress)
    by_dataset: dict[str, GroupProgress] = defaultdict(GroupProgress)
    encoded: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)  # (axis, label) -> events
    unknown: list[tuple[str, str]] = []  # (dataset, language) of remaining shards without durations
    notes = list(notes)

    for key, state in states.items():
        figures = done.get(key)
        duration = durations.get(key)
        if figures is not None:
            dataset, language = figures.dataset, figures.language
        elif duration is not None:
            dataset, language = duration.dataset, duration.language
        else:
            parsed = layout.parse(key)
            dataset, language = parsed.get("dataset", UNKNOWN), parsed.get("language", UNKNOWN)
        groups = (total, by_language[language], by_dataset[dataset])
        if state == DONE and figures is None:
            notes.append(f"{key}: materialized but its figures were not read")
        for group in groups:
            group.shards[state] += 1
            if state == DONE and figures is not None:
                hours = figures.audio_seconds / 3600
                group.hours_done += hours
                group.hours_encoded += hours if figures.status == STATUS_ENCODED else 0.0
                group.tokens += figures.tokens
                group.segments += figures.segments
                group.failed_segments += figures.failed_count
                for kind, count in figures.reasons().items():
                    group.failed_by_reason[kind] = group.failed_by_reason.get(kind, 0) + count
                group.add_roundtrip(figures.roundtrip_figures())
            elif state == FAILED:
                if duration is not None and duration.seconds is not None:
                    group.hours_failed += duration.seconds / 3600
            elif state in (PENDING, IN_FLIGHT):
                if duration is not None and duration.seconds is not None:
                    group.hours_remaining += duration.seconds / 3600
                else:
                    group.shards_without_duration += 1
        if state in (PENDING, IN_FLIGHT) and (duration is None or duration.seconds is None):
            unknown.append((dataset, language))
        if state == DONE and figures is not None and figures.status == STATUS_ENCODED:
            event = (figures.timestamp, figures.audio_seconds)
            encoded[("language", language)].append(event)
            encoded[("dataset", dataset)].append(event)
            encoded[("total", "")].append(event)

    # Shards whose metadata has no durations (or was not read yet): the mean known shard of their language, else
    # of all shards, else nothing.
    def mean_hours(group: GroupProgress) -> float | None:
        known = group.shards[PENDING] + group.shards[IN_FLIGHT] - group.shards_without_duration
        return group.hours_remaining / known if known > 0 else None

    for group in (total, *by_language.values(), *by_dataset.values()):
        group.hours_remaining_estimated = group.hours_remaining
    overall = mean_hours(total)
    for dataset, language in unknown:
        mean = mean_hours(by_language[language]) or overall or 0.0
        for group in (total, by_language[language], by_dataset[dataset]):
            group.hours_remaining_estimated += mean

    window_rate = throughput(encoded[("total", "")], runs, now, window)
    for axis, groups in (("total", {"": total}), ("language", by_language), ("dataset", by_dataset)):
        for label, group in groups.items():
            rate = throughput(encoded[(axis, label)], runs, now, window).per_wall_hour
            group.throughput_hours_per_hour = rate
            group.eta_seconds = eta_seconds(group.hours_remaining_estimated, rate)

    first_hour = math.floor(now / 3600) * 3600 - (HISTORY_HOURS - 1) * 3600
    hourly = [0.0] * HISTORY_HOURS
    for ts, seconds in encoded[("total", "")]:
        index = int((ts - first_hour) // 3600)
        if 0 <= index < HISTORY_HOURS:
            hourly[index] += seconds / 3600

    return ProgressReport(
        now=now, total=total, by_language=dict(sorted(by_language.items())),
        by_dataset=dict(sorted(by_dataset.items())), window=window_rate,
        gpu_hours=sum(overlap(r.start, r.end, -math.inf, now) for r in runs) / 3600,
        runs_active=sum(1 for r in runs if r.start is not None and r.end is None),
        gpu_hour_price=price, hourly=[(first_hour + i * 3600, h) for i, h in enumerate(hourly)], notes=notes,
    )


def report_from(collected: Collected, now: float | None = None, price: float | None = None) -> ProgressReport:
    cache = collected.cache
    return compute_progress(
        collected.states, cache.done, cache.durations, cache.runs.values(), time.time() if now is None else now,
        layout=collected.layout, price=gpu_hour_price() if price is None else price, notes=collected.notes,
    )


# ---------------------------------------------------------------------------------------------------------------
# Rendering: text for the terminal, markdown and numbers for the UI, charts.


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds <= 0:
        return "done"
    if seconds < 60:
        return "< 1 min"
    minutes = int(round(seconds / 60))
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _rows(report: ProgressReport) -> list[tuple[str, GroupProgress]]:
    return ([("total", report.total)] + [(f"language {k}", v) for k, v in report.by_language.items()]
            + [(f"dataset {k}", v) for k, v in report.by_dataset.items()])


TABLE_HEADER = ("scope", "done", "failed", "in flight", "pending", "hours done", "hours left", "tokens",
                "failed segs", "h/hour", "ETA")


def _cells(name: str, group: GroupProgress) -> tuple[str, ...]:
    s = group.shards
    left = f"{group.hours_remaining_estimated:,.2f}" + ("~" if group.shards_without_duration else "")
    return (name, f"{s[DONE]:,}", f"{s[FAILED]:,}", f"{s[IN_FLIGHT]:,}", f"{s[PENDING]:,}",
            f"{group.hours_done:,.2f}", left, f"{group.tokens:,}", f"{group.failed_segments:,}",
            _rate(group.throughput_hours_per_hour), format_duration(group.eta_seconds))


def _footer(report: ProgressReport) -> list[str]:
    w = report.window
    span = w.wall_hours * 3600
    lines = [f"throughput over the last {format_duration(span) if span >= 60 else f'{span:.0f} s'}: "
             f"{_rate(w.per_wall_hour)} audio hours per wall hour, {_rate(w.per_gpu_hour)} per GPU-hour "
             f"({w.gpu_hours:.2f} GPU-hours in the window; runs running now: {report.runs_active})"]
    cost = ""
    if report.cost is not None:
        cost = f"; cost {report.cost:,.2f} at {report.gpu_hour_price:g} per GPU-hour"
        if report.cost_per_1000_hours is not None:
            cost += f" ({report.cost_per_1000_hours:,.2f} per 1,000 audio hours)"
    lines.append(f"GPU-hours used: {report.gpu_hours:,.2f}{cost}")
    reasons = report.total.failed_by_reason
    if reasons:
        lines.append("failed segments by reason: " + ", ".join(f"{k} {v:,}" for k, v in
                                                               sorted(reasons.items(), key=lambda kv: -kv[1])))
    if any(g.shards_without_duration for _, g in _rows(report)):
        lines.append("~: includes shards without metadata durations, estimated at the mean shard of their language")
    for label, group in sorted(report.by_language.items()):
        means = group.roundtrip_means
        if means:
            random = " (random weights: meaningless)" if group.roundtrip_random else ""
            lines.append(f"round trip {label}{random}: " + ", ".join(
                f"{name} {value:.3f}" for name, value in means.items()))
    lines.extend(f"note: {note}" for note in report.notes)
    return lines


def format_text(report: ProgressReport) -> str:
    """The terminal table of `neucodec-platform status`."""
    rows = [TABLE_HEADER] + [_cells(name, group) for name, group in _rows(report)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_HEADER))]
    lines = [f"encoding progress at {datetime.fromtimestamp(report.now, tz=timezone.utc):%Y-%m-%d %H:%M:%S} UTC"]
    for row in rows:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    return "\n".join(lines + _footer(report))


def format_markdown(report: ProgressReport, rows: Sequence[tuple[str, GroupProgress]]) -> str:
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "|".join("---" for _ in TABLE_HEADER) + "|"]
    lines += ["| " + " | ".join(_cells(name, group)) + " |" for name, group in rows]
    return "\n".join(lines)


def _key(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label) or UNKNOWN


def numeric_metadata(report: ProgressReport) -> dict[str, dg.MetadataValue]:
    """Stable numeric keys (`hours_done`, `hours_done/hi`, ...) so the UI plots each one's history."""
    meta: dict[str, dg.MetadataValue] = {}

    def put(prefix: str, group: GroupProgress, suffix: str = "") -> None:
        for state in STATES:
            meta[f"shards_{state}{suffix}"] = dg.MetadataValue.int(group.shards[state])
        meta[f"hours_done{suffix}"] = dg.MetadataValue.float(round(group.hours_done, 4))
        meta[f"hours_remaining{suffix}"] = dg.MetadataValue.float(round(group.hours_remaining_estimated, 4))
        if prefix != "dataset":
            meta[f"tokens{suffix}"] = dg.MetadataValue.int(group.tokens)
            meta[f"failed_segments{suffix}"] = dg.MetadataValue.int(group.failed_segments)
            rate = group.throughput_hours_per_hour or 0.0
            meta[f"audio_hours_per_hour{suffix}"] = dg.MetadataValue.float(round(rate, 4))
            if group.eta_seconds is not None:
                meta[f"eta_hours{suffix}"] = dg.MetadataValue.float(round(group.eta_seconds / 3600, 4))
            for name, value in group.roundtrip_means.items():
                meta[f"roundtrip_{name}{suffix}"] = dg.MetadataValue.float(round(value, 4))
            if group.roundtrip_means:
                meta[f"roundtrip_random_weights{suffix}"] = dg.MetadataValue.bool(group.roundtrip_random)
                meta[f"roundtrip_segments{suffix}"] = dg.MetadataValue.int(max(group.roundtrip_segments.values()))

    put("total", report.total)
    for label, group in report.by_language.items():
        put("language", group, f"/{_key(label)}")
    for label, group in report.by_dataset.items():
        put("dataset", group, f"/dataset/{_key(label)}")
    meta["audio_hours_per_gpu_hour"] = dg.MetadataValue.float(round(report.window.per_gpu_hour or 0.0, 4))
    meta["gpu_hours"] = dg.MetadataValue.float(round(report.gpu_hours, 4))
    meta["runs_active"] = dg.MetadataValue.int(report.runs_active)
    if report.cost is not None:
        meta["cost"] = dg.MetadataValue.float(round(report.cost, 4))
        if report.cost_per_1000_hours is not None:
            meta["cost_per_1000_hours"] = dg.MetadataValue.float(round(report.cost_per_1000_hours, 4))
    return meta


def progress_chart_png(report: ProgressReport) -> bytes:
    """Stacked bars per language: hours done, remaining (estimated) and in failed shards."""
    from neucodec_assets.charts import figure_png, plt

    labels = list(report.by_language) or ["(none)"]
    groups = [report.by_language.get(label, GroupProgress()) for label in labels]
    done = [g.hours_done for g in groups]
    left = [g.hours_remaining_estimated for g in groups]
    failed = [g.hours_failed for g in groups]
    figure, axis = plt.subplots(figsize=(7, 0.35 * max(len(labels), 3) + 1.2))
    axis.barh(labels, done, color="#3b7dd8", label="done")
    axis.barh(labels, left, left=done, color="#c9d6ea", label="remaining")
    axis.barh(labels, failed, left=[d + r for d, r in zip(done, left)], color="#d8503b", label="failed shards")
    axis.set_xlabel("audio hours")
    axis.set_title("Encoding progress per language")
    axis.legend(loc="lower right", fontsize=8)
    return figure_png(figure)


def throughput_chart_png(report: ProgressReport) -> bytes:
    """Audio hours encoded in each wall hour over the last HISTORY_HOURS hours."""
    from neucodec_assets.charts import figure_png, plt

    hours = [datetime.fromtimestamp(t, tz=timezone.utc) for t, _ in report.hourly]
    figure, axis = plt.subplots(figsize=(7, 3.2))
    axis.bar(hours, [h for _, h in report.hourly], width=1 / 24, align="edge", color="#3bb273")
    axis.set_ylabel("audio hours per wall hour")
    axis.set_title(f"Throughput, last {HISTORY_HOURS} hours (UTC)")
    figure.autofmt_xdate()
    return figure_png(figure)


CHARTS = {"progress_by_language.png": progress_chart_png, "throughput.png": throughput_chart_png}
