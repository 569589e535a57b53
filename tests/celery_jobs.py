"""Code location for the Celery worker tests: a partitioned asset in the `gpu` pool that records which worker and GPU
ran it, holds until a `release` file appears, then writes its output atomically.

Loaded by file path into Celery run workers, so it imports nothing from the tests package. The records folder comes
from NEUCODEC_TEST_CELERY_DIR (a backfill run has no run config to carry it).
"""

import json
import os
import time
from pathlib import Path

import dagster as dg

HOLD_LIMIT_S = 150.0
SHARDS = dg.StaticPartitionsDefinition([f"shard-{i:02d}" for i in range(8)])


@dg.asset(partitions_def=SHARDS, pool="gpu")
def held_shard(context: dg.AssetExecutionContext) -> None:
    """Writes `<run_id>.start.json` (worker, GPU, pid), holds, writes `final/<partition>.json` by rename, the end.

    The `.part` file stands for an encoder's half-written output: a run killed mid-hold leaves it outside `final/`.
    """
    root = Path(os.environ["NEUCODEC_TEST_CELERY_DIR"])
    record = {
        "run_id": context.run_id,
        "partition": context.partition_key,
        "worker": f"gpu{os.environ.get('NEUCODEC_GPU_SLOT')}@{os.environ.get('NEUCODEC_WORKER_HOST')}",
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "pid": os.getpid(),
        "start": time.time(),
    }
    (root / "runs" / f"{context.run_id}.start.json").write_text(json.dumps(record))
    part = root / "tmp" / f"{context.run_id}.part"
    part.write_text(json.dumps(record))
    deadline = time.monotonic() + HOLD_LIMIT_S
    while not (root / "release").exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"nobody created {root / 'release'} within {HOLD_LIMIT_S} s")
        time.sleep(0.1)
    record["end"] = time.time()
    part.write_text(json.dumps(record))
    os.replace(part, root / "final" / f"{context.partition_key}.json")
    with open(root / "writes.log", "a") as log:
        log.write(f"{context.partition_key} {context.run_id}\n")
    (root / "runs" / f"{context.run_id}.end.json").write_text(json.dumps(record))


defs = dg.Definitions(assets=[held_shard])
