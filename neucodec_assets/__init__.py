"""What the platform produces: assets, asset checks, sensors, jobs, the Definitions and the CLI.

``neucodec_assets.defs`` is the Definitions object, loaded on first access (PEP 562) so that Dagster finds it with
``-m neucodec_assets`` while ``import neucodec_assets.<module>`` (the CLI, tests) stays light.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "defs":
        from neucodec_assets.definitions import defs

        return defs
    raise AttributeError(f"module 'neucodec_assets' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), "defs"})
