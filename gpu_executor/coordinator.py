"""A run queue whose `gpu` pool limit is right from the first run: Dagster's QueuedRunCoordinator plus one step.

Dagster creates a pool's limit lazily, during a dequeue pass that has already decided which runs may start: on a
fresh instance the first pass starts every queued run of the pool at once (DESIGN.md). This coordinator sets the
`gpu` pool limit when a run is submitted, before the run can be dequeued, so the first backfill never stacks
encoders on one GPU and nobody has to remember `dagster instance concurrency set gpu N`.

``gpu_pool_limit: auto`` (default) takes the limit from the run launcher (`GpuRunLauncher.total_capacity`:
GPUs x runs_per_gpu, or its CPU slots) and keeps the pool at it; an integer sets it for launchers that cannot count
GPUs (Kubernetes, Celery); ``manual`` leaves the pool to the operator. Every submission also checks that
`max_concurrent_runs` does not cap the fleet below the pool and says so in the run's events when it does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import dagster as dg
from dagster._core.run_coordinator import QueuedRunCoordinator, SubmitRunContext
from dagster._serdes import ConfigurableClassData
from typing_extensions import Self

GPU_POOL = "gpu"
AUTO = "auto"
MANUAL = "manual"
POOL_CHECK_SECONDS = 30.0

logger = logging.getLogger(__name__)


def parse_pool_limit(value: int | str | None) -> int | str:
    """`auto`, `manual` or a positive integer (as YAML or an env var gives it)."""
    if value is None:
        return AUTO
    text = str(value).strip().lower()
    if text in (AUTO, MANUAL):
        return text
    try:
        limit = int(text)
    except ValueError:
        limit = 0
    if limit < 1:
        raise ValueError(f"gpu_pool_limit must be 'auto', 'manual' or a positive integer, got {value!r}")
    return limit


class GpuPoolRunCoordinator(QueuedRunCoordinator):
    """QueuedRunCoordinator that keeps the `gpu` pool limit set before any of the pool's runs is queued.

    Extra config: ``gpu_pool`` (default ``gpu``) and ``gpu_pool_limit`` (``auto`` | ``manual`` | N).
    """

    def __init__(self, *args: Any, gpu_pool: str = GPU_POOL, gpu_pool_limit: int | str | None = AUTO,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.gpu_pool = gpu_pool
        self.gpu_pool_limit = parse_pool_limit(gpu_pool_limit)
        self._checked: tuple[float, int | None] | None = None  # (when, limit) of the last ensure_pool_limit

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {
            **super().config_type(),
            "gpu_pool": dg.Field(dg.StringSource, is_required=False, default_value=GPU_POOL),
            "gpu_pool_limit": dg.Field(
                dg.StringSource, is_required=False, default_value=AUTO,
                description="`auto` (the run launcher's GPU slots), `manual`, or the number of runs the pool "
                "may hold at once.",
            ),
        }

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]) -> Self:
        queued = {k: v for k, v in config_value.items() if k not in ("gpu_pool", "gpu_pool_limit")}
        coordinator = super().from_config_value(inst_data, queued)
        coordinator.gpu_pool = config_value.get("gpu_pool", GPU_POOL)
        coordinator.gpu_pool_limit = parse_pool_limit(config_value.get("gpu_pool_limit"))
        return coordinator

    def wanted_limit(self) -> int | None:
        """The pool limit to keep, or None when it is left to the operator (or cannot be known here)."""
        if self.gpu_pool_limit == MANUAL:
            return None
        if isinstance(self.gpu_pool_limit, int):
            return self.gpu_pool_limit
        capacity = getattr(self._instance.run_launcher, "total_capacity", None)
        return int(capacity) if capacity else None

    def ensure_pool_limit(self) -> int | None:
        """Set the pool's limit when it is missing or differs from the wanted one; returns the limit in force."""
        storage = self._instance.event_log_storage
        current = {pool.name: pool for pool in storage.get_pool_limits()}.get(self.gpu_pool)
        wanted = self.wanted_limit()
        if wanted is None:
            return current.limit if current is not None else None
        if current is None or current.limit != wanted or current.from_default:
            storage.set_concurrency_slots(self.gpu_pool, wanted)
            logger.info("pool %s limit set to %d (was %s)", self.gpu_pool, wanted,
                        "unset" if current is None else current.limit)
        return wanted

    def _limit_in_force(self) -> int | None:
        """ensure_pool_limit at most once per POOL_CHECK_SECONDS: a backfill submits thousands of runs in a row."""
        now = time.monotonic()
        if self._checked is None or now - self._checked[0] > POOL_CHECK_SECONDS:
            self._checked = (now, self.ensure_pool_limit())
        return self._checked[1]

    def submit_run(self, context: SubmitRunContext) -> dg.DagsterRun:
        run = context.dagster_run
        pools = run.run_op_concurrency.all_pools if run.run_op_concurrency else None
        if pools and self.gpu_pool in pools:
            limit = self._limit_in_force()
            queue = self._instance.get_concurrency_config().run_queue_config or self.get_run_queue_config()
            max_runs = queue.max_concurrent_runs
            if limit is not None and 0 <= max_runs < limit:
                self._instance.report_engine_event(
                    f"WARNING: max_concurrent_runs is {max_runs}, below the `{self.gpu_pool}` pool limit of {limit}:"
                    f" at most {max_runs} GPU runs will run at once. Raise concurrency.runs.max_concurrent_runs.",
                    run, cls=self.__class__,
                )
        return super().submit_run(context)
