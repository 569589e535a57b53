"""Reading what a progress pass needs, all of it Dagster's own records or the shards' own files:

- shard states: the partitions of `shards` and the asset's partition status cache (the UI's partition bar);
- done shards' figures: materializations of `neucodec_tokens` after the cache's cursor, in pages;
- GPU time: run records updated since the cache's cursor, in pages (one GPU per tokens run, start to end);
- remaining hours: metadata.parquet of not-done shards whose durations the cache does not hold (at most
  NEUCODEC_PROGRESS_METADATA_READS per pass). A read that fails is not cached as a fact: the next pass tries again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone

import dagster as dg

from neucodec_assets.progress.cache import ProgressCache
from neucodec_assets.progress.records import (
    DONE,
    FAILED,
    IN_FLIGHT,
    PENDING,
    RunSpan,
    ShardDuration,
    done_shard_from_record,
)
from neucodec_assets.progress.summary import PassReads
from neucodec_assets.tokens.encoding import (
    ShardMetadata,
    ShardMetadataUnreadable,
    load_shard_metadata,
    shard_labels,
)
from neucodec_assets.tokens.metadata import TOKENS_ASSET_KEY
from neucodec_assets.tokens.partitions import shards_partitions
from resources.bucket import METADATA_PARQUET, Bucket, ShardLayout

PAGE_SIZE = 1000
# A run record's update time is its last event's, stamped by the process that wrote it (a rented box's clock): the
# next pass reads a minute back from the newest one seen.
RUNS_OVERLAP_SECONDS = 60.0
READ_THREADS = 16
FAILURES_NAMED = 3

Log = Callable[[str], None]


def shard_states(instance: dg.DagsterInstance, keys: Sequence[str]) -> dict[str, str]:
    """done / failed / in flight / pending per partition, from the asset's partition status cache (the same
    answer as the UI's partition bar; Dagster keeps it current incrementally)."""
    statuses = instance.get_status_by_partition(TOKENS_ASSET_KEY, list(keys), shards_partitions) or {}
    names = {dg.AssetPartitionStatus.MATERIALIZED: DONE, dg.AssetPartitionStatus.FAILED: FAILED,
             dg.AssetPartitionStatus.IN_PROGRESS: IN_FLIGHT}
    return {key: names.get(statuses.get(key), PENDING) for key in keys}


def read_new_materializations(instance: dg.DagsterInstance, cache: ProgressCache, page_size: int = PAGE_SIZE) -> int:
    """Materializations of `neucodec_tokens` after the cache's cursor, oldest first (a later one replaces an earlier
    one of the same shard). Returns how many were read."""
    count = 0
    while True:
        result = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=TOKENS_ASSET_KEY, after_storage_id=cache.event_cursor or None),
            limit=page_size, ascending=True,
        )
        for record in result.records:
            shard = done_shard_from_record(record)
            if shard is not None:
                cache.done[shard.key] = shard
            cache.event_cursor = max(cache.event_cursor, record.storage_id)
            count += 1
        if len(result.records) < page_size:
            return count


def is_tokens_run(run: dg.DagsterRun) -> bool:
    from neucodec_assets.tokens.job import neucodec_tokens_job

    return run.job_name == neucodec_tokens_job.name or TOKENS_ASSET_KEY in (run.asset_selection or ())


def read_runs(instance: dg.DagsterInstance, cache: ProgressCache, page_size: int = PAGE_SIZE) -> tuple[int, int]:
    """Run records updated since the cache's cursor (all of them on the first pass), ``page_size`` at a time in the
    order they were created; the tokens runs among them go into the cache. Returns (records, pages) read."""
    after = (datetime.fromtimestamp(cache.runs_updated - RUNS_OVERLAP_SECONDS, tz=timezone.utc)
             if cache.runs_updated else None)
    newest, records_read, pages, cursor = cache.runs_updated, 0, 0, None
    while True:
        records = instance.get_run_records(filters=dg.RunsFilter(updated_after=after), limit=page_size,
                                           ascending=True, cursor=cursor)
        pages += 1
        records_read += len(records)
        for record in records:
            run = record.dagster_run
            updated = record.update_timestamp.timestamp()
            newest = max(newest, updated)
            if is_tokens_run(run):
                cache.runs[run.run_id] = RunSpan(run_id=run.run_id, status=run.status.value, start=record.start_time,
                                                 end=record.end_time, updated=updated)
        if len(records) < page_size:
            break
        cursor = records[-1].dagster_run.run_id
    cache.runs_updated = newest  # only after the last page: a pass cut short reads its runs again
    return records_read, pages


