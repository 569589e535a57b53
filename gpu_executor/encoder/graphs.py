"""wav2vec2-bert replayed from CUDA graphs, one per (batch, frames) bucket.

Why: the 16 layers are hundreds of small kernels per batch, and on a fast GPU the host cannot launch them as fast as
the GPU runs them. A captured graph launches them all at once. A graph has fixed shapes, so a batch is padded up to the
smallest bucket that holds it (padding is masked, as for any ragged batch) and the result trimmed back. Buckets
grow geometrically, so a shard's batches fall into a few dozen of them; at most ``max_graphs`` are kept (least
recently used dropped) and anything larger than the largest bucket runs eagerly.

On a CPU the same padding runs eagerly (``capture=False``): that is how the tests prove the bucket padding exact.
"""

from __future__ import annotations

import bisect
import contextlib
from collections import OrderedDict
from dataclasses import dataclass

import torch

__all__ = ["frame_buckets", "batch_buckets", "GraphKey", "BucketPlan", "BucketedSemantic"]


def frame_buckets(max_frames: int, smallest: int = 64, growth: float = 1.25, multiple: int = 16) -> list[int]:
    """Bucket sizes in semantic frames (25 per second): ``smallest``, then x``growth``, rounded up to a multiple of
    ``multiple``, the last one at least ``max_frames``. At most 1/``growth`` - 1 (25%) padding per batch."""
    if max_frames < 1 or smallest < 1 or growth <= 1 or multiple < 1:
        raise ValueError("frame_buckets: max_frames, smallest and multiple must be >= 1, growth > 1")
    out = [-(-smallest // multiple) * multiple]
    while out[-1] < max_frames:
        nxt = -(-int(out[-1] * growth) // multiple) * multiple
        out.append(max(nxt, out[-1] + multiple))
    return out


def batch_buckets(max_batch: int) -> list[int]:
    """Powers of two up to ``max_batch`` (and ``max_batch`` itself)."""
    if max_batch < 1:
        raise ValueError("max_batch must be >= 1")
    out = [1]
    while out[-1] * 2 <= max_batch:
        out.append(out[-1] * 2)
    if out[-1] != max_batch:
        out.append(max_batch)
    return out


@dataclass(frozen=True)
class GraphKey:
    batch: int
    frames: int


class BucketPlan:
    """Which bucket a batch of ``batch`` clips of at most ``frames`` semantic frames runs in (None: eagerly)."""

    def __init__(self, max_frames: int, max_batch: int = 64, **frame_kwargs) -> None:
        self.frames = frame_buckets(max_frames, **frame_kwargs)
        self.batches = batch_buckets(max_batch)

    def key_for(self, batch: int, frames: int) -> GraphKey | None:
        if batch < 1 or frames < 1:
            raise ValueError("a batch needs at least one clip and one frame")
        bi = bisect.bisect_left(self.batches, batch)
        fi = bisect.bisect_left(self.frames, frames)
        if bi == len(self.batches) or fi == len(self.frames):
            return None
        return GraphKey(self.batches[bi], self.frames[fi])


class _Captured:
    """One graph with its static input buffers and its output."""

    def __init__(self, stack, key: GraphKey, width: int, device: torch.device, pool) -> None:
        self.features = torch.zeros((key.batch, key.frames, width), device=device)
        self.lengths = torch.zeros(key.batch, dtype=torch.long, device=device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up outside the graph: lazy inits and autotuning happen here
            stack.forward_lengths(self.features, self.lengths)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # Captured on this device's stream: torch.cuda.graph's default capture stream is made once, on whichever
        # device was current the first time, and would be reused for every device after.
        with torch.cuda.graph(self.graph, pool=pool, stream=side):
            self.output = stack.forward_lengths(self.features, self.lengths)

    def run(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        b, s, _ = features.shape
        self.features.zero_()
        self.features[:b, :s].copy_(features)
        self.lengths.zero_()
        self.lengths[:b].copy_(lengths)
        self.graph.replay()
        # Cloned at once: graphs share one memory pool, so the next replay may reuse this output's memory.
        return self.output[:b, :s].clone()


class BucketedSemantic:
    """Callable like ``SemanticStack``: features [B, S, 160] + frame counts (+ their device tensor) -> [B, S, 1024].

    ``capture=True`` (CUDA): graphs per bucket, captured on first use. ``capture=False``: the same bucket padding,
    run eagerly (the CPU form, for exactness tests).
    """

    def __init__(self, stack, device: torch.device, *, capture: bool, max_frames: int, max_batch: int = 64,
                 max_graphs: int = 48, autocast=None) -> None:
        if capture and device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device; the encoder runs on {device}")
        self.stack = stack
        self.device = device
        self.capture = capture
        self.plan = BucketPlan(max_frames, max_batch)
        self.max_graphs = max_graphs
        self.autocast = autocast or contextlib.nullcontext
        self.graphs: OrderedDict[GraphKey, _Captured] = OrderedDict()
        self.pool = torch.cuda.graph_pool_handle() if capture else None
        self.captures = 0  # graphs captured so far (evictions make it exceed len(self.graphs))
        self.eager_batches = 0  # batches larger than every bucket

    def _graph(self, key: GraphKey, width: int) -> _Captured:
        if key in self.graphs:
            self.graphs.move_to_end(key)
            return self.graphs[key]
        if len(self.graphs) >= self.max_graphs:
            self.graphs.popitem(last=False)
        with self.autocast():
            self.graphs[key] = _Captured(self.stack, key, width, self.device, self.pool)
        self.captures += 1
        return self.graphs[key]

    def __call__(self, features: torch.Tensor, frames: list[int], lengths: torch.Tensor | None = None
                 ) -> torch.Tensor:
        b, s, width = features.shape
        key = self.plan.key_for(b, s)
        if lengths is None:
            lengths = torch.tensor(frames, device=features.device)
        if key is None:
            self.eager_batches += 1
            return self.stack(features, frames)
        if self.capture:
            return self._graph(key, width).run(features, lengths)
        padded = features.new_zeros((key.batch, key.frames, width))
        padded[:b, :s] = features
        all_lengths = lengths.new_zeros(key.batch)
        all_lengths[:b] = lengths
        return self.stack.forward_lengths(padded, all_lengths)[:b, :s]
