"""Decoded-audio quality: how close a neucodec round trip (encode -> decode) comes to its source, at 16 kHz.

No Dagster import; numpy, torch-free. Four figures, each answering a different question:

- **STOI** (short-time objective intelligibility, Taal et al. 2011) via ``pystoi``: 0..1, higher is better. The
  standard intelligibility figure in codec and enhancement papers; correlation of 384 ms envelopes in 1/3-octave
  bands, insensitive to phase, so it suits a vocoder-style decoder that does not reproduce the source waveform.
- **Wide-band PESQ** (ITU-T P.862.2) via ``pesq`` (the ITU reference C code wrapped by its maintainers): 1.04..4.64,
  higher is better. The figure codec papers report as perceived quality (neucodec's own card reports it). It refuses
  clips without speech activity (raises): such a clip gets ``None``.
- **SI-SDR** (scale-invariant signal-to-distortion ratio, Le Roux et al. 2019), dB, higher is better:
  with zero-mean ``s`` (source) and ``y`` (decoded), ``t = (<y, s> / <s, s>) s``, ``SI-SDR = 10 log10(|t|^2 / |y - t|^2)``.
  It compares waveforms sample by sample, so it punishes phase changes a listener does not hear: a good neural codec
  scores low here (often below 5 dB). Kept because it is the standard waveform figure and it exposes gross faults
  (silence, misalignment, clipping); judge quality by STOI/PESQ.
- **Log-mel distance**, higher is worse (0 = identical): mean absolute difference of natural-log 80-band mel
  magnitude spectrograms (16 kHz, 1024-point FFT, 64 ms Hann window, 10 ms hop, 0-8 kHz, HTK mel scale, floor
  1e-5), the spectral L1 loss codec papers (DAC, EnCodec) report as "mel distance". Phase-free like STOI, but it also
  sees timbre and noise the intelligibility figure ignores.

Well-kept libraries are used where they exist (pystoi, pesq); SI-SDR and log-mel are a few lines of numpy with the
formulas above. Every function takes the source first and the decoded audio second, both 16 kHz mono float arrays;
they are trimmed to the shorter length (the decoder returns ``len // 320`` frames of audio).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["SAMPLE_RATE", "QualityFigures", "stoi", "pesq_wb", "si_sdr", "log_mel_distance", "quality_figures",
           "mean_figures"]

SAMPLE_RATE = 16_000
_EPS = 1e-10


def _pair(source: np.ndarray, decoded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(source, dtype=np.float64).ravel()
    d = np.asarray(decoded, dtype=np.float64).ravel()
    n = min(s.size, d.size)
    if n == 0:
        raise ValueError("quality figures need non-empty audio")
    return s[:n], d[:n]


def stoi(source: np.ndarray, decoded: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    """STOI (pystoi, classic, not extended): 0..1, higher is better."""
    from pystoi import stoi as _stoi

    s, d = _pair(source, decoded)
    return float(_stoi(s, d, sr, extended=False))


def pesq_wb(source: np.ndarray, decoded: np.ndarray, sr: int = SAMPLE_RATE) -> float | None:
    """Wide-band PESQ (P.862.2, ``pesq``): 1.04..4.64, higher is better; None where PESQ finds no utterance."""
    from pesq import PesqError, pesq

    if sr != SAMPLE_RATE:
        raise ValueError("wide-band PESQ is defined at 16 kHz")
    s, d = _pair(source, decoded)
    if not np.any(s) or not np.any(d):  # silence: no utterance to score (pesq would divide by zero first)
        return None
    try:
        return float(pesq(sr, s.astype(np.float32), d.astype(np.float32), "wb"))
    except PesqError:
        return None


def si_sdr(source: np.ndarray, decoded: np.ndarray) -> float:
    """Scale-invariant SDR in dB (zero-mean signals); identical audio gives a very large value (~100 dB)."""
    s, d = _pair(source, decoded)
    s = s - s.mean()
    d = d - d.mean()
    alpha = float(np.dot(d, s)) / (float(np.dot(s, s)) + _EPS)
    target = alpha * s
    noise = d - target
    return float(10 * math.log10((float(np.dot(target, target)) + _EPS) / (float(np.dot(noise, noise)) + _EPS)))


_MEL_CACHE: dict[tuple[int, int, int], np.ndarray] = {}


def _mel_filters(sr: int, n_fft: int, n_mels: int) -> np.ndarray:
    """Triangular HTK-scale mel filters, ``[n_mels, n_fft // 2 + 1]``, 0 Hz to sr/2 (unnormalized peaks of 1)."""
    key = (sr, n_fft, n_mels)
    if key not in _MEL_CACHE:
        def hz_to_mel(f):
            return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

        def mel_to_hz(m):
            return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)

        freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
        edges = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sr / 2), n_mels + 2))
        lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
        up = (freqs[None, :] - lower) / (center - lower)
        down = (upper - freqs[None, :]) / (upper - center)
        _MEL_CACHE[key] = np.maximum(0.0, np.minimum(up, down))
    return _MEL_CACHE[key]


def _log_mel(x: np.ndarray, sr: int, n_fft: int, hop: int, n_mels: int) -> np.ndarray:
    pad = n_fft // 2
    x = np.pad(x, (pad, pad), mode="reflect" if x.size > pad else "constant")
    frames = 1 + (x.size - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
    spec = np.abs(np.fft.rfft(x[idx] * np.hanning(n_fft + 1)[:-1][None, :], axis=1))
    return np.log(np.maximum(spec @ _mel_filters(sr, n_fft, n_mels).T, 1e-5))


def log_mel_distance(source: np.ndarray, decoded: np.ndarray, sr: int = SAMPLE_RATE, *, n_fft: int = 1024,
                     hop: int = 160, n_mels: int = 80) -> float:
    """Mean |log mel(source) - log mel(decoded)| (natural log, 80 bands): 0 for identical audio, higher is worse."""
    s, d = _pair(source, decoded)
    return float(np.mean(np.abs(_log_mel(s, sr, n_fft, hop, n_mels) - _log_mel(d, sr, n_fft, hop, n_mels))))


@dataclass(frozen=True)
class QualityFigures:
    """The four figures of one (source, decoded) pair; ``pesq`` is None where PESQ found no utterance."""

    stoi: float
    pesq: float | None
    si_sdr: float
    mel_distance: float

    def as_dict(self) -> dict[str, float | None]:
        return asdict(self)


def quality_figures(source: np.ndarray, decoded: np.ndarray, sr: int = SAMPLE_RATE) -> QualityFigures:
    """All four figures for a 16 kHz pair."""
    return QualityFigures(stoi=stoi(source, decoded, sr), pesq=pesq_wb(source, decoded, sr),
                          si_sdr=si_sdr(source, decoded), mel_distance=log_mel_distance(source, decoded, sr))


def mean_figures(figures: list[QualityFigures]) -> dict[str, float | None]:
    """Mean of each figure over pairs (PESQ over the pairs that have one; None when none has)."""
    out: dict[str, float | None] = {}
    for name in ("stoi", "pesq", "si_sdr", "mel_distance"):
        values = [getattr(f, name) for f in figures if getattr(f, name) is not None]
        out[name] = float(np.mean(values)) if values else None
    return out
