"""Reading NEUCODEC_* settings from the environment, with errors that name the variable."""

from __future__ import annotations

import os


def env_str(name: str) -> str | None:
    """The variable's value without surrounding blanks; None when unset or blank."""
    value = os.environ.get(name, "").strip()
    return value or None


def env_number(
    name: str, kind: type[int] | type[float] = float, *, default: int | float | None = None,
    minimum: int | float | None = None,
) -> int | float | None:
    """The variable as an int or float (``default`` when unset); a clear error when malformed or below minimum."""
    raw = env_str(name)
    if raw is None:
        return default
    try:
        value = kind(raw)
    except ValueError as exc:
        what = "a whole number" if kind is int else "a number"
        raise ValueError(f"{name}={raw!r} is not {what}") from exc
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


def env_flag(name: str) -> bool | None:
    """The variable as a yes/no switch (1/true/yes/on, 0/false/no/off); None when unset."""
    raw = env_str(name)
    if raw is None:
        return None
    value = raw.lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}={raw!r} is not a yes/no switch (1/true/yes/on or 0/false/no/off)")
