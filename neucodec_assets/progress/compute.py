"""The arithmetic of progress: a pure function of shard states, done shards' figures, not-done shards' durations,
the encoding runs and an explicit ``now`` (tests drive it on synthetic timelines), into a ProgressSummary."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from neucodec_assets.progress.records import (
    DONE,
    FAILED,
    IN_FLIGHT,
    PENDING,
    STATES,
    UNKNOWN,
    DoneShard,
    RunSpan,
    ShardDuration,
)
from neucodec_assets.progress.summary import (
    GroupSummary,
    PassReads,
    ProgressSummary,
    ThroughputSummary,
    utc,
)
from neucodec_assets.tokens.metadata import STATUS_ENCODED
from neucodec_assets.tokens.roundtrip import FIGURES as ROUNDTRIP_FIGURES
from resources.bucket import ShardLayout

WINDOW_SECONDS = 3600.0
HISTORY_HOURS = 48


def overlap(start: float | None, end: float | None, lo: float, hi: float) -> float:
    """Seconds of [start, end] inside [lo, hi] (end None: up to hi)."""
    if start is None:
        return 0.0
    return max(0.0, min(end if end is not None else hi, hi) - max(start, lo))


@dataclass(frozen=True)
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

    def summary(self) -> ThroughputSummary:
        return ThroughputSummary(window_start=utc(self.window_start), window_hours=self.wall_hours,
                                 audio_hours=self.audio_hours, gpu_hours=self.gpu_hours,
                                 audio_hours_per_wall_hour=self.per_wall_hour,
                                 audio_hours_per_gpu_hour=self.per_gpu_hour)


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


def encoded_at(shard: DoneShard, runs: Mapping[str, RunSpan]) -> float:
    """When a shard encoded here was encoded: its materialization, or for one recorded later as existing the end
    of the run that wrote its file, when that is earlier (a crashed run's shard, or a done shard run again, does not
    count in a later hour's throughput)."""
    run = runs.get(shard.encoding_run_id or "") if shard.status != STATUS_ENCODED else None
    if run is not None and run.end is not None:
        return min(shard.timestamp, run.end)
    return shard.timestamp


@dataclass
class _Tally:
    """One group's sums while the shards are counted; ``summary`` freezes them."""

    shards: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATES, 0))
    hours_done: float = 0.0
    hours_encoded: float = 0.0
    hours_remaining: float = 0.0
    hours_failed: float = 0.0
    shards_without_duration: int = 0
    tokens: int = 0
    segments: int = 0
    failed_segments: int = 0
    failed_by_reason: dict[str, int] = field(default_factory=dict)
    roundtrip_sums: dict[str, float] = field(default_factory=dict)
    roundtrip_segments: dict[str, int] = field(default_factory=dict)
    roundtrip_random: bool = False
    hours_remaining_estimated: float = 0.0

    def add_done(self, shard: DoneShard) -> None:
        hours = shard.audio_seconds / 3600
        self.hours_done += hours
        self.hours_encoded += hours if shard.encoded_here else 0.0
        self.tokens += shard.tokens
        self.segments += shard.segments
        self.failed_segments += shard.failed_count
        for kind, count in shard.reasons().items():
            self.failed_by_reason[kind] = self.failed_by_reason.get(kind, 0) + count
        figures = shard.roundtrip_figures()
        segments = int(figures.get("segments") or 0)
        for name in ROUNDTRIP_FIGURES:  # weighted by the shard's sampled segments
            if segments and isinstance(figures.get(name), (int, float)):
                self.roundtrip_sums[name] = self.roundtrip_sums.get(name, 0.0) + figures[name] * segments
                self.roundtrip_segments[name] = self.roundtrip_segments.get(name, 0) + segments
        self.roundtrip_random |= bool(segments and figures.get("random"))

    def known_not_done(self) -> int:
        return self.shards[PENDING] + self.shards[IN_FLIGHT] - self.shards_without_duration

    def summary(self, rate: float | None) -> GroupSummary:
        return GroupSummary(
            shards=self.shards, hours_done=self.hours_done, hours_encoded=self.hours_encoded,
            hours_remaining=self.hours_remaining, hours_remaining_estimated=self.hours_remaining_estimated,
            hours_failed=self.hours_failed, shards_without_duration=self.shards_without_duration, tokens=self.tokens,
            segments=self.segments, failed_segments=self.failed_segments, failed_by_reason=self.failed_by_reason,
            throughput_hours_per_hour=rate, eta_seconds=eta_seconds(self.hours_remaining_estimated, rate),
            roundtrip_sums=self.roundtrip_sums, roundtrip_segments=self.roundtrip_segments,
            roundtrip_random=self.roundtrip_random,
            hours_total=self.hours_done + self.hours_remaining_estimated + self.hours_failed,
            roundtrip_means={name: self.roundtrip_sums[name] / n for name, n in self.roundtrip_segments.items() if n},
        )


