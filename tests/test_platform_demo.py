"""`neucodec-platform demo` (what `make demo` runs): the whole pipeline on the embedded defaults, and the clear stop
when the hub model cannot be had."""

from __future__ import annotations

import os
import subprocess
import sys

import dagster as dg

from neucodec_assets.tokens.metadata import TOKENS_ASSET_KEY
from neucodec_assets.tokens.partitions import shards_partitions
from resources.bucket import LocalBucket
from resources.dagster_resources import RANDOM_LABEL
from resources.tokens_file import validate_tokens_file
from tests.fixtures.platform import REPO_ROOT


def test_demo_random_model_end_to_end(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    env.update({"NEUCODEC_DEVICE": "cpu", "NEUCODEC_PRECISION": "fp32"})  # the other platform tests' encoder settings
    demo_dir = tmp_path / "demo"
    # One shard of one short segment: the full-size model is slow on CPUs; test_platform_tokens.py covers several
    # shards per run. A process of its own, as a user runs it, so that what reaches the terminal is what is tested.
    proc = subprocess.run(
        [sys.executable, "-m", "neucodec_assets.cli", "demo", "--model", "random", "--shards", "1", "--segments", "1",
         "--dir", str(demo_dir)], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    out = proc.stdout

    # Quiet by default: progress lines and the summary, on one screen; Dagster's log, the code server's output and
    # the libraries' warnings and progress bars go to the log file the output names.
    lines = out.splitlines()
    assert len(lines) <= 40, out
    assert proc.stderr == ""
    assert not [line for line in lines if "DEBUG" in line or " - INFO - " in line], out
    for noise in ("dagster.code_server", "Loading weights", "FutureWarning", "BetaWarning", "torchao"):
        assert noise not in out
    log_file = demo_dir / "dagster-events.log"
    assert f"log: {log_file} " in out and f"libraries' output: {log_file} (-v prints them here)" in out
    assert "  neucodec_tokens: 1/1 shards encoded" in out and "  sft_dataset: written" in out
    log = log_file.read_text()
    assert "dagster.code_server" in log and "Loading weights" in log  # the code server's and the model's output
    assert f"model: {RANDOM_LABEL}" in out
    downstream = out[out.index("downstream assets materialized: "):].splitlines()[0].split(": ", 1)[1]
    assert set(downstream.split(", ")) == {"sft_pairs", "encoding_progress", "sft_dataset"}
    table = out[out.index("shard  "):].splitlines()
    assert table[0].split() == ["shard", "status", "segments", "failed", "hours", "tokens", "real-time", "factor"]
    row = table[2].split()
    assert row[1:4] == ["encoded", "1", "0"] and row[-1].endswith("x")
    total = table[4].split()
    assert total[:3] == ["total", "(1", "shards)"] and total[3] == "1"
    assert int(total[6]) == int(row[5]) > 0
    assert "SFT dataset: 1 records" in out
    assert "decode round trip of 1 sampled segments (random weights: the figures are meaningless): stoi" in out
    assert f"listen: {(demo_dir / 'bucket').as_uri()}/" in out and "/roundtrip/" in out

    # Everything lives under the demo folder: SQLite DAGSTER_HOME and the bucket folder with tokens and SFT files.
    bucket = LocalBucket(demo_dir / "bucket")
    shards = bucket.list_shards()
    assert len(shards) == 1 and all(s.has_tokens for s in shards)
    for shard in shards:
        assert validate_tokens_file(bucket.read_bytes(f"{shard.prefix}/neucodec_tokens.parquet")).ok
        assert bucket.exists(f"sft/train/{shard.prefix}.parquet")  # one segment: the train split
        assert any(k.endswith(".decoded.wav") for k, _ in bucket.list_keys(f"{shard.prefix}/roundtrip/"))
    card = bucket.read_bytes("sft/README.md").decode()
    assert "## Token quality (decode round trip)" in card  # per language, from encoding_progress
    with dg.DagsterInstance.from_config(str(demo_dir / "dagster_home")) as instance:
        assert "Sqlite" in type(instance.run_storage).__name__  # the embedded default
        keys = set(instance.get_dynamic_partitions(shards_partitions.name))
        assert keys == {s.prefix for s in shards}
        assert instance.get_materialized_partitions(TOKENS_ASSET_KEY) == keys
        assert instance.get_latest_materialization_event(dg.AssetKey("sft_dataset")) is not None
        # The path of a user's backfill: one backfill, its runs queued and started by the GPU run launcher.
        (backfill,) = instance.get_backfills()
        runs = instance.get_runs()
        assert runs and all(r.tags["dagster/backfill"] == backfill.backfill_id for r in runs)
        assert all(r.status == dg.DagsterRunStatus.SUCCESS and r.tags.get("neucodec/pid") for r in runs)
        # The runs' event log, entry by entry, in the log file: Dagster's debug-level events of every run.
        log_lines = log.splitlines()
        for run in runs:
            assert any(f" - {run.run_id} - - - RUN_SUCCESS - " in line for line in log_lines), run.run_id
        assert any(line.split(" - ")[1:3] == ["dagster.event_log", "DEBUG"] and " - STEP_START - " in line
                   for line in log_lines)
        assert " - neucodec_tokens - ASSET_MATERIALIZATION - " in log
        assert {r.tags["neucodec/gpu"] for r in runs} == {"cpu0", "none"}  # tokens on the slot, SFT on none
        # encoding_progress ran in the same backfill: per-language progress with the round-trip figures.
        progress = instance.get_latest_materialization_event(dg.AssetKey("encoding_progress"))
        meta = progress.asset_materialization.metadata
        language = shards[0].prefix.split("/")[1]
        assert meta["shards_done"].value == 1 and meta[f"hours_done/{language}"].value > 0
        assert f"roundtrip_stoi/{language}" in meta and meta[f"roundtrip_random_weights/{language}"].value is True


def test_demo_without_hub_access_names_the_offline_option(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEUCODEC_", "HF_"))}
    env.update({"HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"})  # an empty hub cache, no network
    proc = subprocess.run(
        [sys.executable, "-m", "neucodec_assets.cli", "demo", "--model", "hub", "--dir", str(tmp_path / "demo")],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    assert "cannot load the neucodec model 'neuphonic/neucodec'" in proc.stderr
    assert "make demo MODEL=random" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "demo" / "bucket").exists()  # it stopped before doing any work
