"""Group clips into length-sorted batches under a budget of padded audio seconds, and chunk long clips.

Sorting by length keeps padding (wasted compute) small; the budget counts padded samples (batch size times the
longest clip), which is what memory and compute scale with.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HOP", "SAMPLE_RATE", "padded_length", "plan_batches", "Chunk", "plan_chunks", "SEED_CHUNK_SAMPLES"]

from gpu_executor.codec import SAMPLE_RATE
from gpu_executor.codec import SAMPLES_PER_TOKEN as HOP

SEED_CHUNK_SAMPLES = 30 * SAMPLE_RATE  # the old fleet's hard 30 s splits


def padded_length(num_samples: int) -> int:
    """The package pads every clip with ``320 - T % 320`` zeros (a full 320 when T is a multiple of 320)."""
    return num_samples + HOP - num_samples % HOP


def plan_batches(lengths: list[int], budget_samples: int, max_batch: int = 64,
                 min_fill: float = 0.0) -> list[list[int]]:
    """Indices of clips grouped longest first so that ``len(batch) * longest <= budget`` (a clip alone may exceed)
    and every clip is at least ``min_fill`` of its batch's longest (padding is compute spent on nothing)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        n = lengths[i]
        new_longest = max(longest, n)
        if current and ((len(current) + 1) * new_longest > budget_samples or len(current) >= max_batch
                        or n < min_fill * longest):
            batches.append(current)
            current, longest = [], 0
            new_longest = n
        current.append(i)
        longest = new_longest
    if current:
        batches.append(current)
    return batches


@dataclass(frozen=True)
class Chunk:
    """A window of a long clip to encode, and which of its frames to keep."""

    start: int  # first sample of the window
    stop: int  # one past the last sample of the window
    keep_from: int  # first frame of the window's codes to keep
    keep_to: int  # one past the last frame to keep


def plan_chunks(num_samples: int, mode: str, chunk_samples: int, context_samples: int,
                seed_chunk_samples: int = SEED_CHUNK_SAMPLES) -> list[Chunk]:
    """Windows covering a long clip.

    ``seed``: hard splits every ``seed_chunk_samples`` (30 s, as the old fleet), each encoded on its own and
    concatenated (the old fleet's tokens).
    ``overlap``: cores of ``chunk_samples`` (a multiple of 320) with ``context_samples`` of audio on each side
    that is encoded and then dropped, so that tokens near the cuts see context.
    """
    total_frames = num_samples // HOP
    if mode == "seed":
        step = seed_chunk_samples
        return [
            Chunk(s, min(s + step, num_samples), 0, (min(s + step, num_samples) - s) // HOP)
            for s in range(0, num_samples, step)
        ]
    if mode != "overlap":
        raise ValueError(f"unknown chunking mode {mode!r}: use 'overlap' or 'seed'")
    core = max(HOP, chunk_samples - chunk_samples % HOP) // HOP
    ctx = -(-context_samples // HOP)
    chunks = []
    for a in range(0, total_frames, core):
        b = min(a + core, total_frames)
        w0 = max(0, a - ctx)
        w1 = b + ctx
        stop = num_samples if w1 * HOP >= num_samples or b == total_frames else w1 * HOP
        chunks.append(Chunk(w0 * HOP, stop, a - w0, b - w0))
    return chunks
