"""`make demo`: the whole pipeline on the embedded defaults, start to finish, through Dagster.

sample shards into a local folder bucket -> discover them as partitions -> materialize `neucodec_tokens` for every
shard (runs grouped as the backfill policy groups them, one model load) -> the downstream assets -> a summary
table read back from the Dagster instance. Everything lives under `.demo/` (bucket folder, DAGSTER_HOME with SQLite
storage) and is rebuilt on every call.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from neucodec_assets.discovery import add_shard_partitions, plan_discovery
from neucodec_assets.partitions import shards_partitions
from neucodec_assets.tokens_metadata import TOKENS_ASSET_KEY, metadata_value
from resources.bucket import LocalBucket
from resources.dagster_resources import DEFAULT_MODEL, RANDOM_LABEL, RANDOM_MODEL, BucketResource, \
    EncoderResource

MODEL_CHOICES = ("hub", "random")
OFFLINE_HINT = "make demo MODEL=random"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
SFT_DATASET_KEY = dg.AssetKey("sft_dataset")


class DemoError(RuntimeError):
    """The demo cannot go on; the message says what to do instead."""


@dataclass
class ShardRow:
    shard: str
    status: str
    segments: int
    failed: int | None
    hours: float
    tokens: int
    rtf: float | None


@dataclass
class DemoSummary:
    model: str
    bucket: str
    dagster_home: str
    rows: list[ShardRow] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    downstream: list[str] = field(default_factory=list)
    sft: str | None = None  # one line about the SFT dataset, when that asset exists
    wall_seconds: float = 0.0

    @property
    def totals(self) -> ShardRow:
        encoded = [r for r in self.rows if r.rtf]
        enc_hours = sum(r.hours for r in encoded)
        enc_wall = sum(r.hours / r.rtf for r in encoded if r.rtf)
        return ShardRow(
            shard=f"total ({len(self.rows)} shards)", status="",
            segments=sum(r.segments for r in self.rows),
            failed=sum(r.failed or 0 for r in self.rows),
            hours=sum(r.hours for r in self.rows), tokens=sum(r.tokens for r in self.rows),
            rtf=enc_hours / enc_wall if enc_wall else None,
        )

    def table(self) -> str:
        header = ("shard", "status", "segments", "failed", "hours", "tokens", "real-time factor")
        lines = [header]
        for r in [*self.rows, self.totals]:
            lines.append((r.shard, r.status, str(r.segments), "?" if r.failed is None else str(r.failed),
                          f"{r.hours:.4f}", str(r.tokens), f"{r.rtf:.2f}x" if r.rtf else "-"))
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        out = []
        for n, line in enumerate(lines):
            out.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))))
            if n == 0 or n == len(lines) - 2:
                out.append("  ".join("-" * w for w in widths))
        return "\n".join(out)


def _contiguous_ranges(all_keys: Sequence[str], wanted: set[str], size: int) -> list[tuple[str, str]]:
    """Runs of at most ``size`` wanted keys that are contiguous in the partition order (as a backfill makes)."""
    ranges, current = [], []
    for key in all_keys:
        if key in wanted:
            current.append(key)
            if len(current) == size:
                ranges.append((current[0], current[-1]))
                current = []
        elif current:
            ranges.append((current[0], current[-1]))
            current = []
    if current:
        ranges.append((current[0], current[-1]))
    return ranges


def _partitions_per_run(policy: dg.BackfillPolicy | None, total: int) -> int:
    """Shards per run as a backfill would group them: no policy means one run per partition."""
    if policy is None:
        return 1
    return policy.max_partitions_per_run or max(total, 1)


def _materialize(assets: Sequence, resources: dict, instance: dg.DagsterInstance, keys: Sequence[dg.AssetKey],
                 tags: dict[str, str]) -> dg.ExecuteInProcessResult:
    """One in-process run of the selected assets (and their checks), recorded in ``instance``."""
    return dg.materialize(assets, selection=list(keys), resources=resources, instance=instance, tags=tags,
                          raise_on_error=False)


def _summary_rows(instance: dg.DagsterInstance, keys: Sequence[str]) -> list[ShardRow]:
    rows = []
    for key in keys:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=TOKENS_ASSET_KEY, asset_partitions=[key]), limit=1
        ).records
        if not records:
            rows.append(ShardRow(key, "not materialized", 0, None, 0.0, 0, None))
            continue
        meta = records[0].asset_materialization.metadata  # type: ignore[union-attr]
        rows.append(ShardRow(
            shard=key, status=str(metadata_value(meta, "status")),
            segments=int(metadata_value(meta, "segment_count") or 0),
            failed=metadata_value(meta, "failed_count"),
            hours=float(metadata_value(meta, "total_audio_seconds") or 0) / 3600,
            tokens=int(metadata_value(meta, "total_tokens") or 0),
            rtf=metadata_value(meta, "real_time_factor"),
        ))
    return rows


def _sft_line(instance: dg.DagsterInstance) -> str | None:
    event = instance.get_latest_materialization_event(SFT_DATASET_KEY)
    if event is None or event.asset_materialization is None:
        return None
    meta = event.asset_materialization.metadata
    return (f"SFT dataset: {metadata_value(meta, 'segments')} records ({metadata_value(meta, 'train_segments')} "
            f"train, {metadata_value(meta, 'validation_segments')} validation), {metadata_value(meta, 'hours')} h, "
            f"{metadata_value(meta, 'speech_tokens')} speech tokens; card: {metadata_value(meta, 'card_url')}")


def run_demo(model: str = "hub", *, shards: int = 3, segments: int = 6, root: Path = Path(".demo"),
             log: Callable[[str], None] = print) -> DemoSummary:
    """Run the whole demo; raises DemoError with the way out when the model cannot be had."""
    from gpu_executor.encoder import ModelLoadError
    from neucodec_assets.definitions import defs
    from resources.sample_bucket import write_sample_bucket

    if model not in MODEL_CHOICES:
        raise DemoError(f"--model {model!r}: choose one of {', '.join(MODEL_CHOICES)}")
    start = time.perf_counter()
    root = root.resolve()
    if root.exists():
        shutil.rmtree(root)
    home, bucket_dir = root / "dagster_home", root / "bucket"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text("# embedded default: SQLite storage in this folder\ntelemetry:\n  enabled: false\n")
    bucket_url = bucket_dir.as_uri()

    encoder = EncoderResource(model=RANDOM_MODEL) if model == "random" else EncoderResource()
    settings = encoder.settings()
    label = RANDOM_LABEL if settings.is_random else settings.model
    log(f"model: {label}")
    log("loading the encoder (once; every run of the demo reuses it)")
    try:
        loaded = encoder.load()
    except ModelLoadError as exc:
        if settings.model == DEFAULT_MODEL or not Path(settings.model).exists():
            raise DemoError(
                f"cannot load the neucodec model {settings.model!r} from the Hugging Face hub: {exc}\n"
                f"Without hub access, run the demo on a randomly initialized model of the same architecture: "
                f"`{OFFLINE_HINT}` (or `neucodec-platform demo --model random`)."
            ) from exc
        raise DemoError(f"cannot load the neucodec model {settings.model!r}: {exc}") from exc
    log(f"encoder ready on {loaded.device} in {loaded.load_seconds:.1f} s")
    log(f"writing {shards} sample shards ({segments} segments each) to {bucket_dir}")
    write_sample_bucket(bucket_url, shards=shards, segments_per_shard=segments, seed=0)

    assets = list(defs.assets or [])
    resources = {**(defs.resources or {}), "bucket": BucketResource(url=bucket_url), "encoder": encoder}
    demo_defs = dg.Definitions(assets=assets, resources=resources)
    summary = DemoSummary(model=label, bucket=bucket_url, dagster_home=str(home))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        plan = plan_discovery(LocalBucket(bucket_dir), instance.get_dynamic_partitions(shards_partitions.name))
        added = add_shard_partitions(instance, plan.new_keys)
        log(f"discovered {len(plan.listed)} shards, added {len(added)} partitions")
        all_keys = instance.get_dynamic_partitions(shards_partitions.name)
        wanted = {s.prefix for s in plan.listed}

        graph = demo_defs.resolve_asset_graph()
        keys = [k for k in graph.toposorted_asset_keys if k in graph.materializable_asset_keys]
        partitioned = [k for k in keys if graph.get(k).partitions_def == shards_partitions]
        unpartitioned = [k for k in keys if graph.get(k).partitions_def is None]
        downstream = [k for k in partitioned if k != TOKENS_ASSET_KEY]
        summary.downstream = [k.to_user_string() for k in downstream + unpartitioned]

        # Partitioned assets in dependency order, each in runs grouped as its backfill policy groups them.
        for asset_key in [TOKENS_ASSET_KEY, *downstream]:
            per_run = _partitions_per_run(graph.get(asset_key).backfill_policy, len(wanted))
            for first, last in _contiguous_ranges(all_keys, wanted, per_run):
                name = asset_key.to_user_string()
                log(f"materializing {name} for shards {first} .. {last}")
                tags = {RANGE_START_TAG: first, RANGE_END_TAG: last}
                result = _materialize(assets, resources, instance, [asset_key], tags)
                summary.runs.append(result.run_id)
                if not result.success:
                    raise DemoError(f"run {result.run_id} ({name}, {first} .. {last}) failed; "
                                    f"see `DAGSTER_HOME={home} dagster dev -w workspace.yaml`")
        if unpartitioned:
            names = ", ".join(k.to_user_string() for k in unpartitioned)
            log(f"materializing {names}")
            result = _materialize(assets, resources, instance, unpartitioned, {})
            summary.runs.append(result.run_id)
            if not result.success:
                raise DemoError(f"run {result.run_id} ({names}) failed")
        summary.sft = _sft_line(instance)
        summary.rows = _summary_rows(instance, [k for k in all_keys if k in wanted])
    summary.wall_seconds = time.perf_counter() - start
    return summary
