"""Pairing tokens with metadata: joins, every drop reason counted, labels from metadata or the shard key."""

import numpy as np
import polars as pl
import pytest

from neucodec_assets.sft import pairing
from neucodec_assets.sft.pairing import PairingConfig, pair_shard
from tests.fixtures.sft_data import random_codes, tokens_frame

SHARD = "indicvoices/hi/shard_000123"


def test_pairing_counts_every_segment_under_one_reason():
    rng = np.random.default_rng(0)
    codes = {
        "ok_1": random_codes(rng, 3.0),  # 150 tokens
        "ok_2": random_codes(rng, 2.0),
        "no_meta": random_codes(rng, 2.0),
        "empty_text": random_codes(rng, 2.0),
        "blank_text": random_codes(rng, 2.0),
        "null_text": random_codes(rng, 2.0),
        "wordy": [1, 2, 3],  # 3 tokens, 4 words
        "slow": random_codes(rng, 20.0),  # 3 chars in 20 s
        "fast": random_codes(rng, 0.5),  # 60 chars in 0.5 s
        "dup": random_codes(rng, 2.0),
    }
    tokens = tokens_frame(codes)
    metadata = pl.DataFrame(
        {
            "segment_id": ["ok_1", "ok_2", "empty_text", "blank_text", "null_text", "wordy", "slow", "fast",
                           "dup", "dup", "audio_missing"],
            "text": [" Hello world ", "apa khabar", "", "   ", None, "a b c d", "hey", "x" * 60,
                     "one", "two", "no audio for me"],
            "speaker": ["Budi", "", None, None, None, None, None, None, None, None, None],
            "language": ["hi", None, None, None, None, None, None, None, None, None, None],
            "extra": list(range(11)),
        }
    )
    result = pair_shard(SHARD, tokens, metadata, PairingConfig(min_chars_per_second=1.0, max_chars_per_second=40.0))

    assert result.token_rows == 10 and result.metadata_rows == 11
    assert result.records.get_column("segment_id").to_list() == ["ok_1", "ok_2"]
    expected = {
        pairing.NO_METADATA_ROW: 1,
        pairing.NO_TOKENS: 1,
        pairing.DUPLICATE_METADATA_ROW: 1,
        pairing.BAD_TOKEN_BYTES: 0,
        pairing.EMPTY_TRANSCRIPT: 3,
        pairing.MORE_WORDS_THAN_TOKENS: 1,
        pairing.TOO_FEW_CHARS_PER_SECOND: 1,
        pairing.TOO_MANY_CHARS_PER_SECOND: 1,
    }
    assert result.dropped == expected
    assert result.dropped_examples[pairing.EMPTY_TRANSCRIPT] == ["empty_text", "blank_text", "null_text"]
    assert result.dropped_examples[pairing.NO_TOKENS] == ["audio_missing"]
    # every token row is kept or dropped exactly once; metadata-only rows are the "no tokens" drops
    token_side = sum(v for k, v in result.dropped.items() if k != pairing.NO_TOKENS)
    assert result.kept + token_side == result.token_rows


def test_records_have_contract_columns_and_exact_tokens():
    rng = np.random.default_rng(1)
    codes = {"a": random_codes(rng, 1.0), "b": [0, 65535, 7] * 20}
    metadata = pl.DataFrame(
        {"segment_id": ["b", "a"], "transcript": ["second one", "first"], "speaker_id": [7, 8],
         "dataset": ["ds_meta", None]}
    )
    records = pair_shard(SHARD, tokens_frame(codes), metadata).records
    assert records.schema == pl.Schema(pairing.RECORD_SCHEMA)
    rows = {r["segment_id"]: r for r in records.iter_rows(named=True)}
    assert rows["a"]["neucodec_tokens"] == codes["a"]
    assert rows["b"]["neucodec_tokens"] == codes["b"]
    assert rows["b"]["token_count"] == 60 and rows["b"]["audio_seconds"] == pytest.approx(1.2)
    assert rows["b"]["text"] == "second one" and rows["b"]["speaker"] == "7"
    # dataset from the metadata where present, else from the shard key; language from the key
    assert rows["b"]["dataset"] == "ds_meta" and rows["a"]["dataset"] == "indicvoices"
    assert rows["a"]["language"] == "hi"


def test_shard_without_metadata_and_mismatched_ids():
    codes = {"x": [1] * 100, "y": [2] * 100}
    result = pair_shard(SHARD, tokens_frame(codes), None)
    assert result.kept == 0 and result.records.schema == pl.Schema(pairing.RECORD_SCHEMA)
    assert result.dropped[pairing.NO_METADATA_ROW] == 2

    other_ids = pl.DataFrame({"segment_id": ["p", "q", "r"], "text": ["a", "b", "c"]})
    result = pair_shard(SHARD, tokens_frame(codes), other_ids)
    assert result.kept == 0
    assert result.dropped[pairing.NO_METADATA_ROW] == 2 and result.dropped[pairing.NO_TOKENS] == 3


def test_corrupt_token_bytes_are_dropped():
    tokens = tokens_frame({"good": [5] * 100, "short": [5] * 100}).with_columns(
        pl.when(pl.col("segment_id") == "short").then(99).otherwise(pl.col("token_count")).alias("token_count")
    )
    metadata = pl.DataFrame({"segment_id": ["good", "short"], "text": ["fine text", "fine text"]})
    result = pair_shard(SHARD, tokens, metadata)
    assert result.records.get_column("segment_id").to_list() == ["good"]
    assert result.dropped[pairing.BAD_TOKEN_BYTES] == 1


def test_configured_text_column_and_clear_errors():
    tokens = tokens_frame({"a": [1] * 100})
    metadata = pl.DataFrame({"segment_id": ["a"], "text": ["wrong"], "normalized_text": ["right one"]})
    records = pair_shard(SHARD, tokens, metadata, PairingConfig(text_column="normalized_text")).records
    assert records.get_column("text").to_list() == ["right one"]
    with pytest.raises(ValueError, match="transcript column"):
        pair_shard(SHARD, tokens, pl.DataFrame({"segment_id": ["a"], "words": ["x"]}))
    with pytest.raises(ValueError, match="segment_id"):
        pair_shard(SHARD, tokens, pl.DataFrame({"id": ["a"], "text": ["x"]}))
    with pytest.raises(ValueError, match="min_chars_per_second"):
        PairingConfig(min_chars_per_second=5, max_chars_per_second=2)


def test_labels_from_the_shard_key_follow_the_layout():
    """Rows without dataset/language in their metadata take them from the shard key, read as the layout says."""
    tokens = tokens_frame({"a": [1] * 100})
    metadata = pl.DataFrame({"segment_id": ["a"], "text": ["some words"]})

    def labels(shard: str, layout: str | None = None) -> tuple[str, str]:
        config = PairingConfig(shard_layout=layout) if layout else PairingConfig()
        row = pair_shard(shard, tokens, metadata, config).records.row(0, named=True)
        return row["dataset"], row["language"]

    assert labels("emilia/en/shard_1") == ("emilia", "en")
    assert labels("raw/emilia/en/shard_1") == ("emilia", "en")
    assert labels("shard_1") == ("unknown", "unknown")
    assert labels("ms/common/shard_1", "{language}/{dataset}/{shard}") == ("common", "ms")
    assert labels("emilia/shard_1", "{dataset}/{shard}") == ("emilia", "unknown")
