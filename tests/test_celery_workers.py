"""Rented GPU boxes over Celery, for real: Redis broker, Postgres run storage, `neucodec-platform gpu-worker`
processes posing as boxes of two fake GPUs each, and Dagster's own daemon iterations (backfill, run queue, run
monitoring, run retries) called in the test process.

Runs are `tests/celery_jobs.py::held_shard` partitions: each records its worker and GPU and holds until the test
creates a `release` file, so nothing depends on timing. Each test uses its own queue names, so other users of the
shared Redis are never disturbed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import psutil
import pytest
import yaml

from gpu_executor.launch.celery_launcher import CeleryGpuRunLauncher
from gpu_executor.launch.dagster_internals import (
    BulkActionStatus,
    InProcessCodeLocationOrigin,
    InProcessWorkspaceLoadTarget,
    LoadableTargetOrigin,
    WorkspaceProcessContext,
)
from gpu_executor.launch.names import GPU_TAG, WORKER_TAG
from neucodec_assets.cli.backfills import DaemonLoop
from tests.fixtures.dagster_api import graphql, launch_asset_backfill, wait_for

JOBS_FILE = Path(__file__).with_name("celery_jobs.py")
LOCATION = "celery_jobs"
ASSET = dg.AssetKey("held_shard")
SHARDS = [f"shard-{i:02d}" for i in range(8)]
REDIS_URL = os.environ.get("NEUCODEC_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
HEARTBEAT_TIMEOUT_S = 6

def _redis_up(url: str) -> bool:
    host, port = url.split("//")[1].split("/")[0].split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module", autouse=True)
def _needs_redis() -> None:
    if not _redis_up(REDIS_URL):
        pytest.fail(f"Redis at {REDIS_URL} is not answering (.ci/run starts it; `redis-server --daemonize yes`)")


class Fleet:
    """An instance on the CeleryGpuRunLauncher, the daemons in-process, and gpu-worker boxes as processes."""

    def __init__(self, tmp: Path, pg_url: str, broker: str, pool_limit: int, start_timeout_s: int = 120,
                 target: dict[str, str] | None = None, location: str = LOCATION) -> None:
        self.tmp, self.broker = tmp, broker
        # The code location: celery_jobs.py by default; e.g. {"module_name": "neucodec_assets.definitions"}.
        self.target, self.location = target or {"python_file": str(JOBS_FILE), "attribute": "defs"}, location
        suffix = uuid.uuid4().hex[:8]
        self.gpu_queue, self.cpu_queue = f"gpu-{suffix}", f"dagster-{suffix}"
        self.home = tmp / "home"
        self.home.mkdir()
        self.records = tmp / "records"
        for sub in ("runs", "tmp", "final"):
            (self.records / sub).mkdir(parents=True)
        config: dict[str, Any] = {
            "storage": {"postgres": {"postgres_url": pg_url}},
            "run_launcher": {"module": "gpu_executor.launch.celery_launcher", "class": "CeleryGpuRunLauncher", "config": {
                "broker": broker, "gpu_queue": self.gpu_queue, "default_queue": self.cpu_queue,
                "heartbeat_timeout_seconds": HEARTBEAT_TIMEOUT_S}},
            "run_coordinator": {"module": "gpu_executor.launch.coordinator", "class": "GpuPoolRunCoordinator",
                                "config": {"gpu_pool_limit": pool_limit}},
            "concurrency": {"pools": {"granularity": "run"}},
            "run_monitoring": {"enabled": True, "poll_interval_seconds": 1, "start_timeout_seconds": start_timeout_s,
                               "max_resume_run_attempts": 0},
            "run_retries": {"enabled": True, "max_retries": 2, "retry_on_asset_or_op_failure": False},
            "telemetry": {"enabled": False},
        }
        (self.home / "dagster.yaml").write_text(yaml.safe_dump(config))
        self.boxes: dict[str, subprocess.Popen] = {}

    @contextmanager
    def running(self) -> Iterator["Fleet"]:
        origin = InProcessCodeLocationOrigin(
            loadable_target_origin=LoadableTargetOrigin(
                executable_path=sys.executable, working_directory=str(JOBS_FILE.parent.parent), **self.target),
            location_name=self.location,
        )
        try:
            with dg.DagsterInstance.from_config(str(self.home)) as instance, \
                    WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget(origin)) as context:
                assert isinstance(instance.run_launcher, CeleryGpuRunLauncher)
                self.instance, self.context = instance, context
                self.daemons = DaemonLoop(context)
                yield self
        finally:
            for name in list(self.boxes):
                self.kill_box(name)

    def start_box(self, name: str, gpus: str, *extra_args: str, env: dict[str, str] | None = None) -> None:
        """`neucodec-platform gpu-worker` as one box would run it, in its own session (so it can be killed whole)."""
        env = {**os.environ, "DAGSTER_HOME": str(self.home), "NEUCODEC_CELERY_BROKER": self.broker,
               "NEUCODEC_CELERY_HEARTBEAT_SECONDS": "1", "NEUCODEC_WORKER_BEAT_SECONDS": "1",
               "NEUCODEC_TEST_CELERY_DIR": str(self.records), **(env or {})}
        logfile = open(self.tmp / f"{name}.log", "ab")
        self.boxes[name] = subprocess.Popen(
            [sys.executable, "-m", "neucodec_assets.cli", "gpu-worker", "--gpus", gpus, "--name", name,
             "--queue", self.gpu_queue, "--cpu-queue", self.cpu_queue, "--loglevel", "WARNING", *extra_args],
            env=env, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True,
            cwd=str(JOBS_FILE.parent.parent))

    def box_processes(self, name: str) -> list[psutil.Process]:
        pgid = self.boxes[name].pid
        out = []
        for proc in psutil.process_iter(["pid"]):
            try:
                if os.getpgid(proc.pid) == pgid:
                    out.append(proc)
            except (ProcessLookupError, PermissionError):
                pass
        return out

    def kill_box(self, name: str) -> None:
        """SIGKILL to the box's whole process group: its supervisor, Celery workers and their run processes."""
        proc = self.boxes.pop(name)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)

    def tick(self) -> None:
        """One iteration of each daemon that carries a backfill: backfill, queue, monitoring, run retries."""
        self.daemons.tick()

    def started(self) -> dict[str, dict]:
        return {p.name.split(".")[0]: json.loads(p.read_text()) for p in (self.records / "runs").glob("*.start.json")}

    def ended(self) -> dict[str, dict]:
        return {p.name.split(".")[0]: json.loads(p.read_text()) for p in (self.records / "runs").glob("*.end.json")}

    def explain(self) -> str:
        lines = []
        for run in self.instance.get_runs():
            lines.append(f"{run.run_id} {run.status.value} {run.tags.get('dagster/partition')} "
                         f"{run.tags.get(WORKER_TAG)} {self.instance.run_launcher.get_run_worker_debug_info(run)}")
        for name in sorted(p.name for p in self.tmp.glob("*.log")):
            lines.append(f"--- {name}\n" + (self.tmp / name).read_text()[-3000:])
        return "\n".join(lines)

    def wait(self, what: str, predicate, timeout: float = 120.0) -> Any:
        return wait_for(what, predicate, timeout=timeout, tick=self.tick, explain=self.explain, every=0.5)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _backfill_done(fleet: Fleet, backfill_id: str) -> bool:
    return fleet.instance.get_backfill(backfill_id).status != BulkActionStatus.REQUESTED


