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
import numpy as np

from gpu_executor.launch.names import CODE_VERSION_TAG
from gpu_executor.launch.worker_beats import WorkerBeat, broker_now, read_beats, redis_client
from neucodec_assets.tokens.discovery import add_shard_partitions
from resources.bucket import LocalBucket
from tests.fixtures.dagster_api import LAUNCH_RUN, graphql, launch_asset_backfill
from tests.fixtures.sft_data import write_sft_shard
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


def test_upgrade_mid_backfill_drains_an_old_box_and_a_new_version_box_takes_over(postgres_db, tmp_path: Path) -> None:
    """4 shards over boxes A and B on code v1 (pool of 3: two runs hold, one waits in the broker). A is asked to
    drain through the broker: its beat says draining, it takes nothing more, its run finishes and it exits 0. Box C
    on code v2 joins and takes the waiting run. Every shard is written exactly once, no run failed, the runs' tags
    show both versions and the beats show C's."""
    from gpu_executor.launch.box_drain import request_drain

    suffix = uuid.uuid4().hex[:6]
    a, b, c = f"a-{suffix}", f"b-{suffix}", f"c-{suffix}"
    shards = SHARDS[:4]
    fleet = Fleet(tmp_path, postgres_db["url"], REDIS_URL, pool_limit=3)
    with fleet.running():
        fleet.start_box(a, "0", env={"NEUCODEC_CODE_VERSION": "v1"})
        fleet.start_box(b, "1", env={"NEUCODEC_CODE_VERSION": "v1"})
        backfill_id = launch_asset_backfill(fleet.context, ASSET, shards, title="upgrade")
        fleet.wait("2 runs holding on A and B and one waiting in the broker", lambda: len(fleet.started()) == 2
                   and sorted(r.status.value for r in fleet.instance.get_runs()) == ["QUEUED", "STARTED", "STARTED",
                                                                                     "STARTING"])
        on_a = [k for k, r in fleet.started().items() if r["worker"].endswith(f"@{a}")]
        assert len(on_a) == 1

        request_drain(redis_client(REDIS_URL), a)
        fleet.wait("A's beat draining", lambda: (beat := _box_beats(a).get(f"gpu0@{a}")) and beat.state == "draining")
        fleet.start_box(c, "2", env={"NEUCODEC_CODE_VERSION": "v2"})
        fleet.wait("C taking the waiting run", lambda: any(r["worker"].endswith(f"@{c}") for r in fleet.started()
                                                           .values()))
        assert _exited(fleet, a) is None, "a draining box left before its run ended"
        assert _box_beats(c)[f"gpu2@{c}"].code_version == "v2"

        (fleet.records / "release").touch()
        fleet.wait("the backfill to finish", lambda: _backfill_done(fleet, backfill_id), timeout=90)
        fleet.wait("the drained box to exit", lambda: _exited(fleet, a) is not None, timeout=30)
        assert _exited(fleet, a) == 0 and _box_beats(a) == {}

        runs = fleet.instance.get_runs()
        assert sorted(r.status.value for r in runs) == ["SUCCESS"] * 4, fleet.explain()
        writes = (fleet.records / "writes.log").read_text().split()
        assert sorted(writes[0::2]) == shards, "each shard written exactly once"
        by_box = {r["worker"].split("@")[1] for r in fleet.ended().values()}
        assert by_box <= {a, b, c} and c in by_box
        assert [k for k, r in fleet.started().items() if r["worker"].endswith(f"@{a}")] == on_a, "A took a run after"
        versions = {r.run_id: r.tags.get(CODE_VERSION_TAG) for r in runs}
        assert versions[on_a[0]] == "v1" and set(versions.values()) == {"v1", "v2"}


