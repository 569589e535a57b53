"""`neucodec-platform gpu-worker`: the one command that puts a rented GPU box to work.

It starts one Celery worker process per GPU (concurrency 1, `gpu` queue), each with its own CUDA_VISIBLE_DEVICES
and NEUCODEC_GPU_SLOT, so a run never sees another run's GPU and one GPU never holds two runs. Optional CPU workers
take the default queue (runs outside the `gpu` pool). The box only connects out: to the broker, to Postgres (the
run's events) and to the bucket. SIGTERM/SIGINT are passed on to the workers (Celery's warm shutdown: running runs
finish first; a second signal stops them); a worker that exits on its own is started again.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

from gpu_executor.launch.gpus import GPU_SLOT_ENV, WORKER_HOST_ENV, detect_gpus, parse_gpu_list
from gpu_executor.settings import load_settings

RESTART_PAUSE_S = 5.0


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


def run_gpu_worker(args: argparse.Namespace) -> int:
    from gpu_executor.launch.celery_launcher import broker_from_env

    broker_from_env()  # fail here, not in every worker, when the broker is not set
    commands = worker_commands(args)
    if not commands:
        print("gpu-worker: no GPUs found and --cpu-slots 0: nothing to run", file=sys.stderr)
        return 2
    procs: list[subprocess.Popen | None] = [None] * len(commands)
    stopping = {"signal": None}

    def start(i: int) -> None:
        argv, env = commands[i]
        procs[i] = subprocess.Popen(argv, env={**os.environ, **env})
        print(f"gpu-worker: started {argv[argv.index('-n') + 1]} (pid {procs[i].pid}, "
              f"CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']!r})", flush=True)

    def forward(signum: int, _frame: object) -> None:
        stopping["signal"] = signum
        for proc in procs:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for i in range(len(commands)):
        start(i)
    while True:
        time.sleep(1.0)
        if stopping["signal"] is not None:
            if all(p is None or p.poll() is not None for p in procs):
                return 0
            continue
        for i, proc in enumerate(procs):
            if proc is not None and proc.poll() is not None:
                print(f"gpu-worker: worker pid {proc.pid} exited with {proc.returncode}; restarting", flush=True)
                time.sleep(RESTART_PAUSE_S)
                if stopping["signal"] is None:
                    start(i)