def _assert_no_slot_held_two_runs(fleet: Fleet, killed_at: dict[str, float]) -> None:
    """Per (worker, CUDA device): run intervals never overlap. A killed box's runs end when it was killed."""
    ended = fleet.ended()
    by_slot: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for run_id, rec in fleet.started().items():
        end = ended.get(run_id, {}).get("end") or killed_at[rec["worker"].split("@")[1]]
        by_slot.setdefault((rec["worker"], rec["cuda_visible_devices"]), []).append((rec["start"], end))
    for slot, spans in by_slot.items():
        spans.sort()
        for (_, end), (start, _) in zip(spans, spans[1:]):
            assert start >= end, f"GPU slot {slot} held two runs at once: {spans}"


def test_two_boxes_spread_survive_a_killed_box_and_take_a_joining_box(postgres_db, tmp_path: Path) -> None:
    """8 shards over boxes A and B (2 GPUs each): one run per GPU; A is SIGKILLed mid-shard; C joins and takes
    A's retried shards; every shard is written once, by one run, never partially."""
    fleet = Fleet(tmp_path, postgres_db["url"], REDIS_URL, pool_limit=4)
    with fleet.running():
        fleet.start_box("boxA", "0,1")
        fleet.start_box("boxB", "2,3")
        backfill_id = launch_asset_backfill(fleet.context, ASSET, SHARDS, title="celery fleet")

        # The pool lets 4 runs start; no worker prefetches, so each of the 4 GPU workers holds exactly one.
        first = fleet.wait("4 runs holding on 4 GPUs", lambda: (s := fleet.started()) and len(s) >= 4 and s)
        assert len(first) == 4
        assert {r["worker"] for r in first.values()} == {"gpu0@boxA", "gpu1@boxA", "gpu2@boxB", "gpu3@boxB"}
        assert all(r["cuda_visible_devices"] == r["worker"][3] for r in first.values())
        for run_id, rec in first.items():
            run = fleet.instance.get_run_by_id(run_id)
            assert run.tags[WORKER_TAG] == rec["worker"] and run.tags[GPU_TAG] == rec["cuda_visible_devices"]

        on_a = {run_id for run_id, r in first.items() if r["worker"].endswith("@boxA")}
        a_pids = {p.pid for p in fleet.box_processes("boxA")}
        assert {first[r]["pid"] for r in on_a} <= a_pids
        fleet.kill_box("boxA")
        killed_at = {"boxA": time.time()}
        wait_for("box A's processes gone", lambda: not [p for p in a_pids if _alive(p)], timeout=15,
                 explain=lambda: str([(p, psutil.Process(p).cmdline()) for p in a_pids if _alive(p)]))
        fleet.start_box("boxC", "4,5")

        # A's runs: heartbeat stops -> monitoring fails them -> run retries queue them again; the freed pool
        # slots go to the next runs, which only box C's idle GPUs can take (B's are held).
        lost = {fleet.instance.get_run_by_id(r).tags["dagster/partition"] for r in on_a}
        fleet.wait("box A's runs failed by run monitoring and box C taking runs", lambda: all(
            fleet.instance.get_run_by_id(r).status == dg.DagsterRunStatus.FAILURE for r in on_a)
            and any(r["worker"].endswith("@boxC") for r in fleet.started().values()))
        (fleet.records / "release").touch()
        fleet.wait("the backfill to finish", lambda: _backfill_done(fleet, backfill_id), timeout=150)

        assert fleet.instance.get_backfill(backfill_id).status == BulkActionStatus.COMPLETED_SUCCESS
        writes = (fleet.records / "writes.log").read_text().split()
        partitions, writers = writes[0::2], writes[1::2]
        assert sorted(partitions) == SHARDS, "each shard written exactly once"
        assert not set(writers) & on_a, "a killed run wrote output"
        by_partition = {rec["partition"]: rec["worker"] for rec in fleet.ended().values()}
        assert all(not by_partition[p].endswith("@boxA") for p in lost), by_partition
        finals = {p.stem: json.loads(p.read_text()) for p in (fleet.records / "final").glob("*.json")}
        assert sorted(finals) == SHARDS and all("end" in rec for rec in finals.values())
        assert {r["worker"].split("@")[1] for r in fleet.ended().values()} == {"boxB", "boxC"}
        _assert_no_slot_held_two_runs(fleet, killed_at)


