"""A run queue whose `gpu` pool limit is right from the first run: Dagster's dg.QueuedRunCoordinator plus one step.

Dagster creates a pool's limit lazily, during a dequeue pass that has already decided which runs may start: on a
fresh instance the first pass starts every queued run of the pool at once (DESIGN.md). This coordinator sets the
`gpu` pool limit when a run is submitted, before the run can be dequeued, so the first backfill never stacks
encoders on one GPU and nobody has to remember `dagster instance concurrency set gpu N`.

``gpu_pool_limit: auto`` (default) takes the limit from the run launcher (`GpuRunLauncher.total_capacity`:
GPUs x runs_per_gpu, or its CPU slots) and keeps the pool at it; an integer sets it for launchers that cannot count
GPUs (Kubernetes, Celery); ``manual`` leaves the pool to the operator. Every submission also checks that
`max_concurrent_runs` does not cap the fleet below the pool and says so in the run's events when it does.

``gpu_run_tags`` puts a GPU run's launch requirements on the run itself at submit time: every run that enters the
queue passes here (UI and automation backfills, `dagster job launch`, retries), while tags on one named job do not
reach the implicit asset job that backfills run (DESIGN.md). On Kubernetes it is the `dagster-k8s/config` tag that
K8sRunLauncher reads when it launches (GPU limit, `NEUCODEC_DEVICE=cuda`, spool disk); ``k8s`` builds that tag from
``NEUCODEC_K8S_*`` (gpu_executor.launch.k8s). A tag the run already has is never replaced; runs outside the pool (SFT,
checks-only runs: the tokens checks are their own op, in no pool) get nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import dagster as dg
from typing_extensions import Self

from gpu_executor.launch.dagster_internals import ConfigurableClassData
from gpu_executor.launch.names import GPU_POOL

AUTO = "auto"
MANUAL = "manual"
POOL_CHECK_SECONDS = 30.0
K8S = "k8s"

logger = logging.getLogger(__name__)


def parse_run_tags(value: Any) -> dict[str, str]:
    """``gpu_run_tags`` config -> tags: None (none), ``k8s`` (from NEUCODEC_K8S_*), or {tag: string | mapping}."""
    from gpu_executor.launch.k8s import K8S_CONFIG_TAG, gpu_run_tags, tag_value

    if value is None:
        return {}
    if isinstance(value, str):
        if value.strip().lower() != K8S:
            raise ValueError(f"gpu_run_tags must be 'k8s' or a mapping of run tags, got {value!r}")
        return gpu_run_tags()
    if not isinstance(value, Mapping):
        raise ValueError(f"gpu_run_tags must be 'k8s' or a mapping of run tags, got {type(value).__name__}")
    tags = {str(k): tag_value(v) for k, v in value.items()}
    if K8S_CONFIG_TAG in tags:
        # A typo here would otherwise surface only when the daemon launches the first GPU run.
        import json

        from dagster_k8s.job import UserDefinedDagsterK8sConfig

        UserDefinedDagsterK8sConfig.from_dict(json.loads(tags[K8S_CONFIG_TAG]))
    return tags


def encodes(run: dg.DagsterRun, pool: str = GPU_POOL) -> bool:
    """The one rule for "this run needs a GPU", used by the queue and every launcher: one of its ops is in the pool.
    Only the encoder is (the tokens checks are their own op, outside it), so a checks-only run needs no GPU."""
    pools = run.run_op_concurrency.all_pools if run.run_op_concurrency else None
    return bool(pools) and pool in pools


def parse_pool_limit(value: int | str | None) -> int | str:
    """`auto`, `manual` or a positive integer (as YAML or an env var gives it)."""
    if value is None:
        return AUTO
    if isinstance(value, Mapping) and set(value) == {"env"}:
        from gpu_executor.settings import named_variable

        name, value = str(value["env"]), named_variable(str(value["env"]))
        if value is None:
            raise ValueError(f"gpu_pool_limit: environment variable {name} is not set")
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


class GpuPoolRunCoordinator(dg.QueuedRunCoordinator):
    """dg.QueuedRunCoordinator that keeps the `gpu` pool limit set before any of the pool's runs is queued.

    Extra config: ``gpu_pool`` (default ``gpu``), ``gpu_pool_limit`` (``auto`` | ``manual`` | N) and
    ``gpu_run_tags`` (``k8s`` | {tag: value}: added to the pool's encoding runs when they are submitted).
    """

    def __init__(self, *args: Any, gpu_pool: str = GPU_POOL, gpu_pool_limit: int | str | None = AUTO,
                 gpu_run_tags: Any = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.gpu_pool = gpu_pool
        self.gpu_pool_limit = parse_pool_limit(gpu_pool_limit)
        self.gpu_run_tags = parse_run_tags(gpu_run_tags)
        self._checked: tuple[float, int | None] | None = None  # (when, limit) of the last ensure_pool_limit

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {
            **super().config_type(),
            "gpu_pool": dg.Field(dg.StringSource, is_required=False, default_value=GPU_POOL),
            # Any, not StringSource: YAML gives `gpu_pool_limit: 16` as an int (parse_pool_limit checks; {env: X} works).
            "gpu_pool_limit": dg.Field(
                dg.Any, is_required=False, default_value=AUTO,
                description="`auto` (the run launcher's GPU slots), `manual`, or the number of runs the pool "
                "may hold at once.",
            ),
            "gpu_run_tags": dg.Field(
                dg.Any, is_required=False,
                description="`k8s` (the dagster-k8s/config GPU tag from NEUCODEC_K8S_*) or a mapping of run tags "
                "(values: strings, or mappings written as JSON) added to the pool's encoding runs at submit; "
                "a tag the run already has wins.",
            ),
        }

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]) -> Self:
        extra = ("gpu_pool", "gpu_pool_limit", "gpu_run_tags")
        queued = {k: v for k, v in config_value.items() if k not in extra}
        coordinator = super().from_config_value(inst_data, queued)
        coordinator.gpu_pool = config_value.get("gpu_pool", GPU_POOL)
        coordinator.gpu_pool_limit = parse_pool_limit(config_value.get("gpu_pool_limit"))
        coordinator.gpu_run_tags = parse_run_tags(config_value.get("gpu_run_tags"))
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

    def submit_run(self, context: dg.SubmitRunContext) -> dg.DagsterRun:
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
        missing = {k: v for k, v in self.gpu_run_tags.items() if k not in run.tags}
        if missing and run.status == dg.DagsterRunStatus.NOT_STARTED and encodes(run, self.gpu_pool):
            # Before the run is queued: the launcher reads the stored run's tags when it dequeues it.
            self._instance.add_run_tags(run.run_id, missing)
        return super().submit_run(context)


def gpu_pool_slots(instance: dg.DagsterInstance, pool: str = GPU_POOL) -> int | None:
    """The `gpu` pool's slots: the limit in storage, else the one this instance's coordinator will set (a fresh
    instance before its first GPU run), else None (no GpuPoolRunCoordinator and no limit)."""
    limits = {p.name: p.limit for p in instance.event_log_storage.get_pool_limits()}
    if limits.get(pool):
        return int(limits[pool])
    coordinator = instance.run_coordinator
    return coordinator.wanted_limit() if isinstance(coordinator, GpuPoolRunCoordinator) else None
