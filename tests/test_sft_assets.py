"""sft_pairs and sft_dataset materialized by Dagster on a local-folder bucket and on S3 (moto over HTTP)."""

import tempfile
from pathlib import Path

import dagster as dg
import datasets
import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from neucodec_assets.sft import SftResource, sft_dataset, sft_pairs
from neucodec_assets.sft.dataset_build import DURATION_CHART, HOURS_CHART
from neucodec_assets.sft.layout import SftLayout
from neucodec_assets.sft.parquet_io import read_provenance
from neucodec_assets.sft.training_ids import (
    TrainingIdsBuilder,
    load_tokenizer,
    render_training_text,
)
from neucodec_assets.tokens.partitions import SHARDS_PARTITION_NAME
from resources.bucket import open_bucket
from resources.dagster_resources import BucketResource
from tests.fixtures.sft_data import write_sft_shard


def _record_files(root: Path, layout: SftLayout, shard: str) -> list[Path]:
    """The shard's records files, train first."""
    paths = [root / layout.records_key(shard, s) for s in ("train", "validation")]
    return [path for path in paths if path.exists()]


def _assert_records_follow(card_dir: Path, split: pl.DataFrame, records: pl.DataFrame) -> None:
    """`datasets.load_dataset(<folder>, "records")` gives train and validation as the split file says, with no
    speaker (of a dataset) on both sides."""
    with tempfile.TemporaryDirectory() as cache:  # `datasets` would reuse its cache of the folder's earlier files
        loaded = datasets.load_dataset(str(card_dir), "records", cache_dir=cache)
        frames = {side: pl.from_arrow(loaded[side].data.table) for side in loaded}
    assert set(frames) == {"train", "validation"}
    assert sum(frame.height for frame in frames.values()) == records.height
    speakers = {}
    for side, rows in frames.items():
        expected = split.filter(pl.col("split") == side)
        assert rows.height == expected.height > 0
        assert sorted(rows.get_column("segment_id")) == sorted(expected.get_column("segment_id"))
        speakers[side] = set(rows.drop_nulls("speaker").select("dataset", "speaker").iter_rows())
    assert speakers["train"] and speakers["validation"] and not speakers["train"] & speakers["validation"]


def _materialize(assets, instance, resources, partition_key=None) -> dg.ExecuteInProcessResult:
    return dg.materialize(assets, instance=instance, resources=resources, partition_key=partition_key)


def _metadata(result: dg.ExecuteInProcessResult) -> dict:
    (event,) = result.get_asset_materialization_events()
    return {k: v.value for k, v in event.materialization.metadata.items()}


@pytest.fixture
def instance():
    with dg.DagsterInstance.ephemeral() as inst:
        yield inst


