"""Pack utterances into blocks for the target model's trainer (multipacking).

Each block holds whole documents back to back: `input_ids`, `position_ids` restarting at 0 for every
document, and `attention_mask` holding the document lengths (the varlen layout the Multilingual-TTS trainer
reads; all uint32). Documents are taken in order and a block is closed when the next one does not fit
(next-fit), so concatenating the blocks gives back every document unchanged: no token is lost or split.
A document longer than the block size gets a block of its own, longer than the block size, and is counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from gpu_executor.settings import default_of

DEFAULT_BLOCK_SIZE = default_of("sft_block_size")

PACKED_SCHEMA = pa.schema(
    [
        ("input_ids", pa.large_list(pa.uint32())),
        ("position_ids", pa.large_list(pa.uint32())),
        ("attention_mask", pa.large_list(pa.uint32())),
    ]
)


@dataclass
class PackedBlock:
    input_ids: np.ndarray
    position_ids: np.ndarray
    attention_mask: np.ndarray  # document lengths; sums to len(input_ids)


@dataclass
class PackingStats:
    blocks: int = 0
    documents: int = 0
    tokens: int = 0
    oversized_documents: int = 0

    def fill_ratio(self, block_size: int) -> float:
        return self.tokens / (self.blocks * block_size) if self.blocks else 0.0


def _block(documents: list[np.ndarray]) -> PackedBlock:
    lengths = np.asarray([len(d) for d in documents], dtype=np.uint32)
    positions = np.concatenate([np.arange(n, dtype=np.uint32) for n in lengths])
    return PackedBlock(
        input_ids=np.concatenate(documents).astype(np.uint32, copy=False),
        position_ids=positions,
        attention_mask=lengths,
    )


class Packer:
    """Push documents in, get closed blocks out; `finish()` returns the last, partly filled block."""

    def __init__(self, block_size: int = DEFAULT_BLOCK_SIZE) -> None:
        if block_size <= 0:
            raise ValueError(f"block size must be positive, got {block_size}")
        self.block_size = block_size
        self.stats = PackingStats()
        self._pending: list[np.ndarray] = []
        self._filled = 0

    def add(self, document: np.ndarray) -> PackedBlock | None:
        """Queue one document; returns the block it closed, if any. Empty documents hold no token: skipped."""
        n = len(document)
        if n == 0:
            return None
        self.stats.documents += 1
        self.stats.tokens += n
        if n > self.block_size:
            self.stats.oversized_documents += 1
        closed = None
        if self._pending and self._filled + n > self.block_size:
            closed = self._close()
        self._pending.append(np.asarray(document))
        self._filled += n
        return closed

    def finish(self) -> PackedBlock | None:
        return self._close() if self._pending else None

    def _close(self) -> PackedBlock:
        block = _block(self._pending)
        self._pending, self._filled = [], 0
        self.stats.blocks += 1
        return block


def pack_documents(
    documents: Iterable[np.ndarray], block_size: int = DEFAULT_BLOCK_SIZE, stats: PackingStats | None = None
) -> Iterator[PackedBlock]:
    """Blocks of whole documents in input order (see the module doc)."""
    packer = Packer(block_size)
    if stats is not None:
        packer.stats = stats
    for document in documents:
        block = packer.add(document)
        if block is not None:
            yield block
    last = packer.finish()
    if last is not None:
        yield last


def blocks_to_arrow(blocks: list[PackedBlock]) -> pa.Table:
    """A table of blocks with the PACKED_SCHEMA columns."""

    def column(arrays: list[np.ndarray]) -> pa.Array:
        offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
        np.cumsum([len(a) for a in arrays], out=offsets[1:])
        values = np.concatenate(arrays) if arrays else np.empty(0, dtype=np.uint32)
        return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values.astype(np.uint32), type=pa.uint32()))

    return pa.Table.from_arrays(
        [
            column([b.input_ids for b in blocks]),
            column([b.position_ids for b in blocks]),
            column([b.attention_mask for b in blocks]),
        ],
        schema=PACKED_SCHEMA,
    )


def documents_of(records: pl.DataFrame) -> Iterator[np.ndarray]:
    """The input_ids of SFT records, one array per row."""
    ids = records.get_column("input_ids").to_arrow()
    for chunk in ids.chunks if isinstance(ids, pa.ChunkedArray) else [ids]:
        offsets = np.asarray(chunk.offsets, dtype=np.int64)
        values = np.asarray(chunk.values, dtype=np.uint32)
        for row in range(len(chunk)):
            yield values[offsets[row] : offsets[row + 1]]
