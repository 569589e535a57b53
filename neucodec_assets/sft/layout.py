"""Where the SFT outputs live in the bucket, under one prefix (default `sft`).

Records sit at `{prefix}/{split}/{shard}.parquet`: one folder per split, so the card's `configs` (and Hugging Face
`datasets`' own folder-name rule) give `train` and `validation` as real splits. `datasets` skips folders whose
names start with `__`, which is where the platform's own files go.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpu_executor.settings import default_of
from neucodec_assets.sft.split import SPLITS

DEFAULT_PREFIX = default_of("sft_prefix")
META_FOLDER = "__sft_meta__"
PACKED_FOLDER = "__packed__"
CHARTS_FOLDER = "charts"
INDEX_SUFFIX = ".parquet"


@dataclass(frozen=True)
class SftLayout:
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        cleaned = self.prefix.strip("/")
        if not cleaned:
            raise ValueError("the SFT prefix must not be empty: records would mix with the shards")
        object.__setattr__(self, "prefix", cleaned)

    def records_key(self, shard: str, split: str) -> str:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; splits: {list(SPLITS)}")
        return f"{self.prefix}/{split}/{shard.strip('/')}.parquet"

    def unsplit_records_key(self, shard: str) -> str | None:
        """Where records were kept before they were filed by split (None where that key is a split file)."""
        shard = shard.strip("/")
        return None if shard.split("/", 1)[0] in SPLITS else f"{self.prefix}/{shard}.parquet"

    @staticmethod
    def records_glob(split: str) -> str:
        """Relative to the card's folder."""
        return f"{split}/**/*.parquet"

    @property
    def index_prefix(self) -> str:
        return f"{self.prefix}/{META_FOLDER}/index/"

    def index_key(self, shard: str) -> str:
        return f"{self.index_prefix}{shard.strip('/')}{INDEX_SUFFIX}"

    def shard_of_index_key(self, key: str) -> str | None:
        if not key.startswith(self.index_prefix) or not key.endswith(INDEX_SUFFIX):
            return None
        return key[len(self.index_prefix) : -len(INDEX_SUFFIX)]

    def meta_key(self, name: str) -> str:
        return f"{self.prefix}/{META_FOLDER}/{name}"

    @property
    def card_key(self) -> str:
        return f"{self.prefix}/README.md"

    def chart_key(self, name: str) -> str:
        return f"{self.prefix}/{CHARTS_FOLDER}/{name}"

    @property
    def packed_prefix(self) -> str:
        return f"{self.prefix}/{PACKED_FOLDER}/"

    def packed_key(self, split: str, part: int) -> str:
        return f"{self.packed_prefix}{split}/part-{part:05d}.parquet"

    @staticmethod
    def packed_glob(split: str) -> str:
        """Relative to the card's folder."""
        return f"{PACKED_FOLDER}/{split}/*.parquet"
