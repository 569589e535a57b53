"""dagster-celery's run launcher for rented GPU boxes: runs become Celery tasks that GPU workers pull.

`CeleryRunLauncher` (dagster-celery) already sends each run as a Celery task, terminates it with a revoke that
reaches the worker through the broker, and reads the task's state for run monitoring. What it lacks for a fleet of
rented boxes, added here:

- routing: runs in the `gpu` pool go to the `gpu` queue (one Celery worker per GPU consumes it, see
  gpu_executor.launch.celery_worker); runs that need no GPU (progress refresh, SFT, checks-only runs) run on the
  control host as `dagster api execute_run` processes (GpuRunLauncher's way, without a GPU), unless a live worker
  consumes the CPU queue (``cpu_queue``, NEUCODEC_CELERY_CPU_QUEUE, else ``default_queue``; a fresh heartbeat,
  gpu_executor.launch.worker_beats); a run's own `dagster-celery/queue` tag wins. A run sent to a queue that no live
  worker consumes gets a warning in its events at once (and a `neucodec/queue_warning` tag `status` shows), rather
  than only the start timeout's failure;
- a dead box is noticed: Celery leaves a SIGKILLed worker's task STARTED forever, so the worker writes a heartbeat
  counter into a run tag and the monitoring daemon fails a STARTED run whose counter stopped moving for
  ``heartbeat_timeout_seconds`` (measured on the daemon's clock, so box clocks do not matter). Run retries then
  start the run again and, with pool granularity `run`, the failed run's `gpu` slot is free at once;
- terminate marks the run CANCELING before the revoke (as Dagster's own launchers do), so the interrupted run ends
  CANCELED and monitoring does not take the task's REVOKED state for a dead worker;
- broker and result backend from the environment (``NEUCODEC_CELERY_BROKER``, else ``CELERY_BROKER_URL``), and a
  result backend every process shares (the broker itself when it is Redis; dagster-celery's default `rpc://` is
  readable only by the process that sent the task, not by the monitoring daemon);
- queues declared the same way here and on the workers (a topic exchange per queue, `<queue>.#`).

Resuming a run in a dead worker is not supported (workers register no resume task): run retries start a fresh run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg
from celery import Celery
from dagster import Field, IntSource, Noneable, StringSource
from dagster_celery.launcher import CeleryRunLauncher
from dagster_celery.tags import DAGSTER_CELERY_QUEUE_TAG, DAGSTER_CELERY_TASK_ID_TAG
from kombu import Exchange, Queue
from typing_extensions import Self

from gpu_executor.launch.dagster_internals import (
    CheckRunHealthResult,
    ConfigurableClassData,
    LaunchRunContext,
    WorkerStatus,
)
from gpu_executor.launch.code_version import code_location_version
from gpu_executor.launch.coordinator import encodes
from gpu_executor.launch.names import (
    CODE_VERSION_TAG,
    GPU_POOL,
    HEARTBEAT_TAG,
    PID_TAG,
    QUEUE_WARNING_TAG,
    WORKER_TAG,
)
from gpu_executor.settings import Settings, load_settings

GPU_QUEUE = "gpu"
DEFAULT_QUEUE = "dagster"
BROKER_ENVS = Settings.env_names("celery_broker")
BACKEND_ENVS = Settings.env_names("celery_backend")
DEFAULT_HEARTBEAT_TIMEOUT_S = 120
#: A queue counts as consumed while one of its workers beat within this many beat intervals.
LIVE_BEATS = 3

#: Celery settings both sides need. A publish retries while the broker restarts instead of failing the launch.
COMMON_SETTINGS: dict[str, Any] = {
    "task_publish_retry_policy": {"max_retries": 60, "interval_start": 0, "interval_step": 1, "interval_max": 2},
    "broker_connection_retry_on_startup": True,
    "broker_connection_max_retries": None,
    "result_extended": True,
}


def broker_from_env() -> str:
    """The broker URL (a secret: it may hold a password), read now."""
    broker = load_settings().secret("celery_broker")
    if not broker:
        raise ValueError(f"no Celery broker: set {' or '.join(BROKER_ENVS)} (e.g. redis://host:6379/0)")
    return broker


def default_backend(broker: str) -> str:
    """The shared result backend: the env's, else a Redis broker itself (rpc:// is private to one process)."""
    backend = load_settings().secret("celery_backend")
    if backend:
        return backend
    if broker.startswith(("redis://", "rediss://")):
        return broker
    raise ValueError(f"set {BACKEND_ENVS[0]} to a result backend every process can read (e.g. redis://...)")


def task_queues(names: Sequence[str]) -> list[Queue]:
    """One topic exchange per queue matching dagster-celery's `<queue>.<task>` routing keys."""
    return [Queue(name, Exchange(name, type="topic"), routing_key=f"{name}.#",
                  queue_arguments={"x-max-priority": 10}) for name in dict.fromkeys(names)]


