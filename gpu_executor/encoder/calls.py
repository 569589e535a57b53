"""What one encode call returns: the codes, and the facts of that call (not state that grows on the encoder).

Why: a long-lived encoder serves shard after shard; a caller that wants "which clips of *this* shard were chunked"
should not diff a list that grows for the process's life.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

from gpu_executor.codec import SAMPLE_RATE

__all__ = ["EncodedClips", "EncodeStream"]


class EncodedClips(list):
    """Codes per clip (a plain list of uint16 arrays, as before) with this call's facts.

    ``chunked_ids``: ids of the clips longer than the whole-clip limit (encoded in chunks); ``batches``: model
    batches run; ``encode_seconds``: wall time of the call.
    """

    def __init__(self, codes: Iterable[np.ndarray], chunked_ids: Sequence[str] = (), batches: int = 0,
                 encode_seconds: float = 0.0) -> None:
        super().__init__(codes)
        self.chunked_ids = list(chunked_ids)
        self.batches = batches
        self.encode_seconds = encode_seconds


class EncodeStream(Iterator[tuple[str, np.ndarray]]):
    """Iterator of ``(id, codes)`` in input order, holding at most ``budget_samples`` of audio per encode call.

    Its facts cover this stream only and are complete once it is exhausted: ``chunked_ids``, ``clips``,
    ``audio_seconds``, ``batches``, ``calls`` and ``encode_seconds`` (time inside the encoder, not waiting for
    input: the pure-encode share of an end-to-end run).
    """

    def __init__(self, encode: Callable[[list[np.ndarray], list[str]], EncodedClips],
                 items: Iterable[tuple[str, np.ndarray]], budget_samples: int, sample_rate: int = SAMPLE_RATE) -> None:
        self._encode = encode
        self._budget = budget_samples
        self._rate = sample_rate
        self.chunked_ids: list[str] = []
        self.clips = 0
        self.audio_seconds = 0.0
        self.batches = 0
        self.calls = 0
        self.encode_seconds = 0.0
        self._gen = self._run(iter(items))

    def __iter__(self) -> "EncodeStream":
        return self

    def __next__(self) -> tuple[str, np.ndarray]:
        return next(self._gen)

    def _flush(self, ids: list[str], waves: list[np.ndarray]) -> Iterator[tuple[str, np.ndarray]]:
        t0 = time.perf_counter()
        out = self._encode(waves, ids)
        self.encode_seconds += time.perf_counter() - t0
        self.calls += 1
        self.batches += out.batches
        self.chunked_ids.extend(out.chunked_ids)
        self.clips += len(ids)
        self.audio_seconds += sum(len(w) for w in waves) / self._rate
        return zip(ids, out)

    def _run(self, items: Iterator[tuple[str, np.ndarray]]) -> Iterator[tuple[str, np.ndarray]]:
        ids: list[str] = []
        waves: list[np.ndarray] = []
        held = 0
        for key, wave in items:
            ids.append(key)
            waves.append(wave)
            held += len(wave)
            if held >= self._budget:
                yield from self._flush(ids, waves)
                ids, waves, held = [], [], 0
        if waves:
            yield from self._flush(ids, waves)
