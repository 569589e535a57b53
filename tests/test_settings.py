"""The one settings module: every variable named there, read and validated there, documented from there."""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

import pytest

from gpu_executor.settings import (
    MASK,
    Settings,
    SettingsError,
    default_of,
    load_settings,
    markdown_table,
)

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("neucodec_assets", "resources", "gpu_executor")


def all_env_names() -> set[str]:
    return {n for name in Settings.model_fields for n in Settings.env_names(name)}


def test_defaults_blanks_and_aliases():
    settings = load_settings({})
    assert settings.shards_per_run == default_of("shards_per_run") and settings.precision == "fp32"
    assert settings.automation is True and settings.bucket is None
    blank = load_settings({"NEUCODEC_SHARDS_PER_RUN": "  ", "NEUCODEC_MODEL": ""})
    assert blank.shards_per_run == default_of("shards_per_run") and blank.model == default_of("model")
    env = {"AWS_ENDPOINT_URL": "http://aws", "CELERY_BROKER_URL": "redis://b", "NEUCODEC_AUTOMATION": "off",
           "NEUCODEC_HANG_SECONDS": " 90 ", "CUDA_VISIBLE_DEVICES": ""}
    settings = load_settings(env)
    assert settings.r2_endpoint_url == "http://aws" and settings.secret("celery_broker") == "redis://b"
    assert settings.automation is False and settings.hang_seconds == 90.0
    assert settings.cuda_visible_devices == ""  # "no GPU" is a value, not a blank
    first = load_settings({"R2_ENDPOINT_URL": "http://r2", "AWS_ENDPOINT_URL": "http://aws"})
    assert first.r2_endpoint_url == "http://r2"  # the first name that is set wins


@pytest.mark.parametrize(("env", "expected"), [
    ({"NEUCODEC_SHARDS_PER_RUN": "eight"}, r"NEUCODEC_SHARDS_PER_RUN='eight' is not accepted: it takes a whole "
                                           r"number >= 1"),
    ({"NEUCODEC_SHARDS_PER_RUN": "0"}, r"NEUCODEC_SHARDS_PER_RUN='0' .* a whole number >= 1"),
    ({"NEUCODEC_PRECISION": "fp8"}, r"NEUCODEC_PRECISION='fp8' .* one of fp32, tf32, bf16, fp16"),
    ({"NEUCODEC_AUTOMATION": "maybe"}, r"NEUCODEC_AUTOMATION='maybe' .* on/off"),
    ({"NEUCODEC_DEVICE": "gpu"}, r"NEUCODEC_DEVICE='gpu' .* `auto`, `cpu`, `cuda`, `cuda:N`"),
    ({"NEUCODEC_GPU_HOUR_PRICE": "-1"}, r"NEUCODEC_GPU_HOUR_PRICE='-1' .* a number >= 0"),
    ({"NEUCODEC_SFT_VALIDATION_FRACTION": "1.5"}, r"NEUCODEC_SFT_VALIDATION_FRACTION='1.5' .* < 1"),
])
def test_bad_values_name_the_variable_and_what_it_accepts(env, expected):
    with pytest.raises(SettingsError, match=expected):
        load_settings(env)


def test_secrets_are_masked_everywhere_they_are_shown():
    secret = "s3cr3t-value-1234"
    settings = load_settings({"R2_SECRET_ACCESS_KEY": secret, "NEUCODEC_ALERT_WEBHOOK_URL": f"https://h/{secret}",
                              "NEUCODEC_LEGACY_DSN": f"postgresql://u:{secret}@h/db"})
    shown = settings.in_effect()
    assert shown["R2_SECRET_ACCESS_KEY"] == MASK and shown["NEUCODEC_ALERT_WEBHOOK_URL"] == MASK
    assert secret not in repr(settings) and secret not in str(shown) and secret not in str(settings.as_env())
    assert settings.secret("r2_secret_access_key") == secret
    with pytest.raises(SettingsError) as err:  # a bad secret is not echoed either
        load_settings({"NEUCODEC_LEGACY_DSN": secret, "NEUCODEC_HANG_SECONDS": "x", "R2_ACCESS_KEY_ID": secret})
    assert secret not in str(err.value)


def test_definitions_show_the_settings_in_effect(monkeypatch):
    from neucodec_assets.definitions import build_definitions

    monkeypatch.setenv("NEUCODEC_SHARDS_PER_RUN", "3")
    monkeypatch.setenv("NEUCODEC_MODEL", "random")
    monkeypatch.setenv("NEUCODEC_SFT_DATASET_CRON", "5 * * * *")
    monkeypatch.setenv("R2_SECRET_ACCESS_KEY", "s3cr3t-value-1234")
    defs = build_definitions(load_settings())
    tokens = defs.resolve_assets_def("neucodec_tokens")
    assert tokens.backfill_policy.max_partitions_per_run == 3
    table = tokens.specs_by_key[tokens.key].metadata["settings"]
    values = {r.data["variable"]: r.data["value"] for r in table.records}
    assert values["NEUCODEC_SHARDS_PER_RUN"] == "3" and values["NEUCODEC_MODEL"] == "random"
    assert values["R2_SECRET_ACCESS_KEY"] == MASK
    dataset = defs.resolve_assets_def("sft_dataset")
    assert "5 * * * *" in str(dataset.automation_conditions_by_key[dataset.key])