def test_pairs_and_dataset_on_a_local_bucket(tmp_path, tiny_qwen_tokenizer_dir, instance):
    root = tmp_path / "bucket"
    bucket = open_bucket(root.as_uri())
    rng = np.random.default_rng(11)
    shards = ["ds1/ms/shard_0", "ds1/en/shard_1", "ds2/ta/shard_2"]
    expected = write_sft_shard(bucket, shards[0], rng, 12)
    expected |= write_sft_shard(bucket, shards[1], rng, 8, speakers=False)
    write_sft_shard(bucket, shards[2], rng, 5, metadata=False)
    instance.add_dynamic_partitions(SHARDS_PARTITION_NAME, shards)
    resources = {
        "bucket": BucketResource(url=root.as_uri()),
        "sft": SftResource(tokenizer=str(tiny_qwen_tokenizer_dir), validation_fraction=0.3, pack=True, block_size=700),
    }

    for shard in shards:
        result = _materialize([sft_pairs], instance, resources, partition_key=shard)
        assert result.success
    meta = _metadata(result)
    assert meta["records"] == 0 and meta["dropped/no_metadata_row"] == 5 and meta["had_metadata"] is False
    meta0 = _metadata(_materialize([sft_pairs], instance, resources, partition_key=shards[0]))
    assert meta0["records"] == 11 and meta0["dropped/empty_transcript"] == 1
    assert meta0["dropped/no_audio_or_tokens"] == 1 and meta0["token_rows"] == 12

    layout = SftLayout()
    builder = TrainingIdsBuilder(load_tokenizer(tiny_qwen_tokenizer_dir))
    assert not _record_files(root, layout, shards[2])  # all dropped: no (empty) file
    record_files = [path for s in shards[:2] for path in _record_files(root, layout, s)]
    records = pl.concat([pl.read_parquet(path) for path in record_files])
    assert records.height == len(expected) == 18
    for row in records.iter_rows(named=True):
        want = expected[row["segment_id"]]
        assert row["neucodec_tokens"] == want["codes"] and row["text"] == want["text"].strip()
        speaker = row["speaker"] or "unknown"
        assert builder.tokenizer.decode(row["input_ids"]) == render_training_text(speaker, row["text"], want["codes"])
    by_hf = datasets.load_dataset("parquet", data_files=[str(path) for path in record_files], split="train")
    assert by_hf.num_rows == 18 and by_hf[0]["neucodec_tokens"] == records.row(0, named=True)["neucodec_tokens"]

    result = _materialize([sft_dataset], instance, resources)
    assert result.success
    meta = _metadata(result)
    assert meta["shards"] == 3 and meta["segments"] == 18
    assert meta["speech_tokens"] == int(records.get_column("token_count").sum())
    assert meta["hours"] == pytest.approx(records.get_column("token_count").sum() / 50 / 3600, abs=1e-4)
    assert meta["training_tokens"] == int(records.get_column("input_ids").list.len().sum())
    assert meta["train_segments"] + meta["validation_segments"] == 18
    assert meta["dropped"]["empty_transcript"] == 2 and meta["dropped"]["no_metadata_row"] == 5
    version = meta["version"]
    # the charts are linked, not inlined: bucket objects in the version's folder, where the card shows them
    for name, chart in [("hours_per_language_chart", HOURS_CHART), ("clip_duration_chart", DURATION_CHART)]:
        assert meta[name] == f"{root.as_uri()}/{layout.chart_key(version, chart)}"
        assert (root / layout.chart_key(version, chart)).read_bytes().startswith(b"\x89PNG")
    packed = meta["packed"]
    assert packed["tokens"] == meta["training_tokens"] and packed["documents"] == 18
    assert meta["split_key"] == layout.version_key(version, "split.parquet") and meta["replaced_version"] == "none"

    split = pl.read_parquet(root / meta["split_key"])
    assert split.height == 18 and set(split.get_column("split")) == {"train", "validation"}
    assert meta["validation_segments"] == split.filter(pl.col("split") == "validation").height
    manifest = pl.read_parquet(root / meta["manifest_key"])
    assert manifest.get_column("shard").to_list() == sorted(shards)
    assert manifest.get_column("segments").sum() == 18

    card_dir = root / layout.prefix
    card = (card_dir / "README.md").read_text()
    assert "- segments: 18" in card and "config_name: packed" in card
    assert f'path: "__versions__/{version}/packed/train/*.parquet"' in card
    assert f"![Hours per language](__versions__/{version}/charts/{HOURS_CHART})" in card
    assert f"This card publishes build `{version}`: its packed blocks, split file and charts are under " in card
    # the card's configs work as written: records (not the platform's own parquet files) and packed blocks,
    # both with the train/validation split of the split file
    _assert_records_follow(card_dir, split, records)
    packed_hf = datasets.load_dataset(str(card_dir))  # packed is the default config
    assert set(packed_hf) == {"train", "validation"} and packed_hf["validation"].num_rows > 0
    split_ids = dict(zip(records.get_column("segment_id"), records.get_column("input_ids").to_list()))
    for side in ("train", "validation"):
        side_ids = [split_ids[sid] for sid in split.filter(pl.col("split") == side).get_column("segment_id")]
        side_blocks = pl.from_arrow(packed_hf[side].data.table)
        assert side_blocks.get_column("input_ids").list.len().sum() == sum(len(ids) for ids in side_ids)
    blocks = pl.concat([pl.from_arrow(packed_hf[s].data.table) for s in packed_hf])
    assert blocks.get_column("input_ids").list.len().sum() == meta["training_tokens"]
    assert (blocks.get_column("attention_mask").list.sum() == blocks.get_column("input_ids").list.len()).all()
    # every document survives packing unchanged: the multiset of documents is the records' input_ids
    docs = []
    for ids, lengths in zip(blocks.get_column("input_ids").to_list(), blocks.get_column("attention_mask").to_list()):
        bounds = np.cumsum([0, *lengths])
        docs += [tuple(ids[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    assert sorted(docs) == sorted(tuple(x) for x in records.get_column("input_ids").to_list())

    # rerun: a new version with the identical split; the replaced one stays until the next build
    rerun = _metadata(_materialize([sft_dataset], instance, resources))
    assert rerun["version"] > version and rerun["replaced_version"] == version and rerun["deleted_versions"] == []
    assert pl.read_parquet(root / rerun["split_key"]).equals(split)

    # other split settings, and a shard whose records predate split folders: sft_dataset files the records
    # again, so the loaded splits still follow the split file
    legacy = root / f"{layout.prefix}/{shards[1]}.parquet"
    legacy.parent.mkdir(parents=True)
    pl.concat([pl.read_parquet(path) for path in _record_files(root, layout, shards[1])]).write_parquet(legacy)
    for path in _record_files(root, layout, shards[1]):
        path.unlink()
    index_path = root / layout.index_key(shards[1])
    pq.write_table(pq.read_table(index_path).drop_columns(["split"]), index_path)  # keeps the provenance
    reseeded = {**resources, "sft": SftResource(tokenizer=str(tiny_qwen_tokenizer_dir), validation_fraction=0.5,
                                                split_seed="other", pack=True, block_size=700)}
    third = _metadata(_materialize([sft_dataset], instance, reseeded))
    resplit = pl.read_parquet(root / third["split_key"])
    assert not resplit.equals(split) and not legacy.exists()
    _assert_records_follow(card_dir, resplit, records)
    # the first version is gone now that its card is two builds old; the one the third build replaced is kept
    assert third["deleted_versions"] == [version]
    assert {layout.version_of_key(k) for k, _ in bucket.list_keys(layout.versions_prefix)} == {
        rerun["version"], third["version"]}


def test_pairs_and_dataset_on_s3_without_tokenizer(s3_env, instance):
    url = f"s3://{s3_env['bucket']}"
    bucket = open_bucket(url)
    rng = np.random.default_rng(12)
    expected = write_sft_shard(bucket, "emilia/ms/s0", rng, 6)
    instance.add_dynamic_partitions(SHARDS_PARTITION_NAME, ["emilia/ms/s0", "emilia/ms/missing"])
    resources = {"bucket": BucketResource(url=url), "sft": SftResource(prefix="out/sft", tokenizer="none")}
    assert _materialize([sft_pairs], instance, resources, partition_key="emilia/ms/s0").success
    keys = [SftLayout("out/sft").records_key("emilia/ms/s0", s) for s in ("train", "validation")]
    key = next(k for k in keys if bucket.exists(k))
    frame = pl.concat([pl.read_parquet(bucket.read_bytes(k)) for k in keys if bucket.exists(k)])
    assert "input_ids" not in frame.columns and set(frame.get_column("segment_id")) == set(expected)
    assert frame.schema["neucodec_tokens"] == pl.List(pl.UInt16)
    provenance = read_provenance(bucket.read_bytes(key))
    assert provenance["shard"] == "emilia/ms/s0" and provenance["tokenizer"] is None
    assert provenance["dropped"]["empty_transcript"] == 1 and provenance["kept"] == 5

    with pytest.raises(dg.Failure, match="no tokens file"):
        _materialize([sft_pairs], instance, resources, partition_key="emilia/ms/missing")
    # a card and its files as builds before versions wrote them, in place
    unversioned = ["out/sft/__packed__/train/part-00000.parquet", "out/sft/__sft_meta__/split.parquet",
                   "out/sft/__sft_meta__/manifest.parquet", "out/sft/__sft_meta__/totals.json",
                   f"out/sft/charts/{HOURS_CHART}"]
    for old in unversioned:
        bucket.put_bytes(old, b"from an unversioned build")
    bucket.put_bytes("out/sft/README.md", b'---\nconfigs:\n- config_name: packed\n  data_files:\n  - split: train\n'
                     b'    path: "__packed__/train/*.parquet"\n---\n![Hours per language](charts/hours.png)\n')
    meta = _metadata(_materialize([sft_dataset], instance, resources))
    assert meta["segments"] == 5 and "training_tokens" not in meta and "packed" not in meta
    assert meta["card_url"] == f"{url}/out/sft/README.md" and bucket.exists("out/sft/README.md")
    chart = meta["hours_per_language_chart"]  # a link to the object, which is there
    assert chart == f"{url}/out/sft/__versions__/{meta['version']}/charts/{HOURS_CHART}"
    assert bucket.read_bytes(chart.removeprefix(f"{url}/")).startswith(b"\x89PNG")
    packing = {**resources, "sft": SftResource(prefix="out/sft", tokenizer="none", pack=True)}
    with pytest.raises(dg.Failure, match="packing needs input_ids"):
        _materialize([sft_dataset], instance, packing)

    # The unversioned card's files outlive it by one build, as a version does; the shards' index files stay.
    layout = SftLayout("out/sft")
    assert meta["replaced_version"] == "none" and all(bucket.exists(old) for old in unversioned)
    second = _metadata(_materialize([sft_dataset], instance, resources))
    assert second["replaced_version"] == meta["version"] and second["deleted_versions"] == []
    assert not any(bucket.exists(old) for old in unversioned) and bucket.exists(layout.index_key("emilia/ms/s0"))
    third = _metadata(_materialize([sft_dataset], instance, resources))
    assert third["deleted_versions"] == [meta["version"]] and not bucket.exists(chart.removeprefix(f"{url}/"))
    assert {layout.version_of_key(k) for k, _ in bucket.list_keys(layout.versions_prefix)} == {
        second["version"], third["version"]}


def test_settings_fall_back_to_environment(monkeypatch):
    monkeypatch.setenv("NEUCODEC_SFT_PREFIX", "/train/sft/")
    monkeypatch.setenv("NEUCODEC_SFT_TOKENIZER", "Scicom-intl/Multilingual-TTS-1.7B-Base")
    monkeypatch.setenv("NEUCODEC_SFT_MIN_CPS", "0")
    monkeypatch.setenv("NEUCODEC_SFT_VALIDATION_FRACTION", "0.05")
    monkeypatch.setenv("NEUCODEC_SFT_PACK", "true")
    monkeypatch.setenv("NEUCODEC_SFT_BLOCK_SIZE", "4096")
    settings = SftResource()
    assert settings.layout().records_key("a/b/c", "train") == "train/sft/train/a/b/c.parquet"
    assert settings.tokenizer_source() == "Scicom-intl/Multilingual-TTS-1.7B-Base"
    assert settings.pairing_config().min_chars_per_second == 0.0
    assert settings.pairing_config().max_chars_per_second == 40.0
    assert settings.fraction() == 0.05 and settings.packing() and settings.packing_block_size() == 4096
    explicit = SftResource(prefix="x", tokenizer="none", validation_fraction=0.0, pack=False, block_size=10)
    assert explicit.layout().prefix == "x" and explicit.tokenizer_source() is None
    assert explicit.fraction() == 0.0 and not explicit.packing() and explicit.packing_block_size() == 10
    monkeypatch.setenv("NEUCODEC_SFT_BLOCK_SIZE", "big")
    with pytest.raises(ValueError, match="NEUCODEC_SFT_BLOCK_SIZE"):
        settings.packing_block_size()
