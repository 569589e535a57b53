"""What the rented fleet is doing now: boxes and GPUs from the workers' heartbeats, the runs waiting for a GPU, and
how long the remaining hours take at the fleet's rate (or with N GPUs).

The heartbeats are the worker side's (gpu_executor/launch/worker_beats.py, in Redis, on the broker's clock); the
runs come from the Dagster instance; hours and rates come from the progress summary (`read_progress_summary`, or
the one `status` just computed), never recomputed here. `build_view` is a function of those inputs, so `fleet`,
`status --json` and the `fleet_sizing` sensor read the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import dagster as dg

from gpu_executor.launch.code_version import code_location_version
from gpu_executor.launch.coordinator import encodes
from gpu_executor.launch.worker_beats import NO_STORE, WorkerBeat, beats_url, broker_now, read_beats, redis_client
from gpu_executor.settings import load_settings
from neucodec_assets.progress.summary import ProgressSummary, read_progress_summary

SILENT_AFTER_BEATS = 3  # a box with no beat for this many beat intervals is shown as silent
WHAT_IF_GPUS = (50, 100, 200)
QUEUE_READ_LIMIT = 10_000  # runs read from the queue at most (the view says "at least" beyond it)
PARTITION_TAG = "dagster/partition"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


@dataclass(frozen=True)
class GpuView:
    worker: str
    gpu: str
    state: str  # idle | busy | draining
    run_id: str | None
    shards: list[str]  # the run's partitions (a range as its two ends)
    since: float | None  # broker time the run started (busy) or the worker went idle
    code_version: str


@dataclass(frozen=True)
class BoxView:
    box: str
    gpus: list[GpuView]
    last_beat_age_seconds: float
    silent: bool
    code_versions: list[str]
    old_code: bool  # some worker runs another code version than the code location


@dataclass(frozen=True)
class WhatIf:
    gpus: int
    eta_seconds: float | None
    spend_per_hour: float | None


@dataclass(frozen=True)
class QueueCounts:
    """GPU runs waiting: QUEUED in Dagster's run queue, or STARTING (sent to the broker) and taken by no worker."""

    queued: int
    waiting_for_worker: int
    capped: bool = False  # the queue had more runs than were read

    @property
    def total(self) -> int:
        return self.queued + self.waiting_for_worker


@dataclass(frozen=True)
class FleetView:
    now: float  # broker time
    code_location_version: str
    beat_interval_seconds: float
    boxes: list[BoxView]
    queue: QueueCounts
    busy_gpus: int
    idle_gpus: int
    draining_gpus: int
    silent_boxes: list[str]
    old_code_boxes: list[str]
    hours_remaining: float | None
    fleet_hours_per_hour: float | None
    hours_per_gpu_hour: float | None
    eta_seconds: float | None
    gpu_hours_remaining: float | None
    cost_remaining: float | None
    gpu_hour_price: float | None
    what_ifs: list[WhatIf]
    notes: list[str] = field(default_factory=list)
    clusters: list[dict[str, Any]] | None = None  # SkyPilot's view of the fleet, when asked for

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["queue"]["total"] = self.queue.total
        return out


def run_shards(run: dg.DagsterRun | None) -> list[str]:
    if run is None:
        return []
    if PARTITION_TAG in run.tags:
        return [run.tags[PARTITION_TAG]]
    start, end = run.tags.get(RANGE_START_TAG), run.tags.get(RANGE_END_TAG)
    if start is None:
        return []
    return [start] if start == end else [start, end]


def count_waiting_runs(instance: dg.DagsterInstance, taken: Iterable[str]) -> QueueCounts:
    """QUEUED runs of the `gpu` pool, and its STARTING runs that no worker's beat names (waiting in the broker)."""
    taken = set(taken)
    statuses = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTING]
    runs = instance.get_runs(dg.RunsFilter(statuses=statuses), limit=QUEUE_READ_LIMIT)
    gpu_runs = [r for r in runs if encodes(r)]
    queued = sum(1 for r in gpu_runs if r.status == dg.DagsterRunStatus.QUEUED)
    waiting = sum(1 for r in gpu_runs if r.status == dg.DagsterRunStatus.STARTING and r.run_id not in taken)
    return QueueCounts(queued, waiting, capped=len(runs) >= QUEUE_READ_LIMIT)


