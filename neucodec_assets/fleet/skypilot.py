"""The one module that talks to SkyPilot: build the GPU box task, launch boxes, list the fleet, tear it down.

`sky` is imported inside each function, never at module import: SkyPilot is the optional `fleet` extra, and the
code location, the CLI and the tests of everything else load without it. Every call goes through the `sky` module's
public SDK (`sky.launch`, `sky.status`, `sky.down`, `sky.get`), which talks to SkyPilot's API server (started
locally on first use, or the one `sky api login` points at).

Each box is its own one-node cluster named `<NEUCODEC_FLEET_CLUSTER_PREFIX>-<stamp>-<i>`, launched with
`down=True`: when its worker exits (`--exit-when-idle`), its job ends and SkyPilot tears that box down, whatever the
other boxes do (a multi-node cluster is released only when every node is done). The box's worker names itself after
its cluster (`BOX`), so a box's heartbeats can be matched to its cluster.

Secrets: the task YAML declares their names only; their values come from this process's environment at launch and
go into the Task's secrets (SkyPilot redacts them in its logs and dashboard). Nothing here writes them to a file or
a log: errors name missing secrets, never values.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gpu_executor.settings import Settings, named_variable

DEFAULT_TASK = Path(__file__).resolve().parents[2] / "deploy" / "skypilot" / "gpu-worker.yaml"
# With down=True, the idle minutes after the worker's job ended before SkyPilot releases the box; also releases a
# box whose setup failed (SkyPilot keeps those up for debugging otherwise).
AUTODOWN_IDLE_MINUTES = 5
STARTING = ("INIT", "PENDING")  # ClusterStatus values of a box on its way


class FleetError(RuntimeError):
    """A problem the user can fix (a missing secret, a bad task file); the message names it, never a value."""


def task_path(settings: Settings) -> Path:
    return Path(settings.fleet_task) if settings.fleet_task else DEFAULT_TASK


def task_config(settings: Settings, *, num_nodes: int = 1, box: str = "",
                code_version: str | None = None) -> dict[str, Any]:
    """The task YAML as a dict, with the settings' overrides applied (no secret values: those join in build_task)."""
    path = task_path(settings)
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise FleetError(f"cannot read the SkyPilot task {path}: {exc}") from exc
    resources = dict(config.get("resources") or {})
    if settings.fleet_image:
        resources["image_id"] = settings.fleet_image
    names = ([a.strip() for a in settings.fleet_accelerators.split(",") if a.strip()]
             if settings.fleet_accelerators else list(_accelerator_names(resources.get("accelerators"))))
    if names:
        resources["accelerators"] = {name: settings.fleet_gpus_per_box for name in names}
    if settings.fleet_spot is not None:
        resources["use_spot"] = settings.fleet_spot
    config["resources"] = resources
    config["num_nodes"] = num_nodes
    envs = dict(config.get("envs") or {})
    envs["IDLE"] = settings.fleet_idle
    envs["BOX"] = box
    if code_version:
        envs["NEUCODEC_CODE_VERSION"] = code_version
    config["envs"] = envs
    return config


def _accelerator_names(value: Any) -> list[str]:
    """GPU names of a task's `accelerators`: `A100:1`, a list or set of those, or a {name: count} mapping."""
    if not value:
        return []
    if isinstance(value, dict):
        return [str(k) for k in value]
    items = [value] if isinstance(value, str) else list(value)
    return [str(item).split(":")[0] for item in items]


def secret_names(config: dict[str, Any]) -> list[str]:
    """The secrets the task declares (names only, null values in the YAML)."""
    secrets = config.get("secrets") or {}
    if isinstance(secrets, list):
        return [str(s).removeprefix("secrets:") for s in secrets]
    return [str(k) for k in secrets]


