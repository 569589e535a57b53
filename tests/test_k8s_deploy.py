"""Kubernetes scale-out: the Jobs K8sRunLauncher creates for the runs the platform really creates, and the deploy/
configs.

No cluster here: a local HTTP server stands in for the Kubernetes API server and records the Job bodies the
launcher's own kubernetes client sends it (a kubeconfig points the client at it). The runs come from the k8s
profile's instance (real Postgres, the run queue of deploy/k8s/dagster.yaml) through the UI's GraphQL mutations and
Dagster's own backfill daemon iteration; the queue daemon's iteration launches them, so `K8sRunLauncher.launch_run`
and the kubernetes client run unchanged up to the wire.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dagster as dg
import pytest
import yaml
from dagster_aws.s3.compute_log_manager import S3ComputeLogManager
from dagster_k8s.launcher import K8sRunLauncher

from gpu_executor.launch.coordinator import GpuPoolRunCoordinator, parse_run_tags
from gpu_executor.launch.dagster_internals import (
    BACKFILL_ID_TAG,
    ComputeIOType,
    QueuedRunCoordinatorDaemon,
    WorkspaceFileTarget,
    WorkspaceProcessContext,
    execute_backfill_iteration,
)
from gpu_executor.launch.k8s import K8S_CONFIG_TAG, gpu_run_tags, k8s_run_config
from neucodec_assets.cli.backfills import submit_backfill
from neucodec_assets.tokens.checks import COMPLETE_CHECK_KEY, VALID_CHECK_KEY
from neucodec_assets.tokens.discovery import add_shard_partitions
from neucodec_assets.tokens.metadata import TOKENS_ASSET_KEY
from tests.fixtures.dagster_api import LAUNCH_RUN, graphql, launch_asset_backfill

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
WORKSPACE = str(REPO / "workspace.yaml")
SFT_PAIRS = dg.AssetKey("sft_pairs")
log = logging.getLogger(__name__)
IMAGE = "registry.example.com/neucodec-platform:0.1.0"
GKE_L4 = {"cloud.google.com/gke-accelerator": "nvidia-l4"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
JOBS_PATH = re.compile(r"/apis/batch/v1/namespaces/[^/]+/jobs")

# K8sRunLauncher loads a kubeconfig at construction; this one names the test's API server.
KUBECONFIG = """
apiVersion: v1
kind: Config
clusters: [{{name: test, cluster: {{server: "{server}"}}}}]
users: [{{name: test, user: {{token: not-a-credential}}}}]
contexts: [{{name: test, context: {{cluster: test, user: test, namespace: dagster}}}}]
current-context: test
"""


@dataclass(frozen=True)
class ApiRequest:
    method: str
    path: str
    body: Any


class _ApiHandler(BaseHTTPRequestHandler):
    server: KubernetesApiServer

    def _answer(self, code: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        request = ApiRequest(self.command, urlsplit(self.path).path, body)
        self.server.requests.append(request)
        if request.method == "POST" and JOBS_PATH.fullmatch(request.path) and (body or {}).get("kind") == "Job":
            self._answer(201, body)  # what the API server answers a created Job with: the Job
        else:
            self._answer(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                               "code": 404, "message": f"{request.method} {request.path}: not served here"})

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


class KubernetesApiServer(ThreadingHTTPServer):
    """The cluster's API server as far as creating Jobs goes, on 127.0.0.1: it records every request and answers a
    Job creation as Kubernetes does (201, the Job back); anything else gets a 404."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ApiHandler)
        self.requests: list[ApiRequest] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def created_jobs(self) -> dict[str, dict[str, Any]]:
        """Dagster run id -> the Job body sent to create its run worker."""
        return {r.body["metadata"]["labels"]["dagster/run-id"]: r.body for r in self.requests if r.method == "POST"}


