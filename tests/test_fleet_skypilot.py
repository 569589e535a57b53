"""The SkyPilot task of a GPU box (deploy/skypilot/gpu-worker.yaml) and its adapter (neucodec_assets/fleet/skypilot.py),
checked by SkyPilot's own code: the YAML parses and validates as a `sky.Task`, and what the adapter hands to
`sky.launch` is a Task with the resources, secrets and command it should carry. No cloud is reachable here: the SDK
calls themselves are replaced by tests/fixtures/skypilot.py, and only they."""

from __future__ import annotations

import logging
import os
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from gpu_executor.settings import load_settings
from neucodec_assets.cli import main
from neucodec_assets.cli.main import build_parser
from neucodec_assets.fleet import skypilot

TASK = Path(__file__).resolve().parents[1] / "deploy" / "skypilot" / "gpu-worker.yaml"
SECRETS = ["NEUCODEC_CELERY_BROKER", "DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USERNAME", "DAGSTER_PG_PASSWORD",
           "DAGSTER_PG_DB", "NEUCODEC_BUCKET", "R2_ENDPOINT_URL", "R2_ACCESS_KEY_ID", "R2_SECRET_ACCESS_KEY"]


@pytest.fixture
def secrets(monkeypatch) -> dict[str, str]:
    """Each declared secret set in the environment to a value found nowhere else."""
    values = {name: f"secret-{name.lower()}-{uuid.uuid4().hex}" for name in SECRETS}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def _accelerators(task) -> dict[str, int]:
    out = {}
    for resources in task.resources:
        out.update(resources.accelerators)
    return out


def test_the_shipped_task_validates_with_skypilot():
    import sky

    task = sky.Task.from_yaml(str(TASK))
    assert task.num_nodes == 1
    assert set(_accelerators(task)) >= {"RTX4090", "RTX3090", "A100", "H100"}
    assert all(r.use_spot for r in task.resources)
    assert {r.image_id[None] for r in task.resources} == {"docker:registry.example.com/neucodec-platform:0.1.0"}
    assert "neucodec-platform gpu-worker" in task.run and '--exit-when-idle "$IDLE"' in task.run
    # Secrets are declared by name only: SkyPilot sees references to resolve at launch, no values.
    assert sorted(ref.name for ref in task.managed_secret_refs) == sorted(SECRETS) and task.secrets == {}
    # The command each node runs, through bash with the task's envs, is one the platform's CLI accepts.
    script = "neucodec-platform() { printf '%s\\n' \"$@\"; }\n" + task.run.replace("exec ", "", 1)
    env = {**task.envs, "SKYPILOT_NODE_RANK": "0", "PATH": os.environ["PATH"]}
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    argv = out.split("\n")[:-1]
    args = build_parser().parse_args(argv)
    assert args.command == "gpu-worker" and args.gpus == "auto" and args.exit_when_idle == 600
    assert args.name.endswith("-0") and args.name != "-0"
    raw = yaml.safe_load(TASK.read_text())
    assert all(value is None for value in raw["secrets"].values())
    assert not set(raw["envs"]) & set(SECRETS)


def test_build_task_applies_the_settings_and_fills_secrets_from_the_environment(secrets, monkeypatch):
    import sky

    monkeypatch.setenv("NEUCODEC_FLEET_ACCELERATORS", "RTX4090, A100")
    monkeypatch.setenv("NEUCODEC_FLEET_GPUS_PER_BOX", "2")
    monkeypatch.setenv("NEUCODEC_FLEET_SPOT", "0")
    monkeypatch.setenv("NEUCODEC_FLEET_IMAGE", "docker:ghcr.io/example/neucodec-platform:v7")
    monkeypatch.setenv("NEUCODEC_FLEET_IDLE", "30m")
    task = skypilot.build_task(load_settings(), num_nodes=3, box="neucodec-gpu-test-0", code_version="v7")
    assert isinstance(task, sky.Task) and task.num_nodes == 3
    assert _accelerators(task) == {"RTX4090": 2, "A100": 2}
    assert not any(r.use_spot for r in task.resources)
    assert {r.image_id[None] for r in task.resources} == {"docker:ghcr.io/example/neucodec-platform:v7"}
    assert {k: v.get_secret_value() for k, v in task.secrets.items()} == secrets
    assert task.envs["IDLE"] == "30m" and task.envs["BOX"] == "neucodec-gpu-test-0"
    assert task.envs["NEUCODEC_CODE_VERSION"] == "v7" and task.envs["DAGSTER_HOME"] == ""
    # What goes to the API server validates again against SkyPilot's task schema, secrets and all.
    again = sky.Task.from_yaml_config(task.to_yaml_config())
    assert _accelerators(again) == _accelerators(task) and again.envs == task.envs
    assert {k: v.get_secret_value() for k, v in again.secrets.items()} == secrets
    # The YAML SkyPilot keeps as "what the user wrote" is the file's, without values.
    assert not any(value in task._user_specified_yaml for value in secrets.values())


