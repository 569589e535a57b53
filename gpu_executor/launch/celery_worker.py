"""The Celery app a GPU box runs: dagster-celery's run task, plus what a rented box needs around it.

`celery -A gpu_executor.launch.celery_worker:app worker -Q gpu -c 1` is started once per GPU by
`neucodec-platform gpu-worker` (gpu_executor.launch.gpu_worker_cli), with CUDA_VISIBLE_DEVICES set to that GPU. The task
keeps dagster-celery's name (`execute_job`, what CeleryRunLauncher sends) and runs the run as `dagster api execute_run`
in a child process (a Celery pool process is daemonic: Dagster's multiprocess executor could not start steps), and
adds:

- a heartbeat counter in the run's tags while it executes (CeleryGpuRunLauncher fails runs whose counter stops);
- SIGTERM passed on to the run process, where Dagster turns it into an interrupt: a terminate from the UI (a Celery revoke that
  reaches the box through the broker) cancels the run cleanly instead of killing the process mid-write;
- a message for a run that is no longer starting (redelivered after its box died and the run was retried) is
  dropped, so a shard is never encoded twice;
- a worker heartbeat in Redis (gpu_executor.launch.worker_beats): idle/busy (with the run)/draining, its queues and
  code version, published from a thread of the worker's main process; the run gets a `neucodec/code_version` tag;
- no prefetch (`worker_disable_prefetch`, Redis): a busy worker never holds the next run while another GPU idles,
  and a dead box takes no queued runs with it. Tasks are acknowledged when they start: a box that dies loses only
  the run it was executing, which run monitoring fails and run retries start again.

The broker comes from NEUCODEC_CELERY_BROKER (or CELERY_BROKER_URL); the instance from DAGSTER_HOME when it is set,
else from the instance reference the launcher sent (the box then needs only the env vars that config names).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

import dagster as dg
from celery import Celery, signals
from celery.worker import state as worker_state
from dagster_celery.config import DEFAULT_CONFIG, TASK_EXECUTE_JOB_NAME
from dagster_celery.make_app import make_app

from gpu_executor.launch.celery_launcher import broker_from_env, configure_app, default_backend
from gpu_executor.launch.dagster_internals import ExecuteRunArgs, unpack_value
from gpu_executor.launch.code_version import code_version
from gpu_executor.launch.names import CODE_VERSION_TAG, GPU_TAG, HEARTBEAT_TAG, WORKER_TAG
from gpu_executor.launch.worker_beats import NO_STORE, BeatPublisher, beats_url, redis_client
from gpu_executor.settings import load_settings

logger = logging.getLogger(__name__)

WORKER_SETTINGS: dict[str, Any] = {
    "worker_prefetch_multiplier": 1,
    "worker_disable_prefetch": True,
    "task_acks_late": False,
    "worker_hijack_root_logger": False,
}


class Heartbeat:
    """Bumps the run's heartbeat tag every few seconds from a thread, so a silent box is noticed."""

    def __init__(self, instance: dg.DagsterInstance, run_id: str, task_id: str, worker: str, every: float) -> None:
        self.instance, self.run_id, self.task_id, self.every = instance, run_id, task_id, every
        self.count = 0
        self.stop_event = threading.Event()
        self.beat({WORKER_TAG: worker, GPU_TAG: load_settings().gpu_slot or "none", CODE_VERSION_TAG: code_version()})
        self.thread = threading.Thread(target=self._loop, name="neucodec-celery-heartbeat", daemon=True)
        self.thread.start()

    def beat(self, extra: dict[str, str] | None = None) -> None:
        self.count += 1
        self.instance.add_run_tags(self.run_id, {HEARTBEAT_TAG: f"{self.task_id}:{self.count}", **(extra or {})})

    def _loop(self) -> None:
        while not self.stop_event.wait(self.every):
            try:
                self.beat()
            except Exception:  # Postgres away for a moment: the next beat may work; the daemon decides
                logger.exception("heartbeat for run %s failed", self.run_id)

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=10)


@contextmanager
def _instance(args: ExecuteRunArgs) -> Iterator[dg.DagsterInstance]:
    if load_settings().dagster_home:
        with dg.DagsterInstance.get() as instance:
            yield instance
    else:
        with dg.DagsterInstance.from_ref(args.instance_ref) as instance:  # type: ignore[arg-type]
            yield instance


def _run_process(args: ExecuteRunArgs, instance: dg.DagsterInstance) -> subprocess.Popen:
    """`dagster api execute_run` in its own process, as GpuRunLauncher starts it: a Celery pool process is
    daemonic and may not fork Dagster's step processes, and a fresh process per run frees the GPU's memory."""
    local = ExecuteRunArgs(job_origin=args.job_origin, run_id=args.run_id, instance_ref=instance.get_ref(),
                           set_exit_code_on_failure=True)
    env = {**os.environ, "DAGSTER_EXECUTE_RUN_ARGS": dg.serialize_value(local)}
    return subprocess.Popen([sys.executable, "-m", "dagster", "api", "execute_run"], env=env)


