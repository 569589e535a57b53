"""`import_neucodec` makes neucodec importable without a loadable torchaudio, and keeps a working one.

Each case runs in a fresh interpreter: which torchaudio gets imported is process-wide state.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, extra_path: Path | None = None) -> str:
    env_path = [str(ROOT)] + ([str(extra_path)] if extra_path else [])
    prelude = f"import sys; sys.path[:0] = {env_path!r}\n"
    out = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_neucodec_imports_and_file_loading_fails_clearly_without_torchaudio():
    out = _run(
        """
        import importlib
        from gpu_executor.codec.neucodec_compat import import_neucodec, torchaudio_is_stub, TorchaudioUnavailable
        try:
            importlib.import_module("torchaudio")
            loadable = True
        except Exception:
            loadable = False
        neucodec = import_neucodec()
        assert hasattr(neucodec, "NeuCodec")
        assert torchaudio_is_stub() is (not loadable)
        if not loadable:
            import torchaudio
            try:
                torchaudio.load("x.flac")
            except TorchaudioUnavailable as exc:
                assert "soundfile" in str(exc) and "torchaudio failed to load" in str(exc)
            else:
                raise AssertionError("the stand-in must refuse to load files")
        print("ok", loadable)
        """
    )
    assert out.startswith("ok")


def test_a_working_torchaudio_is_kept(tmp_path: Path):
    # A torchaudio that imports (as on a CUDA machine with a matching wheel) must be used, not replaced.
    pkg = tmp_path / "torchaudio"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "from . import transforms\nWORKING = True\ndef load(path):\n    return ('loaded', path)\n"
    )
    (pkg / "transforms.py").write_text("class Resample:\n    pass\n")
    out = _run(
        """
        import sys
        from gpu_executor.codec.neucodec_compat import import_neucodec, torchaudio_is_stub
        neucodec = import_neucodec()
        import torchaudio
        assert not torchaudio_is_stub()
        assert torchaudio.WORKING and torchaudio.load("a.wav") == ("loaded", "a.wav")
        assert sys.modules["neucodec.model"].torchaudio is torchaudio
        print("kept")
        """,
        extra_path=tmp_path,
    )
    assert out.strip().endswith("kept")