def test_a_missing_secret_is_named_and_no_value_is_shown(secrets, monkeypatch):
    monkeypatch.delenv("R2_SECRET_ACCESS_KEY")
    monkeypatch.delenv("DAGSTER_PG_PASSWORD")
    with pytest.raises(skypilot.FleetError) as err:
        skypilot.build_task(load_settings())
    assert "DAGSTER_PG_PASSWORD, R2_SECRET_ACCESS_KEY" in str(err.value)
    assert not any(value in str(err.value) for value in secrets.values())


def test_fleet_up_hands_sky_launch_one_box_per_cluster_and_writes_no_secret(secrets, sky_api, monkeypatch, caplog,
                                                                            capsys, tmp_path):
    monkeypatch.setenv("NEUCODEC_CODE_VERSION", "v9")
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.DEBUG)
    assert main(["-v", "fleet", "up", "3"]) == 0
    out = capsys.readouterr()
    assert len(sky_api.launches) == 3
    names = [kw["cluster_name"] for _, kw in sky_api.launches]
    assert len(set(names)) == 3 and all(n.startswith("neucodec-gpu-") for n in names)
    for task, kwargs in sky_api.launches:
        # One node per cluster, released when its worker exits (the job ends) and 5 idle minutes later at most.
        assert task.num_nodes == 1 and kwargs == {"cluster_name": kwargs["cluster_name"], "down": True,
                                                  "idle_minutes_to_autostop": skypilot.AUTODOWN_IDLE_MINUTES}
        assert task.envs["BOX"] == kwargs["cluster_name"] and task.envs["NEUCODEC_CODE_VERSION"] == "v9"
        assert {k: v.get_secret_value() for k, v in task.secrets.items()} == secrets
    assert all(f"{n}: requested (launch-request-" in out.out for n in names)
    # Never in the output, the logs, or a file written here or in SkyPilot's state folder.
    shown = out.out + out.err + caplog.text
    written = [p for root in (tmp_path, Path(os.path.expanduser("~/.sky"))) if root.exists()
               for p in root.rglob("*") if p.is_file() and p.stat().st_size < 5_000_000]
    for value in secrets.values():
        assert value not in shown
        assert not [p for p in written if value.encode() in p.read_bytes()]


def test_the_fleet_is_listed_and_torn_down_through_skypilot(secrets, sky_api, capsys):
    settings = load_settings()
    skypilot.launch_boxes(settings, 2)
    sky_api.extra_clusters = [sky_api.record("someone-elses-cluster", "UP", 1000),
                              sky_api.record("neucodec-gpu-old-0", "UP", 1000)]
    fleet = skypilot.list_fleet(settings)
    launched = [kw["cluster_name"] for _, kw in sky_api.launches]
    assert [c.name for c in fleet] == sorted([*launched, "neucodec-gpu-old-0"])
    assert {c.name: c.status for c in fleet}["neucodec-gpu-old-0"] == "UP"
    assert sum(c.starting for c in fleet) == 2
    with pytest.raises(skypilot.FleetError, match="someone-elses-cluster"):
        skypilot.tear_down(settings, ["someone-elses-cluster"])
    assert main(["fleet", "down"]) == 2  # neither names nor --all: refused
    assert main(["fleet", "down", "--all"]) == 0
    assert sorted(sky_api.downs) == [c.name for c in fleet] and "torn down 3 clusters" in capsys.readouterr().out
    assert skypilot.list_fleet(settings) == []
