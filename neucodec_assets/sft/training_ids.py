"""Training ids for Multilingual-TTS: `<|im_start|>{speaker}: {text}<|speech_start|>` + speech tokens + `<|im_end|>`.

The speech part is never rendered as a string (many bytes per token): the id of `<|s_N|>` is the id of
`<|s_0|>` plus N, which `SpeechTokenLayout` verifies once for all 65,536 tokens. Only the short text prefix
goes through the tokenizer; since `<|speech_start|>` is an added token, the tokenizer splits on it first, so
prefix ids + speech ids + `<|im_end|>` equal the ids of the whole rendered string.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
from transformers import AddedToken, AutoTokenizer, PreTrainedTokenizerBase

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPEECH_START = "<|speech_start|>"
SPEECH_CODEBOOK_SIZE = 65_536  # neucodec FSQ codes 0..65535
TARGET_MODEL = "Scicom-intl/Multilingual-TTS-1.7B-Base"


def speech_token(code: int) -> str:
    return f"<|s_{code}|>"


def load_tokenizer(source: str | Path) -> PreTrainedTokenizerBase:
    """A tokenizer from a hub id (e.g. the target model or `Qwen/Qwen3-1.7B-Base`) or a local folder."""
    try:
        return AutoTokenizer.from_pretrained(str(source))
    except Exception as exc:  # transformers raises OSError/ValueError/HF errors depending on the cause
        raise ValueError(f"cannot load a tokenizer from {str(source)!r}: {exc}") from exc


def ensure_speech_tokens(tokenizer: PreTrainedTokenizerBase) -> int:
    """Add `<|speech_start|>` and `<|s_0|>`..`<|s_65535|>` where missing (as the target model did); return how many."""
    vocab = tokenizer.get_vocab()
    wanted = [SPEECH_START] + [speech_token(code) for code in range(SPEECH_CODEBOOK_SIZE)]
    missing = [token for token in wanted if token not in vocab]
    if missing:
        tokenizer.add_tokens([AddedToken(token) for token in missing])
    return len(missing)


@dataclass(frozen=True)
class SpeechTokenLayout:
    """The ids the training string needs; `speech_offset` is the id of `<|s_0|>`."""

    im_start_id: int
    im_end_id: int
    speech_start_id: int
    speech_offset: int

    @classmethod
    def of(cls, tokenizer: PreTrainedTokenizerBase) -> SpeechTokenLayout:
        """Read and verify the layout: every marker present, the 65,536 speech ids contiguous."""
        vocab = tokenizer.get_vocab()
        for token in (IM_START, IM_END, SPEECH_START, speech_token(0)):
            if token not in vocab:
                raise ValueError(f"tokenizer has no {token!r}; call ensure_speech_tokens() or use a Qwen3 tokenizer")
        offset = vocab[speech_token(0)]
        ids = np.fromiter(
            (vocab.get(speech_token(code), -1) for code in range(SPEECH_CODEBOOK_SIZE)),
            dtype=np.int64,
            count=SPEECH_CODEBOOK_SIZE,
        )
        expected = np.arange(offset, offset + SPEECH_CODEBOOK_SIZE, dtype=np.int64)
        if not np.array_equal(ids, expected):
            first = int(np.flatnonzero(ids != expected)[0])
            raise ValueError(
                f"speech token ids are not contiguous: {speech_token(first)} has id {int(ids[first])}, "
                f"expected {offset + first}; ids cannot be computed by offset for this tokenizer"
            )
        return cls(
            im_start_id=vocab[IM_START],
            im_end_id=vocab[IM_END],
            speech_start_id=vocab[SPEECH_START],
            speech_offset=offset,
        )


def text_prefix(speaker: str, text: str) -> str:
    return f"{IM_START}{speaker}: {text}{SPEECH_START}"


def render_training_text(speaker: str, text: str, codes: Sequence[int]) -> str:
    """The full training string; for tests and spot checks only, never for storage."""
    return text_prefix(speaker, text) + "".join(speech_token(int(c)) for c in codes) + IM_END


class TrainingIdsBuilder:
    """Turns (speaker, text, codes) rows into the target model's input_ids."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, unknown_speaker: str = "unknown") -> None:
        ensure_speech_tokens(tokenizer)
        self.tokenizer = tokenizer
        self.layout = SpeechTokenLayout.of(tokenizer)
        self.unknown_speaker = unknown_speaker

    def prefix_ids(self, speakers: Sequence[str | None], texts: Sequence[str]) -> list[list[int]]:
        prefixes = [text_prefix(s if s else self.unknown_speaker, t) for s, t in zip(speakers, texts)]
        if not prefixes:
            return []
        return self.tokenizer(prefixes, add_special_tokens=False)["input_ids"]

    def ids(self, speaker: str | None, text: str, codes: np.ndarray) -> np.ndarray:
        """input_ids of one utterance as uint32."""
        (prefix,) = self.prefix_ids([speaker], [text])
        return np.concatenate(
            [
                np.asarray(prefix, dtype=np.uint32),
                np.asarray(codes, dtype=np.uint32) + np.uint32(self.layout.speech_offset),
                np.asarray([self.layout.im_end_id], dtype=np.uint32),
            ]
        )

    def column(self, records: pl.DataFrame) -> pl.Series:
        """The `input_ids` column (list<uint32>) for records with speaker, text and neucodec_tokens."""
        prefixes = self.prefix_ids(records.get_column("speaker").to_list(), records.get_column("text").to_list())
        codes = records.get_column("neucodec_tokens").to_arrow()
        if isinstance(codes, pa.ChunkedArray):
            codes = pa.concat_arrays(codes.chunks) if codes.num_chunks else pa.array([], pa.large_list(pa.uint16()))
        code_offsets = np.asarray(codes.offsets, dtype=np.int64)
        code_values = np.asarray(codes.values, dtype=np.uint32)
        parts: list[np.ndarray] = []
        lengths = np.empty(records.height, dtype=np.int64)
        end = np.asarray([self.layout.im_end_id], dtype=np.uint32)
        offset = np.uint32(self.layout.speech_offset)
        for row, prefix in enumerate(prefixes):
            speech = code_values[code_offsets[row] : code_offsets[row + 1]] + offset
            parts.extend((np.asarray(prefix, dtype=np.uint32), speech, end))
            lengths[row] = len(prefix) + len(speech) + 1
        values = np.concatenate(parts) if parts else np.empty(0, dtype=np.uint32)
        offsets = np.zeros(records.height + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        arrow = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values, type=pa.uint32()))
        return pl.Series("input_ids", arrow).cast(pl.List(pl.UInt32()))