@pytest.fixture
def cluster() -> Iterator[KubernetesApiServer]:
    server = KubernetesApiServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


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
        "tolerations": [{"key": "nvidia.com/mig-1g.10gb", "operator": "Exists", "effect": "NoSchedule"}],
    }
    # Arguments win over the environment; JSON forms of selector and tolerations; explicit "no tolerations".
    json_env = {"NEUCODEC_K8S_NODE_SELECTOR": '{"a": "b"}', "NEUCODEC_K8S_TOLERATIONS": "[]"}
    assert k8s_run_config(gpus=1, env=json_env) == {
        "container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}},
                             "env": [{"name": "NEUCODEC_DEVICE", "value": "cuda"}]},
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


@pytest.fixture
def k8s_home(postgres_db, s3_env, cluster: KubernetesApiServer, tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> Path:
    """DAGSTER_HOME with deploy/k8s/dagster.yaml, changed only where this host differs from a cluster: the test
    database's port, a kubeconfig naming the test's API server, compute logs on moto over HTTP."""
    config = yaml.safe_load((DEPLOY / "k8s" / "dagster.yaml").read_text())
    for storage in ("run_storage", "event_log_storage", "schedule_storage"):
        config[storage]["config"]["postgres_db"]["port"] = int(postgres_db["port"])
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG.format(server=cluster.url))
    config["run_launcher"]["config"].update(load_incluster_config=False, kubeconfig_file=str(kubeconfig))
    config["compute_logs"]["config"]["local_dir"] = str(tmp_path / "compute_logs")
    home = tmp_path / "k8s_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    bucket_dir = tmp_path / "bucket"
    bucket_dir.mkdir()
    _pg_env(monkeypatch, postgres_db)
    for key, value in {
        "DAGSTER_HOME": str(home), "DAGSTER_CURRENT_IMAGE": IMAGE,  # what the chart sets in the code server
        "NEUCODEC_BUCKET": bucket_dir.as_uri(), "NEUCODEC_AUTOMATION": "off",
        "NEUCODEC_COMPUTE_LOG_BUCKET": s3_env["bucket"],
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",  # moto's placeholders
    }.items():
        monkeypatch.setenv(key, value)
    return home


def test_k8s_instance_config_and_helm_values_agree(k8s_home: Path) -> None:
    """deploy/k8s/dagster.yaml loads as an instance, its launcher included (Dagster checks every block against its
    class's schema); the Helm values say the same things."""
    config = yaml.safe_load((DEPLOY / "k8s" / "dagster.yaml").read_text())
    with dg.DagsterInstance.get() as instance:
        assert isinstance(instance.run_launcher, K8sRunLauncher)
        assert instance.run_launcher.job_namespace == "dagster"
        assert isinstance(instance.run_coordinator, GpuPoolRunCoordinator)
        assert isinstance(instance.compute_log_manager, S3ComputeLogManager)
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
    assert values["postgresql"]["postgresqlScheme"] == config["event_log_storage"]["config"]["postgres_db"]["scheme"]
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
    image = deployment["image"]
    # The daemon and the webserver load the instance's run queue (gpu_executor): the platform image, same tag.
    assert image["tag"] and image["tag"] != "latest"
    assert daemon["image"] == image and values["dagsterWebserver"]["image"] == image
    logs, chart_logs = config["compute_logs"], values["computeLogManager"]
    assert (logs["module"], logs["class"]) == ("dagster_aws.s3.compute_log_manager", "S3ComputeLogManager")
    assert chart_logs["type"] == "S3ComputeLogManager"
    camel = {"local_dir": "localDir", "endpoint_url": "endpointUrl", "skip_empty_files": "skipEmptyFiles",
             "upload_interval": "uploadInterval"}
    assert {camel.get(k, k): v for k, v in logs["config"].items()} == chart_logs["config"]["s3ComputeLogManager"]
    for component in (daemon, values["dagsterWebserver"]):  # both submit runs and load the compute log manager
        assert [s["name"] for s in component["envSecrets"]] == launcher["env_secrets"]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env") or []}