def build_task(settings: Settings, *, num_nodes: int = 1, box: str = "", code_version: str | None = None) -> Any:
    """The `sky.Task` of one box (``num_nodes`` nodes), validated by SkyPilot, secrets filled from the environment."""
    import sky

    config = task_config(settings, num_nodes=num_nodes, box=box, code_version=code_version)
    names = secret_names(config)
    values = {name: named_variable(name) for name in names}
    missing = [name for name, value in values.items() if value is None]
    if missing:
        raise FleetError(f"the SkyPilot task {task_path(settings)} declares secrets that are not set here: "
                         f"{', '.join(missing)} (export them, or remove them from the task's `secrets:`)")
    # Declared as name-only secrets (null values) in the config, filled like `sky launch --secret NAME`.
    config["secrets"] = dict.fromkeys(names)
    try:
        task = sky.Task.from_yaml_config(config, secrets_overrides=[(n, v) for n, v in values.items() if v])
        # The checks that need no network (Resources.validate reads SkyPilot's online catalog: the server does it).
        task.validate_name()
        task.validate_run()
    except ValueError as exc:
        raise FleetError(f"SkyPilot refused the task {task_path(settings)}: {exc}") from None
    return task


@dataclass(frozen=True)
class Launch:
    """One box asked for: its cluster and the SkyPilot request that provisions it (`sky api logs REQUEST`)."""

    cluster: str
    request_id: str


def cluster_names(settings: Settings, count: int, now: float | None = None) -> list[str]:
    stamp = time.strftime("%m%d-%H%M%S", time.gmtime(time.time() if now is None else now))
    return [f"{settings.fleet_cluster_prefix}-{stamp}-{i}" for i in range(count)]


def launch_boxes(settings: Settings, count: int, *, code_version: str | None = None,
                 now: float | None = None) -> list[Launch]:
    """Ask SkyPilot for ``count`` boxes, one cluster each; returns at once (the API server provisions them)."""
    import sky

    launches = []
    for name in cluster_names(settings, count, now):
        task = build_task(settings, box=name, code_version=code_version)
        request = sky.launch(task, cluster_name=name, down=True, idle_minutes_to_autostop=AUTODOWN_IDLE_MINUTES)
        launches.append(Launch(name, str(request)))
    return launches


@dataclass(frozen=True)
class FleetCluster:
    """One of the fleet's SkyPilot clusters as `sky status` reports it."""

    name: str
    status: str  # INIT, UP, STOPPED, AUTOSTOPPING, PENDING
    launched_at: float | None
    nodes: int | None
    resources: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def starting(self) -> bool:
        return self.status in STARTING

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "launched_at": self.launched_at, "nodes": self.nodes,
                "resources": self.resources}


def _get(record: Any, name: str) -> Any:
    return record.get(name) if isinstance(record, dict) else getattr(record, name, None)


def list_fleet(settings: Settings) -> list[FleetCluster]:
    """The fleet's clusters (those named with the cluster prefix), from SkyPilot's API server."""
    import sky

    records = sky.get(sky.status())
    out = []
    for record in records or []:
        name = str(_get(record, "name"))
        if not name.startswith(settings.fleet_cluster_prefix + "-"):
            continue
        status = _get(record, "status")
        status = getattr(status, "value", status)
        launched = _get(record, "launched_at")
        nodes = _get(record, "nodes")
        handle = _get(record, "handle")
        if nodes is None and handle is not None:
            nodes = getattr(handle, "launched_nodes", None)
        out.append(FleetCluster(name, str(status), float(launched) if launched else None, nodes,
                                _get(record, "resources_str")))
    return sorted(out, key=lambda c: c.name)


def tear_down(settings: Settings, names: list[str] | None = None) -> list[str]:
    """Tear down the named clusters of the fleet, or all of them; waits for each. Returns the names torn down."""
    import sky

    ours = {c.name for c in list_fleet(settings)}
    targets = sorted(ours if names is None else set(names))
    unknown = [n for n in targets if n not in ours]
    if unknown:
        raise FleetError(f"not clusters of the fleet ({settings.fleet_cluster_prefix}-*): {', '.join(unknown)}")
    for name in targets:
        sky.get(sky.down(name))
    return targets