def read_durations(bucket: Bucket, keys: Sequence[str], threads: int = READ_THREADS) -> list[ShardDuration]:
    """Labels and summed durations of each shard's metadata.parquet (one GET each, in a thread pool). A file that
    is missing or cannot be read gives a row with its ``problem`` and the prefix's labels, never "no durations"."""

    def one(key: str) -> ShardDuration:
        try:
            meta = load_shard_metadata(bucket, key)
        except FileNotFoundError:
            problem = f"no {METADATA_PARQUET}"
        except ShardMetadataUnreadable as exc:
            problem = str(exc)
        else:
            dataset, language = shard_labels(bucket, key, metadata=meta)
            seconds = float(sum(meta.durations.values())) if meta.durations else None
            return ShardDuration(key, dataset, language, seconds, len(meta.durations) if meta.durations else None)
        dataset, language = shard_labels(bucket, key, metadata=ShardMetadata())  # labelled by the prefix
        return ShardDuration(key, dataset, language, None, None, problem=problem)

    if not keys:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(keys)))) as pool:
        return list(pool.map(one, keys))


@dataclass
class Collected:
    """Everything compute_progress needs, as read from the instance and the bucket."""

    states: dict[str, str]
    cache: ProgressCache
    notes: list[str]
    layout: ShardLayout
    reads: PassReads


def collect(instance: dg.DagsterInstance, bucket: Bucket | None, cache: ProgressCache | None = None, *,
            max_reads: int, page_size: int = PAGE_SIZE, log: Log = lambda _: None) -> Collected:
    """Read shard states, new materializations, new runs and the durations of not-done shards not read before
    (first those never read, then those whose last read failed)."""
    cache = cache or ProgressCache()
    notes: list[str] = []
    keys = instance.get_dynamic_partitions(shards_partitions.name)
    states = shard_states(instance, keys)
    started = time.perf_counter()
    events = read_new_materializations(instance, cache, page_size)
    runs, pages = read_runs(instance, cache, page_size)
    log(f"{len(keys)} shards; read {events} materializations and {runs} run records ({pages} pages) "
        f"in {time.perf_counter() - started:.1f} s")
    layout = bucket.layout if bucket is not None else ShardLayout.from_env()
    # Durations of done shards are no longer needed: their figures are the truth.
    cache.durations = {k: v for k, v in cache.durations.items() if states.get(k, DONE) != DONE}
    read: list[ShardDuration] = []
    if bucket is None:
        notes.append("no bucket: remaining hours unknown")
    else:
        not_done = [k for k in keys if states[k] != DONE]
        wanted = ([k for k in not_done if k not in cache.durations]
                  + [k for k in not_done if k in cache.durations and cache.durations[k].problem])
        if len(wanted) > max_reads:
            notes.append(f"read metadata.parquet of {max_reads} of {len(wanted)} unread not-done shards this pass "
                         f"(NEUCODEC_PROGRESS_METADATA_READS); remaining hours of the rest are estimated")
        started = time.perf_counter()
        read = read_durations(bucket, wanted[:max_reads])
        for item in read:
            cache.durations[item.key] = item
        if wanted:
            log(f"read metadata.parquet of {len(read)} shards in {time.perf_counter() - started:.1f} s")
    failed = [item for item in read if item.problem]
    if failed:
        named = "; ".join(f"{item.key}: {item.problem}" for item in failed[:FAILURES_NAMED])
        shards = f"{len(failed)} shard" + ("s" if len(failed) != 1 else "")
        notes.append(f"metadata.parquet of {shards} could not be read (read again next pass; remaining hours "
                     f"estimated until then): {named}" + (" ..." if len(failed) > FAILURES_NAMED else ""))
    reads = PassReads(materializations=events, run_records=runs, run_record_pages=pages, metadata_files=len(read),
                      metadata_failures=len(failed))
    return Collected(states=states, cache=cache, notes=notes, layout=layout, reads=reads)