def test_shipped_gpu_tags_are_the_helpers_config_and_helm_says_the_same() -> None:
    """The `gpu_run_tags` written out in deploy/k8s/dagster.yaml is what gpu_executor.launch.k8s builds for those sizes,
    dagster-k8s accepts it, and the Helm values carry the same mapping."""
    config = yaml.safe_load((DEPLOY / "k8s" / "dagster.yaml").read_text())["run_coordinator"]["config"]
    tags = parse_run_tags(config["gpu_run_tags"])
    assert json.loads(tags[K8S_CONFIG_TAG]) == k8s_run_config(
        gpus=1, cpu="8", memory="32Gi", ephemeral_storage="64Gi", spool_size="60Gi", env={})
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    custom = values["dagsterDaemon"]["runCoordinator"]["config"]["customRunCoordinator"]["config"]
    assert custom["gpu_run_tags"] == config["gpu_run_tags"]
    with pytest.raises(ValueError, match="'k8s' or a mapping"):
        parse_run_tags("kubernetes")


def test_gpu_run_tags_k8s_reads_the_submitting_process_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """`gpu_run_tags: k8s` builds the tag from NEUCODEC_K8S_* where runs are submitted (daemon, webserver)."""
    monkeypatch.setenv("NEUCODEC_K8S_SPOOL_SIZE", "30Gi")
    monkeypatch.setenv("NEUCODEC_K8S_NODE_SELECTOR", "pool=l4")
    config = json.loads(parse_run_tags("k8s")[K8S_CONFIG_TAG])
    assert config["container_config"]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert {"name": "NEUCODEC_SPOOL_DIR", "value": "/spool"} in config["container_config"]["env"]
    assert config["pod_spec_config"]["node_selector"] == {"pool": "l4"}
    assert config["pod_spec_config"]["volumes"] == [{"name": "neucodec-spool", "empty_dir": {"size_limit": "30Gi"}}]


def launch_job_run(context: WorkspaceProcessContext, partition: str, checks_only: bool,
                   tags: dict[str, str] | None = None) -> str:
    """The launchpad's "Launch run" of neucodec_tokens_job for one shard (`dagster job launch` does the same)."""
    selector: dict[str, Any] = {"repositoryLocationName": "neucodec_assets", "repositoryName": "__repository__",
                                "jobName": "neucodec_tokens_job"}
    if checks_only:
        selector["assetSelection"] = []
        selector["assetCheckSelection"] = [{"assetKey": {"path": k.asset_key.path}, "name": k.name}
                                           for k in (VALID_CHECK_KEY, COMPLETE_CHECK_KEY)]
    data = graphql(context, LAUNCH_RUN, {"executionParams": {
        "selector": selector, "mode": "default",
        "executionMetadata": {"tags": [{"key": k, "value": v}
                                       for k, v in {"dagster/partition": partition, **(tags or {})}.items()]}}})
    data = data["launchRun"]
    assert data["__typename"] == "LaunchRunSuccess", data
    return data["run"]["runId"]