TERMINATE_RUN = """
mutation Terminate($runId: String!) {
  terminateRun(runId: $runId) {
    __typename
    ... on TerminateRunFailure { message }
    ... on PythonError { message stack }
  }
}
"""


def test_terminate_from_the_ui_stops_the_remote_run(postgres_db, tmp_path: Path) -> None:
    """The UI's terminateRun on a run held on a box: the run's processes on the box exit, the run ends CANCELED,
    its output is never written, and the box's worker takes the next run."""
    fleet = Fleet(tmp_path, postgres_db["url"], REDIS_URL, pool_limit=1)
    with fleet.running():
        fleet.start_box("boxA", "0")
        backfill_id = launch_asset_backfill(fleet.context, ASSET, SHARDS[:2], title="celery terminate")
        first = fleet.wait("a run holding on the GPU", lambda: fleet.started())
        (run_id, rec), = first.items()
        step = psutil.Process(rec["pid"])
        run_process = step.parent()
        assert "execute_run" in " ".join(run_process.cmdline()), run_process.cmdline()
        assert fleet.instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.STARTED

        data = graphql(fleet.context, TERMINATE_RUN, {"runId": run_id})["terminateRun"]
        assert data["__typename"] == "TerminateRunSuccess", data
        fleet.wait("the run CANCELED and its processes on the box gone", lambda: (
            fleet.instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.CANCELED
            and not _alive(step.pid) and not _alive(run_process.pid)), timeout=45)
        assert not (fleet.records / "final" / f"{rec['partition']}.json").exists()
        assert run_id not in fleet.ended()
        again = [r.run_id for r in fleet.instance.get_runs() if r.tags.get("dagster/partition") == rec["partition"]]
        assert again == [run_id], "a canceled run is not retried"

        # The box's worker survived the terminate: it takes the backfill's other shard.
        (fleet.records / "release").touch()
        fleet.wait("the backfill to finish", lambda: _backfill_done(fleet, backfill_id), timeout=45)
        other = [r for r in fleet.ended().values() if r["run_id"] != run_id]
        assert [r["partition"] for r in other] == [p for p in SHARDS[:2] if p != rec["partition"]]
        assert other[0]["worker"] == "gpu0@boxA"


