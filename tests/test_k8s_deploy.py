"""Kubernetes scale-out: the Job dagster-k8s builds for a tokens run, and the deploy/ configs.

No cluster here: the Job is built by the same dagster-k8s code K8sRunLauncher.launch_run uses, right up to the
API call that would create it. The instance configs load with real Postgres storage.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from dagster._cli.api import ExecuteRunArgs
from dagster._config import process_config
from dagster._core.code_pointer import ModuleCodePointer
from dagster._core.instance.config import dagster_instance_config
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
from dagster_k8s.job import construct_dagster_k8s_job, get_job_name_from_run_id
from dagster_k8s.launcher import K8sRunLauncher
from kubernetes.client import ApiClient

from gpu_executor.k8s import K8S_CONFIG_TAG, default_tolerations, gpu_run_tags, k8s_run_config

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
IMAGE = "registry.example.com/neucodec-platform:0.1.0"
GKE_L4 = {"cloud.google.com/gke-accelerator": "nvidia-l4"}

# A kubeconfig that names a cluster nobody contacts: K8sRunLauncher loads one at construction.
KUBECONFIG = """
apiVersion: v1
kind: Config
clusters: [{name: offline, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: offline, user: {token: not-a-credential}}]
contexts: [{name: offline, context: {cluster: offline, user: offline, namespace: dagster}}]
current-context: offline
"""


def k8s_launcher_from_deploy(tmp_path: Path) -> K8sRunLauncher:
    """K8sRunLauncher with deploy/k8s/dagster.yaml's config, reading a kubeconfig instead of the in-cluster one."""
    config = yaml.safe_load((DEPLOY / "k8s" / "dagster.yaml").read_text())["run_launcher"]
    assert (config["module"], config["class"]) == ("dagster_k8s.launcher", "K8sRunLauncher")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    launcher_config = {**config["config"], "load_incluster_config": False, "kubeconfig_file": str(kubeconfig)}
    processed = process_config(K8sRunLauncher.config_type(), launcher_config)
    assert processed.success, processed.errors
    return K8sRunLauncher.from_config_value(None, processed.value)


def tokens_run(tags: dict[str, str]) -> dg.DagsterRun:
    """A run of the platform's tokens job for one shard partition, as the backfill daemon creates it."""
    origin = JobPythonOrigin(
        job_name="neucodec_tokens_job",
        repository_origin=RepositoryPythonOrigin(
            executable_path="/usr/local/bin/python",
            code_pointer=ModuleCodePointer("neucodec_assets.definitions", "defs", working_directory=None),
            container_image=IMAGE,
        ),
    )
    return dg.DagsterRun(
        job_name="neucodec_tokens_job",
        tags={"dagster/partition": "indicvoices/hi/shard_000123", "dagster/backfill": "abcdefgh", **tags},
        job_code_origin=origin,
    )


def build_job(launcher: K8sRunLauncher, run: dg.DagsterRun) -> dict[str, Any]:
    """The Job manifest K8sRunLauncher.launch_run would send (its _launch_k8s_job_with_args, minus the API call)."""
    container_context = launcher.get_container_context_for_run(run)
    job_origin = run.job_code_origin
    assert job_origin is not None
    job_config = container_context.get_k8s_job_config(
        job_image=job_origin.repository_origin.container_image, run_launcher=launcher
    )
    args = ExecuteRunArgs(job_origin=job_origin, run_id=run.run_id, instance_ref=None).get_command_args()
    job_name = get_job_name_from_run_id(run.run_id)
    job = construct_dagster_k8s_job(
        job_config=job_config,
        args=args,
        job_name=job_name,
        pod_name=job_name,
        component="run_worker",
        user_defined_k8s_config=container_context.run_k8s_config,
        labels={"dagster/job": job_origin.job_name, "dagster/run-id": run.run_id},
        env_vars=[{"name": "DAGSTER_RUN_JOB_NAME", "value": job_origin.job_name}],
    )
    assert container_context.namespace == "dagster"
    return ApiClient().sanitize_for_serialization(job)


def test_tokens_run_job_asks_for_a_gpu_node(tmp_path: Path) -> None:
    launcher = k8s_launcher_from_deploy(tmp_path)
    tags = gpu_run_tags(gpus=1, node_selector=GKE_L4, memory="24Gi", env={})
    job = build_job(launcher, tokens_run(tags))

    assert job["kind"] == "Job" and job["metadata"]["labels"]["dagster/job"] == "neucodec_tokens_job"
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "1", "memory": "24Gi"}
    assert container["resources"]["requests"] == {"memory": "24Gi"}
    assert pod["nodeSelector"] == GKE_L4
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert container["image"] == IMAGE
    assert container["args"][-3:-1] == ["api", "execute_run"]
    sources = {(next(iter(s)), next(iter(s.values()))["name"]) for s in container["envFrom"]}
    assert {("secretRef", "neucodec-r2"), ("configMapRef", "neucodec-env")} <= sources
    assert pod["serviceAccountName"] == "dagster"


