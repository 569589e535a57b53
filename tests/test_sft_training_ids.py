"""Training ids: speech ids by offset equal the tokenizer's ids of the rendered training string."""

import numpy as np
import polars as pl
import pytest
from transformers import AddedToken

from neucodec_assets.sft.pairing import pair_shard
from neucodec_assets.sft.training_ids import (
    SPEECH_CODEBOOK_SIZE,
    SpeechTokenLayout,
    TrainingIdsBuilder,
    ensure_speech_tokens,
    load_tokenizer,
    render_training_text,
    speech_token,
)
from tests.fixtures.sft_data import build_tiny_qwen_tokenizer, tokens_frame


def test_local_tokenizer_gets_speech_tokens_once(tiny_qwen_tokenizer_dir):
    tokenizer = load_tokenizer(tiny_qwen_tokenizer_dir)
    before = len(tokenizer)
    assert ensure_speech_tokens(tokenizer) == SPEECH_CODEBOOK_SIZE + 1
    assert len(tokenizer) == before + SPEECH_CODEBOOK_SIZE + 1
    assert ensure_speech_tokens(tokenizer) == 0
    layout = SpeechTokenLayout.of(tokenizer)
    assert tokenizer.convert_tokens_to_ids(speech_token(65535)) == layout.speech_offset + 65535


def test_ids_decode_to_the_exact_training_string(tiny_qwen_tokenizer_dir):
    builder = TrainingIdsBuilder(load_tokenizer(tiny_qwen_tokenizer_dir))
    rng = np.random.default_rng(3)
    rows = [
        ("Budi", "selamat pagi dunia", rng.integers(0, 65536, 40)),
        ("spk 2", "hello, world! ünïcödé 你好", np.array([0, 65535, 1, 65534])),
        (None, "the quick brown fox", rng.integers(0, 65536, 7)),
    ]
    for speaker, text, codes in rows:
        ids = builder.ids(speaker, text, codes)
        expected = render_training_text(speaker or "unknown", text, codes)
        assert ids.dtype == np.uint32
        assert builder.tokenizer.decode(ids.tolist()) == expected
        # identical to tokenizing the whole rendered string
        assert ids.tolist() == builder.tokenizer(expected, add_special_tokens=False)["input_ids"]
        assert ids[-1] == builder.layout.im_end_id
        assert ids[-2 - len(codes)] == builder.layout.speech_start_id


def test_input_ids_column_for_paired_records(tiny_qwen_tokenizer_dir):
    builder = TrainingIdsBuilder(load_tokenizer(tiny_qwen_tokenizer_dir))
    codes = {"a": list(range(60)), "b": [65535] * 75}
    metadata = pl.DataFrame({"segment_id": ["a", "b"], "text": ["hello world", "apa khabar"], "speaker": ["X", None]})
    records = pair_shard("ds/ms/s1", tokens_frame(codes), metadata).records
    column = builder.column(records)
    assert column.dtype == pl.List(pl.UInt32)
    for row, ids in zip(records.iter_rows(named=True), column.to_list()):
        expected = render_training_text(row["speaker"] or "unknown", row["text"], row["neucodec_tokens"])
        assert builder.tokenizer.decode(ids) == expected
    assert builder.column(records.head(0)).len() == 0


def test_non_contiguous_speech_tokens_are_refused():
    tokenizer = build_tiny_qwen_tokenizer()
    tokenizer.add_tokens([AddedToken("<|speech_start|>"), AddedToken(speech_token(0)), AddedToken("<|other|>")])
    tokenizer.add_tokens([AddedToken(speech_token(c)) for c in range(1, SPEECH_CODEBOOK_SIZE)])
    with pytest.raises(ValueError, match="not contiguous"):
        SpeechTokenLayout.of(tokenizer)


def test_missing_chat_markers_and_bad_source_are_clear(tmp_path):
    tokenizer = build_tiny_qwen_tokenizer()
    with pytest.raises(ValueError, match="speech_start"):
        SpeechTokenLayout.of(tokenizer)
    with pytest.raises(ValueError, match="cannot load a tokenizer"):
        load_tokenizer(tmp_path / "nothing-here")
