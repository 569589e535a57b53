"""The fleet's size decision (neucodec_assets/fleet/scaling.py) as a table: queue, fleet and caps in, boxes and a
reason out. It only ever launches; idle boxes leave by themselves (gpu-worker --exit-when-idle)."""

from __future__ import annotations

import json

import pytest

from gpu_executor.settings import load_settings
from neucodec_assets.fleet import skypilot
from neucodec_assets.fleet.scaling import Caps, decide
from neucodec_assets.fleet.sensor import fleet_sizing_sensor, starting_gpus
from neucodec_assets.fleet.view import BoxView

GPUS_10 = Caps(max_gpus=10, launches_per_tick=5)
CASES = [
    # (case, queued, busy, idle, starting, caps, boxes, words in the reason)
    ("no cap: not sized", 50, 0, 0, 0, Caps(), 0, "no cap is set"),
    ("spend cap without a price: refused", 50, 0, 0, 0, Caps(max_spend_per_hour=10.0), 0,
     "no GPU-hour price"),
    ("spend cap with a zero price: refused", 50, 0, 0, 0, Caps(max_spend_per_hour=10.0, gpu_hour_price=0.0), 0,
     "no GPU-hour price"),
    ("empty queue", 0, 3, 2, 0, GPUS_10, 0, "queue empty"),
    ("idle GPUs cover the queue", 2, 3, 2, 0, GPUS_10, 0, "cover the queue"),
    ("starting boxes cover the queue", 3, 4, 0, 3, GPUS_10, 0, "cover the queue"),
    ("starting boxes counted, the rest launched", 5, 0, 0, 3, GPUS_10, 2, "2 more GPUs wanted"),
    ("queue within the cap", 3, 2, 0, 0, GPUS_10, 3, "launch 3 boxes"),
    ("GPU cap binding", 50, 6, 0, 0, GPUS_10, 4, "limited by the cap"),
    ("at the GPU cap", 50, 10, 0, 0, GPUS_10, 0, "at the cap"),
    ("over the cap (lowered): nothing killed, nothing launched", 50, 12, 0, 0, GPUS_10, 0, "at the cap"),
    ("launches per tick binding", 50, 0, 0, 0, Caps(max_gpus=100, launches_per_tick=3), 3,
     "3 launches per tick"),
    ("spend cap binding: 10.00/h at 0.40 = 25 GPUs", 100, 20, 0, 0,
     Caps(max_spend_per_hour=10.0, gpu_hour_price=0.40, launches_per_tick=50), 5, "cap 25 GPUs"),
    ("both caps: the lower wins", 100, 0, 0, 0,
     Caps(max_gpus=8, max_spend_per_hour=10.0, gpu_hour_price=0.40, launches_per_tick=50), 8, "cap 8 GPUs"),
    ("boxes of 4 GPUs: whole boxes for the queue", 6, 0, 0, 0, Caps(max_gpus=16, gpus_per_box=4,
                                                                    launches_per_tick=5), 2, "boxes of 4 GPUs"),
    ("boxes of 4 GPUs: never a box past the cap", 50, 14, 0, 0, Caps(max_gpus=16, gpus_per_box=4), 0,
     "would exceed the cap"),
    ("max GPUs 0: fleet off", 5, 0, 0, 0, Caps(max_gpus=0), 0, "at the cap"),
]


@pytest.mark.parametrize(("case", "queued", "busy", "idle", "starting", "caps", "boxes", "words"), CASES,
                         ids=[c[0] for c in CASES])
def test_decide(case, queued, busy, idle, starting, caps, boxes, words):
    decision = decide(queued, busy, idle, starting, caps)
    assert decision.launch_boxes == boxes, decision.reason
    assert words in decision.reason, decision.reason
    # Never past the caps, whatever the case: the GPUs after launching stay within the cap (or what was there).
    fleet = busy + idle + starting
    if decision.gpu_cap is not None:
        assert fleet + boxes * caps.gpus_per_box <= max(decision.gpu_cap, fleet)
    assert boxes <= caps.launches_per_tick


