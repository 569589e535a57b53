"""Where the SFT outputs live in the bucket, under one prefix (default `sft`).

Records sit at `{prefix}/{split}/{shard}.parquet`: one folder per split, so the card's `configs` (and Hugging Face
`datasets`' own folder-name rule) give `train` and `validation` as real splits. `datasets` skips folders whose
names start with `__`, which is where the platform's own files go.

Each build of the dataset is a version: its packed parts, split file, manifest, totals and charts sit in a folder
of their own, `{prefix}/__versions__/{version}/`, that nothing writes again once the card names it. The card
(`{prefix}/README.md`) is the one object replaced in place.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpu_executor.settings import default_of
from neucodec_assets.sft.split import SPLITS

DEFAULT_PREFIX = default_of("sft_prefix")
META_FOLDER = "__sft_meta__"
VERSIONS_FOLDER = "__versions__"
PACKED_FOLDER = "packed"
CHARTS_FOLDER = "charts"
INDEX_SUFFIX = ".parquet"
# Where builds before versions kept their dataset files; removed once a versioned card has replaced theirs.
UNVERSIONED_FILES = ("__packed__/", f"{META_FOLDER}/split.parquet", f"{META_FOLDER}/manifest.parquet",
                     f"{META_FOLDER}/totals.json", f"{CHARTS_FOLDER}/")


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

    @property
    def card_key(self) -> str:
        return f"{self.prefix}/README.md"

    @property
    def versions_prefix(self) -> str:
        return f"{self.prefix}/{VERSIONS_FOLDER}/"

    def version_prefix(self, version: str) -> str:
        return f"{self.versions_prefix}{version}/"

    def version_of_key(self, key: str) -> str | None:
        """The version a key belongs to (None: not a versioned dataset file)."""
        if not key.startswith(self.versions_prefix):
            return None
        version, slash, _ = key[len(self.versions_prefix) :].partition("/")
        return version if slash and version else None

    def version_key(self, version: str, name: str) -> str:
        """A file of one version: split file, manifest, totals."""
        return f"{self.version_prefix(version)}{name}"

    def chart_key(self, version: str, name: str) -> str:
        return self.version_key(version, f"{CHARTS_FOLDER}/{name}")

    def packed_key(self, version: str, split: str, part: int) -> str:
        return self.version_key(version, f"{PACKED_FOLDER}/{split}/part-{part:05d}.parquet")

    @staticmethod
    def packed_glob(version: str, split: str) -> str:
        """Relative to the card's folder: only this version's parts."""
        return f"{VERSIONS_FOLDER}/{version}/{PACKED_FOLDER}/{split}/*.parquet"

    def unversioned_prefixes(self) -> list[str]:
        """Keys (or key prefixes) of the dataset files of builds before versions."""
        return [f"{self.prefix}/{name}" for name in UNVERSIONED_FILES]
