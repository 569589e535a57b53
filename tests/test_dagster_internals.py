"""The one module of non-public Dagster imports is pinned to the Dagster of pyproject.toml: an upgrade must be read
against it (its names move between releases without notice), and every name in it must still import."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import sqlalchemy as sa

from gpu_executor.launch import dagster_internals

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _pinned(package: str) -> str:
    match = re.search(rf'"{package}==([^"]+)"', PYPROJECT.read_text())
    assert match, f"pyproject.toml pins no {package} version"
    return match.group(1)


def test_internals_were_checked_against_the_pinned_dagster():
    pinned = _pinned("dagster")
    assert metadata.version("dagster") == pinned, (
        f"Dagster {metadata.version('dagster')} is installed, pyproject.toml pins {pinned}")
    assert f"Checked against Dagster {pinned}." in (dagster_internals.__doc__ or ""), (
        "pyproject.toml's Dagster changed: re-read gpu_executor/launch/dagster_internals.py against it, then update "
        "its 'Checked against Dagster' line")


def test_every_internal_name_imports():
    missing = [name for name in dagster_internals.__all__ if getattr(dagster_internals, name, None) is None]
    assert not missing
    for name in dagster_internals.__all__:
        value = getattr(dagster_internals, name)
        module = getattr(value, "__module__", None) or ""
        # Dagster's storage tables are SQLAlchemy Table objects (of Dagster's schema modules).
        assert module.startswith("dagster") or isinstance(value, (str, sa.Table)), (name, module)