def compute_progress(states: Mapping[str, str], done: Mapping[str, DoneShard], durations: Mapping[str, ShardDuration],
                     runs: Iterable[RunSpan], now: float, *, layout: ShardLayout | None = None,
                     price: float = 0.0, window: float = WINDOW_SECONDS, notes: Sequence[str] = (),
                     reads: PassReads | None = None) -> ProgressSummary:
    """Progress per language, per dataset and in total, from shard states (partition -> done/failed/in_flight/
    pending), done shards' figures, not-done shards' durations and the encoding runs, at time ``now``."""
    layout = layout or ShardLayout()
    runs = list(runs)
    runs_by_id = {r.run_id: r for r in runs}
    total = _Tally()
    by_language: dict[str, _Tally] = defaultdict(_Tally)
    by_dataset: dict[str, _Tally] = defaultdict(_Tally)
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
        seconds = duration.seconds if duration is not None else None
        if state == DONE and figures is None:
            notes.append(f"{key}: materialized but its figures were not read")
        for group in (total, by_language[language], by_dataset[dataset]):
            group.shards[state] += 1
            if state == DONE and figures is not None:
                group.add_done(figures)
            elif state == FAILED and seconds is not None:
                group.hours_failed += seconds / 3600
            elif state in (PENDING, IN_FLIGHT):
                if seconds is not None:
                    group.hours_remaining += seconds / 3600
                else:
                    group.shards_without_duration += 1
        if state in (PENDING, IN_FLIGHT) and seconds is None:
            unknown.append((dataset, language))
        if state == DONE and figures is not None and figures.encoded_here:
            event = (encoded_at(figures, runs_by_id), figures.audio_seconds)
            encoded[("language", language)].append(event)
            encoded[("dataset", dataset)].append(event)
            encoded[("total", "")].append(event)

    # Shards whose metadata has no durations (or was not read yet): the mean known shard of their language, else
    # of all shards, else nothing.
    def mean_hours(group: _Tally) -> float | None:
        known = group.known_not_done()
        return group.hours_remaining / known if known > 0 else None

    for group in (total, *by_language.values(), *by_dataset.values()):
        group.hours_remaining_estimated = group.hours_remaining
    overall = mean_hours(total)
    for dataset, language in unknown:
        mean = mean_hours(by_language[language]) or overall or 0.0
        for group in (total, by_language[language], by_dataset[dataset]):
            group.hours_remaining_estimated += mean

    def frozen(axis: str, label: str, group: _Tally) -> GroupSummary:
        return group.summary(throughput(encoded[(axis, label)], runs, now, window).per_wall_hour)

    first_hour = math.floor(now / 3600) * 3600 - (HISTORY_HOURS - 1) * 3600
    hourly = [0.0] * HISTORY_HOURS
    for ts, seconds in encoded[("total", "")]:
        index = int((ts - first_hour) // 3600)
        if 0 <= index < HISTORY_HOURS:
            hourly[index] += seconds / 3600

    gpu_hours = sum(overlap(r.start, r.end, -math.inf, now) for r in runs) / 3600
    cost = gpu_hours * price if price > 0 else None
    return ProgressSummary(
        generated_at=utc(now), total=frozen("total", "", total),
        by_language={k: frozen("language", k, v) for k, v in sorted(by_language.items())},
        by_dataset={k: frozen("dataset", k, v) for k, v in sorted(by_dataset.items())},
        throughput=throughput(encoded[("total", "")], runs, now, window).summary(),
        gpu_hours=gpu_hours, runs_active=sum(1 for r in runs if r.start is not None and r.end is None),
        gpu_hour_price=price or None, cost=cost,
        cost_per_1000_hours=cost / total.hours_encoded * 1000 if cost is not None and total.hours_encoded > 0 else None,
        hourly_audio_hours=[(utc(first_hour + i * 3600), h) for i, h in enumerate(hourly)], notes=notes,
        reads=reads or PassReads(),
    )