def test_caps_come_from_the_settings():
    caps = Caps.from_settings(load_settings({
        "NEUCODEC_FLEET_MAX_GPUS": "200", "NEUCODEC_FLEET_MAX_SPEND_PER_HOUR": "60", "NEUCODEC_GPU_HOUR_PRICE": "0.35",
        "NEUCODEC_FLEET_GPUS_PER_BOX": "2", "NEUCODEC_FLEET_LAUNCHES_PER_TICK": "7"}))
    assert caps == Caps(max_gpus=200, max_spend_per_hour=60.0, gpu_hour_price=0.35, gpus_per_box=2,
                        launches_per_tick=7)
    assert decide(1000, 0, 0, 0, caps).gpu_cap == 171  # 60 / 0.35 = 171.4: the spend cap binds before 200
    assert Caps.from_settings(load_settings({})).any_cap is False


def _cluster(name: str, status: str, launched_at: float | None) -> skypilot.FleetCluster:
    return skypilot.FleetCluster(name=name, status=status, launched_at=launched_at, nodes=1)


def _box(name: str) -> BoxView:
    return BoxView(box=name, gpus=[], last_beat_age_seconds=1.0, silent=False, code_versions=["v"], old_code=False)


def test_boxes_count_as_starting_until_they_beat_or_their_start_time_is_up():
    """NEUCODEC_FLEET_BOX_START_SECONDS both ways: a box still within it counts as starting (however slow its
    provider), one past it does not (it failed to come up: the sensor may replace it); a box that beats is no
    longer starting but busy or idle; a cluster the last tick asked for counts before SkyPilot lists it."""
    settings = load_settings({"NEUCODEC_FLEET_BOX_START_SECONDS": "600", "NEUCODEC_FLEET_GPUS_PER_BOX": "2"})
    now = 10_000.0
    clusters = [_cluster("neucodec-gpu-a-0", "INIT", now - 599), _cluster("neucodec-gpu-b-0", "UP", now - 60),
                _cluster("neucodec-gpu-c-0", "INIT", now - 601), _cluster("neucodec-gpu-d-0", "UP", now - 30),
                _cluster("neucodec-gpu-e-0", "STOPPED", now - 30), _cluster("neucodec-gpu-f-0", "INIT", None)]
    boxes = [_box("neucodec-gpu-d-0-0")]  # d's node 0 beats already
    recent = {"neucodec-gpu-g-0": now - 5, "neucodec-gpu-h-0": now - 700}
    gpus, names = starting_gpus(clusters, boxes, recent, settings, now)
    assert names == ["neucodec-gpu-a-0", "neucodec-gpu-b-0", "neucodec-gpu-f-0", "neucodec-gpu-g-0"]
    assert gpus == 4 * 2


def test_the_sensor_without_a_cap_is_stopped_and_says_why():
    import dagster as dg

    sensor = fleet_sizing_sensor(load_settings({}))
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    context = dg.build_sensor_context()
    result = sensor(context)
    assert isinstance(result, dg.SkipReason) and "no cap is set" in result.skip_message
    assert json.loads(context.cursor)["decision"]["launch_boxes"] == 0


def test_without_a_broker_the_view_and_the_sensor_say_what_to_set(monkeypatch, capsys):
    import dagster as dg

    from neucodec_assets.cli import main

    for name in ("NEUCODEC_CELERY_BROKER", "CELERY_BROKER_URL", "NEUCODEC_WORKER_BEATS_URL"):
        monkeypatch.delenv(name, raising=False)
    assert main(["fleet"]) == 2
    assert "set NEUCODEC_CELERY_BROKER" in capsys.readouterr().err
    monkeypatch.setenv("NEUCODEC_FLEET_MAX_GPUS", "4")
    with dg.instance_for_test() as instance:
        result = fleet_sizing_sensor(load_settings())(dg.build_sensor_context(instance=instance))
    assert isinstance(result, dg.SkipReason) and result.skip_message.startswith("no decision: no broker")
