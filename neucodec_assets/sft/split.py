"""Deterministic train/validation split: by speaker where known, else by segment id.

All utterances of a speaker land on the same side, so validation measures unseen voices. The assignment is
a pure function of (dataset, speaker or segment id, seed, fraction): it never changes when shards are added,
and it is the same on every machine (blake2b, not Python's salted hash()).
"""

from __future__ import annotations

import hashlib

import polars as pl

from gpu_executor.settings import default_of

TRAIN = "train"
VALIDATION = "validation"
SPLITS = (TRAIN, VALIDATION)
DEFAULT_VALIDATION_FRACTION = default_of("sft_validation_fraction")


def split_key(dataset: str | None, speaker: str | None, segment_id: str) -> str:
    """The unit that is kept together: a speaker of a dataset, or a lone segment."""
    if speaker:
        return f"speaker\x1f{dataset or ''}\x1f{speaker}"
    return f"segment\x1f{segment_id}"


def unit_interval(key: str, seed: str = "") -> float:
    """A uniform number in [0, 1) from the key."""
    digest = hashlib.blake2b(f"{seed}\x1e{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def is_validation(key: str, fraction: float, seed: str = "") -> bool:
    """Whether the unit `key` is held out."""
    return unit_interval(key, seed) < fraction


def assign_split(
    frame: pl.DataFrame, fraction: float = DEFAULT_VALIDATION_FRACTION, seed: str = ""
) -> pl.Series:
    """A `split` column ("train"/"validation") for rows with segment_id, dataset and speaker columns."""
    if not 0 <= fraction < 1:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    keys = frame.select(
        pl.when(pl.col("speaker").is_not_null() & (pl.col("speaker") != ""))
        .then(pl.concat_str([pl.lit("speaker\x1f"), pl.col("dataset").fill_null(""), pl.lit("\x1f"), pl.col("speaker")]))
        .otherwise(pl.concat_str([pl.lit("segment\x1f"), pl.col("segment_id")]))
        .alias("key")
    ).get_column("key")
    unique = keys.unique()
    decided = pl.DataFrame(
        {
            "key": unique,
            "split": pl.Series(
                [VALIDATION if is_validation(k, fraction, seed) else TRAIN for k in unique.to_list()], dtype=pl.String
            ),
        }
    )
    return keys.to_frame().join(decided, on="key", how="left", maintain_order="left").get_column("split")
