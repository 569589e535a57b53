"""Make ``import neucodec`` work where torchaudio cannot be loaded.

neucodec 0.0.6 imports torchaudio at module level, but only uses it to load and resample audio *files*
(``NeuCodec._prepare_audio`` with a path). The platform never takes that path: audio is decoded with
soundfile and resampled with soxr (DESIGN.md, "Audio preparation"). The PyPI torchaudio wheel needs CUDA
libraries and fails to load next to a CPU build of torch, which would make the whole package unimportable.

``import_neucodec()`` imports the real torchaudio when it loads. Only when it does not load does it register a
small stand-in module whose file-loading entry points raise a clear error, then imports neucodec.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import types

__all__ = ["import_neucodec", "torchaudio_is_stub", "TorchaudioUnavailable"]

_STUB_MARKER = "__neucodec_platform_stub__"


class TorchaudioUnavailable(RuntimeError):
    """Raised when code asks the torchaudio stand-in for real torchaudio functionality."""


def _unavailable(name: str, reason: str):
    def _raise(*_args, **_kwargs):
        raise TorchaudioUnavailable(
            f"torchaudio.{name} is not available: torchaudio failed to load ({reason}). "
            "neucodec-platform decodes audio with soundfile and resamples with soxr; pass 16 kHz tensors "
            "to neucodec instead of file paths, or install a torchaudio build that matches your torch."
        )

    _raise.__name__ = name.rsplit(".", 1)[-1]
    return _raise


def _install_stub(reason: str) -> None:
    for mod in [m for m in sys.modules if m == "torchaudio" or m.startswith("torchaudio.")]:
        del sys.modules[mod]
    stub = types.ModuleType("torchaudio")
    # transformers probes for torchaudio with importlib.util.find_spec, which needs a spec.
    stub.__spec__ = importlib.machinery.ModuleSpec("torchaudio", loader=None)
    stub.__doc__ = f"neucodec-platform stand-in: the real torchaudio failed to load ({reason})."
    setattr(stub, _STUB_MARKER, True)
    stub.load = _unavailable("load", reason)
    stub.save = _unavailable("save", reason)
    stub.info = _unavailable("info", reason)
    transforms = types.ModuleType("torchaudio.transforms")
    transforms.__spec__ = importlib.machinery.ModuleSpec("torchaudio.transforms", loader=None)
    transforms.Resample = _unavailable("transforms.Resample", reason)
    stub.transforms = transforms
    sys.modules["torchaudio"] = stub
    sys.modules["torchaudio.transforms"] = transforms


def torchaudio_is_stub() -> bool:
    """True when the loaded ``torchaudio`` is this module's stand-in."""
    mod = sys.modules.get("torchaudio")
    return bool(mod is not None and getattr(mod, _STUB_MARKER, False))


def import_neucodec() -> types.ModuleType:
    """Import and return the ``neucodec`` package, standing in for torchaudio only if it cannot load."""
    if "neucodec" in sys.modules:
        return sys.modules["neucodec"]
    if "torchaudio" not in sys.modules:
        try:
            importlib.import_module("torchaudio")
        except (ImportError, OSError, RuntimeError) as exc:  # the CUDA-linked wheel raises OSError
            _install_stub(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip())
    return importlib.import_module("neucodec")