def test_run_without_gpu_tags_gets_no_gpu(tmp_path: Path) -> None:
    """Discovery or SFT runs carry no tag: the launcher's defaults put them on any node without a GPU."""
    job = build_job(k8s_launcher_from_deploy(tmp_path), tokens_run({}))
    pod = job["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in json.dumps(pod)
    assert "nodeSelector" not in pod


def test_gpu_run_tags_read_defaults_from_env() -> None:
    env = {
        "NEUCODEC_K8S_GPUS": "2",
        "NEUCODEC_K8S_GPU_RESOURCE": "nvidia.com/mig-1g.10gb",
        "NEUCODEC_K8S_NODE_SELECTOR": "pool=gpu,accelerator=a100",
        "NEUCODEC_K8S_CPU": "8",
    }
    config = json.loads(gpu_run_tags(env=env)[K8S_CONFIG_TAG])
    assert config["container_config"]["resources"] == {
        "limits": {"nvidia.com/mig-1g.10gb": "2"}, "requests": {"cpu": "8"},
    }
    assert config["pod_spec_config"] == {
        "node_selector": {"pool": "gpu", "accelerator": "a100"},
        "tolerations": default_tolerations("nvidia.com/mig-1g.10gb"),
    }
    # Arguments win over the environment; JSON forms of selector and tolerations; explicit "no tolerations".
    json_env = {"NEUCODEC_K8S_NODE_SELECTOR": '{"a": "b"}', "NEUCODEC_K8S_TOLERATIONS": "[]"}
    assert k8s_run_config(gpus=1, env=json_env) == {
        "container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}}},
        "pod_spec_config": {"node_selector": {"a": "b"}},
    }
    assert gpu_run_tags(gpus=0, env={}) == {}
    for bad_env, message in [
        ({"NEUCODEC_K8S_GPUS": "one"}, "whole number"),
        ({"NEUCODEC_K8S_NODE_SELECTOR": "pool"}, "key=value"),
        ({"NEUCODEC_K8S_TOLERATIONS": '{"key": "x"}'}, "JSON list"),
    ]:
        with pytest.raises(ValueError, match=message):
            gpu_run_tags(env=bad_env)


def _pg_env(monkeypatch: pytest.MonkeyPatch, db: dict[str, str]) -> None:
    monkeypatch.setenv("DAGSTER_PG_HOST", db["host"])
    monkeypatch.setenv("DAGSTER_PG_PORT", db["port"])
    monkeypatch.setenv("DAGSTER_PG_USERNAME", db["user"])
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "unused-with-trust-auth")
    monkeypatch.setenv("DAGSTER_PG_DB", db["db"])


def test_k8s_instance_config_and_helm_values_agree(
    postgres_db, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """deploy/k8s/dagster.yaml passes Dagster's schema and loads; the Helm values say the same things."""
    _pg_env(monkeypatch, postgres_db)
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(DEPLOY / "k8s" / "dagster.yaml", home / "dagster.yaml")
    config, _ = dagster_instance_config(str(home))
    k8s_launcher_from_deploy(tmp_path)  # the run_launcher block passes K8sRunLauncher's own schema

    # Everything but the launcher (which needs a cluster) loads for real.
    local = {k: v for k, v in config.items() if k != "run_launcher"}
    (home / "dagster.yaml").write_text(yaml.safe_dump(local))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.run_monitoring_enabled and instance.run_retries_enabled
        assert list(instance.get_runs()) == []

    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    k8s = values["runLauncher"]["config"]["k8sRunLauncher"]
    launcher = config["run_launcher"]["config"]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert k8s["jobNamespace"] == launcher["job_namespace"]
    assert [s["name"] for s in k8s["envSecrets"]] == launcher["env_secrets"]
    assert [c["name"] for c in k8s["envConfigMaps"]] == launcher["env_config_maps"]
    assert values["global"]["postgresqlSecretName"] == launcher["postgres_password_secret"]
    assert values["global"]["serviceAccountName"] == launcher["service_account_name"]
    assert values["postgresql"]["postgresqlScheme"] == config["storage"]["postgres"]["postgres_db"]["scheme"]
    daemon = values["dagsterDaemon"]
    assert daemon["runCoordinator"]["type"] == "CustomRunCoordinator"
    custom = daemon["runCoordinator"]["config"]["customRunCoordinator"]
    assert {k: custom[k] for k in ("module", "class", "config")} == config["run_coordinator"]
    monitoring = config["run_monitoring"]
    assert daemon["runMonitoring"] == {
        "enabled": monitoring["enabled"],
        "startTimeoutSeconds": monitoring["start_timeout_seconds"],
        "cancelTimeoutSeconds": monitoring["cancel_timeout_seconds"],
        "pollIntervalSeconds": monitoring["poll_interval_seconds"],
        "maxResumeRunAttempts": monitoring["max_resume_run_attempts"],
    }
    retries = config["run_retries"]
    assert daemon["runRetries"] == {"enabled": True, "maxRetries": retries["max_retries"],
                                    "retryOnAssetOrOpFailure": retries["retry_on_asset_or_op_failure"]}
    assert values["concurrency"]["pools"] == {"granularity": config["concurrency"]["pools"]["granularity"]}
    assert values["concurrency"]["runs"] == {
        "maxConcurrentRuns": config["concurrency"]["runs"]["max_concurrent_runs"]}
    deployment = values["dagster-user-deployments"]["deployments"][0]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "neucodec_assets.definitions"]
