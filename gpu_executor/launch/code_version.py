"""One string naming the code a process runs, so a fleet view can tell which boxes run old code.

NEUCODEC_CODE_VERSION when it is set (an image tag); else the package version plus a hash of the platform's .py
files. The hash, not `git describe`: a control host's checkout and an image built from the same code (without .git)
then report the same version, and an edited checkout a new one. Recorded in each worker's heartbeat and as the
`neucodec/code_version` tag of every run it takes. No torch and no Dagster here.
"""

from __future__ import annotations

import functools
import hashlib
from importlib import metadata
from pathlib import Path

from gpu_executor.settings import load_settings

#: The packages whose sources make up the platform's code.
PACKAGES = ("gpu_executor", "resources", "neucodec_assets")
ROOT = Path(__file__).resolve().parents[2]


def code_version() -> str:
    """This process's code version (the env var wins; the source hash is computed once)."""
    return load_settings().code_version or _source_version()


def code_location_version() -> str:
    """The code location's version, for comparing with the workers': the same rule, read where Dagster runs."""
    return code_version()


@functools.lru_cache(maxsize=1)
def _source_version() -> str:
    return f"{_package_version()}+{source_hash()}"


def _package_version() -> str:
    try:
        return metadata.version("neucodec-platform")
    except metadata.PackageNotFoundError:
        return "0"


def source_hash() -> str:
    """A short hash of the platform's .py files (path and content), in a stable order."""
    digest = hashlib.sha256()
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            digest.update(str(path.relative_to(ROOT)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]
