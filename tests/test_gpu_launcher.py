"""GpuRunLauncher with real run worker processes, fake GPU ids and Postgres run storage.

Each run executes `tests/launcher_jobs.py::device_job` in its own `dagster api execute_run` process; its op records
the CUDA_VISIBLE_DEVICES it saw and holds until the test creates a `release` file, so nothing depends on timing.
The run queue, run monitoring and run retries are Dagster's own daemon iterations, called in the test process.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import psutil
import pytest
import yaml

from gpu_executor.launch.dagster_internals import (
    InProcessCodeLocationOrigin,
    InProcessWorkspaceLoadTarget,
    LoadableTargetOrigin,
    QueuedRunCoordinatorDaemon,
    WorkerStatus,
    WorkspaceProcessContext,
    WorkspaceRequestContext,
    consume_new_runs_for_automatic_reexecution,
    execute_run_monitoring_iteration,
)
from gpu_executor.launch.gpus import current_gpu_slot, detect_gpus
from gpu_executor.launch.host_launcher import GpuRunLauncher
from gpu_executor.launch.names import GPU_TAG, HOST_TAG, PID_TAG
from tests.fixtures.dagster_api import wait_for

REPO_ROOT = Path(__file__).resolve().parents[1]

JOBS_FILE = Path(__file__).with_name("launcher_jobs.py")
LOCATION = "launcher_jobs"
log = logging.getLogger(__name__)


def write_instance(home: Path, pg_url: str, launcher_config: dict[str, Any], pools: bool) -> None:
    config: dict[str, Any] = {
        "storage": {"postgres": {"postgres_url": pg_url}},
        "run_launcher": {"module": "gpu_executor.launch.host_launcher", "class": "GpuRunLauncher", "config": launcher_config},
        "run_monitoring": {"enabled": True, "max_resume_run_attempts": 0, "poll_interval_seconds": 1},
        "run_retries": {"enabled": True, "max_retries": 1},
        "run_coordinator": {"module": "dagster.core.run_coordinator", "class": "QueuedRunCoordinator"},
        "telemetry": {"enabled": False},
    }
    if pools:
        config["concurrency"] = {"pools": {"granularity": "run", "default_limit": 2}}
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))


@contextmanager
def workspace_for(instance: dg.DagsterInstance) -> Iterator[WorkspaceProcessContext]:
    origin = InProcessCodeLocationOrigin(
        loadable_target_origin=LoadableTargetOrigin(
            executable_path=sys.executable, python_file=str(JOBS_FILE), attribute="defs",
            working_directory=str(JOBS_FILE.parent.parent),
        ),
        location_name=LOCATION,
    )
    with WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget(origin)) as context:
        yield context


def create_run(workspace: WorkspaceRequestContext, out_dir: Path, ignore_sigterm: bool = False) -> dg.DagsterRun:
    """Creates a run of device_job the way the webserver does (snapshots, plan, origins)."""
    instance = workspace.instance
    location = workspace.get_code_location(LOCATION)
    remote_job = location.get_repository("__repository__").get_full_job("device_job")
    op_config = {"out_dir": str(out_dir), "ignore_sigterm": ignore_sigterm}
    run_config = {"ops": {"record_device": {"config": op_config}}}
    plan = location.get_execution_plan(
        remote_job, run_config, step_keys_to_execute=None, known_state=None, instance=instance
    )
    return instance.create_run(
        job_name="device_job", run_id=None, run_config=run_config, resolved_op_selection=None,
        step_keys_to_execute=None, status=dg.DagsterRunStatus.NOT_STARTED, op_selection=None,
        root_run_id=None, parent_run_id=None, tags={}, job_snapshot=remote_job.job_snapshot,
        execution_plan_snapshot=plan.execution_plan_snapshot, parent_job_snapshot=remote_job.parent_job_snapshot,
        remote_job_origin=remote_job.get_remote_origin(), job_code_origin=remote_job.get_python_origin(),
        asset_selection=None, asset_check_selection=None, asset_graph=workspace.asset_graph,
    )


def started_record(out_dir: Path, run_id: str) -> dict[str, Any] | None:
    path = out_dir / f"{run_id}.start.json"
    return json.loads(path.read_text()) if path.exists() else None


def end_record(out_dir: Path, run_id: str) -> dict[str, Any] | None:
    path = out_dir / f"{run_id}.end.json"
    return json.loads(path.read_text()) if path.exists() else None


def explain_runs(instance: dg.DagsterInstance, run_ids: list[str]) -> Callable[[], str]:
    """Statuses, tags and worker log tails of the runs, for a timeout message."""

    def explain() -> str:
        lines = []
        for run_id in run_ids:
            run = instance.get_run_by_id(run_id)
            lines.append(f"{run_id}: {run.status.value} {dict(run.tags)}")
            lines.append(str(instance.run_launcher.get_run_worker_debug_info(run)))
        return "\n".join(lines)

    return explain


def status(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRunStatus:
    run = instance.get_run_by_id(run_id)
    assert run is not None
    return run.status


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    path = tmp_path / "records"
    path.mkdir()
    return path


def test_four_runs_on_two_gpus_queue_and_never_share(postgres_db, tmp_path: Path, out_dir: Path) -> None:
    """The run queue (pool gpu, limit 2) holds runs back; the launcher gives each started run a free GPU."""
    home = tmp_path / "home"
    write_instance(home, postgres_db["url"], {"gpus": ["7", "3"], "log_dir": str(tmp_path / "logs")}, pools=True)
    with dg.DagsterInstance.from_config(str(home)) as instance, workspace_for(instance) as context:
        assert isinstance(instance.run_launcher, GpuRunLauncher)
        queue = QueuedRunCoordinatorDaemon(interval_seconds=1)

        def dequeue() -> None:
            list(queue.run_iteration(context))

        # Dagster creates a default pool limit lazily, after the first dequeue already counted pools: this plain
        # QueuedRunCoordinator needs the limit set up front (GpuPoolRunCoordinator sets it on submit).
        instance.event_log_storage.set_concurrency_slots("gpu", instance.run_launcher.total_capacity)
        workspace = context.create_request_context()
        run_ids = [create_run(workspace, out_dir).run_id for _ in range(4)]
        assert instance.get_run_by_id(run_ids[0]).run_op_concurrency.all_pools == {"gpu"}
        for run_id in run_ids:
            instance.submit_run(run_id, workspace)

        # Two runs start and hold their GPUs; the pool keeps the other two queued, however often the queue ticks.
        holding = wait_for(
            "two runs to hold a GPU",
            lambda: (started := [r for r in run_ids if started_record(out_dir, r)]) and len(started) >= 2 and started,
            tick=dequeue,
        )
        assert len(holding) == 2, holding
        for _ in range(3):
            dequeue()
        waiting = [r for r in run_ids if r not in holding]
        assert [status(instance, r) for r in waiting] == [dg.DagsterRunStatus.QUEUED] * 2
        assert sorted(started_record(out_dir, r)["cuda_visible_devices"] for r in holding) == ["3", "7"]

        # A launcher object of a fresh instance (a restarted daemon, or the webserver) sees who holds what.
        with dg.DagsterInstance.from_config(str(home)) as restarted:
            assert dict(restarted.run_launcher.occupancy()) == {"7": 1, "3": 1}

        (out_dir / "release").touch()
        wait_for(
            "all four runs to finish",
            lambda: all(instance.get_run_by_id(r).is_finished for r in run_ids),
            tick=dequeue,
        )
        records = {r: end_record(out_dir, r) for r in run_ids}
        for run_id, record in records.items():
            run = instance.get_run_by_id(run_id)
            assert run.status == dg.DagsterRunStatus.SUCCESS, instance.run_launcher.get_run_worker_debug_info(run)
            # Each run saw exactly the GPU the launcher tagged it with, and nothing else.
            assert record["cuda_visible_devices"] == record["gpu_slot"] == run.tags[GPU_TAG]
        by_gpu: dict[str, list[tuple[float, float]]] = {}
        for record in records.values():
            by_gpu.setdefault(record["cuda_visible_devices"], []).append((record["start"], record["end"]))
        assert sorted(len(v) for v in by_gpu.values()) == [2, 2]
        for gpu, intervals in by_gpu.items():
            (s1, e1), (s2, e2) = sorted(intervals)
            assert e1 <= s2, f"two runs overlapped on GPU {gpu}: {intervals}"
        instance.run_launcher.join()


def test_kill_terminate_restart_and_retry(postgres_db, tmp_path: Path, out_dir: Path) -> None:
    """Occupancy survives a launcher restart; terminate cancels; a SIGKILLed worker is failed and retried."""
    home = tmp_path / "home"
    launcher_config = {"gpus": "0,1", "log_dir": str(tmp_path / "logs"), "terminate_grace_seconds": 60.0}
    write_instance(home, postgres_db["url"], launcher_config, pools=False)
    with dg.DagsterInstance.from_config(str(home)) as instance, workspace_for(instance) as context:
        queue = QueuedRunCoordinatorDaemon(interval_seconds=1)
        workspace = context.create_request_context()
        runs = {name: create_run(workspace, out_dir).run_id for name in ("cancel", "kill", "extra")}
        for run_id in runs.values():
            instance.launch_run(run_id, workspace)
        wait_for("three runs to hold", lambda: all(started_record(out_dir, r) for r in runs.values()))
        tags = {name: instance.get_run_by_id(r).tags for name, r in runs.items()}
        # Two GPUs, three runs: the third shares the least-loaded GPU (with a warning) instead of failing.
        assert sorted(t[GPU_TAG] for t in tags.values()) == ["0", "0", "1"]
        extra_events = [e.message for e in instance.all_logs(runs["extra"]) if e.message]
        assert any("WARNING: every slot was busy" in m for m in extra_events), extra_events
        for name, run_id in runs.items():
            assert started_record(out_dir, run_id)["cuda_visible_devices"] == tags[name][GPU_TAG]

        with dg.DagsterInstance.from_config(str(home)) as other:
            # A new launcher object (daemon restart / webserver) sees the occupancy and the live workers.
            webserver_launcher = other.run_launcher
            assert dict(webserver_launcher.occupancy()) == {"0": 2, "1": 1}
            for run_id in runs.values():
                health = webserver_launcher.check_run_worker_health(other.get_run_by_id(run_id))
                assert health.status == WorkerStatus.RUNNING, health

            # Terminate from that other process-like object: SIGTERM, Dagster turns it into a cancel.
            assert webserver_launcher.terminate(runs["cancel"]) is True
            assert status(instance, runs["cancel"]) == dg.DagsterRunStatus.CANCELED
            # The worker itself turned SIGTERM into an interrupt and reported the cancel (no SIGKILL needed).
            cancel_messages = [e.message for e in instance.all_logs(runs["cancel"])]
            assert 'Execution of run for "device_job" canceled.' in cancel_messages, cancel_messages
            assert not any("sent SIGKILL" in m for m in cancel_messages), cancel_messages

            # SIGKILL the worker of another run: health FAILED, seen by the new launcher and by the parent.
            kill_pid = int(tags["kill"][PID_TAG])
            os.killpg(kill_pid, signal.SIGKILL)
            killed = instance.get_run_by_id(runs["kill"])
            wait_for("the killed worker to be gone",
                     lambda: instance.run_launcher.check_run_worker_health(killed).status == WorkerStatus.FAILED)
            parent_view = instance.run_launcher.check_run_worker_health(killed)
            assert "killed by signal SIGKILL" in (parent_view.msg or ""), parent_view
            assert webserver_launcher.check_run_worker_health(killed).status == WorkerStatus.FAILED
            # Launched in order cancel, kill, extra: GPUs 0, 1, 0. Only "extra" still holds one.
            assert [tags[name][GPU_TAG] for name in ("cancel", "kill", "extra")] == ["0", "1", "0"]
            assert dict(webserver_launcher.occupancy()) == {"0": 1, "1": 0}

        # Dagster's run monitoring marks it failed; run retries re-execute it through the launcher.
        list(execute_run_monitoring_iteration(context, log))
        assert status(instance, runs["kill"]) == dg.DagsterRunStatus.FAILURE
        (out_dir / "release").touch()
        failed = instance.get_run_records(dg.RunsFilter(run_ids=[runs["kill"]]))
        list(consume_new_runs_for_automatic_reexecution(context, failed, log))
        retry = wait_for(
            "the retry run",
            lambda: next(iter(instance.get_runs(dg.RunsFilter(tags={"dagster/parent_run_id": runs["kill"]}))), None),
        )
        # The retry goes through the run queue (it inherited the parent's neucodec/* tags; launch replaces them).
        wait_for("the retry and the extra run to finish",
                 lambda: all(instance.get_run_by_id(r).is_finished for r in (retry.run_id, runs["extra"])),
                 tick=lambda: list(queue.run_iteration(context)),
                 explain=explain_runs(instance, [retry.run_id, runs["extra"]]))
        for run_id in (retry.run_id, runs["extra"]):
            run = instance.get_run_by_id(run_id)
            assert run.status == dg.DagsterRunStatus.SUCCESS, instance.run_launcher.get_run_worker_debug_info(run)
            assert end_record(out_dir, run_id)["cuda_visible_devices"] == run.tags[GPU_TAG]
        retried = instance.get_run_by_id(retry.run_id)
        assert retried.tags[HOST_TAG] == instance.run_launcher.host
        assert retried.tags[PID_TAG] != tags["kill"][PID_TAG]
        instance.run_launcher.join()


def test_host_without_gpus_runs_on_cpu_slots(postgres_db, tmp_path: Path, out_dir: Path) -> None:
    """No GPU: each run gets its own CPU slot and sees no CUDA device; a worker deaf to SIGTERM gets SIGKILL."""
    home = tmp_path / "home"
    config = {"gpus": [], "cpu_slots": 2, "log_dir": str(tmp_path / "logs"), "terminate_grace_seconds": 2.0}
    write_instance(home, postgres_db["url"], config, pools=False)
    with dg.DagsterInstance.from_config(str(home)) as instance, workspace_for(instance) as context:
        workspace = context.create_request_context()
        run_ids = [create_run(workspace, out_dir).run_id for _ in range(2)]
        stuck = create_run(workspace, out_dir, ignore_sigterm=True).run_id
        for run_id in [*run_ids, stuck]:
            instance.launch_run(run_id, workspace)
        wait_for("three runs to hold a CPU slot", lambda: all(started_record(out_dir, r) for r in [*run_ids, stuck]),
                 explain=explain_runs(instance, [*run_ids, stuck]))
        assert sorted(instance.get_run_by_id(r).tags[GPU_TAG] for r in [*run_ids, stuck]) == ["cpu0", "cpu0", "cpu1"]

        stuck_pid = int(instance.get_run_by_id(stuck).tags[PID_TAG])
        assert instance.run_launcher.terminate(stuck) is True
        assert status(instance, stuck) == dg.DagsterRunStatus.CANCELED
        messages = [e.message for e in instance.all_logs(stuck)]
        assert any("ignored SIGTERM" in m and "sent SIGKILL" in m for m in messages), messages
        assert not psutil.pid_exists(stuck_pid) or psutil.Process(stuck_pid).status() == psutil.STATUS_ZOMBIE

        (out_dir / "release").touch()
        wait_for("both runs to finish", lambda: all(instance.get_run_by_id(r).is_finished for r in run_ids),
                 explain=explain_runs(instance, run_ids))
        for run_id in run_ids:
            run = instance.get_run_by_id(run_id)
            assert run.status == dg.DagsterRunStatus.SUCCESS, instance.run_launcher.get_run_worker_debug_info(run)
            record = end_record(out_dir, run_id)
            assert record["cuda_visible_devices"] == "" and record["gpu_slot"] == run.tags[GPU_TAG]
        instance.run_launcher.join()


def test_gpu_detection_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Config list, then the launcher's CUDA_VISIBLE_DEVICES, then nvidia-smi, then torch."""
    assert detect_gpus([0, "1"], env={"CUDA_VISIBLE_DEVICES": "5"}) == (["0", "1"], "config")
    assert detect_gpus(None, env={"CUDA_VISIBLE_DEVICES": "GPU-a1b2, GPU-c3d4"}) == (
        ["GPU-a1b2", "GPU-c3d4"], "CUDA_VISIBLE_DEVICES")
    for hidden in ("", "-1", "NoDevFiles"):
        assert detect_gpus(None, env={"CUDA_VISIBLE_DEVICES": hidden}) == ([], "CUDA_VISIBLE_DEVICES")
    # This box has no GPU and no nvidia-smi: a stand-in prints what `nvidia-smi --query-gpu=index
    # --format=csv,noheader` prints on a two-GPU host.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "nvidia-smi"
    fake.write_text('#!/bin/sh\n[ "$1" = "--query-gpu=index" ] || exit 2\nprintf "0\\n1\\n"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    assert detect_gpus(None, env={}) == (["0", "1"], "nvidia-smi")
    slot = current_gpu_slot({"NEUCODEC_GPU_SLOT": "1", "CUDA_VISIBLE_DEVICES": "1", "NEUCODEC_WORKER_HOST": "h"})
    assert slot == {"gpu_slot": "1", "cuda_visible_devices": "1", "host": "h"}


def test_the_process_that_picks_a_gpu_never_starts_cuda(tmp_path: Path) -> None:
    """On a host without nvidia-smi the GPUs are counted by torch, in a child process: CUDA reads
    CUDA_VISIBLE_DEVICES once, when it starts, so a launcher or GPU worker that asked torch itself could no longer
    hand out (or be held to) one GPU. Here the launcher picks its slots and the gpu-worker builds its workers' commands;
    then neither process has torch loaded, so CUDA cannot have started in it."""
    code = textwrap.dedent("""
        import argparse, json, sys
        from gpu_executor.launch.gpus import detect_gpus, gpus_from_torch
        from gpu_executor.launch.gpu_worker_cli import worker_commands
        from gpu_executor.launch.host_launcher import GpuRunLauncher
        launcher = GpuRunLauncher(log_dir=sys.argv[1])
        args = argparse.Namespace(gpus="auto", name="box", queue=None, cpu_slots=1, cpu_queue="dagster",
                                  loglevel="INFO")
        print(json.dumps({"slots": launcher.slots, "detected": detect_gpus(), "torch": gpus_from_torch(),
                          "workers": len(worker_commands(args)), "torch_loaded": "torch" in sys.modules}))
    """)
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env["PATH"] = str(tmp_path)  # no nvidia-smi on this PATH: the torch count is what is left
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True,
                         cwd=REPO_ROOT, timeout=300, check=True)
    facts = json.loads(out.stdout.strip().splitlines()[-1])
    assert facts["torch_loaded"] is False, facts
    # What the child counted is what both hand out: its GPUs (a GPU host), else the launcher's CPU slot.
    gpus = facts["torch"] or []
    assert facts["detected"] == [gpus, "torch" if facts["torch"] is not None else "none found"], facts
    assert facts["slots"] == (gpus or ["cpu0"]) and facts["workers"] == len(gpus) + 1, facts


def test_cpu_slots_and_config_errors(tmp_path: Path) -> None:
    """No GPU: CPU slots hide all devices; bad config fails when the instance loads, not at the first run."""
    launcher = GpuRunLauncher(gpus=[], cpu_slots=3, log_dir=str(tmp_path))
    assert launcher.slots == ["cpu0", "cpu1", "cpu2"] and launcher.total_capacity == 3
    assert GpuRunLauncher(gpus="2, 5", runs_per_gpu=2).total_capacity == 4
    with pytest.raises(ValueError, match="runs_per_gpu"):
        GpuRunLauncher(runs_per_gpu=0)
    with pytest.raises(ValueError, match="twice"):
        GpuRunLauncher(gpus="1,1")
    with pytest.raises(ValueError, match="no variable name"):
        GpuRunLauncher(env_vars=["=x"])