def test_every_encoding_run_gets_a_gpu_pod_and_no_other_run_does(k8s_home: Path, cluster: KubernetesApiServer) -> None:
    """A UI backfill of the tokens (the implicit asset job, only the backfill's tags), a CLI-recorded SFT backfill,
    a launchpad run of the named job, a checks-only run and a launchpad run with its own dagster-k8s/config: the
    queue tags the encoding runs, the queue daemon launches every run, and the Job that K8sRunLauncher sends the
    cluster asks for a GPU exactly when the run encodes."""
    keys = [f"indicvoices/hi/shard_{i:06d}" for i in range(3)]
    with dg.DagsterInstance.get() as instance, \
            WorkspaceProcessContext(instance, WorkspaceFileTarget(paths=[WORKSPACE])) as context:
        assert isinstance(instance.run_coordinator, GpuPoolRunCoordinator)
        assert isinstance(instance.run_launcher, K8sRunLauncher)
        add_shard_partitions(instance, keys)
        ui = {"backfillId": launch_asset_backfill(context, TOKENS_ASSET_KEY, keys, title="from the UI")}
        sft = submit_backfill(instance, context.create_request_context().asset_graph, [SFT_PAIRS], keys,
                              title="neucodec-platform enqueue --sft")
        for _ in range(5):  # the backfill daemon's own iteration creates and submits the runs
            for error in execute_backfill_iteration(context, log):
                assert error is None, error
            runs = {b: list(instance.get_runs(filters=dg.RunsFilter(tags={BACKFILL_ID_TAG: b})))
                    for b in (ui["backfillId"], sft)}
            if all(runs.values()):
                break
        assert all(runs.values()), runs
        named = instance.get_run_by_id(launch_job_run(context, keys[0], checks_only=False))
        checks = instance.get_run_by_id(launch_job_run(context, keys[1], checks_only=True))
        assert not checks.asset_selection and checks.asset_check_selection  # Dagster runs the checks alone
        # A run launched with its own dagster-k8s/config (set in the launchpad) keeps it: the queue adds, never
        # replaces.
        own = gpu_run_tags(gpus=1, node_selector=GKE_L4, memory="24Gi", env={})
        mine = instance.get_run_by_id(launch_job_run(context, keys[2], checks_only=False, tags=own))
        assert mine.tags[K8S_CONFIG_TAG] == own[K8S_CONFIG_TAG]

        encoding = [*runs[ui["backfillId"]], named]
        others = [*runs[sft], checks]
        everything = [*encoding, *others, mine]
        assert {r.status for r in everything} == {dg.DagsterRunStatus.QUEUED}
        assert any(r.job_name == "__ASSET_JOB" for r in runs[ui["backfillId"]])
        assert not any(K8S_CONFIG_TAG in r.tags for r in others)

        # The queue daemon's own iteration dequeues the runs and calls K8sRunLauncher.launch_run for each.
        queue = QueuedRunCoordinatorDaemon(interval_seconds=1)
        for _ in range(5):
            list(queue.run_iteration(context))
            if not instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED])):
                break
        launched = {r.run_id: instance.get_run_by_id(r.run_id) for r in everything}
        assert {r.status for r in launched.values()} == {dg.DagsterRunStatus.STARTING}, launched

    # One Job creation per run, in the launcher's namespace, and nothing else asked of the cluster.
    assert {(r.method, r.path) for r in cluster.requests} == {("POST", "/apis/batch/v1/namespaces/dagster/jobs")}
    jobs = cluster.created_jobs()
    assert sorted(jobs) == sorted(launched) and len(cluster.requests) == len(launched)

    def pod_of(run: dg.DagsterRun) -> tuple[dict[str, Any], dict[str, Any]]:
        """The run's pod spec and its one container, with what every run worker pod of the profile carries."""
        job = jobs[run.run_id]
        assert job["kind"] == "Job" and job["metadata"]["labels"]["app.kubernetes.io/part-of"] == "neucodec-platform"
        pod = job["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"] == IMAGE and env_of(container)["DAGSTER_RUN_JOB_NAME"] == run.job_name
        assert container["args"][-3:-1] == ["api", "execute_run"] and run.run_id in container["args"][-1]
        sources = {(next(iter(s)), next(iter(s.values()))["name"]) for s in container["envFrom"]}
        assert {("secretRef", "neucodec-r2"), ("configMapRef", "neucodec-env")} <= sources
        assert pod["serviceAccountName"] == "dagster"
        return pod, container

    assert jobs[named.run_id]["metadata"]["labels"]["dagster/job"] == "neucodec_tokens_job"
    for run in encoding:
        pod, container = pod_of(run)
        assert container["resources"]["limits"] == {"nvidia.com/gpu": "1", "memory": "32Gi",
                                                    "ephemeral-storage": "64Gi"}, run.tags
        assert container["resources"]["requests"] == {"cpu": "8", "memory": "32Gi", "ephemeral-storage": "64Gi"}
        assert env_of(container)["NEUCODEC_DEVICE"] == "cuda"
        assert env_of(container)["NEUCODEC_SPOOL_DIR"] == "/spool"
        assert {"name": "neucodec-spool", "mountPath": "/spool"} in container["volumeMounts"]
        assert {"name": "neucodec-spool", "emptyDir": {"sizeLimit": "60Gi"}} in pod["volumes"]
        assert pod["tolerations"] == [GPU_TOLERATION]
        assert "nodeSelector" not in pod
    for run in others:  # discovery, SFT and checks-only runs go to any node, without a GPU
        pod, container = pod_of(run)
        assert container["resources"] == {} and "NEUCODEC_DEVICE" not in env_of(container)
        assert container["volumeMounts"] == [] and pod["volumes"] == []
        assert "nodeSelector" not in pod and "tolerations" not in pod
    pod, container = pod_of(launched[mine.run_id])  # the run's own config, none of the queue's
    assert container["resources"] == {"limits": {"nvidia.com/gpu": "1", "memory": "24Gi"},
                                      "requests": {"memory": "24Gi"}}
    assert pod["nodeSelector"] == GKE_L4 and pod["tolerations"] == [GPU_TOLERATION]
    assert env_of(container)["NEUCODEC_DEVICE"] == "cuda" and "NEUCODEC_SPOOL_DIR" not in env_of(container)