class DedicatedRedis:
    """A redis-server of the test's own on a free port, without persistence (a restart loses every message)."""

    def __init__(self, tmp: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir, self.proc = tmp, None

    def start(self) -> None:
        logfile = open(self.dir / "redis.log", "ab")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir)], stdout=logfile, stderr=subprocess.STDOUT)
        wait_for(f"redis-server on port {self.port}", lambda: _redis_up(self.url), timeout=15)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=15)
        self.proc = None


def test_broker_restart_mid_backfill_every_shard_done_once(postgres_db, tmp_path: Path) -> None:
    """Redis restarts (losing its queued messages and task results) while two runs hold on two boxes and two more
    wait in its queue. The boxes reconnect and finish their runs; the two lost runs, never started, are failed by
    run monitoring's start timeout and started again by run retries on the reconnected boxes; every shard is
    written exactly once."""
    redis = DedicatedRedis(tmp_path)
    redis.start()
    shards = SHARDS[:4]
    fleet = Fleet(tmp_path, postgres_db["url"], redis.url, pool_limit=4, start_timeout_s=20)
    try:
        with fleet.running():
            fleet.start_box("boxA", "0")
            fleet.start_box("boxB", "1")
            backfill_id = launch_asset_backfill(fleet.context, ASSET, shards, title="celery broker restart")

            def statuses() -> list[dg.DagsterRunStatus]:
                return sorted(r.status.value for r in fleet.instance.get_runs())

            # Two runs hold on the two GPUs, two more are launched and wait in Redis's queue for a free worker.
            fleet.wait("2 runs holding and 2 launched runs waiting in the broker", lambda: len(fleet.started()) == 2
                       and statuses() == ["STARTED", "STARTED", "STARTING", "STARTING"])
            held = set(fleet.started())
            waiting = {r.run_id for r in fleet.instance.get_runs() if r.status == dg.DagsterRunStatus.STARTING}

            redis.stop()
            redis.start()
            (fleet.records / "release").touch()
            fleet.wait("the held runs to finish over the restarted broker", lambda: held <= set(fleet.ended())
                       and all(fleet.instance.get_run_by_id(r).status == dg.DagsterRunStatus.SUCCESS for r in held))
            (fleet.records / "release").unlink()

            # The waiting runs' messages died with Redis: run monitoring fails them, run retries launch them again.
            fleet.wait("the lost runs failed by the start timeout", lambda: all(
                fleet.instance.get_run_by_id(r).status == dg.DagsterRunStatus.FAILURE for r in waiting), timeout=60)
            for run_id in waiting:
                assert run_id not in fleet.started(), "a run whose message was lost started anyway"
            retried = fleet.wait("the 2 retried runs holding, one on each reconnected box", lambda: (
                s := {k: v for k, v in fleet.started().items() if k not in held}) and len(s) == 2 and s)
            assert {r["worker"] for r in retried.values()} == {"gpu0@boxA", "gpu1@boxB"}
            assert {r["partition"] for r in retried.values()} == {
                fleet.instance.get_run_by_id(r).tags["dagster/partition"] for r in waiting}
            (fleet.records / "release").touch()
            fleet.wait("the backfill to finish", lambda: _backfill_done(fleet, backfill_id), timeout=60)

            assert fleet.instance.get_backfill(backfill_id).status == BulkActionStatus.COMPLETED_SUCCESS
            writes = (fleet.records / "writes.log").read_text().split()
            assert sorted(writes[0::2]) == shards, "each shard written exactly once"
            assert set(writes[1::2]) == held | set(retried)
            finals = {p.stem for p in (fleet.records / "final").glob("*.json")}
            assert sorted(finals) == shards
    finally:
        redis.stop()
