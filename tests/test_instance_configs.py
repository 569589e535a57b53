"""One instance config per deployment profile, with their common settings held together: the root dagster.yaml
(one host, GpuRunLauncher) and deploy/k8s/dagster.yaml (K8sRunLauncher) differ only where the profile must."""

from __future__ import annotations

from pathlib import Path

import yaml

from gpu_executor.launch.coordinator import GpuPoolRunCoordinator
from gpu_executor.launch.dagster_internals import process_config
from gpu_executor.launch.host_launcher import GpuRunLauncher

REPO_ROOT = Path(__file__).resolve().parents[1]
PROFILES = {"single host": REPO_ROOT / "dagster.yaml", "kubernetes": REPO_ROOT / "deploy" / "k8s" / "dagster.yaml",
            "celery": REPO_ROOT / "deploy" / "celery" / "dagster.yaml"}
# What a profile may set differently: how runs start, how long a pod may take to start, the pool limit where the
# launcher cannot count GPUs, the database port (the Helm chart renders it from its values), the pod requirements
# the queue adds to GPU runs (Kubernetes only), and where worker logs go (the bucket, where pods vanish).
STORAGES = ("run_storage", "event_log_storage", "schedule_storage")
PROFILE_SPECIFIC = {("run_launcher",), ("run_monitoring", "start_timeout_seconds"),
                    ("run_coordinator", "config", "gpu_pool_limit"), ("run_coordinator", "config", "gpu_run_tags"),
                    ("compute_logs",), *((storage, "config", "postgres_db", "port") for storage in STORAGES)}


def _flatten(config: dict, path: tuple = ()) -> dict[tuple, object]:
    out: dict[tuple, object] = {}
    for key, value in config.items():
        here = (*path, key)
        if isinstance(value, dict):
            out.update(_flatten(value, here))
        else:
            out[here] = value
    return out


def _common(config: dict) -> dict[tuple, object]:
    return {path: value for path, value in _flatten(config).items()
            if not any(path[:n] in PROFILE_SPECIFIC for n in range(1, len(path) + 1))}


def test_profiles_share_every_common_setting() -> None:
    configs = {name: yaml.safe_load(path.read_text()) for name, path in PROFILES.items()}
    single, k8s = _common(configs["single host"]), _common(configs["kubernetes"])
    assert single == k8s
    assert _common(configs["celery"]) == single
    # Celery cannot count the boxes' GPUs either: an integer pool limit, the fleet's GPUs.
    celery_limit = configs["celery"]["run_coordinator"]["config"]["gpu_pool_limit"]
    assert isinstance(celery_limit, int) and configs["celery"]["concurrency"]["runs"]["max_concurrent_runs"] >= celery_limit
    assert configs["celery"]["run_launcher"]["class"] == "CeleryGpuRunLauncher"
    for name, config in configs.items():
        assert config["run_retries"]["retry_on_asset_or_op_failure"] is False, name
        assert config["concurrency"]["pools"]["granularity"] == "run", name
        # With run granularity a pool's slots are its runs in progress: nothing for this setting to free.
        assert "free_slots_after_run_end_seconds" not in config["run_monitoring"], name
        assert config["run_coordinator"]["class"] == "GpuPoolRunCoordinator", name
    # Kubernetes cannot count GPUs from the daemon: its pool limit is given, and the run cap is above it.
    k8s_limit = configs["kubernetes"]["run_coordinator"]["config"]["gpu_pool_limit"]
    assert isinstance(k8s_limit, int) and configs["kubernetes"]["concurrency"]["runs"]["max_concurrent_runs"] >= k8s_limit
    assert configs["single host"]["run_coordinator"]["config"]["gpu_pool_limit"] == "auto"
    # Each profile's queue config passes the coordinator's schema as written (YAML gives `16` as an int).
    for name, config in configs.items():
        processed = process_config(GpuPoolRunCoordinator.config_type(), config["run_coordinator"]["config"])
        assert processed.success, (name, processed.errors)
    # GpuRunLauncher pins GPUs itself; on Kubernetes the queue must give encoding runs their GPU pod, and worker
    # logs must outlive the pod.
    assert "gpu_run_tags" not in configs["single host"]["run_coordinator"]["config"]
    assert "dagster-k8s/config" in configs["kubernetes"]["run_coordinator"]["config"]["gpu_run_tags"]
    assert configs["kubernetes"]["compute_logs"]["class"] == "S3ComputeLogManager"


def test_production_instance_config(pg_instance) -> None:
    """The repository's dagster.yaml loads on Postgres with the pool-keeping queue and the GPU run launcher."""
    from dagster_postgres import PostgresScheduleStorage

    from gpu_executor.launch.event_log_storage import CachingPostgresEventLogStorage
    from gpu_executor.launch.run_storage import PooledPostgresRunStorage

    assert isinstance(pg_instance.run_storage, PooledPostgresRunStorage)
    assert isinstance(pg_instance.event_log_storage, CachingPostgresEventLogStorage)
    assert isinstance(pg_instance.schedule_storage, PostgresScheduleStorage)
    assert isinstance(pg_instance.run_coordinator, GpuPoolRunCoordinator)
    assert isinstance(pg_instance.run_launcher, GpuRunLauncher)
    assert pg_instance.get_concurrency_config().pool_config.pool_granularity.value == "run"
    assert pg_instance.get_concurrency_config().run_queue_config.max_concurrent_runs >= \
        pg_instance.run_launcher.total_capacity
    assert pg_instance.run_monitoring_enabled and pg_instance.run_monitoring_max_resume_run_attempts == 0
    assert pg_instance.run_retries_enabled and pg_instance.run_retries_max_retries >= 1
    assert not pg_instance.run_retries_retry_on_asset_or_op_failure
    # The queue sets the `gpu` pool limit itself, from the launcher's slots (CPU slots on this GPU-less host).
    assert pg_instance.run_coordinator.ensure_pool_limit() == pg_instance.run_launcher.total_capacity
    limits = {pool.name: pool.limit for pool in pg_instance.event_log_storage.get_pool_limits()}
    assert limits["gpu"] == pg_instance.run_launcher.total_capacity
