"""The rented fleet's worker side, for real: worker heartbeats in Redis, code versions, runs that need no GPU, boxes
that exit when idle, drain requests and an upgrade mid-backfill.

Same harness as tests/test_celery_workers.py (Redis broker, Postgres, `neucodec-platform gpu-worker` processes
posing as boxes with fake GPU ids, the daemons ticked in the test process); box names carry a per-test suffix, so
other users of the shared Redis never show up in the beats a test reads.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import dagster as dg

from gpu_executor.launch.names import CODE_VERSION_TAG
from gpu_executor.launch.worker_beats import WorkerBeat, broker_now, read_beats, redis_client
from tests.fixtures.dagster_api import launch_asset_backfill
from tests.test_celery_workers import ASSET, REDIS_URL, SHARDS, Fleet, _backfill_done


def _box_beats(box: str) -> dict[str, WorkerBeat]:
    return {b.worker: b for b in read_beats(redis_client(REDIS_URL)) if b.box == box}


def test_worker_beats_go_idle_busy_idle_with_the_run_and_its_code_version(postgres_db, tmp_path: Path) -> None:
    """A one-GPU box publishes its beat at once (idle, its queue, its code version); while a run holds on its GPU
    the beat is busy with that run's id; after the run it is idle again, with the run's end time; the run carries
    the worker's code version as a tag."""
    box = f"beats-{uuid.uuid4().hex[:6]}"
    fleet = Fleet(tmp_path, postgres_db["url"], REDIS_URL, pool_limit=1)
    with fleet.running():
        fleet.start_box(box, "0", env={"NEUCODEC_CODE_VERSION": "v1-test"})
        worker = f"gpu0@{box}"
        idle = fleet.wait("the box's idle beat", lambda: (b := _box_beats(box).get(worker)) and b.state == "idle"
                          and b)
        assert idle.gpu == "0" and idle.queues == (fleet.gpu_queue,) and idle.code_version == "v1-test"
        assert idle.run_id is None and idle.last_run_ended_at is None
        assert abs(idle.beat_at - broker_now(redis_client(REDIS_URL))) < 60

        backfill_id = launch_asset_backfill(fleet.context, ASSET, SHARDS[:1], title="beats")
        (run_id, _), = fleet.wait("the run holding on the GPU", lambda: fleet.started()).items()
        busy = fleet.wait("a busy beat naming the run", lambda: (b := _box_beats(box).get(worker))
                          and b.state == "busy" and b)
        assert busy.run_id == run_id and busy.run_started_at is not None
        assert busy.run_started_at >= idle.started_at and busy.started_at == idle.started_at

        (fleet.records / "release").touch()
        fleet.wait("the backfill to finish", lambda: _backfill_done(fleet, backfill_id), timeout=60)
        after = fleet.wait("an idle beat after the run", lambda: (b := _box_beats(box).get(worker))
                           and b.state == "idle" and b)
        assert after.run_id is None and after.last_run_ended_at is not None
        assert after.last_run_ended_at >= busy.run_started_at
        run = fleet.instance.get_run_by_id(run_id)
        assert run.status == dg.DagsterRunStatus.SUCCESS and run.tags[CODE_VERSION_TAG] == "v1-test"