def test_compute_logs_outlive_the_pod(k8s_home: Path, s3_env) -> None:
    """The k8s profile's compute log manager uploads a worker's stderr to the bucket over the R2-style endpoint;
    another process (the webserver) with an empty local dir reads it back from there."""
    with dg.DagsterInstance.get() as instance:
        manager = instance.compute_log_manager
        assert isinstance(manager, S3ComputeLogManager)
        log_key = ["run-in-a-pod", "compute_logs", "neucodec_tokens"]
        with manager.open_log_stream(log_key, ComputeIOType.STDERR) as stream:
            stream.write("RuntimeError: CUDA error: an illegal memory access was encountered\n")
    config = yaml.safe_load((k8s_home / "dagster.yaml").read_text())
    config["compute_logs"]["config"]["local_dir"] = str(k8s_home / "webserver_logs")
    (k8s_home / "dagster.yaml").write_text(yaml.safe_dump(config))
    with dg.DagsterInstance.get() as webserver:
        data, _ = webserver.compute_log_manager.get_log_data_for_type(log_key, ComputeIOType.STDERR, 0, None)
    assert b"illegal memory access" in data


def test_cuda_requested_without_a_gpu_fails_before_loading() -> None:
    """A GPU pod (NEUCODEC_DEVICE=cuda) whose GPU is unusable fails naming the pod's problem, before any weight is
    read: the model here does not exist, so reaching the loader would fail differently. A process of its own that sees
    no GPU (CUDA_VISIBLE_DEVICES="", as in a pod without one), so that a host with a GPU checks the same."""
    env = {**os.environ, "NEUCODEC_DEVICE": "cuda", "NEUCODEC_MODEL": "/nonexistent/neucodec-weights",
           "CUDA_VISIBLE_DEVICES": ""}
    code = "from resources.dagster_resources import EncoderResource; EncoderResource().load()"
    child = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
                           timeout=300, check=False)
    assert child.returncode == 1, child.stderr[-3000:]
    failure = child.stderr.strip().splitlines()[-1]
    assert failure.startswith("RuntimeError: NEUCODEC_DEVICE='cuda'"), child.stderr[-3000:]
    assert "this pod got no GPU" in failure and "nvidia.com/gpu" in failure


def test_dockerfile_bakes_what_the_loader_reads() -> None:
    """A baked image runs offline (HF_HUB_OFFLINE=1): it must hold every file the loader asks the hub cache for,
    and it runs as the non-root user."""
    from gpu_executor.encoder import loading

    text = (REPO / "Dockerfile").read_text()
    for pattern in [*loading._MODEL_FILES, *loading._SEMANTIC_FILES]:
        assert repr(pattern) in text, pattern
    assert [line for line in text.splitlines() if line.startswith("USER ")][-1] == "USER 10001"
    assert "HF_HUB_OFFLINE=${BAKE_WEIGHTS}" in text and "HF_HOME=/cache/hf" in text
