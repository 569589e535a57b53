"""Settings read from the environment: defaults, parsing, and errors that name the variable."""

import pytest

from resources.env_settings import env_flag, env_number, env_str


def test_blank_or_unset_is_none_and_default(monkeypatch):
    monkeypatch.delenv("NEUCODEC_X", raising=False)
    assert env_str("NEUCODEC_X") is None
    assert env_number("NEUCODEC_X", int, default=8) == 8
    monkeypatch.setenv("NEUCODEC_X", "   ")
    assert env_str("NEUCODEC_X") is None
    assert env_number("NEUCODEC_X", float, default=2.5) == 2.5


def test_values_are_parsed(monkeypatch):
    monkeypatch.setenv("NEUCODEC_X", " 12 ")
    assert env_str("NEUCODEC_X") == "12"
    assert env_number("NEUCODEC_X", int) == 12
    assert env_number("NEUCODEC_X", float) == 12.0


def test_errors_name_the_variable(monkeypatch):
    monkeypatch.setenv("NEUCODEC_X", "eight")
    with pytest.raises(ValueError, match=r"NEUCODEC_X='eight' is not a whole number"):
        env_number("NEUCODEC_X", int)
    monkeypatch.setenv("NEUCODEC_X", "0")
    with pytest.raises(ValueError, match="NEUCODEC_X must be at least 1, got 0"):
        env_number("NEUCODEC_X", int, minimum=1)


def test_flags(monkeypatch):
    monkeypatch.delenv("NEUCODEC_X", raising=False)
    assert env_flag("NEUCODEC_X") is None
    for raw, value in (("1", True), ("On", True), ("yes", True), ("0", False), ("false", False), ("OFF", False)):
        monkeypatch.setenv("NEUCODEC_X", raw)
        assert env_flag("NEUCODEC_X") is value
    monkeypatch.setenv("NEUCODEC_X", "maybe")
    with pytest.raises(ValueError, match=r"NEUCODEC_X='maybe' is not a yes/no switch"):
        env_flag("NEUCODEC_X")
