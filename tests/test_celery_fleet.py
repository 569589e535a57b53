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


def _exited(fleet: Fleet, box: str) -> int | None:
    return fleet.boxes[box].poll()


def test_an_idle_box_with_an_empty_queue_exits_and_leaves_the_fleet(postgres_db, tmp_path: Path) -> None:
    """`--exit-when-idle 3s` on a box nobody sends work to: it drains and exits 0, and its beats are gone."""
    box = f"idle-{uuid.uuid4().hex[:6]}"
    fleet = Fleet(tmp_path, postgres_db["url"], REDIS_URL, pool_limit=1)
    with fleet.running():
        fleet.start_box(box, "0,1", "--exit-when-idle", "3s")
        fleet.wait("the box's two idle beats", lambda: len(_box_beats(box)) == 2)
        code = fleet.wait("the idle box to exit", lambda: _exited(fleet, box) is not None and [_exited(fleet, box)],
                          timeout=60)
        assert code == [0]
        assert "idle: no run taken for" in (tmp_path / f"{box}.log").read_text()
        assert _box_beats(box) == {}


def test_a_box_busy_longer_than_its_idle_limit_exits_only_after_its_run(postgres_db, tmp_path: Path) -> None:
    """Slow but alive: a run holds the box's GPU for many times its 2 s idle limit; the box stays (its beat stays
    busy, still published) until the run ends, then exits 0 once idle; the run succeeded."""
    box = f"busy-{uuid.uuid4().hex[:6]}"
    fleet = Fleet(tmp_path, postgres_db["url"], REDIS_URL, pool_limit=1)
    with fleet.running():
        fleet.start_box(box, "0", "--exit-when-idle", "2s")
        backfill_id = launch_asset_backfill(fleet.context, ASSET, SHARDS[:1], title="busy box")
        (run_id, _), = fleet.wait("the run holding on the GPU", lambda: fleet.started()).items()
        # Broker time, read from the box's own beats: the run has held it for 4 idle limits and it is still there.
        fleet.wait("the run to hold the box for 8 s of broker time", lambda: (b := _box_beats(box).get(f"gpu0@{box}"))
                   and b.state == "busy" and b.beat_at - b.run_started_at > 8, timeout=60)
        assert _exited(fleet, box) is None, "the box left while its run held the GPU"
        (fleet.records / "release").touch()
        fleet.wait("the backfill to finish", lambda: _backfill_done(fleet, backfill_id), timeout=60)
        fleet.wait("the box to exit once idle", lambda: _exited(fleet, box) is not None, timeout=60)
        assert _exited(fleet, box) == 0
        assert fleet.instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.SUCCESS


def test_queued_work_keeps_an_idle_box(tmp_path: Path) -> None:
    """The idle rule on real Redis: workers idle past the limit, but a message waits in the box's queue -> stay;
    the queue empty -> go; one worker busy -> stay."""
    from dataclasses import replace

    from gpu_executor.launch.gpu_worker_cli import BoxWatch
    from gpu_executor.launch.worker_beats import publish

    client = redis_client(REDIS_URL)
    box, queue = f"queued-{uuid.uuid4().hex[:6]}", f"gpu-{uuid.uuid4().hex[:8]}"
    workers = [f"gpu0@{box}", f"gpu1@{box}"]
    watch = BoxWatch(REDIS_URL, box, workers, [queue], idle_limit=1.0)
    watch.started_at -= 10  # the box started 10 s ago (broker time) and its workers never took a run
    beats = [WorkerBeat(worker=w, box=box, gpu=w[3], queues=(queue,), code_version="v", state="idle", run_id=None,
                        run_started_at=None, started_at=watch.started_at, last_run_ended_at=None, beat_at=0.0)
             for w in workers]
    try:
        for beat in beats:
            publish(client, beat)
        client.lpush(queue, b"{}")  # a message no worker has taken yet (the payload does not matter to the count)
        assert watch.idle_reason() is None
        client.delete(queue)
        assert watch.idle_reason() is not None and "empty" in watch.idle_reason()
        publish(client, replace(beats[1], state="busy", run_id="r1", run_started_at=watch.started_at))
        assert watch.idle_reason() is None
        client.hdel("neucodec:workers", workers[1])  # a worker not beating yet (starting): stay
        assert watch.idle_reason() is None
    finally:
        client.delete(queue)
        client.hdel("neucodec:workers", *workers)