def test_readme_table_is_generated_from_the_settings():
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- settings table")
    body = readme[readme.index("\n", start) + 1:readme.index("<!-- end of settings table -->")]
    assert body == markdown_table(), "README's configuration table drifted: run python -m gpu_executor.settings " \
                                     "--markdown and paste it between the markers"
    for name in Settings.model_fields:
        assert f"`{Settings.env_names(name)[0]}`" in body


def test_every_variable_the_project_names_is_a_setting():
    """A NEUCODEC_* name anywhere in the code, the deploy files or the README is one of the settings."""
    known = all_env_names()
    families = ("NEUCODEC_K8S_", "NEUCODEC_SFT_")  # prose about a family of settings
    unknown = set()
    files = [ROOT / "README.md", *(ROOT / "deploy").rglob("*.*"), *(p for pkg in PACKAGES
                                                                   for p in (ROOT / pkg).rglob("*.py"))]
    for path in files:
        for name in re.findall(r"NEUCODEC_[A-Z0-9_]*[A-Z0-9]", path.read_text(errors="ignore")):
            if name not in known and name + "_" not in families and not name.startswith("NEUCODEC_TEST_"):
                unknown.add(f"{path.relative_to(ROOT)}: {name}")
    assert not unknown, sorted(unknown)


def _environment_reads(path: Path) -> list[int]:
    """Lines of ``path`` that read the process environment: `os.environ[...]`, `.get`, `in`, iteration, `os.getenv`.
    Writes (`os.environ[k] = v`, `del`, `.update/.pop/.setdefault/.clear`) and handing the whole environment to a
    child process (`{**os.environ, ...}`, `dict(os.environ)`, `os.environ.copy()`) are not reads."""
    tree = ast.parse(path.read_text(), filename=str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    not_reads = {"update", "pop", "setdefault", "clear", "copy"}
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "getenv" and getattr(node.value, "id", None) == "os":
            lines.append(node.lineno)
            continue
        if not (isinstance(node, ast.Attribute) and node.attr == "environ" and getattr(node.value, "id", None) == "os"):
            continue
        parent = parents.get(node)
        if isinstance(parent, ast.Subscript) and isinstance(parent.ctx, (ast.Store, ast.Del)):
            continue  # os.environ[k] = v; del os.environ[k]
        if isinstance(parent, ast.Attribute) and parent.attr in not_reads:
            continue
        if isinstance(parent, ast.Dict) and any(v is node and k is None for k, v in zip(parent.keys, parent.values)):
            continue  # {**os.environ, ...}
        if isinstance(parent, ast.Call) and getattr(parent.func, "id", None) == "dict" and parent.args == [node]:
            continue  # dict(os.environ)
        lines.append(node.lineno)
    return lines


def test_the_environment_is_read_only_in_the_settings_module():
    """Outside gpu_executor/settings.py, os.environ is only written or handed whole to a child process."""
    reads = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if path == ROOT / "gpu_executor" / "settings.py":
                continue
            source = path.read_text().splitlines()
            reads += [f"{path.relative_to(ROOT)}:{n}: {source[n - 1].strip()}" for n in _environment_reads(path)]
    assert not reads, "read settings through gpu_executor.settings:\n" + "\n".join(reads)


def test_the_environment_lint_tells_reads_from_writes(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(textwrap.dedent("""
        import os
        os.environ["A"] = "1"
        os.environ.update({"B": "2"})
        del os.environ["A"]
        child = {**os.environ, "C": "3"}
        copy = dict(os.environ)
        value = os.environ["D"]
        other = os.environ.get("E")
        present = "F" in os.environ
        named = os.getenv("G")
    """))
    assert sorted(_environment_reads(sample)) == [8, 9, 10, 11]  # the four reads, nothing else


def test_settings_command_prints_values_in_effect_and_refuses_bad_ones(monkeypatch, capsys):
    from neucodec_assets import cli

    monkeypatch.setenv("NEUCODEC_SHARDS_PER_RUN", "5")
    monkeypatch.setenv("R2_SECRET_ACCESS_KEY", "s3cr3t-value-1234")
    assert cli.main(["settings"]) == 0
    out = capsys.readouterr().out
    assert "NEUCODEC_SHARDS_PER_RUN=5\n" in out and f"R2_SECRET_ACCESS_KEY={MASK}\n" in out
    assert "s3cr3t" not in out
    assert cli.main(["settings", "--markdown"]) == 0
    assert capsys.readouterr().out == markdown_table()
    monkeypatch.setenv("NEUCODEC_HANG_SECONDS", "soon")
    assert cli.main(["settings"]) == 2
    assert "NEUCODEC_HANG_SECONDS='soon' is not accepted: it takes a number >= 1" in capsys.readouterr().err


def test_precisions_are_the_engines():
    import typing

    from gpu_executor.encoder.precision import PRECISIONS

    annotation = Settings.model_fields["precision"].annotation
    assert set(typing.get_args(annotation)) == set(PRECISIONS)
    assert load_settings({"NEUCODEC_PRECISION": "tf32"}).precision == "tf32"
    assert load_settings({"CUDA_VISIBLE_DEVICES": ""}).in_effect()["CUDA_VISIBLE_DEVICES"] == '""'
