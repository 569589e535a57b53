"""The fleet view and the fleet_sizing sensor on a real fleet: `neucodec-platform gpu-worker` boxes on Redis and
Postgres (the harness of tests/test_celery_workers.py), their heartbeats published by the workers themselves.

Three boxes: one of two GPUs on the code location's version, one of one GPU on an old version, one SIGKILLed (its
last beat stays: a silent box). A backfill of 8 held shards with a `gpu` pool of 2: two GPUs busy, one idle, six
runs queued. The view must show exactly that, as text and as JSON; the sensor, evaluated through Dagster's sensor
machinery on that instance with SkyPilot's launch call recorded (tests/fixtures/skypilot.py), must launch what the
queue needs within the caps, count the boxes it started, and say why at each tick.
"""

from __future__ import annotations

import json
import random
import uuid
from pathlib import Path

import dagster as dg
import pytest

from gpu_executor.launch.worker_beats import WORKERS_KEY, read_beats, redis_client
from gpu_executor.settings import load_settings
from neucodec_assets.cli import main
from neucodec_assets.fleet.sensor import fleet_sizing_sensor
from neucodec_assets.fleet.view import read_view
from neucodec_assets.progress import PROGRESS_ASSET_KEY
from neucodec_assets.progress.summary import GroupSummary, ProgressSummary, ThroughputSummary, utc
from tests.fixtures.dagster_api import launch_asset_backfill
from tests.test_celery_workers import ASSET, REDIS_URL, SHARDS, Fleet
from tests.test_fleet_skypilot import SECRETS

HOURS_LEFT, FLEET_RATE, PER_GPU_RATE, PRICE = 120.0, 24.0, 12.0, 0.5


def _record_progress(instance: dg.DagsterInstance) -> None:
    """A progress summary as encoding_progress records it (metadata `summary`): the view reads hours and rates
    from it and must not recompute them."""
    now = utc(1_800_000_000)
    summary = ProgressSummary(
        generated_at=now, total=GroupSummary(hours_remaining_estimated=HOURS_LEFT,
                                             eta_seconds=HOURS_LEFT / FLEET_RATE * 3600),
        by_language={}, by_dataset={}, gpu_hours=10.0, runs_active=2, gpu_hour_price=PRICE, cost=5.0,
        cost_per_1000_hours=None, hourly_audio_hours=[],
        throughput=ThroughputSummary(window_start=now, window_hours=1.0, audio_hours=24.0, gpu_hours=2.0,
                                     audio_hours_per_wall_hour=FLEET_RATE, audio_hours_per_gpu_hour=PER_GPU_RATE))
    instance.report_runless_asset_event(dg.AssetMaterialization(
        PROGRESS_ASSET_KEY, metadata={"summary": dg.MetadataValue.json(summary.to_json())}))


