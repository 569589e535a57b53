"""Split determinism, totals against hand-computed numbers, packing that loses no token, card and charts."""

import numpy as np
import polars as pl
import pytest

from neucodec_assets.charts import markdown_image
from neucodec_assets.sft.card import CardInputs, render_card
from neucodec_assets.sft.charts import (
    duration_histogram,
    duration_histogram_png,
    hours_per_language_png,
)
from neucodec_assets.sft.packing import PackingStats, blocks_to_arrow, pack_documents
from neucodec_assets.sft.split import (
    TRAIN,
    VALIDATION,
    assign_split,
    is_validation,
    split_key,
)
from neucodec_assets.sft.stats import overall_totals, totals_by


def _index(n: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "segment_id": [f"seg_{i}" for i in range(n)],
            "dataset": ["d1" if i % 3 else "d2" for i in range(n)],
            "speaker": [f"spk_{i % 50}" if i % 2 else None for i in range(n)],
        }
    )


def test_split_is_deterministic_and_keeps_speakers_together():
    frame = _index(4000)
    first = assign_split(frame, fraction=0.2, seed="s")
    assert first.to_list() == assign_split(frame, fraction=0.2, seed="s").to_list()
    # row order does not matter: the assignment is a function of the row
    shuffled = frame.with_columns(first.alias("split")).sample(fraction=1.0, shuffle=True, seed=1)
    assert assign_split(shuffled, 0.2, "s").to_list() == shuffled.get_column("split").to_list()
    labelled = frame.with_columns(first.alias("split"))
    per_speaker = labelled.drop_nulls("speaker").group_by("dataset", "speaker").agg(pl.col("split").n_unique())
    assert per_speaker.get_column("split").max() == 1
    # matches the scalar definition, and about the requested fraction of lone segments
    row = labelled.row(1, named=True)
    assert row["split"] == (VALIDATION if is_validation(split_key(row["dataset"], row["speaker"], row["segment_id"]), 0.2, "s") else TRAIN)
    lone = labelled.filter(pl.col("speaker").is_null())
    assert 0.15 < (lone.get_column("split") == VALIDATION).mean() < 0.25
    assert set(assign_split(frame, 0.0).to_list()) == {TRAIN}
    assert assign_split(frame, 0.2, "other").to_list() != first.to_list()
    with pytest.raises(ValueError, match="fraction"):
        assign_split(frame, 1.0)


def test_totals_match_hand_computed_numbers():
    frame = pl.DataFrame(
        {
            "language": ["ms", "ms", "en", "ta"],
            "dataset": ["a", "b", "a", "a"],
            "audio_seconds": [3600.0, 1800.0, 720.0, 0.02],
            "token_count": [180_000, 90_000, 36_000, 1],
            "input_ids_count": [180_010, 90_020, 36_005, 9],
        }
    )
    by_language = totals_by(frame, "language")
    assert by_language.get_column("language").to_list() == ["ms", "en", "ta"]
    ms = by_language.row(0, named=True)
    assert ms == {"language": "ms", "segments": 2, "hours": 1.5, "speech_tokens": 270_000, "training_tokens": 270_030}
    by_dataset = {r["dataset"]: r for r in totals_by(frame, "dataset").iter_rows(named=True)}
    assert by_dataset["a"]["segments"] == 3 and by_dataset["a"]["speech_tokens"] == 216_001
    assert by_dataset["a"]["hours"] == pytest.approx((3600 + 720 + 0.02) / 3600)
    totals = overall_totals(frame)
    assert totals["segments"] == 4 and totals["speech_tokens"] == 306_001 and totals["training_tokens"] == 306_044
    assert totals["hours"] == pytest.approx(6120.02 / 3600)
    assert overall_totals(frame.head(0).drop("input_ids_count")) == {"segments": 0, "hours": 0, "speech_tokens": 0}


def test_packing_loses_no_token_and_resets_positions():
    rng = np.random.default_rng(5)
    lengths = [int(x) for x in rng.integers(1, 400, 300)] + [0, 1500, 1000, 1]
    docs = [rng.integers(0, 200_000, n).astype(np.uint32) for n in lengths]
    stats = PackingStats()
    blocks = list(pack_documents(docs, block_size=1000, stats=stats))
    assert np.array_equal(np.concatenate([b.input_ids for b in blocks]), np.concatenate(docs))
    lens = np.concatenate([b.attention_mask for b in blocks])
    assert lens.tolist() == [n for n in lengths if n]
    for block in blocks:
        assert block.attention_mask.sum() == len(block.input_ids) == len(block.position_ids)
        starts = np.concatenate([[0], np.cumsum(block.attention_mask)[:-1]]).astype(np.int64)
        assert np.all(block.position_ids[starts] == 0)
        expected = np.concatenate([np.arange(n) for n in block.attention_mask])
        assert np.array_equal(block.position_ids, expected)
        assert len(block.input_ids) <= 1000 or len(block.attention_mask) == 1
    assert stats.oversized_documents == 1 and stats.documents == len(lengths) - 1
    assert stats.tokens == sum(lengths) and stats.blocks == len(blocks)
    # next-fit: no block could have taken the first document of the following block
    for current, following in zip(blocks, blocks[1:]):
        assert len(current.input_ids) + following.attention_mask[0] > 1000
    table = blocks_to_arrow(blocks)
    assert table.num_rows == len(blocks)
    assert pl.from_arrow(table).get_column("input_ids").list.len().sum() == sum(lengths)


def test_card_and_charts_render():
    frame = pl.DataFrame(
        {"language": ["ms", "en"], "dataset": ["a", "a"], "audio_seconds": [10.0, 5.0], "token_count": [500, 250]}
    )
    by_language = totals_by(frame, "language")
    png = hours_per_language_png(by_language)
    assert png.startswith(b"\x89PNG")
    counts = duration_histogram(np.array([0.5, 10.0, 5.0, 59.9, 61.0, 3600.0]))
    assert counts.sum() == 6 and counts[0] == 1 and counts[5] == 1 and counts[10] == 1 and counts[-1] == 2
    assert duration_histogram_png(counts + duration_histogram(np.array([1.0]))).startswith(b"\x89PNG")
    assert markdown_image(png, "hours").startswith("![hours](data:image/png;base64,iVBOR")
    card = render_card(
        CardInputs(
            totals=overall_totals(frame),
            by_language=by_language,
            by_dataset=totals_by(frame, "dataset"),
            by_split=totals_by(frame.with_columns(pl.lit("train").alias("split")), "split"),
            shards=1,
            validation_fraction=0.01,
            split_seed="",
            tokenizer="some/tokenizer",
            dropped={"empty_transcript": 3, "no_metadata_row": 0},
            packed={"block_size": 10240, "blocks": 1, "tokens": 750, "fill_ratio": 0.07, "oversized_documents": 0},
            records_paths={"train": "train/**/*.parquet", "validation": "validation/**/*.parquet"},
            packed_paths={"train": "__packed__/train/*.parquet"},
            chart_paths={"Hours per language": "charts/hours_per_language.png"},
        )
    )
    assert card.startswith("---\n") and "config_name: packed" in card
    assert '- split: validation\n    path: "validation/**/*.parquet"' in card
    assert "| ms | 1 | 0.00 | 500 |" in card and "- segments: 2" in card
    assert "empty_transcript: 3" in card and "no_metadata_row" not in card
    assert "![Hours per language](charts/hours_per_language.png)" in card