def build_view(beats: Sequence[WorkerBeat], now: float, *, instance: dg.DagsterInstance, code_location_version: str,
               beat_interval_seconds: float, summary: ProgressSummary | None, gpu_hour_price: float | None,
               box_prefix: str = "") -> FleetView:
    """The fleet view from the beats (broker time ``now``), the instance's runs and the progress summary."""
    beats = [b for b in beats if b.box.startswith(box_prefix)]
    run_ids = sorted({b.run_id for b in beats if b.run_id})
    runs = {r.run_id: r for r in instance.get_runs(dg.RunsFilter(run_ids=run_ids))} if run_ids else {}
    silent_after = SILENT_AFTER_BEATS * beat_interval_seconds
    by_box: dict[str, list[WorkerBeat]] = {}
    for beat in beats:
        by_box.setdefault(beat.box, []).append(beat)
    boxes = []
    for box, box_beats in sorted(by_box.items()):
        age = min(b.age(now) for b in box_beats)
        versions = sorted({b.code_version for b in box_beats})
        gpus = [GpuView(worker=b.worker, gpu=b.gpu, state=b.state, run_id=b.run_id,
                        shards=run_shards(runs.get(b.run_id)), code_version=b.code_version,
                        since=b.run_started_at if b.run_id else b.idle_since())
                for b in sorted(box_beats, key=lambda b: b.worker)]
        boxes.append(BoxView(box=box, gpus=gpus, last_beat_age_seconds=round(age, 1), silent=age > silent_after,
                             code_versions=versions, old_code=any(v != code_location_version for v in versions)))
    live = [g for b in boxes if not b.silent for g in b.gpus if not g.gpu.startswith("cpu")]
    busy = sum(1 for g in live if g.state == "busy")
    idle = sum(1 for g in live if g.state == "idle")
    draining = sum(1 for g in live if g.state == "draining")
    queue = count_waiting_runs(instance, [b.run_id for b in beats if b.run_id])

    notes = []
    remaining = fleet_rate = per_gpu = eta = gpu_hours = cost = None
    if summary is None:
        notes.append("no progress summary recorded yet (encoding_progress): no hours, rate or ETA")
    else:
        remaining = summary.total.hours_remaining_estimated
        fleet_rate = summary.throughput.audio_hours_per_wall_hour
        per_gpu = summary.throughput.audio_hours_per_gpu_hour
        eta = summary.total.eta_seconds
        if per_gpu:
            gpu_hours = remaining / per_gpu
            cost = gpu_hours * gpu_hour_price if gpu_hour_price else None
        else:
            notes.append("no measured per-GPU rate yet: no what-ifs")
    what_ifs = [WhatIf(n, remaining / (n * per_gpu) * 3600 if per_gpu and remaining is not None else None,
                       n * gpu_hour_price if gpu_hour_price else None) for n in WHAT_IF_GPUS]
    silent = [b.box for b in boxes if b.silent]
    old = [b.box for b in boxes if b.old_code and not b.silent]
    if old:
        notes.append(f"{len(old)} boxes run old code (code location: {code_location_version}): drain them and launch "
                     "new ones (README, \"Renting a fleet\": upgrading it)")
    return FleetView(now=now, code_location_version=code_location_version, beat_interval_seconds=beat_interval_seconds,
                     boxes=boxes, queue=queue, busy_gpus=busy, idle_gpus=idle, draining_gpus=draining,
                     silent_boxes=silent, old_code_boxes=old, hours_remaining=remaining,
                     fleet_hours_per_hour=fleet_rate,
                     hours_per_gpu_hour=per_gpu, eta_seconds=eta, gpu_hours_remaining=gpu_hours, cost_remaining=cost,
                     gpu_hour_price=gpu_hour_price, what_ifs=what_ifs, notes=notes)


def read_view(instance: dg.DagsterInstance, *, summary: ProgressSummary | None = None, box_prefix: str = "",
              read_summary: bool = True) -> FleetView:
    """The view now: beats from the broker's Redis (or NEUCODEC_WORKER_BEATS_URL), the code location's version and
    the settings' beat interval and price. Raises FleetUnavailable when there is no Redis to read beats from."""
    settings = load_settings()
    url = beats_url()
    if url is None:
        raise FleetUnavailable(NO_STORE if settings.celery_broker else
                               "no broker: set NEUCODEC_CELERY_BROKER (or NEUCODEC_WORKER_BEATS_URL) to the fleet's "
                               "Redis")
    client = redis_client(url)
    try:
        beats, now = read_beats(client), broker_now(client)
    except Exception as exc:  # redis errors: say what, never the URL (it may hold a password)
        raise FleetUnavailable(f"cannot read worker heartbeats from the broker's Redis: {type(exc).__name__}") from None
    if summary is None and read_summary:
        summary = read_progress_summary(instance)
    return build_view(beats, now, instance=instance, code_location_version=code_location_version(),
                      beat_interval_seconds=settings.worker_beat_seconds, summary=summary,
                      gpu_hour_price=settings.gpu_hour_price or None, box_prefix=box_prefix)


class FleetUnavailable(RuntimeError):
    """No heartbeats can be read (no Redis configured, or it does not answer); the message says which."""