def _launch(fleet: Fleet, job: str, assets: list[str] | None = None, tags: dict[str, str] | None = None) -> str:
    """The launchpad's "Launch run" (or an asset's "Materialize"): the run enters the queue; the daemon launches it."""
    selector: dict = {"repositoryLocationName": fleet.location, "repositoryName": "__repository__", "jobName": job}
    if assets is not None:
        selector["assetSelection"] = [{"path": [a]} for a in assets]
    data = graphql(fleet.context, LAUNCH_RUN, {"executionParams": {
        "selector": selector, "mode": "default",
        "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]}}})
    assert data["launchRun"]["__typename"] == "LaunchRunSuccess", data
    return data["launchRun"]["run"]["runId"]


def test_runs_that_need_no_gpu_run_on_the_control_host_with_gpu_boxes_only(postgres_db, tmp_path: Path,
                                                                            monkeypatch) -> None:
    """The platform's code location on the Celery profile with one GPU box (no CPU worker): a progress refresh and
    an SFT run (sft_pairs of a shard whose tokens exist) complete on the control host, tagged with the code location's version; a run pinned to a queue no
    live worker consumes is reported at once in its events and tags. The box, idle with an empty queue, exits."""
    from dagster_celery.tags import DAGSTER_CELERY_QUEUE_TAG

    from gpu_executor.launch.code_version import code_location_version
    from gpu_executor.launch.names import HOST_TAG, QUEUE_WARNING_TAG

    bucket = tmp_path / "bucket"
    bucket.mkdir()
    monkeypatch.setenv("NEUCODEC_BUCKET", bucket.as_uri())
    monkeypatch.setenv("NEUCODEC_MODEL", "random")
    box = f"gpuonly-{uuid.uuid4().hex[:6]}"
    fleet = Fleet(tmp_path, postgres_db["url"], REDIS_URL, pool_limit=1,
                  target={"module_name": "neucodec_assets.definitions"}, location="neucodec_assets")
    with fleet.running():
        fleet.start_box(box, "0", "--exit-when-idle", "5s")
        fleet.wait("the GPU box's beat", lambda: (b := _box_beats(box).get(f"gpu0@{box}")) and b)
        beat = _box_beats(box)[f"gpu0@{box}"]
        assert beat.state == "idle" and beat.queues == (fleet.gpu_queue,) and beat.gpu == "0"

        shard = "ds/hi/shard_000000"
        write_sft_shard(LocalBucket(bucket), shard, np.random.default_rng(0), 4)  # its tokens and transcripts
        add_shard_partitions(fleet.instance, [shard])
        progress = _launch(fleet, "encoding_progress_job")
        sft = _launch(fleet, "__ASSET_JOB", ["sft_pairs"], {"dagster/partition": shard})
        finished = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
        fleet.wait("both runs to end", lambda: all(fleet.instance.get_run_by_id(r).status in finished
                                                   for r in (progress, sft)), timeout=120)
        for run_id in (progress, sft):
            run = fleet.instance.get_run_by_id(run_id)
            assert run.status == dg.DagsterRunStatus.SUCCESS, fleet.explain()
            assert run.tags.get(HOST_TAG) and DAGSTER_CELERY_QUEUE_TAG not in run.tags
            assert run.tags[CODE_VERSION_TAG] == code_location_version()

        # A run pinned to the CPU queue (its own tag wins), which nobody consumes: said at launch, not at timeout.
        pinned = _launch(fleet, "encoding_progress_job", tags={DAGSTER_CELERY_QUEUE_TAG: fleet.cpu_queue})
        fleet.wait("the pinned run launched", lambda: fleet.instance.get_run_by_id(pinned).status
                   == dg.DagsterRunStatus.STARTING)
        run = fleet.instance.get_run_by_id(pinned)
        assert fleet.cpu_queue in run.tags[QUEUE_WARNING_TAG]
        events = [e.message for e in fleet.instance.all_logs(pinned) if e.message]
        assert any("no live worker consumes Celery queue" in m and fleet.cpu_queue in m for m in events), events
        fleet.instance.run_launcher.terminate(pinned)

        fleet.wait("the idle GPU box to exit", lambda: _exited(fleet, box) is not None, timeout=60)
        assert _exited(fleet, box) == 0

