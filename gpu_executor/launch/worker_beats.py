"""What each Celery worker of the fleet is doing, in Redis: one heartbeat per worker, readable by anyone.

Every Celery worker (`gpuN@box`, `cpuN@box`) publishes a `WorkerBeat` every NEUCODEC_WORKER_BEAT_SECONDS into one
Redis hash (`neucodec:workers`, field = worker name, JSON value), and at once when it takes or finishes a run or
starts draining. The fleet view, the launcher (is a CPU queue consumed?) and `gpu-worker --exit-when-idle` read
them. Times are the broker's clock (Redis TIME), so box clocks never matter. A worker that exits cleanly removes its
entry; one that died stays until an hour after its last beat (pruned on read), so silent boxes can be shown.

Only Redis carries beats: with a RabbitMQ broker set NEUCODEC_WORKER_BEATS_URL to a Redis (`beats_url()` says
which store is used, or why there is none). No torch and no Dagster here.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

import redis

from gpu_executor.settings import load_settings

logger = logging.getLogger(__name__)

WORKERS_KEY = "neucodec:workers"
#: A beat older than this is pruned on read (the worker is gone for good).
KEEP_SECONDS = 3600.0
STATES = ("idle", "busy", "draining")
NO_STORE = ("worker heartbeats need a Redis broker or NEUCODEC_WORKER_BEATS_URL (a Redis URL); "
            "the broker is not Redis and NEUCODEC_WORKER_BEATS_URL is unset")


@dataclass(frozen=True)
class WorkerBeat:
    worker: str                 # Celery worker name, e.g. "gpu0@box-a"
    box: str                    # box name (gpu-worker --name / host name)
    gpu: str                    # GPU id as in CUDA_VISIBLE_DEVICES, or "cpuN" for a CPU worker
    queues: tuple[str, ...]     # queues it consumes
    code_version: str           # the code version of the worker's checkout (code_version.py)
    state: str                  # "idle" | "busy" | "draining"
    run_id: str | None          # the run it executes now
    run_started_at: float | None  # broker-clock unix time the current run started
    started_at: float           # broker-clock unix time the worker started
    last_run_ended_at: float | None
    beat_at: float              # broker-clock unix time of this beat

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> "WorkerBeat":
        data = json.loads(text)
        data["queues"] = tuple(data.get("queues") or ())
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__})

    def age(self, now: float) -> float:
        """Seconds since this beat, on the broker's clock."""
        return max(0.0, now - self.beat_at)

    def idle_since(self) -> float:
        """Broker time since which this worker took no run (its start when it never ran one)."""
        return self.last_run_ended_at if self.last_run_ended_at is not None else self.started_at


def beats_url(broker: str | None = None) -> str | None:
    """The Redis holding the beats: NEUCODEC_WORKER_BEATS_URL, else a Redis broker; None with RabbitMQ."""
    settings = load_settings()
    url = settings.secret("worker_beats_url")
    if url:
        return url
    broker = broker if broker is not None else settings.secret("celery_broker")
    if broker and broker.startswith(("redis://", "rediss://", "unix://")):
        return broker
    return None


def redis_client(url: str) -> redis.Redis:
    """A client for the broker's (or the beats') Redis URL; short timeouts so a beat never hangs a worker."""
    return redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=10, health_check_interval=30)


def broker_now(client: redis.Redis) -> float:
    """Unix time on the Redis server's clock (TIME)."""
    seconds, micros = client.time()
    return float(seconds) + float(micros) / 1e6


def publish(client: redis.Redis, beat: WorkerBeat) -> WorkerBeat:
    """Write `beat` with beat_at = now on the broker's clock; the hash expires an hour after the last beat."""
    beat = replace(beat, beat_at=broker_now(client))
    pipe = client.pipeline()
    pipe.hset(WORKERS_KEY, beat.worker, beat.to_json())
    pipe.expire(WORKERS_KEY, int(KEEP_SECONDS))
    pipe.execute()
    return beat


def remove(client: redis.Redis, worker: str) -> None:
    """A worker that exits cleanly leaves the fleet: it is gone, not silent."""
    client.hdel(WORKERS_KEY, worker)


def read_beats(client: redis.Redis) -> list[WorkerBeat]:
    """Every worker seen in the last hour, by box then worker name; older or unreadable entries are pruned."""
    now = broker_now(client)
    beats, stale = [], []
    for field, value in client.hgetall(WORKERS_KEY).items():
        try:
            beat = WorkerBeat.from_json(value)
        except (ValueError, TypeError):
            stale.append(field)
            continue
        if beat.age(now) > KEEP_SECONDS:
            stale.append(field)
        else:
            beats.append(beat)
    if stale:
        client.hdel(WORKERS_KEY, *stale)
    return sorted(beats, key=lambda b: (b.box, b.worker))


class BeatPublisher:
    """Publishes one worker's beat from a thread: every `every` seconds, and at once on a change of state.

    `current_run()` is asked every `poll` seconds for the run the worker executes now (None when idle), so a
    worker turns busy/idle in the beats within about a second; `drain()` marks it draining for good.
    """

    def __init__(self, client: redis.Redis, *, worker: str, box: str, gpu: str, queues: tuple[str, ...],
                 code_version: str, every: float, current_run: Callable[[], str | None] = lambda: None,
                 poll: float = 1.0) -> None:
        self.client, self.every, self.current_run, self.poll = client, every, current_run, min(poll, every)
        now = broker_now(client)
        self.beat = WorkerBeat(worker=worker, box=box, gpu=gpu, queues=tuple(queues), code_version=code_version,
                               state="idle", run_id=None, run_started_at=None, started_at=now,
                               last_run_ended_at=None, beat_at=now)
        self._draining = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="neucodec-worker-beat", daemon=True)

    def start(self) -> "BeatPublisher":
        self.publish_now()
        self._thread.start()
        return self

    def drain(self) -> None:
        self._draining = True
        self._wake.set()

    def poke(self) -> None:
        """Publish at the next chance (a run was just received)."""
        self._wake.set()

    def _observe(self) -> bool:
        """Fold the current run and the drain flag into the beat; True when something changed."""
        run_id = self.current_run()
        beat = self.beat
        changes: dict[str, Any] = {}
        if run_id != beat.run_id:
            now = broker_now(self.client)
            if beat.run_id is not None:
                changes["last_run_ended_at"] = now
            changes.update(run_id=run_id, run_started_at=now if run_id else None)
        state = "draining" if self._draining else ("busy" if run_id else "idle")
        if state != beat.state:
            changes["state"] = state
        if changes:
            self.beat = replace(beat, **changes)
        return bool(changes)

    def publish_now(self) -> WorkerBeat:
        with self._lock:
            self._observe()
            self.beat = publish(self.client, self.beat)
            return self.beat

    def _loop(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            woke = self._wake.wait(self.poll)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                with self._lock:
                    changed = self._observe()
                    if changed or woke or time.monotonic() - last >= self.every:
                        self.beat = publish(self.client, self.beat)
                        last = time.monotonic()
            except Exception:  # Redis away for a moment: the next beat may work; readers see the age
                logger.exception("worker beat for %s failed", self.beat.worker)

    def stop(self, remove_entry: bool = True) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        if remove_entry:
            try:
                remove(self.client, self.beat.worker)
            except Exception:
                logger.exception("could not remove the beat of %s", self.beat.worker)
