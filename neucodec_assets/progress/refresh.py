"""One progress pass: start from the bucket's cache, read what is newer, compute the summary, keep the cache.
`encoding_progress` runs it and records the result; `neucodec-platform status` runs it without saving."""

from __future__ import annotations

import time
from collections.abc import Callable

import dagster as dg

from gpu_executor.launch.names import UNCONSUMED_QUEUE_TAG
from gpu_executor.settings import load_settings
from neucodec_assets.progress.cache import ProgressCache, load_cache
from neucodec_assets.progress.collect import PAGE_SIZE, collect
from neucodec_assets.progress.compute import compute_progress
from neucodec_assets.progress.summary import ProgressSummary
from resources.bucket import Bucket


def refresh(instance: dg.DagsterInstance, bucket: Bucket | None, prefix: str, *, save: bool,
            max_reads: int | None = None, page_size: int = PAGE_SIZE, now: float | None = None,
            log: Callable[[str], None] = lambda _: None) -> ProgressSummary:
    """The summary as of now (``now`` for tests). ``save``: write the cache back (unless it could not be read this
    time: then it is left as it was). ``max_reads``: metadata files per pass (NEUCODEC_PROGRESS_METADATA_READS)."""
    settings = load_settings()
    loaded = load_cache(bucket, prefix) if bucket is not None else None
    collected = collect(instance, bucket, loaded.cache if loaded else ProgressCache(),
                        max_reads=settings.progress_metadata_reads if max_reads is None else max_reads,
                        page_size=page_size, log=log)
    cache = collected.cache
    notes = ([loaded.note] if loaded and loaded.note else []) + collected.notes + unconsumed_queue_notes(instance)
    summary = compute_progress(collected.states, cache.done, cache.durations, cache.runs.values(),
                               time.time() if now is None else now, layout=collected.layout,
                               price=settings.gpu_hour_price, notes=notes, reads=collected.reads)
    if save and bucket is not None and loaded is not None and loaded.may_save:
        cache.save(bucket, prefix)
    return summary


def unconsumed_queue_notes(instance: dg.DagsterInstance) -> list[str]:
    """Runs still waiting in a Celery queue that no live worker consumed when they were launched (the Celery
    launcher tags them): said here, not only when run monitoring's start timeout fails them."""
    waiting: dict[str, int] = {}
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTING]), limit=10_000):
        queue = run.tags.get(UNCONSUMED_QUEUE_TAG)
        if queue:
            waiting[queue] = waiting.get(queue, 0) + 1
    return [f"{n} run(s) wait in Celery queue {queue!r}, which no live worker consumed when they were launched: "
            f"start a worker for it (`neucodec-platform gpu-worker`)" for queue, n in sorted(waiting.items())]
