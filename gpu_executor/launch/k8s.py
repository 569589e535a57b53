"""Run tags that put a Dagster run on a Kubernetes GPU node (dagster-k8s `K8sRunLauncher`).

Past one machine the platform runs each shard as its own Kubernetes Job; the scheduler, not the platform, finds a
node with a free GPU. The `dagster-k8s/config` run tag carries the GPU limit, node selector, tolerations, the
`NEUCODEC_DEVICE=cuda` env (a GPU pod never falls back to the CPU) and the spool disk. The run queue
(`gpu_executor.launch.coordinator.GpuPoolRunCoordinator`, config `gpu_run_tags`) adds it to every run of the `gpu` pool when
the run is submitted, so UI and automation backfills get it too. No Dagster import: this is plain data.

Defaults come from the environment of the process that builds the tags (with `gpu_run_tags: k8s`: the daemon and
the webserver, which submit runs):

| variable | default | meaning |
|---|---|---|
| `NEUCODEC_K8S_GPUS` | `1` | GPUs per run (`nvidia.com/gpu` limit); `0` for a CPU-only run |
| `NEUCODEC_K8S_GPU_RESOURCE` | `nvidia.com/gpu` | extended resource name of the device plugin |
| `NEUCODEC_K8S_NODE_SELECTOR` | none | `key=value,key2=value2` or a JSON object |
| `NEUCODEC_K8S_TOLERATIONS` | tolerate the `nvidia.com/gpu` taint | JSON list of Kubernetes tolerations; `[]` for none |
| `NEUCODEC_K8S_CPU` | none | CPU request of the run pod, e.g. `4` |
| `NEUCODEC_K8S_MEMORY` | none | memory request (and limit) of the run pod, e.g. `24Gi` |
| `NEUCODEC_K8S_EPHEMERAL_STORAGE` | none | local disk request (and limit): 2 x the largest audio.tar + margin |
| `NEUCODEC_K8S_SPOOL_SIZE` | none | an emptyDir of this size at `/spool` as `NEUCODEC_SPOOL_DIR` (prefetched tars) |
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from gpu_executor.settings import Settings, default_of, load_settings

K8S_CONFIG_TAG = "dagster-k8s/config"
DEFAULT_GPU_RESOURCE = default_of("k8s_gpu_resource")

GPUS_ENV, GPU_RESOURCE_ENV, NODE_SELECTOR_ENV, TOLERATIONS_ENV, CPU_ENV, MEMORY_ENV, EPHEMERAL_ENV, SPOOL_SIZE_ENV = (
    Settings.env_names(f"k8s_{name}")[0]
    for name in ("gpus", "gpu_resource", "node_selector", "tolerations", "cpu", "memory", "ephemeral_storage",
                 "spool_size")
)
SPOOL_VOLUME = "neucodec-spool"
SPOOL_PATH = "/spool"


def default_tolerations(gpu_resource: str = DEFAULT_GPU_RESOURCE) -> list[dict[str, str]]:
    """GKE, EKS and the NVIDIA GPU operator taint GPU nodes with the resource name; tolerate that taint."""
    return [{"key": gpu_resource, "operator": "Exists", "effect": "NoSchedule"}]


def parse_node_selector(value: str) -> dict[str, str]:
    """`a=b,c=d` or a JSON object -> dict; an empty string -> {}."""
    value = value.strip()
    if not value:
        return {}
    if value.startswith("{"):
        parsed = json.loads(value)
        if not isinstance(parsed, dict):
            raise ValueError(f"{NODE_SELECTOR_ENV} must be a JSON object, got {value!r}")
        return {str(k): str(v) for k, v in parsed.items()}
    out: dict[str, str] = {}
    for item in value.split(","):
        key, sep, val = item.strip().partition("=")
        if not sep or not key:
            raise ValueError(f"{NODE_SELECTOR_ENV} entry {item!r} is not key=value")
        out[key] = val
    return out


def parse_tolerations(value: str) -> list[dict[str, Any]]:
    parsed = json.loads(value)
    if not isinstance(parsed, list) or not all(isinstance(t, dict) for t in parsed):
        raise ValueError(f"{TOLERATIONS_ENV} must be a JSON list of objects, got {value!r}")
    return parsed


def _int(value: str, name: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{name} must be a whole number of GPUs, got {value!r}") from None
    if number < 0:
        raise ValueError(f"{name} must not be negative, got {number}")
    return number


def k8s_run_config(
    gpus: int | None = None,
    node_selector: Mapping[str, str] | None = None,
    tolerations: Sequence[Mapping[str, Any]] | None = None,
    cpu: str | None = None,
    memory: str | None = None,
    env: Mapping[str, str] | None = None,
    ephemeral_storage: str | None = None,
    spool_size: str | None = None,
) -> dict[str, Any]:
    """The `dagster-k8s/config` value (container and pod spec parts); arguments win over the environment.

    With a GPU the pod's env sets `NEUCODEC_DEVICE=cuda`: a pod whose GPU is unusable fails instead of encoding on
    the CPU at a fraction of the speed (explicit container env wins over the code location's ConfigMap)."""
    env = load_settings().as_env() if env is None else env
    resource = env.get(GPU_RESOURCE_ENV) or DEFAULT_GPU_RESOURCE
    if gpus is None:
        gpus = _int(env.get(GPUS_ENV, "1"), GPUS_ENV)
    elif gpus < 0:
        raise ValueError(f"gpus must not be negative, got {gpus}")
    if node_selector is None:
        node_selector = parse_node_selector(env.get(NODE_SELECTOR_ENV, ""))
    if tolerations is None:
        raw = env.get(TOLERATIONS_ENV)
        tolerations = parse_tolerations(raw) if raw else (default_tolerations(resource) if gpus else [])
    cpu = cpu if cpu is not None else env.get(CPU_ENV) or None
    memory = memory if memory is not None else env.get(MEMORY_ENV) or None
    ephemeral_storage = ephemeral_storage if ephemeral_storage is not None else env.get(EPHEMERAL_ENV) or None
    spool_size = spool_size if spool_size is not None else env.get(SPOOL_SIZE_ENV) or None

    limits: dict[str, str] = {}
    requests: dict[str, str] = {}
    if gpus:
        # Extended resources are limits only (Kubernetes copies them into requests); they cannot be shared.
        limits[resource] = str(gpus)
    if cpu:
        requests["cpu"] = cpu
    if memory:
        requests["memory"] = memory
        limits["memory"] = memory
    if ephemeral_storage:
        requests["ephemeral-storage"] = ephemeral_storage
        limits["ephemeral-storage"] = ephemeral_storage
    resources = {k: v for k, v in (("limits", limits), ("requests", requests)) if v}
    container: dict[str, Any] = {}
    pod_spec: dict[str, Any] = {}
    env_vars = [{"name": "NEUCODEC_DEVICE", "value": "cuda"}] if gpus else []
    if spool_size:
        env_vars.append({"name": "NEUCODEC_SPOOL_DIR", "value": SPOOL_PATH})
        container["volume_mounts"] = [{"name": SPOOL_VOLUME, "mount_path": SPOOL_PATH}]
        pod_spec["volumes"] = [{"name": SPOOL_VOLUME, "empty_dir": {"size_limit": spool_size}}]
    if env_vars:
        container["env"] = env_vars
    if resources:
        container["resources"] = resources
    if node_selector:
        pod_spec["node_selector"] = dict(node_selector)
    if tolerations:
        pod_spec["tolerations"] = [dict(t) for t in tolerations]
    config: dict[str, Any] = {}
    if container:
        config["container_config"] = container
    if pod_spec:
        config["pod_spec_config"] = pod_spec
    return config


def gpu_run_tags(
    gpus: int | None = None,
    node_selector: Mapping[str, str] | None = None,
    tolerations: Sequence[Mapping[str, Any]] | None = None,
    cpu: str | None = None,
    memory: str | None = None,
    env: Mapping[str, str] | None = None,
    ephemeral_storage: str | None = None,
    spool_size: str | None = None,
) -> dict[str, str]:
    """Run tags for a GPU run on Kubernetes: `{"dagster-k8s/config": "<json>"}`.

    Harmless under the single-host GpuRunLauncher (it ignores the tag).
    """
    config = k8s_run_config(gpus, node_selector, tolerations, cpu, memory, env, ephemeral_storage, spool_size)
    return {K8S_CONFIG_TAG: json.dumps(config, sort_keys=True)} if config else {}


def tag_value(value: Any) -> str:
    """A run tag's string: strings as they are, mappings and lists as sorted JSON (what dagster-k8s parses)."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)