def test_fleet_view_and_sizing_on_real_workers(postgres_db, tmp_path: Path, monkeypatch, sky_api, capsys) -> None:
    tag = f"fv{uuid.uuid4().hex[:6]}"
    new, old, gone = f"{tag}-new", f"{tag}-old", f"{tag}-gone"
    # The beats of this test's boxes in a Redis database of their own: the sensor counts every beat it reads.
    beats_url = REDIS_URL.rsplit("/", 1)[0] + f"/{random.randint(8, 15)}"
    box_env = {"NEUCODEC_WORKER_BEATS_URL": beats_url}
    fleet = Fleet(tmp_path, postgres_db["url"], REDIS_URL, pool_limit=2)
    try:
        with fleet.running():
            fleet.start_box(new, "0,1", env={**box_env, "NEUCODEC_CODE_VERSION": "v2"})
            fleet.start_box(old, "2", env={**box_env, "NEUCODEC_CODE_VERSION": "v1"})
            fleet.start_box(gone, "3", env={**box_env, "NEUCODEC_CODE_VERSION": "v2"})
            client = redis_client(beats_url)
            fleet.wait("four idle workers' beats", lambda: len(
                [b for b in read_beats(client) if b.box.startswith(tag) and b.state == "idle"]) == 4)
            fleet.kill_box(gone)
            # The boxes beat every second; the view allows 3 intervals of 3 s: a live box under load is never
            # silent, the killed one is after 9 s.

            for name, value in {"DAGSTER_HOME": str(fleet.home), "NEUCODEC_CELERY_BROKER": REDIS_URL,
                                "NEUCODEC_WORKER_BEATS_URL": beats_url, "NEUCODEC_WORKER_BEAT_SECONDS": "3",
                                "NEUCODEC_CODE_VERSION": "v2", "NEUCODEC_GPU_HOUR_PRICE": str(PRICE)}.items():
                monkeypatch.setenv(name, value)
            _record_progress(fleet.instance)
            launch_asset_backfill(fleet.context, ASSET, SHARDS, title="fleet view")

            def settled():
                view = read_view(fleet.instance, box_prefix=tag)
                return view.busy_gpus == 2 and view.queue.queued == 6 and view.silent_boxes and len(fleet.started()) == 2

            fleet.wait("2 runs holding on 2 busy GPUs, 6 runs queued and the killed box silent", settled)
            started = fleet.started()
            assert len(started) == 2

            assert main(["fleet", "--json", "--boxes", tag]) == 0
            data = json.loads(capsys.readouterr().out)
            boxes = {b["box"]: b for b in data["boxes"]}
            assert sorted(boxes) == sorted([new, old, gone])
            assert boxes[gone]["silent"] and data["silent_boxes"] == [gone]
            assert boxes[old]["old_code"] and boxes[old]["code_versions"] == ["v1"]
            assert data["old_code_boxes"] == [old]
            assert not boxes[new]["old_code"] and data["code_location_version"] == "v2"
            assert data["busy_gpus"] == 2 and data["idle_gpus"] == 1 and data["draining_gpus"] == 0
            busy = [g for b in data["boxes"] if not b["silent"] for g in b["gpus"] if g["state"] == "busy"]
            assert sorted(g["run_id"] for g in busy) == sorted(started)
            for gpu in busy:
                assert gpu["shards"] == [started[gpu["run_id"]]["partition"]] and gpu["since"] is not None
                assert started[gpu["run_id"]]["worker"] == gpu["worker"]
            assert data["queue"] == {"queued": 6, "waiting_for_worker": 0, "capped": False, "total": 6}
            # Hours and rates are the progress summary's; the what-ifs scale its per-GPU rate.
            assert data["hours_remaining"] == HOURS_LEFT and data["eta_seconds"] == HOURS_LEFT / FLEET_RATE * 3600
            assert data["gpu_hours_remaining"] == pytest.approx(HOURS_LEFT / PER_GPU_RATE)
            assert data["cost_remaining"] == pytest.approx(HOURS_LEFT / PER_GPU_RATE * PRICE)
            assert {w["gpus"]: w["eta_seconds"] for w in data["what_ifs"]} == pytest.approx(
                {n: HOURS_LEFT / (n * PER_GPU_RATE) * 3600 for n in (50, 100, 200)})
            assert {w["gpus"]: w["spend_per_hour"] for w in data["what_ifs"]} == {50: 25.0, 100: 50.0, 200: 100.0}

            assert main(["fleet", "--boxes", tag]) == 0
            text = capsys.readouterr().out
            assert f"box {gone}" in text and "SILENT" in text and "old code v1" in text
            assert "GPU runs waiting: 6 (6 queued" in text and "with 100 GPUs: ETA" in text
            assert sum(f"busy run {r[:8]} ({started[r]['partition']})" in text for r in started) == 2

            # The sensor on the same instance and beats: queue 6, 2 busy, 1 idle; cap 6 GPUs, 2 launches a tick.
            for name in SECRETS:
                monkeypatch.setenv(name, f"value-of-{name}")
            monkeypatch.setenv("NEUCODEC_FLEET_MAX_GPUS", "6")
            monkeypatch.setenv("NEUCODEC_FLEET_LAUNCHES_PER_TICK", "2")
            sensor = fleet_sizing_sensor(load_settings())
            assert sensor.default_status == dg.DefaultSensorStatus.RUNNING

            def tick(cursor: str | None) -> tuple[str, str]:
                context = dg.build_sensor_context(instance=fleet.instance, cursor=cursor)
                result = sensor(context)
                assert isinstance(result, dg.SkipReason)
                return result.skip_message, context.cursor

            message, cursor = tick(None)
            assert len(sky_api.launches) == 2, message
            assert "launch 2 boxes of 1 GPUs for 5 more GPUs wanted (limited by the cap and 2 launches per tick)" \
                in message
            assert f"fleet_sizing: {message}" in capsys.readouterr().err  # context.log: the tick's log in the UI
            assert "6 queued GPU runs; 2 busy, 1 idle, 0 starting GPUs; cap 6 GPUs" in message
            assert json.loads(cursor)["decision"]["launch_boxes"] == 2
            # The launched boxes are starting (SkyPilot lists them INIT, no beat yet): one more fits under the cap.
            message, cursor = tick(cursor)
            assert len(sky_api.launches) == 3, message
            assert "launch 1 boxes of 1 GPUs for 3 more GPUs wanted (limited by the cap)" in message
            assert "2 starting GPUs" in message
            message, cursor = tick(cursor)
            assert len(sky_api.launches) == 3 and "at the cap" in message and "3 starting GPUs" in message
            task, kwargs = sky_api.launches[0]
            assert task.envs["BOX"] == kwargs["cluster_name"] and kwargs["down"] is True
            assert task.secrets["DAGSTER_PG_PASSWORD"].get_secret_value() == "value-of-DAGSTER_PG_PASSWORD"

            # The clusters the sensor asked for, as SkyPilot lists them, next to the boxes.
            assert main(["fleet", "--json", "--clusters", "--boxes", tag]) == 0
            clusters = json.loads(capsys.readouterr().out)["clusters"]
            assert sorted(c["name"] for c in clusters) == sorted(kw["cluster_name"] for _, kw in sky_api.launches)
            assert {c["status"] for c in clusters} == {"INIT"}
            # `status --json` carries the same view under `fleet` (the fleet's Redis is configured here).
            assert main(["status", "--json", "--no-bucket"]) == 0
            section = json.loads(capsys.readouterr().out)["fleet"]
            assert section["busy_gpus"] == 2 and section["queue"]["queued"] == 6
            assert [b["box"] for b in section["boxes"] if b["silent"]] == [gone]

            # A spend cap without a price: refused, with the reason, and nothing launched.
            monkeypatch.delenv("NEUCODEC_FLEET_MAX_GPUS")
            monkeypatch.delenv("NEUCODEC_GPU_HOUR_PRICE")
            monkeypatch.setenv("NEUCODEC_FLEET_MAX_SPEND_PER_HOUR", "10")
            message, _ = tick(cursor)
            assert len(sky_api.launches) == 3 and "no GPU-hour price" in message

            # `fleet drain BOX`: the old-code box finishes what it runs, then exits cleanly and leaves the beats.
            on_old = [r for r, rec in started.items() if rec["worker"].endswith(f"@{old}")]
            assert main(["fleet", "drain", old]) == 0
            assert f"drain requested for box {old}" in capsys.readouterr().out
            (fleet.records / "release").touch()
            fleet.wait("the drained box to exit", lambda: fleet.boxes[old].poll() is not None)
            assert fleet.boxes[old].returncode == 0
            assert not [b for b in read_beats(client) if b.box == old]
            assert all(fleet.instance.get_run_by_id(r).status == dg.DagsterRunStatus.SUCCESS for r in on_old)
    finally:
        redis_client(beats_url).delete(WORKERS_KEY)