def register_tasks(app: Celery) -> Celery:
    @app.task(bind=True, name=TASK_EXECUTE_JOB_NAME, track_started=True)
    def execute_job(self: Any, execute_job_args_packed: Any) -> int:
        args = unpack_value(execute_job_args_packed, as_type=ExecuteRunArgs)
        with _instance(args) as instance:
            run = instance.get_run_by_id(args.run_id)
            startable = (dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING)
            if run is None or run.status not in startable:
                logger.warning("dropping run %s: it is %s, not starting (a redelivered message)",
                               args.run_id, run.status.value if run else "gone")
                return 0
            heartbeat = Heartbeat(instance, args.run_id, self.request.id, self.request.hostname or "?",
                                  load_settings().celery_heartbeat_seconds)
            proc = _run_process(args, instance)

            def forward(signum: int, _frame: object) -> None:
                # A revoke(terminate=True) from the UI's terminate: Dagster's own interrupt handling in the run
                # process cancels the run (CANCELED), as for `dagster api execute_run` under any launcher.
                if proc.poll() is None:
                    proc.send_signal(signum)

            previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
            try:
                code = proc.wait()
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
                heartbeat.stop()
            run = instance.get_run_by_id(args.run_id)
            if run is not None and run.status == dg.DagsterRunStatus.CANCELING:
                instance.report_run_canceled(run, f"run worker process exited with code {code} while canceling")
            elif run is not None and not run.is_finished:
                instance.report_run_failed(run, f"run worker process exited with code {code} before the run ended")
            return code

    return app


#: A received message not reserved within this long was dropped by Celery (revoked, expired).
PENDING_S = 5.0


class WorkerBeats:
    """The worker's heartbeat in Redis, hooked to Celery's signals in the worker's main process."""

    def __init__(self, broker: str) -> None:
        self.broker = broker
        self.publisher: BeatPublisher | None = None
        self._runs: dict[str, str | None] = {}  # task id -> run id
        self._pending: tuple[Any, float] | None = None  # (request, monotonic time) received, not yet reserved

    def _run_of(self, request: Any) -> str | None:
        if request.id not in self._runs:
            try:
                packed = request.kwargs.get("execute_job_args_packed") or request.args[0]
                self._runs[request.id] = unpack_value(packed, as_type=ExecuteRunArgs).run_id
            except Exception:
                self._runs[request.id] = None
            if len(self._runs) > 1000:
                self._runs = {request.id: self._runs[request.id]}
        return self._runs[request.id] or request.id

    def current_run(self) -> str | None:
        """The run of the task this worker holds now: Celery's own record of reserved and running tasks, or the
        message just received (it is reserved a moment later), so a taken run is never shown idle."""
        try:
            requests = list(worker_state.requests.values())
        except RuntimeError:  # changed while copied (the consumer thread): the next poll reads it
            requests = []
        held = [r for r in requests if r.name == TASK_EXECUTE_JOB_NAME]
        pending = self._pending
        if pending is not None:
            request, since = pending
            if any(r.id == request.id for r in held) or time.monotonic() - since > PENDING_S:
                self._pending = None
            else:
                held.append(request)
        return self._run_of(held[0]) if held else None

    def on_setup(self, sender: str, instance: Any, **_kwargs: Any) -> None:
        url = beats_url(self.broker)
        if url is None:
            logger.warning("%s: no worker heartbeat: %s", sender, NO_STORE)
            return
        settings = load_settings()
        queues = tuple(sorted(instance.app.amqp.queues.consume_from or instance.app.amqp.queues))
        try:
            self.publisher = BeatPublisher(
                redis_client(url), worker=sender, box=settings.worker_host or sender.split("@")[-1],
                gpu=settings.gpu_slot or "none", queues=queues, code_version=code_version(),
                every=settings.worker_beat_seconds, current_run=self.current_run).start()
        except Exception:  # beats are for watching the fleet: a worker without them still takes runs
            logger.exception("%s: worker heartbeat not started", sender)

    def on_received(self, request: Any = None, **_kwargs: Any) -> None:
        if request is not None and getattr(request, "name", None) == TASK_EXECUTE_JOB_NAME:
            self._pending = (request, time.monotonic())
        if self.publisher is not None:
            self.publisher.poke()

    def on_shutting_down(self, **_kwargs: Any) -> None:
        if self.publisher is not None:
            self.publisher.drain()

    def on_shutdown(self, **_kwargs: Any) -> None:
        if self.publisher is not None:
            self.publisher.stop(remove_entry=True)
            self.publisher = None

    def connect(self) -> None:
        signals.celeryd_after_setup.connect(self.on_setup, weak=False)
        signals.task_received.connect(self.on_received, weak=False)
        signals.worker_shutting_down.connect(self.on_shutting_down, weak=False)
        signals.worker_shutdown.connect(self.on_shutdown, weak=False)


def make_worker_app(broker: str | None = None, queues: list[str] | None = None) -> Celery:
    """The worker-side app: same queues and settings as CeleryGpuRunLauncher's, plus the worker settings."""
    broker = broker or broker_from_env()
    names = queues or [q.strip() for q in load_settings().celery_queues.split(",") if q.strip()]
    app = make_app(app_args={
        "broker": broker, "backend": default_backend(broker), "include": [],
        "config_source": {**DEFAULT_CONFIG, **WORKER_SETTINGS}, "task_default_queue": names[0],
    })
    configure_app(app, names)
    WorkerBeats(broker).connect()
    return register_tasks(app)


def __getattr__(name: str) -> Any:
    """`app` is built on first use (`celery -A gpu_executor.launch.celery_worker:app`): importing needs no broker set."""
    if name == "app":
        value = make_worker_app()
        globals()["app"] = value
        return value
    raise AttributeError(name)
