"""A Dagster run launcher for one host with several GPUs: one `dagster api execute_run` process per run, each
with its own `CUDA_VISIBLE_DEVICES`.

Dagster's default launcher starts runs inside the code server, where every run sees every GPU. This launcher
spawns each run worker itself, in its own session, with one GPU (or a CPU slot on a host without GPUs).
All of its state lives in run tags (`neucodec/gpu`, `neucodec/host`, `neucodec/pid`), so that a restarted daemon
sees the occupancy of runs still going, the webserver can terminate a run the daemon launched, and the run
monitoring daemon can tell a dead worker from a live one.

Queueing stays with Dagster: the GPU assets declare `pool="gpu"`, `concurrency.pools.granularity: run`, and
`gpu_executor.launch.coordinator.GpuPoolRunCoordinator` keeps the `gpu` pool limit at `total_capacity`. Only runs in
the `gpu` pool (the encoder's) get a slot (`coordinator.encodes`); other runs (SFT, checks-only) start with no GPU
visible. The launcher never fails a run for lack of a free GPU; if the pool limit is set too high it puts the run on
the least-loaded GPU and warns in the run's events.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import psutil
from typing_extensions import Self

from gpu_executor.launch.coordinator import encodes
from gpu_executor.launch.dagster_internals import (
    CheckRunHealthResult,
    ConfigurableClass,
    ConfigurableClassData,
    EngineEventData,
    ExecuteRunArgs,
    LaunchRunContext,
    RunLauncher,
    WorkerStatus,
)
from gpu_executor.launch.gpus import GPU_SLOT_ENV, WORKER_HOST_ENV, detect_gpus, parse_gpu_list
from gpu_executor.launch.names import (
    GPU_POOL,
    GPU_TAG,
    HOST_TAG,
    NO_SLOT,
    PID_CREATE_TIME_TAG,
    PID_TAG,
    WORKER_LOG_TAG,
)
from gpu_executor.settings import load_settings

# Runs in these states hold their slot (while their worker process is alive).
_ACTIVE = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]
_LOG_TAIL_BYTES = 4000
_MAX_CHILDREN_KEPT = 512

logger = logging.getLogger(__name__)


class NoFreeSlotError(RuntimeError):
    """Every GPU slot of this host is held by a launched run."""


def _parse_env_vars(items: Sequence[str]) -> dict[str, str]:
    """`KEY=VALUE` sets a value for the run workers. A bare `KEY` (dagster-k8s' pass-through) is accepted and needs
    nothing: a run worker inherits the launcher's whole environment."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not key:
            raise ValueError(f"env_vars entry {item!r} has no variable name")
        if sep:
            out[key] = value
    return out


class GpuRunLauncher(RunLauncher, ConfigurableClass):
    """Launches each run as its own `dagster api execute_run` process pinned to one GPU of this host.

    Config (all optional):
      gpus: GPU ids to hand out (list or "0,1"); default: the launcher's CUDA_VISIBLE_DEVICES, else nvidia-smi,
            else torch.cuda.
      runs_per_gpu: runs that share one GPU (default 1).
      cpu_slots: concurrent runs on a host without GPUs (default 1).
      env_vars: extra `KEY=VALUE` for the run workers (which inherit the launcher's environment).
      log_dir: where each worker's stdout/stderr goes (default $DAGSTER_HOME/run_worker_logs).
      host: the name this host goes by in run tags (default the host name).
      terminate_grace_seconds: how long terminate waits after SIGTERM before SIGKILL (default 20).
      gpu_pool: the concurrency pool whose runs get a GPU (default `gpu`); other runs get none.
    """

    def __init__(
        self,
        inst_data: ConfigurableClassData | None = None,
        gpus: str | Sequence[str | int] | None = None,
        runs_per_gpu: int = 1,
        cpu_slots: int = 1,
        env_vars: Sequence[str] | None = None,
        log_dir: str | None = None,
        host: str | None = None,
        terminate_grace_seconds: float = 20.0,
        gpu_pool: str = GPU_POOL,
    ):
        self._inst_data = inst_data
        self.gpu_pool = gpu_pool
        self._configured_gpus = None if gpus is None else parse_gpu_list(gpus)
        if runs_per_gpu < 1:
            raise ValueError(f"runs_per_gpu must be at least 1, got {runs_per_gpu}")
        if cpu_slots < 1:
            raise ValueError(f"cpu_slots must be at least 1, got {cpu_slots}")
        self.runs_per_gpu = runs_per_gpu
        self.cpu_slots = cpu_slots
        self._env_vars = list(env_vars or [])
        _parse_env_vars(self._env_vars)  # fail on a malformed entry at load time, not at the first launch
        self._log_dir = log_dir
        self.host = host or socket.gethostname()
        self.terminate_grace_seconds = terminate_grace_seconds
        self._slots: list[str] | None = None  # detected lazily: the webserver never needs nvidia-smi
        self._slots_source = ""
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        super().__init__()

    # ConfigurableClass -------------------------------------------------------------------------------------
    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict[str, dg.Field]:
        return {
            "gpus": dg.Field(dg.Any, is_required=False, description="GPU ids: a list or a comma string."),
            "runs_per_gpu": dg.Field(dg.IntSource, is_required=False, default_value=1),
            "cpu_slots": dg.Field(dg.IntSource, is_required=False, default_value=1),
            "env_vars": dg.Field([str], is_required=False, default_value=[]),
            "log_dir": dg.Field(dg.StringSource, is_required=False),
            "host": dg.Field(dg.StringSource, is_required=False),
            "terminate_grace_seconds": dg.Field(float, is_required=False, default_value=20.0),
            "gpu_pool": dg.Field(dg.StringSource, is_required=False, default_value=GPU_POOL),
        }

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]) -> Self:
        return cls(inst_data=inst_data, **config_value)

    # Slots -------------------------------------------------------------------------------------------------
    @property
    def slots(self) -> list[str]:
        """The slot names runs are spread over: GPU ids, or `cpu0..cpuN-1` on a host without GPUs."""
        if self._slots is None:
            gpus, source = detect_gpus(self._configured_gpus)
            self._slots = gpus or [f"cpu{i}" for i in range(self.cpu_slots)]
            self._slots_source = source
        return self._slots

    @property
    def has_gpus(self) -> bool:
        return not self.slots[0].startswith("cpu") if self.slots else False

    @property
    def capacity_per_slot(self) -> int:
        return self.runs_per_gpu if self.has_gpus else 1

    @property
    def total_capacity(self) -> int:
        """What the `gpu` pool limit should be for this host."""
        return len(self.slots) * self.capacity_per_slot

    def occupancy(self) -> Counter[str]:
        """Runs per slot on this host, read from run storage: active runs whose worker is alive (or starting)."""
        counts: Counter[str] = Counter({slot: 0 for slot in self.slots})
        runs = self._instance.get_runs(filters=dg.RunsFilter(statuses=_ACTIVE, tags={HOST_TAG: self.host}))
        for run in runs:
            slot = run.tags.get(GPU_TAG)
            if slot in counts and self._worker_alive(run) is not False:
                counts[slot] += 1
        return counts

    def needs_gpu(self, run: dg.DagsterRun) -> bool:
        """A run needs a slot when it encodes: it holds the `gpu` pool and materializes assets (the queue's rule)."""
        return encodes(run, self.gpu_pool)

    def _pick_slot(self) -> tuple[str, bool]:
        """The least-loaded slot (first one on ties) and whether it is over capacity."""
        counts = self.occupancy()
        slot = min(self.slots, key=lambda s: (counts[s], self.slots.index(s)))
        return slot, counts[slot] >= self.capacity_per_slot

    def adopt_local_run(self, run: dg.DagsterRun) -> str:
        """Give a run that executes in the calling process (`dagster asset materialize`) a slot that no launched
        run holds, tagged as a launched run's is (this process as its worker), so that the queue's runs go
        elsewhere. Sets CUDA_VISIBLE_DEVICES of this process; raises NoFreeSlotError when every slot is busy."""
        with self._host_lock():
            slot, over = self._pick_slot()
            if over:
                raise NoFreeSlotError(
                    f"All {self.total_capacity} GPU slots of {self.host} ({', '.join(self.slots)}) are held by "
                    "launched runs; this process would share a GPU with one of them."
                )
            pid = os.getpid()
            self._instance.add_run_tags(run.run_id, {
                GPU_TAG: slot, HOST_TAG: self.host, PID_TAG: str(pid),
                PID_CREATE_TIME_TAG: repr(_create_time(pid) or 0.0),
            })
        os.environ["CUDA_VISIBLE_DEVICES"] = "" if slot.startswith("cpu") else slot
        os.environ[GPU_SLOT_ENV] = slot
        os.environ[WORKER_HOST_ENV] = self.host
        return slot

    @contextmanager
    def _host_lock(self) -> Iterator[None]:
        """Serializes slot choice among threads and processes of this host (daemon, webserver)."""
        path = self.log_dir / ".slot.lock"
        with self._lock, open(path, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @property
    def log_dir(self) -> Path:
        if self._log_dir:
            path = Path(self._log_dir)
        else:
            home = load_settings().dagster_home
            path = Path(home) / "run_worker_logs" if home else Path(tempfile.gettempdir()) / "neucodec_run_workers"
        path.mkdir(parents=True, exist_ok=True)
        return path

    # Launch ------------------------------------------------------------------------------------------------
    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        job_origin = run.job_code_origin
        if job_origin is None:
            raise dg.DagsterInvariantViolationError(
                f"Run {run.run_id} has no code origin; GpuRunLauncher can only launch runs created from a "
                "code location."
            )
        args = ExecuteRunArgs(
            job_origin=job_origin,
            run_id=run.run_id,
            instance_ref=self._instance.get_ref(),
            set_exit_code_on_failure=True,
        ).get_command_args()
        # The serialized arguments go through the environment (the CLI reads DAGSTER_EXECUTE_RUN_ARGS), not argv:
        # argv is world-readable in `ps`. The code origin's interpreter runs `-m dagster`, so PATH does not matter.
        command, serialized = list(args[:-1]), args[-1]
        executable = job_origin.repository_origin.executable_path
        if executable:
            command = [executable, "-m", "dagster", "api", "execute_run"]

        with self._host_lock():
            if self.needs_gpu(run):
                slot, over = self._pick_slot()
            else:  # SFT, checks-only and other runs outside the `gpu` pool hold no GPU slot and see no GPU
                slot, over = NO_SLOT, False
            gpu_env = slot if slot in self.slots and not slot.startswith("cpu") else ""
            env = {
                **os.environ,
                **_parse_env_vars(self._env_vars),
                "CUDA_VISIBLE_DEVICES": gpu_env,
                GPU_SLOT_ENV: slot,
                WORKER_HOST_ENV: self.host,
                "DAGSTER_EXECUTE_RUN_ARGS": serialized,
            }
            log_path = self.log_dir / f"{run.run_id}.log"
            # Slot first: from here on this run counts as occupying it, before the process even exists. The pid
            # tags are cleared: a retry or re-execution inherits its parent's tags, dead worker pid included.
            self._instance.add_run_tags(
                run.run_id,
                {GPU_TAG: slot, HOST_TAG: self.host, WORKER_LOG_TAG: str(log_path), PID_TAG: "",
                 PID_CREATE_TIME_TAG: ""},
            )
            with open(log_path, "ab") as log:
                proc = subprocess.Popen(
                    command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True, close_fds=True,
                )
            self._instance.add_run_tags(
                run.run_id, {PID_TAG: str(proc.pid), PID_CREATE_TIME_TAG: repr(_create_time(proc.pid) or 0.0)}
            )
        self._remember(run.run_id, proc)
        # Reap the child as soon as it exits, so no zombie outlives a run (and liveness checks stay truthful).
        threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True).start()

        message = f"Started run worker pid {proc.pid} on {self.host} with {slot_label(slot)}."
        if over:
            message = (
                f"WARNING: every slot was busy ({self.capacity_per_slot} run(s) per slot, slots {self.slots}):"
                f" this run shares {slot_label(slot)} with another. The `{self.gpu_pool}` pool limit is above this"
                f" host's {self.total_capacity} slots (GpuPoolRunCoordinator with gpu_pool_limit: auto keeps it"
                f" right). " + message
            )
            logger.warning(message)
        self._instance.report_engine_event(
            message,
            run,
            EngineEventData({
                "gpu": slot, "host": self.host, "pid": str(proc.pid), "worker log": str(log_path),
                "slots": ",".join(self.slots), "slots from": self._slots_source,
            }),
            cls=self.__class__,
        )

    def _remember(self, run_id: str, proc: subprocess.Popen[bytes]) -> None:
        """Keeps the Popen for exit codes in health messages; forgets the oldest finished ones past a bound."""
        self._children[run_id] = proc
        finished = [rid for rid, p in self._children.items() if p.returncode is not None]
        for rid in finished[: max(0, len(self._children) - _MAX_CHILDREN_KEPT)]:
            del self._children[rid]

    # Worker liveness ---------------------------------------------------------------------------------------
    def _worker_alive(self, run: dg.DagsterRun) -> bool | None:
        """True/False for a worker of this host; None when the run has no worker here to look at."""
        pid = run.tags.get(PID_TAG)
        if not pid or run.tags.get(HOST_TAG) != self.host:
            return None
        return _pid_alive(int(pid), float(run.tags.get(PID_CREATE_TIME_TAG) or 0))

    def _exit_description(self, run: dg.DagsterRun) -> str:
        proc = self._children.get(run.run_id)
        if proc is None:
            return "exit status unknown (not a child of this process)"
        try:
            # The reaper thread may be between waitpid and recording the code; the process is already gone.
            code = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "exit status not yet known"
        if code < 0:
            return f"killed by signal {signal.Signals(-code).name}"
        return f"exit code {code}"

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        pid = run.tags.get(PID_TAG)
        if not pid:
            return CheckRunHealthResult(
                WorkerStatus.RUNNING, "No worker pid recorded: not launched by GpuRunLauncher, or still starting."
            )
        if run.tags.get(HOST_TAG) != self.host:
            return CheckRunHealthResult(
                WorkerStatus.RUNNING,
                f"Worker runs on host {run.tags.get(HOST_TAG)}, not {self.host}; it cannot be checked from here.",
            )
        if self._worker_alive(run):
            return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=pid)
        return CheckRunHealthResult(
            WorkerStatus.FAILED,
            f"Run worker pid {pid} on {self.host} ({slot_label(run.tags.get(GPU_TAG, '?'))}) is gone: "
            f"{self._exit_description(run)}.",
            run_worker_id=pid,
        )

    def get_run_worker_debug_info(self, run: dg.DagsterRun, include_container_logs: bool | None = True) -> str | None:
        pid, log_path = run.tags.get(PID_TAG), run.tags.get(WORKER_LOG_TAG)
        if not pid:
            return None
        info = f"Run worker pid {pid} on {run.tags.get(HOST_TAG)}, {slot_label(run.tags.get(GPU_TAG, '?'))}."
        if include_container_logs and log_path and Path(log_path).is_file():
            with open(log_path, "rb") as handle:
                handle.seek(max(0, Path(log_path).stat().st_size - _LOG_TAIL_BYTES))
                info += f"\nLast lines of {log_path}:\n" + handle.read().decode(errors="replace")
        return info

    # Terminate ---------------------------------------------------------------------------------------------
    def terminate(self, run_id: str) -> bool:
        """SIGTERM to the worker's process group (Dagster turns it into a cancel), SIGKILL after the grace time.

        Works from any process of this host: the pid is in the run's tags.
        """
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return False
        self._instance.report_run_canceling(run)
        pid = run.tags.get(PID_TAG)
        if not pid or run.tags.get(HOST_TAG) != self.host:
            where = "no worker pid recorded" if not pid else f"its worker runs on host {run.tags.get(HOST_TAG)}"
            self._instance.report_engine_event(
                f"GpuRunLauncher on {self.host} cannot signal run {run_id}: {where}.", run, cls=self.__class__
            )
            return False
        if self._worker_alive(run):
            _signal_group(int(pid), signal.SIGTERM)
            deadline = time.monotonic() + self.terminate_grace_seconds
            while self._worker_alive(run) and time.monotonic() < deadline:
                time.sleep(0.1)
            if self._worker_alive(run):
                _signal_group(int(pid), signal.SIGKILL)
                self._instance.report_engine_event(
                    f"Run worker pid {pid} ignored SIGTERM for {self.terminate_grace_seconds:g} s; sent SIGKILL.",
                    run, cls=self.__class__,
                )
                deadline = time.monotonic() + 10
                while self._worker_alive(run) and time.monotonic() < deadline:
                    time.sleep(0.1)
        run = self._instance.get_run_by_id(run_id)
        if run is not None and not run.is_finished:
            self._instance.report_run_canceled(run, f"Run worker pid {pid} stopped by GpuRunLauncher.")
        return True

    def join(self, timeout: int = 30) -> None:
        """Wait for the run workers this object started (tests, ephemeral instances)."""
        deadline = time.monotonic() + timeout
        for proc in list(self._children.values()):
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))


def slot_label(slot: str) -> str:
    if slot == NO_SLOT:
        return "no GPU (the run is outside the `gpu` pool)"
    return f"CPU slot {slot}" if slot.startswith("cpu") else f"GPU {slot}"


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _pid_alive(pid: int, create_time: float) -> bool:
    """Alive and not a zombie, and the same process that was started (a pid can be reused)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return not create_time or abs(proc.create_time() - create_time) < 1.0
    except psutil.Error:
        return False


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """The worker leads its own session, so its group id is its pid; step subprocesses get the signal too."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
