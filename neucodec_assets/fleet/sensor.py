"""`fleet_sizing`: keeps the number of rented GPU boxes near what the queue needs, within the caps.

Always defined, so the UI shows it and what it decided; it starts RUNNING only when a cap (NEUCODEC_FLEET_MAX_GPUS
and/or NEUCODEC_FLEET_MAX_SPEND_PER_HOUR) is set as the code location loads, STOPPED otherwise, and a tick without a
cap skips with that reason. Each tick reads the GPU runs waiting (the instance), the busy and idle GPUs (the
workers' heartbeats), the boxes on their way (SkyPilot's clusters that have not sent a heartbeat yet, plus the ones
the last ticks asked for), calls the pure `decide`, launches through the SkyPilot adapter, and logs the decision
with its reason (the tick's skip message and the cursor hold the last one). It never tears a box down: idle boxes
exit by themselves (`gpu-worker --exit-when-idle`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import dagster as dg

from gpu_executor.settings import Settings, load_settings
from neucodec_assets.fleet import skypilot
from neucodec_assets.fleet.scaling import Caps, Decision, decide
from neucodec_assets.fleet.view import BoxView, FleetUnavailable, read_view

SENSOR_NAME = "fleet_sizing"


def starting_gpus(clusters: Sequence[skypilot.FleetCluster], boxes: Sequence[BoxView], recent: dict[str, float],
                  settings: Settings, now: float) -> tuple[int, list[str]]:
    """GPUs of boxes on their way: a fleet cluster (or one a recent tick asked for, not listed yet) launched less
    than NEUCODEC_FLEET_BOX_START_SECONDS ago whose box has sent no heartbeat. Returns (GPUs, cluster names)."""
    beating = [b.box for b in boxes]
    window = settings.fleet_box_start_seconds

    def has_beat(name: str) -> bool:
        return any(box == name or box.startswith(name + "-") for box in beating)

    names = []
    listed = {c.name for c in clusters}
    for cluster in clusters:
        if has_beat(cluster.name) or cluster.status not in (*skypilot.STARTING, "UP"):
            continue
        launched = cluster.launched_at or recent.get(cluster.name)
        if launched is None or now - launched < window:
            names.append(cluster.name)
    names += [n for n, at in recent.items() if n not in listed and now - at < window and not has_beat(n)]
    nodes = {c.name: c.nodes or 1 for c in clusters}
    return sum(nodes.get(n, 1) for n in names) * settings.fleet_gpus_per_box, sorted(names)


def _cursor(context: dg.SensorEvaluationContext) -> dict:
    try:
        return json.loads(context.cursor) if context.cursor else {}
    except ValueError:
        return {}


def evaluate(context: dg.SensorEvaluationContext) -> tuple[Decision | None, str, dict]:
    """One tick: (decision or None when the tick could not decide, the message to show, the new cursor)."""
    settings = load_settings()
    caps = Caps.from_settings(settings)
    now = time.time()
    cursor = _cursor(context)
    recent = {n: float(at) for n, at in (cursor.get("launched") or {}).items()
              if now - float(at) < settings.fleet_box_start_seconds}
    if not caps.any_cap:
        decision = decide(0, 0, 0, 0, caps)
        return decision, decision.reason, {**cursor, "launched": recent, "decision": decision.to_json(), "at": now}
    try:
        view = read_view(context.instance, read_summary=False)
    except FleetUnavailable as exc:
        return None, f"no decision: {exc}", cursor
    try:
        clusters = skypilot.list_fleet(settings)
    except Exception as exc:  # the API server away: decide nothing rather than launch blind
        return None, f"no decision: cannot list the fleet's SkyPilot clusters ({type(exc).__name__}: {exc})", cursor
    starting, names = starting_gpus(clusters, view.boxes, recent, settings, now)
    decision = decide(view.queue.total, view.busy_gpus, view.idle_gpus, starting, caps)
    message = decision.reason + (f"; starting: {', '.join(names)}" if names else "")
    if decision.launch_boxes:
        try:
            launches = skypilot.launch_boxes(settings, decision.launch_boxes, code_version=settings.code_version,
                                             now=now)
        except skypilot.FleetError as exc:
            return decision, f"{decision.reason}; launch refused: {exc}", cursor
        recent.update({launch.cluster: now for launch in launches})
        message += f"; launched {', '.join(f'{x.cluster} ({x.request_id})' for x in launches)}"
    return decision, message, {"launched": recent, "decision": decision.to_json(), "message": message, "at": now}


def fleet_sizing_sensor(settings: Settings | None = None) -> dg.SensorDefinition:
    settings = settings or load_settings()
    enabled = Caps.from_settings(settings).any_cap

    @dg.sensor(
        name=SENSOR_NAME,
        minimum_interval_seconds=settings.fleet_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING if enabled else dg.DefaultSensorStatus.STOPPED,
        description="Rents GPU boxes through SkyPilot while GPU runs wait, within NEUCODEC_FLEET_MAX_GPUS / "
        "NEUCODEC_FLEET_MAX_SPEND_PER_HOUR; never tears one down (idle boxes exit by themselves). Each tick's "
        "decision and reason is its skip message.",
        metadata={"caps": dg.MetadataValue.json({
            "max_gpus": settings.fleet_max_gpus, "max_spend_per_hour": settings.fleet_max_spend_per_hour,
            "gpu_hour_price": settings.gpu_hour_price or None, "gpus_per_box": settings.fleet_gpus_per_box,
            "launches_per_tick": settings.fleet_launches_per_tick})},
    )
    def fleet_sizing(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        _decision, message, cursor = evaluate(context)
        context.log.info(f"fleet_sizing: {message}")
        context.update_cursor(json.dumps(cursor, sort_keys=True))
        return dg.SkipReason(message)

    return fleet_sizing
