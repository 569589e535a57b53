"""`neucodec-platform fleet`: the fleet view as text, and the commands that rent, drain and release boxes."""

from __future__ import annotations

import time

from neucodec_assets.fleet.view import SILENT_AFTER_BEATS, FleetView
from neucodec_assets.progress.render import format_duration


def _age(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else format_duration(seconds)


def _since(now: float, then: float | None) -> str:
    if then is None:
        return ""
    return f"{format_duration(max(0.0, now - then))} ({time.strftime('%H:%M:%S', time.gmtime(then))} UTC)"


def format_fleet(view: FleetView) -> str:
    """The terminal report: one line per GPU under its box, then the queue, the ETA and the what-ifs."""
    lines = [f"fleet at {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(view.now))} UTC (broker clock); code "
             f"location {view.code_location_version}"]
    if not view.boxes:
        lines.append("no boxes: no worker heartbeat in the last hour")
    for box in view.boxes:
        flags = []
        if box.silent:
            flags.append(f"SILENT (no beat for {_age(box.last_beat_age_seconds)}, more than "
                         f"{SILENT_AFTER_BEATS * view.beat_interval_seconds:.0f} s)")
        if box.old_code:
            flags.append(f"old code {', '.join(v for v in box.code_versions if v != view.code_location_version)}")
        lines.append(f"box {box.box}: {len(box.gpus)} workers, last beat {_age(box.last_beat_age_seconds)} ago"
                     + (f"  [{'; '.join(flags)}]" if flags else ""))
        for gpu in box.gpus:
            what = gpu.state
            if gpu.run_id:
                shards = ", ".join(gpu.shards) if gpu.shards else "?"
                what = f"{gpu.state} run {gpu.run_id[:8]} ({shards}) for {_since(view.now, gpu.since)}"
            elif gpu.since is not None:
                what = f"{gpu.state} for {_since(view.now, gpu.since)}"
            lines.append(f"  {gpu.worker:<28} GPU {gpu.gpu:<5} {what}  code {gpu.code_version}")
    q = view.queue
    lines.append(f"GPUs: {view.busy_gpus} busy, {view.idle_gpus} idle, {view.draining_gpus} draining "
                 f"(live boxes); silent boxes: {len(view.silent_boxes)}; old-code boxes: {len(view.old_code_boxes)}")
    lines.append(f"GPU runs waiting: {q.total}{'+' if q.capped else ''} ({q.queued} queued, {q.waiting_for_worker} "
                 "sent to the broker and not taken yet)")
    if view.hours_remaining is not None:
        rate = f"{view.fleet_hours_per_hour:.1f} h/h" if view.fleet_hours_per_hour else "no rate yet"
        per_gpu = f"{view.hours_per_gpu_hour:.1f} h per GPU-hour" if view.hours_per_gpu_hour else "-"
        lines.append(f"remaining {view.hours_remaining:.1f} audio hours at {rate} ({per_gpu}): ETA "
                     f"{format_duration(view.eta_seconds)}"
                     + (f", {view.gpu_hours_remaining:.1f} GPU-hours" if view.gpu_hours_remaining is not None else "")
                     + (f", cost {view.cost_remaining:,.2f}" if view.cost_remaining is not None else ""))
    for w in view.what_ifs:
        if w.eta_seconds is None:
            continue
        spend = f" at {w.spend_per_hour:,.2f}/h" if w.spend_per_hour is not None else ""
        lines.append(f"  with {w.gpus} GPUs: ETA {format_duration(w.eta_seconds)}{spend}")
    if view.clusters is not None:
        lines.append(f"SkyPilot clusters: {len(view.clusters)}")
        for c in view.clusters:
            lines.append(f"  {c['name']:<36} {c['status']:<12} {c.get('resources') or ''}")
    lines += [f"note: {n}" for n in view.notes]
    return "\n".join(lines)
