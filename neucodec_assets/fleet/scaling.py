"""How many GPU boxes to rent now: a pure function of the queue, the fleet and the caps.

The fleet only grows here. It shrinks by itself: a box whose worker took no run for `--exit-when-idle` exits and
SkyPilot's autodown releases it, so nothing is ever killed to scale down (a run in flight is never cut short).
Boxes still starting count as capacity, so a tick does not launch again for runs that a box on its way will take.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gpu_executor.settings import Settings


@dataclass(frozen=True)
class Caps:
    """The limits the fleet must stay within. No cap at all means the fleet is not sized automatically."""

    max_gpus: int | None = None
    max_spend_per_hour: float | None = None
    gpu_hour_price: float | None = None  # None or 0: no price known
    gpus_per_box: int = 1
    launches_per_tick: int = 1

    @classmethod
    def from_settings(cls, settings: Settings) -> Caps:
        return cls(max_gpus=settings.fleet_max_gpus, max_spend_per_hour=settings.fleet_max_spend_per_hour,
                   gpu_hour_price=settings.gpu_hour_price or None, gpus_per_box=settings.fleet_gpus_per_box,
                   launches_per_tick=settings.fleet_launches_per_tick)

    @property
    def any_cap(self) -> bool:
        return self.max_gpus is not None or self.max_spend_per_hour is not None


@dataclass(frozen=True)
class Decision:
    """Boxes to launch now (0 or more) and why, in words for the sensor's log and the UI."""

    launch_boxes: int
    reason: str
    gpu_cap: int | None = None  # the GPUs the caps allow, when they could be worked out
    gpus_wanted: int = 0  # GPUs the queue needs beyond those idle or starting

    def to_json(self) -> dict[str, object]:
        return {"launch_boxes": self.launch_boxes, "reason": self.reason, "gpu_cap": self.gpu_cap,
                "gpus_wanted": self.gpus_wanted}


def gpu_cap(caps: Caps) -> tuple[int | None, str | None]:
    """(GPUs the caps allow, None) or (None, why they cannot be applied)."""
    if not caps.any_cap:
        return None, ("no cap is set (NEUCODEC_FLEET_MAX_GPUS or NEUCODEC_FLEET_MAX_SPEND_PER_HOUR): the fleet is "
                      "not sized automatically")
    limits = []
    if caps.max_gpus is not None:
        limits.append(caps.max_gpus)
    if caps.max_spend_per_hour is not None:
        if not caps.gpu_hour_price:
            return None, ("a spend cap is set (NEUCODEC_FLEET_MAX_SPEND_PER_HOUR) but no GPU-hour price "
                          "(NEUCODEC_GPU_HOUR_PRICE): refusing to launch without knowing what a box costs")
        # A small tolerance: 10.00 / 0.40 is 24.999999... in floating point and means 25 GPUs.
        limits.append(math.floor(caps.max_spend_per_hour / caps.gpu_hour_price + 1e-9))
    return min(limits), None


def decide(queued_gpu_runs: int, busy_gpus: int, idle_gpus: int, boxes_starting_gpus: int, caps: Caps) -> Decision:
    """Boxes to launch for ``queued_gpu_runs`` waiting runs, given the GPUs busy, idle and on their way."""
    cap, refused = gpu_cap(caps)
    if refused:
        return Decision(0, refused)
    assert cap is not None
    per_box = max(1, caps.gpus_per_box)
    fleet = busy_gpus + idle_gpus + boxes_starting_gpus
    wanted = max(0, queued_gpu_runs - idle_gpus - boxes_starting_gpus)
    state = (f"{queued_gpu_runs} queued GPU runs; {busy_gpus} busy, {idle_gpus} idle, {boxes_starting_gpus} "
             f"starting GPUs; cap {cap} GPUs")
    if queued_gpu_runs == 0:
        return Decision(0, f"queue empty ({state}); idle boxes exit by themselves", cap, 0)
    if wanted == 0:
        return Decision(0, f"the idle and starting GPUs cover the queue ({state})", cap, 0)
    headroom = cap - fleet
    if headroom <= 0:
        return Decision(0, f"at the cap: {wanted} more GPUs wanted but the fleet has {fleet} ({state})", cap, wanted)
    fitting = headroom // per_box
    if fitting == 0:
        return Decision(0, f"a box of {per_box} GPUs would exceed the cap: {headroom} GPUs of headroom ({state})",
                        cap, wanted)
    boxes = min(math.ceil(wanted / per_box), fitting)
    limited = []
    if boxes < math.ceil(wanted / per_box):
        limited.append("the cap")
    if boxes > caps.launches_per_tick:
        boxes = caps.launches_per_tick
        limited.append(f"{caps.launches_per_tick} launches per tick")
    why = f" (limited by {' and '.join(limited)})" if limited else ""
    return Decision(boxes, f"launch {boxes} boxes of {per_box} GPUs for {wanted} more GPUs wanted{why} ({state})",
                    cap, wanted)
