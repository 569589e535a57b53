"""`neucodec-platform gpu-worker`: the one command that puts a rented GPU box to work.

It starts one Celery worker process per GPU (concurrency 1, `gpu` queue), each with its own CUDA_VISIBLE_DEVICES
and NEUCODEC_GPU_SLOT, so a run never sees another run's GPU and one GPU never holds two runs. Optional CPU workers
take the default queue (runs outside the `gpu` pool). The box only connects out: to the broker, to Postgres (the
run's events) and to the bucket. A worker that exits on its own is started again.

Stopping (a rented box bills until it exits):
- SIGTERM/SIGINT, or a drain request through the broker (gpu_executor.launch.box_drain.request_drain): the box
  drains, as Celery's warm shutdown does: no run is taken, running runs finish, then it exits 0. The workers' beats
  say "draining". A second signal stops now: the workers' cold shutdown sends the run processes SIGTERM, the runs
  end failed, and run retries start them on another box.
- `--exit-when-idle 30m`: when none of the box's workers took a run for that long (their heartbeats say so) and
  the box's queues are empty, it drains and exits 0, so SkyPilot's autodown releases it.
Drain requests and the idle rule need the worker heartbeats' Redis (a Redis broker or NEUCODEC_WORKER_BEATS_URL).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time

from gpu_executor.launch.gpus import GPU_SLOT_ENV, WORKER_HOST_ENV, detect_gpus, parse_gpu_list
from gpu_executor.settings import load_settings

RESTART_PAUSE_S = 5.0
#: How often the box looks for a drain request and checks whether it is idle.
CHECK_S = 2.0
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """`90s`, `30m`, `1h`, `1h30m` or plain seconds -> seconds (> 0)."""
    value = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        seconds = float(value)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)([smhd])", value)
        if not parts or "".join(n + u for n, u in parts) != value:
            raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90s, 30m, 1h)")
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"the duration must be positive, got {text!r}")
    return seconds


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gpu-worker", help="join this box to the Celery GPU fleet: one worker per GPU")
    p.add_argument("--gpus", default="auto",
                   help="GPU ids, e.g. 0,1,2,3; `auto` (default): CUDA_VISIBLE_DEVICES, nvidia-smi or torch; "
                   "`none`: no GPU workers")
    p.add_argument("--name", default=None, help="box name in worker names gpuN@NAME (default: host name)")
    p.add_argument("--queue", default=None,
                   help="queue of GPU runs (default: NEUCODEC_CELERY_GPU_QUEUE, gpu; the launcher's gpu_queue)")
    p.add_argument("--cpu-slots", type=int, default=0,
                   help="also run N workers for runs outside the gpu pool (SFT, checks), default 0")
    p.add_argument("--cpu-queue", default="dagster", help="their queue (the launcher's default_queue)")
    p.add_argument("--exit-when-idle", type=parse_duration, default=None, metavar="DURATION",
                   help="drain and exit 0 when no worker of this box took a run for DURATION (e.g. 30m, 90s) and "
                   "its queues are empty (SkyPilot autodown then releases the box)")
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(func=run_gpu_worker)


def worker_commands(args: argparse.Namespace) -> list[tuple[list[str], dict[str, str]]]:
    """(argv, env) of each worker process this box runs."""
    box = args.name or socket.gethostname()
    gpu_queue = args.queue or load_settings().celery_gpu_queue
    gpus = [] if str(args.gpus).strip().lower() == "none" else (
        detect_gpus()[0] if args.gpus == "auto" else parse_gpu_list(args.gpus))
    base = [sys.executable, "-m", "celery", "-A", "gpu_executor.launch.celery_worker:app", "worker",
            "--concurrency", "1", "--pool", "prefork", "--without-gossip", "--without-mingle",
            "--loglevel", args.loglevel]
    out = []
    queues = ",".join(dict.fromkeys([gpu_queue, args.cpu_queue]))
    for gpu in gpus:
        env = {"CUDA_VISIBLE_DEVICES": gpu, GPU_SLOT_ENV: gpu, WORKER_HOST_ENV: box,
               "NEUCODEC_CELERY_QUEUES": queues}
        out.append(([*base, "-Q", gpu_queue, "-n", f"gpu{gpu}@{box}"], env))
    for i in range(args.cpu_slots):
        env = {"CUDA_VISIBLE_DEVICES": "", GPU_SLOT_ENV: f"cpu{i}", WORKER_HOST_ENV: box,
               "NEUCODEC_CELERY_QUEUES": queues}
        out.append(([*base, "-Q", args.cpu_queue, "-n", f"cpu{i}@{box}"], env))
    return out


def _names(commands: list[tuple[list[str], dict[str, str]]]) -> list[str]:
    return [argv[argv.index("-n") + 1] for argv, _ in commands]


def _queues(commands: list[tuple[list[str], dict[str, str]]]) -> list[str]:
    return list(dict.fromkeys(q for argv, _ in commands for q in argv[argv.index("-Q") + 1].split(",")))


class BoxWatch:
    """The box's view of the fleet's Redis: drain requests for it, and whether all its workers sat idle long enough
    with nothing queued. Redis errors are reported and skipped: a box never stops because the broker blinked."""

    def __init__(self, broker: str, box: str, workers: list[str], queues: list[str], idle_limit: float | None):
        from gpu_executor.launch.worker_beats import beats_url, broker_now, redis_client

        self.broker, self.box, self.workers, self.queues, self.idle_limit = broker, box, workers, queues, idle_limit
        url = beats_url(broker)
        self.client = redis_client(url) if url else None
        self.started_at = broker_now(self.client) if self.client is not None else 0.0

    def drain_requested(self) -> bool:
        from gpu_executor.launch.box_drain import drain_requested

        return self.client is not None and drain_requested(self.client, self.box, self.started_at)

    def idle_reason(self) -> str | None:
        """Why the box may exit now, or None while it must stay (a worker busy, not yet beating, or work queued)."""
        from gpu_executor.launch.box_drain import queue_lengths
        from gpu_executor.launch.worker_beats import broker_now, read_beats

        if self.idle_limit is None or self.client is None:
            return None
        beats = {b.worker: b for b in read_beats(self.client) if b.worker in self.workers}
        if set(beats) != set(self.workers) or any(b.state != "idle" for b in beats.values()):
            return None
        now = broker_now(self.client)
        idle_for = min(now - max(b.idle_since(), self.started_at) for b in beats.values())
        if idle_for < self.idle_limit:
            return None
        waiting = {q: n for q, n in queue_lengths(self.broker, self.queues).items() if n}
        if waiting:
            return None
        return (f"no run taken for {idle_for:.0f} s (limit {self.idle_limit:g} s) and queues "
                f"{', '.join(self.queues)} empty")


def run_gpu_worker(args: argparse.Namespace) -> int:
    from gpu_executor.launch.celery_launcher import broker_from_env
    from gpu_executor.launch.worker_beats import NO_STORE

    broker = broker_from_env()  # fail here, not in every worker, when the broker is not set
    commands = worker_commands(args)
    if not commands:
        print("gpu-worker: no GPUs found and --cpu-slots 0: nothing to run", file=sys.stderr)
        return 2
    box = args.name or socket.gethostname()
    watch = BoxWatch(broker, box, _names(commands), _queues(commands), args.exit_when_idle)
    if watch.client is None:
        if args.exit_when_idle is not None:
            print(f"gpu-worker: --exit-when-idle needs the workers' heartbeats: {NO_STORE}", file=sys.stderr)
            return 2
        print(f"gpu-worker: no heartbeats and no drain requests ({NO_STORE}); SIGTERM still drains", flush=True)
    procs: list[subprocess.Popen | None] = [None] * len(commands)
    stopping = {"count": 0}

    def start(i: int) -> None:
        argv, env = commands[i]
        procs[i] = subprocess.Popen(argv, env={**os.environ, **env})
        print(f"gpu-worker: started {argv[argv.index('-n') + 1]} (pid {procs[i].pid}, "
              f"CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']!r})", flush=True)

    def stop(why: str, sig: int = signal.SIGTERM) -> None:
        """First call: Celery's warm shutdown (drain). Later calls: cold shutdown (runs stopped, retried elsewhere)."""
        stopping["count"] += 1
        now = stopping["count"] == 1
        worker_signal = sig if now else signal.SIGQUIT
        print(f"gpu-worker: {why}: " + ("draining (running runs finish, none is taken)" if now else
              "stopping now (running runs are stopped and retried elsewhere)"), flush=True)
        for proc in procs:
            if proc is not None and proc.poll() is None:
                proc.send_signal(worker_signal)

    def on_signal(signum: int, _frame: object) -> None:
        stop(f"{signal.Signals(signum).name} received", signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for i in range(len(commands)):
        start(i)
    next_check = time.monotonic() + CHECK_S
    while True:
        time.sleep(0.5)
        if stopping["count"]:
            if all(p is None or p.poll() is not None for p in procs):
                return 0
            continue
        if time.monotonic() >= next_check:
            next_check = time.monotonic() + CHECK_S
            try:
                if watch.drain_requested():
                    stop("drain requested through the broker")
                    continue
                reason = watch.idle_reason()
                if reason is not None:
                    stop(f"idle: {reason}")
                    continue
            except Exception as exc:  # the broker restarting: look again next time
                print(f"gpu-worker: could not check for drain or idleness: {exc}", flush=True)
        for i, proc in enumerate(procs):
            if proc is not None and proc.poll() is not None:
                print(f"gpu-worker: worker pid {proc.pid} exited with {proc.returncode}; restarting", flush=True)
                time.sleep(RESTART_PAUSE_S)
                if not stopping["count"]:
                    start(i)
