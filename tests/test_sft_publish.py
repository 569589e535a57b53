"""A training job that reads the SFT dataset while it is rebuilt always loads one whole version.

A reader thread loads both configs of the card with Hugging Face `datasets`, over and over, while two rebuilds
write new versions into the same (local-folder) bucket. The rebuilds pause at the moments that matter until the
reader has made a load that started there, so those moments are always covered: a new version half written under
the old card; the new card in place before older versions are deleted; and a reader that has read the card but
not yet its files while the next build publishes and deletes what it outdates.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import polars as pl
import pytest

from neucodec_assets.sft.dataset_build import DatasetOutcome, DatasetSettings, build_dataset
from neucodec_assets.sft.layout import SftLayout
from neucodec_assets.sft.pairing import PairingConfig
from neucodec_assets.sft.publish import card_version, stale_versions
from neucodec_assets.sft.shard_records import write_shard_records
from neucodec_assets.sft.split import SPLITS
from neucodec_assets.sft.training_ids import TrainingIdsBuilder, load_tokenizer
from resources.bucket.local import LocalBucket
from tests.fixtures.sft_data import write_sft_shard

FRACTION = 0.3
WAIT_SECONDS = 120.0  # a guard against a reader that died or hangs, not a measure of anything


@dataclass
class Load:
    """What one load of one config gave: the files `datasets` resolved from the card, and the rows per split."""

    config: str
    files: dict[str, list[str]]
    rows: dict[str, pl.DataFrame]
    held: bool = False  # held between reading the card and reading its files


def load_config(card_dir: Path, config: str, between: Callable[[], bool] = lambda: False) -> Load:
    """Load a config of the card as a training job does (with a fresh cache: `datasets` reuses its cache of a
    folder after the files change), keeping which files the card named; `between()` runs after the card is read
    and before its files are, and says whether it held the load there."""
    with tempfile.TemporaryDirectory() as cache:
        builder = datasets.load_dataset_builder(str(card_dir), config, cache_dir=cache)
        files = {str(split): [os.path.relpath(f, card_dir) for f in names]
                 for split, names in builder.config.data_files.items()}
        held = between()
        builder.download_and_prepare()
        loaded = builder.as_dataset()
        rows = {str(split): pl.from_arrow(loaded[split].data.table) for split in loaded}
        return Load(config, files, rows, held)


class Reader(threading.Thread):
    """Loads the packed and the records config again and again until stopped."""

    def __init__(self, card_dir: Path) -> None:
        super().__init__(daemon=True)
        self.card_dir = card_dir
        self.loads: list[Load] = []
        self.error: BaseException | None = None
        self.stopping = threading.Event()
        self._hold_asked, self._holding, self._released = threading.Event(), threading.Event(), threading.Event()
        self._changed = threading.Condition()
        self.loads_begun = self.loads_ended = 0

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                with self._changed:
                    self.loads_begun += 1
                loads = [load_config(self.card_dir, "packed", self._hold_if_asked),
                         load_config(self.card_dir, "records")]
                with self._changed:
                    self.loads += loads
                    self.loads_ended += 1
                    self._changed.notify_all()
        except BaseException as exc:  # handed to the test thread
            self.error = exc
            with self._changed:
                self._changed.notify_all()

    def _hold_if_asked(self) -> bool:
        if not self._hold_asked.is_set():
            return False
        self._hold_asked.clear()
        self._holding.set()
        assert self._released.wait(WAIT_SECONDS), "the test never released the held load"
        return True

    def hold(self) -> None:
        """Block until a packed load has read the card and is held before reading the files it names."""
        self._hold_asked.set()
        assert self._holding.wait(WAIT_SECONDS) or self.error is not None, "the reader never reached the hold"
        if self.error is not None:
            raise AssertionError("the reader failed") from self.error

    def release(self) -> None:
        self._released.set()

    def load_from_here(self) -> None:
        """Block until a load that started after this call has finished."""
        with self._changed:
            target = self.loads_begun + 1
            finished = self._changed.wait_for(lambda: self.loads_ended >= target or self.error is not None,
                                              WAIT_SECONDS)
        if self.error is not None:
            raise AssertionError("the reader failed") from self.error
        assert finished, f"the reader made no load in {WAIT_SECONDS:.0f} s"


class PausingBucket(LocalBucket):
    """The real local bucket; after each write it asks `pause_after(key)` and, if true, runs `pause()` first."""

    def __init__(self, root: Path, pause_after: Callable[[str], bool], pause: Callable[[], None]) -> None:
        super().__init__(root)
        self.pause_after, self.pause = pause_after, pause

    def upload_file(self, local_path, key: str) -> None:
        super().upload_file(local_path, key)
        if self.pause_after(key):
            self.pause()

    def put_bytes(self, key: str, data: bytes) -> None:
        super().put_bytes(key, data)
        if self.pause_after(key):
            self.pause()


def _check_packed(load: Load, builds: dict[str, DatasetOutcome], layout: SftLayout) -> str:
    """A packed load is every part of one version and nothing else, with the blocks and tokens its card states;
    returns the version."""
    names = {layout.version_of_key(f"{layout.prefix}/{f}") for files in load.files.values() for f in files}
    assert len(names) == 1, f"a load mixed versions {names}"
    (version,) = names
    build = builds[version]
    for split in SPLITS:
        want = sorted(key.removeprefix(f"{layout.prefix}/") for key in build.packed_parts[split])
        assert sorted(load.files[split]) == want
        assert load.rows[split].height == build.packed[f"{split}_blocks"]
    tokens = sum(int(rows.get_column("input_ids").list.len().sum()) for rows in load.rows.values())
    blocks = sum(rows.height for rows in load.rows.values())
    assert tokens == build.packed["tokens"] and f"{blocks:,} blocks, {tokens:,} tokens" in build.card
    return version


def _check_records(load: Load, sides: dict[str, set[str]]) -> None:
    """A records load has every segment once, on its side."""
    for split, rows in load.rows.items():
        ids = rows.get_column("segment_id")
        assert ids.n_unique() == ids.len() and set(ids) == sides[split]


def test_a_reader_during_rebuilds_always_loads_one_version(tmp_path, tiny_qwen_tokenizer_dir):
    root = tmp_path / "bucket"
    bucket, layout = LocalBucket(root), SftLayout()
    rng = np.random.default_rng(11)
    builder = TrainingIdsBuilder(load_tokenizer(tiny_qwen_tokenizer_dir))
    for shard, n, speakers in [("ds1/ms/shard_0", 12, True), ("ds1/en/shard_1", 8, False), ("ds2/ta/shard_2", 9, True)]:
        write_sft_shard(bucket, shard, rng, n, speakers=speakers)
        write_shard_records(bucket, shard, layout, PairingConfig(), builder, str(tiny_qwen_tokenizer_dir),
                            validation_fraction=FRACTION)

    def settings(block_size: int) -> DatasetSettings:  # 2 blocks per part: several parts per split
        return DatasetSettings(validation_fraction=FRACTION, pack=True, block_size=block_size, blocks_per_part=2)

    first = build_dataset(bucket, layout, settings(700))
    builds = {first.publication.version: first}
    split = pl.read_parquet(root / first.keys["split"])
    sides = {s: set(split.filter(pl.col("split") == s).get_column("segment_id")) for s in SPLITS}
    assert all(sides.values()) and all(len(parts) >= 2 for parts in first.packed_parts.values())

    def first_part(key: str) -> bool:
        return key.endswith("/packed/train/part-00000.parquet")

    reader = Reader(root / layout.prefix)
    reader.start()
    try:
        # Other block sizes: each version has other parts and other blocks. The second build stops for a load
        # when its first part is in place under the old card, and when its card is in place, before it deletes.
        second_build = PausingBucket(root, lambda key: first_part(key) or key == layout.card_key, reader.load_from_here)
        build = build_dataset(second_build, layout, settings(400))
        builds[build.publication.version] = build
        # The third holds a load that has read the second card but not its files yet, publishes, deletes what it
        # outdates, and only then lets that load read the files.
        third_build = PausingBucket(root, first_part, reader.hold)
        build = build_dataset(third_build, layout, settings(900))
        builds[build.publication.version] = build
        reader.release()
        reader.load_from_here()  # the held load has ended, and one after the third build more
    finally:
        reader.release()
        reader.stopping.set()
        reader.join(WAIT_SECONDS)
    assert reader.error is None and not reader.is_alive()

    seen, held = [], []
    for load in reader.loads:
        if load.config == "packed":
            seen.append(_check_packed(load, builds, layout))
            held += [seen[-1]] if load.held else []
        else:
            _check_records(load, sides)
    first_version, second, third = builds
    # every paused moment was loaded: the old version while the new one was half written, each new card, and the
    # second version in full by the load that read its card before the third build deleted the first
    assert {first_version, second, third} <= set(seen) and seen == sorted(seen) and held == [second]

    # the second build kept the version it replaced; the third deleted the first, which no card names any more
    assert builds[second].publication.replaced == first_version and builds[second].publication.deleted_versions == []
    assert builds[third].publication.deleted_versions == [first_version]
    assert {layout.version_of_key(key) for key, _ in bucket.list_keys(layout.versions_prefix)} == {second, third}
    assert card_version((root / layout.card_key).read_text()) == third


@pytest.mark.parametrize(
    ("versions", "published", "replaced", "deleted"),
    [
        ({"a", "b", "c"}, "c", "b", ["a"]),  # the usual: the replaced version stays until the next build
        ({"a", "b", "c", "d"}, "d", "b", ["a"]),  # c, a build after b that failed, waits for the next build
        ({"a", "b", "c"}, "b", "c", ["a"]),  # two builds at once: b published after c, neither is deleted
        ({"a", "b"}, "b", None, []),  # replacing an unversioned card (or none): nothing deleted yet
    ],
)
def test_which_versions_a_build_deletes(versions, published, replaced, deleted):
    assert stale_versions(versions, published, replaced) == deleted