def configure_app(app: Celery, queues: Sequence[str]) -> Celery:
    app.conf.update(COMMON_SETTINGS)
    app.conf.task_queues = task_queues(queues)
    return app


class CeleryGpuRunLauncher(CeleryRunLauncher):
    """CeleryRunLauncher that sends `gpu` pool runs to the `gpu` queue and fails runs whose box went silent."""

    def __init__(
        self,
        default_queue: str = DEFAULT_QUEUE,
        broker: str | None = None,
        backend: str | None = None,
        include: list[str] | None = None,
        config_source: dict | None = None,
        inst_data: ConfigurableClassData | None = None,
        gpu_queue: str = GPU_QUEUE,
        gpu_pool: str = GPU_POOL,
        heartbeat_timeout_seconds: int = DEFAULT_HEARTBEAT_TIMEOUT_S,
        cpu_queue: str | None = None,
    ) -> None:
        broker = broker or broker_from_env()
        super().__init__(default_queue=default_queue, broker=broker, backend=backend or default_backend(broker),
                         include=include, config_source=config_source, inst_data=inst_data)
        self.gpu_queue = gpu_queue
        self.gpu_pool = gpu_pool
        self.heartbeat_timeout_seconds = heartbeat_timeout_seconds
        self.cpu_queue = cpu_queue or load_settings().celery_cpu_queue or default_queue
        self._broker = broker
        self._local: Any = None  # the control host's GpuRunLauncher, for runs that need no GPU (built on first use)
        configure_app(self.celery, [q for q in (default_queue, gpu_queue, self.cpu_queue) if q])
        # run id -> (last heartbeat value seen, monotonic time it was first seen): the monitoring daemon's view.
        self._beats: dict[str, tuple[str | None, float]] = {}
        self._lock = threading.Lock()

    def live_queues(self) -> set[str] | None:
        """Queues a worker that beat recently consumes; None when there are no heartbeats to read (RabbitMQ
        without NEUCODEC_WORKER_BEATS_URL, or the beats' Redis unreachable)."""
        from gpu_executor.launch.worker_beats import beats_url, broker_now, read_beats, redis_client

        url = beats_url(self._broker)
        if url is None:
            return None
        try:
            client = redis_client(url)
            now, beats = broker_now(client), read_beats(client)
        except Exception:
            return None
        fresh = LIVE_BEATS * load_settings().worker_beat_seconds + 5
        return {q for b in beats if b.state != "draining" and b.age(now) <= fresh for q in b.queues}

    def queue_for(self, run: dg.DagsterRun) -> str | None:
        """The Celery queue of a run, or None: it runs on the control host."""
        if DAGSTER_CELERY_QUEUE_TAG in run.tags:
            return run.tags[DAGSTER_CELERY_QUEUE_TAG]
        if encodes(run, self.gpu_pool):
            return self.gpu_queue
        if self.cpu_queue and self.cpu_queue in (self.live_queues() or set()):
            return self.cpu_queue
        return None

    @property
    def local(self) -> Any:
        """GpuRunLauncher with no GPU: how Dagster's default launcher would start a run on this host."""
        if self._local is None:
            from gpu_executor.launch.host_launcher import GpuRunLauncher

            local = GpuRunLauncher(gpus=[], cpu_slots=1, gpu_pool=self.gpu_pool)
            local.register_instance(self._instance)
            self._local = local
        return self._local

    @staticmethod
    def _runs_here(run: dg.DagsterRun) -> bool:
        """Launched on the control host (a pid, no Celery task)."""
        return DAGSTER_CELERY_TASK_ID_TAG not in run.tags and bool(run.tags.get(PID_TAG))

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        queue = self.queue_for(run)
        if queue is None:
            self._instance.add_run_tags(run.run_id, {CODE_VERSION_TAG: code_location_version()})
            run = self._instance.get_run_by_id(run.run_id)
            self.local.launch_run(LaunchRunContext(dagster_run=run, workspace=context.workspace))
            return
        if run.tags.get(DAGSTER_CELERY_QUEUE_TAG) != queue:
            self._instance.add_run_tags(run.run_id, {DAGSTER_CELERY_QUEUE_TAG: queue})
            run = self._instance.get_run_by_id(run.run_id)
        live = self.live_queues()
        if live is not None and queue not in live:
            warning = (f"no live worker consumes Celery queue {queue!r} (no heartbeat from one in the last "
                       f"{LIVE_BEATS * load_settings().worker_beat_seconds + 5:.0f} s): this run waits there until a "
                       f"worker for it starts (`neucodec-platform gpu-worker`), or until run monitoring's start "
                       "timeout fails it")
            self._instance.add_run_tags(run.run_id, {QUEUE_WARNING_TAG: warning})
            self._instance.report_engine_event(f"WARNING: {warning}.", run, cls=self.__class__)
            run = self._instance.get_run_by_id(run.run_id)
        super().launch_run(LaunchRunContext(dagster_run=run, workspace=context.workspace))

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if run is not None and self._runs_here(run):
            return self.local.terminate(run_id)
        if run is None or run.is_finished or DAGSTER_CELERY_TASK_ID_TAG not in run.tags:
            return False
        # CANCELING first, as Dagster's own launchers do: the run process, interrupted by the revoke's SIGTERM,
        # then ends the run CANCELED (not "interrupted unexpectedly"), and run monitoring stops health-checking it,
        # so the task's REVOKED state, written at once by the box's worker, is not read as a dead worker
        # (which failed the run, and run retries started it again).
        self._instance.report_run_canceling(run, message="Terminating: revoking its Celery task on the box.")
        return super().terminate(run_id)

    @property
    def supports_resume_run(self) -> bool:
        return False

    def _silent_seconds(self, run: dg.DagsterRun) -> float:
        """Seconds (daemon clock) since this run's heartbeat tag last changed; 0 when it just did."""
        value, now = run.tags.get(HEARTBEAT_TAG), time.monotonic()
        with self._lock:
            seen = self._beats.get(run.run_id)
            if seen is None or seen[0] != value:
                self._beats[run.run_id] = (value, now)
                if len(self._beats) > 10_000:  # runs that ended are never asked about again
                    for old in sorted(self._beats, key=lambda k: self._beats[k][1])[:5_000]:
                        del self._beats[old]
                return 0.0
            return now - seen[1]

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        if self._runs_here(run):
            return self.local.check_run_worker_health(run)
        task_id = run.tags.get(DAGSTER_CELERY_TASK_ID_TAG)
        if not task_id:
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, "no Celery task yet")
        if run.status == dg.DagsterRunStatus.STARTED:
            silent = self._silent_seconds(run)
            if silent > self.heartbeat_timeout_seconds:
                worker = run.tags.get(WORKER_TAG, "its Celery worker")
                return CheckRunHealthResult(
                    WorkerStatus.FAILED,
                    f"no heartbeat from {worker} for {silent:.0f} s (its box died, or lost the broker or Postgres)",
                )
        try:
            state = self.celery.AsyncResult(task_id).state
        except Exception as exc:  # the result backend restarting must not fail runs
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, f"result backend unreachable: {exc}")
        if state == "SUCCESS":
            return CheckRunHealthResult(WorkerStatus.SUCCESS)
        if state == "FAILURE":
            return CheckRunHealthResult(WorkerStatus.FAILED, "Celery task failed (its run worker process died).")
        if state == "REVOKED":
            return CheckRunHealthResult(WorkerStatus.FAILED, "Celery task revoked.")
        if state == "STARTED" or run.status == dg.DagsterRunStatus.STARTED:
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        return CheckRunHealthResult(WorkerStatus.UNKNOWN, f"Celery task {state}")

    def get_run_worker_debug_info(self, run: dg.DagsterRun, include_container_logs: bool | None = True) -> str | None:
        if self._runs_here(run):
            return self.local.get_run_worker_debug_info(run, include_container_logs)
        if DAGSTER_CELERY_TASK_ID_TAG not in run.tags:
            return None
        try:
            return super().get_run_worker_debug_info(run, include_container_logs)
        except Exception as exc:
            return f"Celery task {run.tags[DAGSTER_CELERY_TASK_ID_TAG]}: backend unreachable ({exc})"

    @classmethod
    def config_type(cls) -> Mapping[str, Any]:
        config = dict(CeleryRunLauncher.config_type())
        config["broker"] = Field(Noneable(StringSource), is_required=False,
                                 description=f"Celery broker URL (default: {' or '.join(BROKER_ENVS)}).")
        config["backend"] = Field(Noneable(StringSource), is_required=False,
                                  description="Result backend every process reads (default: NEUCODEC_CELERY_BACKEND,"
                                  " else the broker when it is Redis).")
        config["default_queue"] = Field(StringSource, is_required=False, default_value=DEFAULT_QUEUE)
        config["gpu_queue"] = Field(StringSource, is_required=False, default_value=GPU_QUEUE,
                                    description="Queue of runs in the GPU pool (the GPU workers consume it).")
        config["gpu_pool"] = Field(StringSource, is_required=False, default_value=GPU_POOL)
        config["cpu_queue"] = Field(
            Noneable(StringSource), is_required=False,
            description="Queue of runs that need no GPU, used only while a live worker consumes it (else they run "
            "on the control host); default: NEUCODEC_CELERY_CPU_QUEUE, else default_queue.")
        config["heartbeat_timeout_seconds"] = Field(
            IntSource, is_required=False, default_value=DEFAULT_HEARTBEAT_TIMEOUT_S,
            description="A STARTED run whose worker heartbeat did not move for this long is failed (and retried).")
        return config

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]) -> Self:
        return cls(inst_data=inst_data, **config_value)
