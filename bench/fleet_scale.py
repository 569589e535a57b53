"""Fleet-scale figures of the platform's bookkeeping, each printed with its target: discovery, a discovery-sensor tick,
the automation sensor's first tick, a partition backfill launched through GraphQL (as the UI's backfill dialog sends it) and the backfill daemon creating
its runs (launch to the first run QUEUED, the sustained creation rate, shards queued per second, a drain simulation),
and the asset page's partition view query, at 2,000, 10,000 and 100,000 shards.

Why: what a fleet needs is that no GPU waits for the queue, at a creation rate that does not fall as the bucket grows;
Dagster's recommended ceiling is 100,000 partitions per asset and the sensor timeout is 60 s (a sensor evaluated in
the code server, as the automation sensor is, answers the daemon over gRPC within DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS,
60 s by default).

Real parts: moto's S3 server over HTTP (started here; shards are a few-byte ``audio.tar`` each, which is all listing
looks at), a Dagster instance from the repository's dagster.yaml on the local PostgreSQL in a fresh database created
and dropped here, Dagster's backfill daemon iterating in a child process over workspace.yaml (its code server
loading ``neucodec_assets.definitions``), with the environment the deploy profiles give the daemon
(``DAGSTER_ASSET_BACKFILL_RUN_CHUNK_SIZE``, ``DAGSTER_EVENT_BATCH_SIZE``). Nothing is launched: runs are queued.

Each bucket size is measured with the run sizes of ``--run-sizes`` (default ``auto,8``): ``auto`` is what a large
fleet sets (about NEUCODEC_AUTOMATION_RUNS_PER_SLOT runs per gpu slot, so runs grow with the bucket), and a fixed
size gives runs of the same size at every bucket size: the "flat" line compares that one, since a run's creation
cost grows with its shards (one planned event each) and the question is whether it grows with the bucket.

    .venv/bin/python bench/fleet_scale.py                 # 2,000, 10,000 and 100,000 shards
    .venv/bin/python bench/fleet_scale.py --shards 10000  # one size
"""

from __future__ import annotations

import argparse
import bisect
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import dagster as dg  # noqa: E402

from tests.fixtures.services import (  # noqa: E402
    PG_HOST,
    PG_PORT,
    PG_USER,
    create_database,
    drop_database,
    moto_server,
)

TARGET_S = 60.0
VIEW_TARGET_S = 2.0
RATE_TARGET = 2.0  # runs/s the daemon must create at 100,000 shards
FLAT_TARGET = 0.7  # and at least this share of its rate at 2,000
CHUNK_SIZE = 500  # DAGSTER_ASSET_BACKFILL_RUN_CHUNK_SIZE in the deploy profiles
EVENT_BATCH_SIZE = 1000  # DAGSTER_EVENT_BATCH_SIZE in the deploy profiles
DAEMON_POLL_S = 1.0  # this bench's daemon loop; dagster-daemon's backfill daemon waits DAEMON_INTERVAL_S
DAEMON_INTERVAL_S = 30.0
NEW_SHARDS = 100  # added after discovery, half sorting before every known key and half after

# The asset page's partition view query, as dagster-webserver 1.13.27's UI sends it (PartitionHealthQuery in the
# bundled webapp): every partition key and the status sets the partition bar is drawn from.
PARTITION_HEALTH_QUERY = """
query PartitionHealthQuery($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    ... on AssetNode {
      id
      partitionKeysByDimension { name type partitionKeys }
      assetPartitionStatuses {
        ... on TimePartitionStatuses { ranges { status startTime endTime startKey endKey } }
        ... on DefaultPartitionStatuses { materializedPartitions materializingPartitions failedPartitions }
        ... on MultiPartitionStatuses {
          primaryDimensionName
          ranges {
            primaryDimStartKey primaryDimEndKey primaryDimStartTime primaryDimEndTime
            secondaryDim {
              ... on TimePartitionStatuses { ranges { status startTime endTime startKey endKey } }
              ... on DefaultPartitionStatuses { materializedPartitions materializingPartitions failedPartitions }
            }
          }
        }
      }
    }
  }
}
"""

@contextmanager
def dagster_home(pool: int, no_cache: bool):
    """A fresh DAGSTER_HOME: the repository's dagster.yaml on a new Postgres database (dropped afterwards), its
    `gpu` pool limit set to the fleet's ``pool`` slots (as the Kubernetes and Celery profiles give it);
    ``no_cache``: dagster-postgres's own run and event log storages instead of the platform's."""
    import yaml

    home = Path(tempfile.mkdtemp(prefix="fleet-scale-home-"))
    saved = dict(os.environ)
    db = create_database("neucodec_bench")
    try:
        os.environ["DAGSTER_HOME"] = str(home)
        config = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
        config["run_coordinator"]["config"]["gpu_pool_limit"] = pool
        config["concurrency"]["runs"]["max_concurrent_runs"] = max(pool, 256)
        if no_cache:
            config["event_log_storage"].update(module="dagster_postgres.event_log", **{"class": "PostgresEventLogStorage"})
            config["run_storage"].update(module="dagster_postgres.run_storage", **{"class": "PostgresRunStorage"})
        (home / "dagster.yaml").write_text(yaml.safe_dump(config))
        os.environ.update({
            "DAGSTER_PG_HOST": PG_HOST, "DAGSTER_PG_PORT": str(PG_PORT), "DAGSTER_PG_USERNAME": PG_USER,
            "DAGSTER_PG_PASSWORD": "", "DAGSTER_PG_DB": db,
        })
        yield home
    finally:
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(home, ignore_errors=True)
        drop_database(db)


def shard_prefixes(n: int) -> list[str]:
    """``{dataset}/{language}/shard_NNNNNN`` over 12 datasets x 12 languages, as the production bucket is laid out."""
    return [f"ds{i % 12:02d}/l{(i // 12) % 12:02d}/shard_{i:06d}" for i in range(n)]


def seed(client, bucket: str, prefixes: list[str], threads: int) -> float:
    """Put one few-byte ``audio.tar`` per shard with many parallel PUTs; returns the seconds it took."""
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(lambda p: client.put_object(Bucket=bucket, Key=f"{p}/audio.tar", Body=b"tar"),
                          prefixes, chunksize=256):
            pass
    return time.perf_counter() - start


def verdict(seconds: float, target: float) -> str:
    return f"{seconds:8.2f} s  (target < {target:g} s: {'met' if seconds < target else 'NOT MET'})"


def drain(creates: list[float], slots: int, run_seconds: float) -> dict[str, float]:
    """A pool of ``slots`` whose runs each take ``run_seconds``, fed by runs that appear at ``creates`` (seconds,
    sorted): when the slots first all hold a run, and after that, the slot-seconds spent idle with nothing queued and
    the shortest queue a slot left when it took its next run, up to the last run created (after it the rest of the
    backfill is unknown, and a finished backfill's queue drains by definition)."""
    free = [0.0] * slots  # when each slot is next free
    filled_at = None
    idle = 0.0
    min_queue = float("inf")
    for i, created in enumerate(creates):
        slot = min(range(slots), key=free.__getitem__)
        start = max(created, free[slot])
        if filled_at is not None and created > free[slot]:
            idle += created - free[slot]  # the slot waited for this run: nothing was queued
        if filled_at is None and i == slots - 1:
            filled_at = start
        free[slot] = start + run_seconds
        if i >= slots and start <= creates[-1]:  # a slot taking its next run while the backfill was being created
            # Runs created by `start` and not yet started: the queue as this run leaves it.
            queued = bisect.bisect_right(creates, start, lo=i + 1) - (i + 1)
            min_queue = min(min_queue, queued)
    return {"filled_at": filled_at if filled_at is not None else float("nan"), "idle_slot_seconds": idle,
            "min_queue": min_queue}  # inf: every run was created before a slot first freed


def measure_bucket(n: int, endpoint: str, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Every figure at one bucket size; returns the backfill figures per run size."""
    import boto3
    from botocore.config import Config

    from neucodec_assets.tokens import discovery_sensor
    from neucodec_assets.tokens.discovery import DiscoveryCursor, add_shard_partitions, plan_discovery
    from neucodec_assets.tokens.partitions import shards_partitions
    from resources.bucket import open_bucket
    from resources.dagster_resources import BucketResource

    bucket_name = f"fleet-{n}-{uuid.uuid4().hex[:6]}"
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                          region_name="us-east-1", config=Config(max_pool_connections=args.threads))
    client.create_bucket(Bucket=bucket_name)
    prefixes = shard_prefixes(n)
    print(f"\n== {n:,} shards (bucket s3://{bucket_name}, PostgreSQL instance, "
          f"{'dagster-postgres storages' if args.no_cache else 'the platform storages'}, gpu pool {args.pool} slots, "
          f"DAGSTER_ASSET_BACKFILL_RUN_CHUNK_SIZE={args.chunk_size}, DAGSTER_EVENT_BATCH_SIZE={args.event_batch_size})",
          flush=True)
    seconds = seed(client, bucket_name, prefixes, args.threads)
    print(f"seeding moto: {n:,} PUTs with {args.threads} threads in {seconds:.1f} s ({n / seconds:,.0f}/s)", flush=True)

    os.environ["NEUCODEC_BUCKET"] = f"s3://{bucket_name}"
    os.environ["DAGSTER_ASSET_BACKFILL_RUN_CHUNK_SIZE"] = str(args.chunk_size)
    if args.event_batch_size:
        os.environ["DAGSTER_EVENT_BATCH_SIZE"] = str(args.event_batch_size)
    else:
        os.environ.pop("DAGSTER_EVENT_BATCH_SIZE", None)
    figures: dict[str, dict[str, float]] = {}
    with dagster_home(args.pool, args.no_cache) as home:
        instance = dg.DagsterInstance.get()
        try:
            # 1. discovery as `neucodec-platform discover` does it: list the bucket, add the new partitions. Listing
            # is moto's speed here (R2 answers a 1,000-key page in a fraction of moto's time), so it is shown apart.
            start = time.perf_counter()
            plan = plan_discovery(open_bucket(os.environ["NEUCODEC_BUCKET"]),
                                  instance.get_dynamic_partitions(shards_partitions.name))
            listed_s = time.perf_counter() - start
            add_shard_partitions(instance, plan.new_keys)
            discover_s = time.perf_counter() - start
            assert len(instance.get_dynamic_partitions(shards_partitions.name)) == n
            pages = max(1, -(-plan.keys_listed // 1000))
            print(f"discovery listing: {plan.keys_listed:,} keys from moto in {listed_s:.1f} s ({listed_s / pages:.2f} s "
                  f"per 1,000-key page: the store's speed, not a target here)", flush=True)
            print(f"discovery, adding {n:,} partitions (the platform's part of `neucodec-platform discover`)  "
                  f"{verdict(discover_s - listed_s, TARGET_S)}", flush=True)

            # 2. a sensor tick where most shards are known: the cursor as the first pass left it, then new shards
            # on both sides of it (a new dataset after every key, a new one before).
            listed = [f"{p}/audio.tar" for p in prefixes]
            cursor = DiscoveryCursor(tail=max(listed)).serialize()
            new = [f"aa_new/xx/shard_{i:06d}" for i in range(NEW_SHARDS // 2)]
            new += [f"zz_new/xx/shard_{i:06d}" for i in range(NEW_SHARDS - len(new))]
            seed(client, bucket_name, new, args.threads)
            context = dg.build_sensor_context(instance=instance, cursor=cursor,
                                              resources={"bucket": BucketResource()})
            start = time.perf_counter()
            result = discovery_sensor.shard_discovery_sensor(context)
            tick_s = time.perf_counter() - start
            found = sorted(k for r in result.dynamic_partitions_requests for k in r.partition_keys)
            assert found == sorted(new), f"the tick found {len(found)} of {len(new)} new shards"
            budget = discovery_sensor.listing_budget()
            print(f"sensor tick ({len(found)} new found of {n + len(new):,}; budget {budget.max_keys:,} keys / "
                  f"{budget.seconds:g} s)  {verdict(tick_s, TARGET_S)}", flush=True)
            instance.add_dynamic_partitions(shards_partitions.name, found)
            keys = instance.get_dynamic_partitions(shards_partitions.name)

            # 2b. the automation sensor's first tick after the discovery (every shard missing), as the code server
            # evaluates it (use_user_code_server): it must answer within the sensor daemon's gRPC timeout.
            os.environ["NEUCODEC_SHARDS_PER_RUN"] = "auto"
            tick_s, requested = automation_tick(instance)
            print(f"automation tick (first after discovery: {requested:,} of {len(keys):,} shards requested, "
                  f"NEUCODEC_SHARDS_PER_RUN=auto)  {verdict(tick_s, TARGET_S)}", flush=True)

            # 3. a backfill of every shard per run size, each with a daemon of its own.
            os.chdir(REPO_ROOT)
            for size in args.run_sizes:
                figures[size] = measure_backfill(instance, home, keys, size, args)

            # 4. the asset page's partition view, every shard in flight (the status cache is rebuilt on each read).
            view_s = partition_view(instance, len(keys))
            print(f"partition view (PartitionHealthQuery, best of 3, every shard in a queued run)  "
                  f"{verdict(view_s, VIEW_TARGET_S)}", flush=True)
        finally:
            instance.dispose()
    return figures


def measure_backfill(instance: dg.DagsterInstance, home: Path, keys: list[str], size: str,
                     args: argparse.Namespace) -> dict[str, float]:
    """The backfill daemon already running (its workspace loaded, one idle iteration done), as `dagster-daemon`
    would be, with NEUCODEC_SHARDS_PER_RUN=``size``; a backfill of every shard launched as the UI's dialog launches
    it; the runs it creates within ``--daemon-cap`` seconds. The daemon is stopped and the backfill canceled after."""
    from gpu_executor.launch.dagster_internals import BACKFILL_ID_TAG, BulkActionStatus, WorkspaceFileTarget, \
        WorkspaceProcessContext
    from gpu_executor.settings import load_settings
    from neucodec_assets.tokens.run_size import run_size as run_sizing
    from tests.fixtures.dagster_api import launch_asset_backfill

    os.environ["NEUCODEC_SHARDS_PER_RUN"] = size
    counters, ready = home / f"daemon_counters_{size}.json", home / f"daemon_ready_{size}"
    child = subprocess.Popen([sys.executable, __file__, "--daemon-loop", str(counters), str(ready)],
                             cwd=REPO_ROOT, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 300
        while not ready.exists():
            assert child.poll() is None and time.monotonic() < deadline, "the daemon loop did not start"
            time.sleep(0.2)
        # What the code location computed when it loaded (the same function, the same instance state).
        shards_per_run = run_sizing(load_settings(), instance).shards_per_run
        expected = -(-len(keys) // shards_per_run)
        print(f"-- NEUCODEC_SHARDS_PER_RUN={size}: {shards_per_run} shards per run, {expected:,} runs", flush=True)
        with WorkspaceProcessContext(instance, WorkspaceFileTarget(paths=[str(REPO_ROOT / "workspace.yaml")])) as ws:
            launched = time.time()
            backfill_id = launch_asset_backfill(ws, dg.AssetKey("neucodec_tokens"), keys, title="fleet-scale bench")
            submit_s = time.time() - launched
        print(f"backfill submission (GraphQL launchPartitionBackfill, {len(keys):,} partitions)  "
              f"{verdict(submit_s, TARGET_S)}", flush=True)
        runs_filter = dg.RunsFilter(tags={BACKFILL_ID_TAG: backfill_id})
        first_queued = None
        stop_at = time.monotonic() + args.daemon_cap
        while time.monotonic() < stop_at and child.poll() is None:
            if first_queued is None and instance.get_runs_count(
                    dg.RunsFilter(tags={BACKFILL_ID_TAG: backfill_id}, statuses=[dg.DagsterRunStatus.QUEUED])):
                first_queued = time.time() - launched
            if instance.get_runs_count(runs_filter) >= expected:
                break
            time.sleep(0.5)
        time.sleep(1.5)  # the daemon's counters are written every second
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
    backfill = instance.get_backfill(backfill_id)  # no daemon creates its runs any more
    instance.update_backfill(backfill.with_status(BulkActionStatus.CANCELED))

    records = instance.get_run_records(filters=runs_filter)
    capped = len(records) < expected
    if first_queued is None and records:
        first_queued = min(r.create_timestamp.timestamp() for r in records) - launched
    print(f"launch to first run QUEUED (the daemon polling each {DAEMON_POLL_S:g} s)  " +
          (verdict(first_queued, TARGET_S) if first_queued is not None else "no run queued (NOT MET)") +
          f"; with dagster-daemon's {DAEMON_INTERVAL_S:g} s backfill interval at worst " +
          (verdict(first_queued + DAEMON_INTERVAL_S, TARGET_S) if first_queued is not None else ""), flush=True)
    creates = sorted(r.create_timestamp.timestamp() for r in records)
    window = creates[-1] - creates[0] if creates else 0.0
    rate = (len(creates) - 1) / window if len(creates) > 1 and window > 0 else 0.0
    print(f"runs created: {len(creates):,} of {expected:,}"
          f"{' (stopped at the cap of %g s)' % args.daemon_cap if capped else ', all'} in {window:.0f} s after the "
          f"first", flush=True)
    print(f"sustained run creation (create timestamps after the first)  {rate:8.2f} runs/s  "
          f"(target >= {RATE_TARGET:g}: {'met' if rate >= RATE_TARGET else 'NOT MET'})", flush=True)
    print(f"shards queued per second  {rate * shards_per_run:8.1f} shards/s ({shards_per_run} per run); all "
          f"{expected:,} runs at this rate in {expected / rate if rate else 0:.0f} s", flush=True)
    # The drain simulation: the fleet's pool draining the runs as they were created here.
    demand = args.drain_slots / args.drain_run_seconds
    slots = max(1, round(args.drain_slots / args.drain_scale))
    run_s = args.drain_run_seconds / args.drain_scale
    sim = drain([c - launched for c in creates], slots, run_s)
    starved = sim["idle_slot_seconds"] > 0
    print(f"drain: {args.drain_slots} slots x {args.drain_run_seconds:g} s runs (demand {demand:.2f} runs/s; "
          f"simulated scaled 1/{args.drain_scale:g}: {slots} slots x {run_s:g} s on the created runs): all slots busy "
          f"{sim['filled_at']:.1f} s after launch; then {sim['idle_slot_seconds']:.1f} slot-s idle with an empty "
          f"queue, " + (f"a slot freed found at least {sim['min_queue']:.0f} runs queued" if sim["min_queue"] !=
                        float("inf") else "every run created before the first slot freed") +
          "  (target: no idle slot with an empty queue: "
          f"{'NOT MET' if starved else 'met'}; creation/demand {rate / demand:.1f}x)", flush=True)
    if counters.exists():
        c = json.loads(counters.read_text())
        print(f"daemon's storage: {c['reads']} full reads of the partition keys, {c['checks']} revalidations, "
              f"{c['batches']} runs' planned events written in one statement" if c.get("caching") else
              "daemon's storage: dagster-postgres's (every key read each time, planned events one by one)", flush=True)
    return {"rate": rate, "first_queued": first_queued if first_queued is not None else float("nan"),
            "runs": len(creates), "shards_per_run": shards_per_run}


def automation_tick(instance: dg.DagsterInstance) -> tuple[float, int]:
    """Seconds one evaluation of the code location's automation conditions takes (what the automation sensor's tick
    runs in the code server), and the tokens partitions it requests."""
    from gpu_executor.settings import load_settings
    from neucodec_assets.definitions import build_definitions
    from neucodec_assets.tokens.metadata import TOKENS_ASSET_KEY

    defs = build_definitions(load_settings(), instance)
    logging.getLogger("dagster.automation_condition_tester").setLevel(logging.WARNING)  # it lists every key
    start = time.perf_counter()
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    seconds = time.perf_counter() - start
    return seconds, len(result.get_requested_partitions(TOKENS_ASSET_KEY))


def partition_view(instance: dg.DagsterInstance, partitions: int) -> float:
    """The best of three PartitionHealthQuery answers, as the asset page asks."""
    from dagster_graphql.test.utils import execute_dagster_graphql

    from gpu_executor.launch.dagster_internals import WorkspaceFileTarget, WorkspaceProcessContext

    times = []
    with WorkspaceProcessContext(instance, WorkspaceFileTarget(paths=[str(REPO_ROOT / "workspace.yaml")])) as ws:
        for _ in range(3):
            start = time.perf_counter()
            res = execute_dagster_graphql(ws.create_request_context(), PARTITION_HEALTH_QUERY,
                                          {"assetKey": {"path": ["neucodec_tokens"]}})
            times.append(time.perf_counter() - start)
    node = res.data["assetNodeOrError"]
    assert len(node["partitionKeysByDimension"][0]["partitionKeys"]) == partitions, node.keys()
    return min(times)


def daemon_loop(counters: str, ready: str) -> int:
    """Dagster's backfill daemon over DAGSTER_HOME and the repository's workspace, iterating every DAEMON_POLL_S
    (child process); writes the event log storage's counters to ``counters`` every second."""
    import threading

    from gpu_executor.launch.dagster_internals import (
        WorkspaceFileTarget,
        WorkspaceProcessContext,
        execute_backfill_iteration,
    )

    with dg.DagsterInstance.get() as instance, WorkspaceProcessContext(
            instance, WorkspaceFileTarget(paths=[str(REPO_ROOT / "workspace.yaml")])) as workspace:
        storage = instance.event_log_storage

        def write() -> None:
            while True:
                Path(f"{counters}.tmp").write_text(json.dumps({
                    "caching": hasattr(storage, "partition_reads"),
                    "reads": getattr(storage, "partition_reads", 0), "checks": getattr(storage, "partition_checks", 0),
                    "batches": getattr(storage, "planned_batches", 0)}))
                os.replace(f"{counters}.tmp", counters)
                time.sleep(1.0)

        threading.Thread(target=write, daemon=True).start()
        logger = logging.getLogger("fleet_scale")
        list(execute_backfill_iteration(workspace, logger))  # warm: nothing to do yet
        Path(ready).write_text("ready")
        while True:
            list(execute_backfill_iteration(workspace, logger))
            time.sleep(DAEMON_POLL_S)


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] == ["--daemon-loop"]:
        return daemon_loop(*sys.argv[2:4])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, action="append",
                        help="bucket size; repeat for several (default: 2000, 10000 and 100000)")
    parser.add_argument("--threads", type=int, default=48, help="parallel PUTs when seeding moto (default 48)")
    parser.add_argument("--pool", type=int, default=200, help="the fleet's gpu pool slots (default 200)")
    parser.add_argument("--run-sizes", type=lambda v: v.split(","), default=["auto", "8"],
                        help="NEUCODEC_SHARDS_PER_RUN values to measure each bucket size with, comma-separated "
                             "(default auto,8; the flatness target applies where both ends have runs of one size)")
    parser.add_argument("--chunk-size", type=int, default=CHUNK_SIZE,
                        help=f"DAGSTER_ASSET_BACKFILL_RUN_CHUNK_SIZE (default {CHUNK_SIZE}, as the deploy profiles)")
    parser.add_argument("--event-batch-size", type=int, default=EVENT_BATCH_SIZE,
                        help=f"DAGSTER_EVENT_BATCH_SIZE (default {EVENT_BATCH_SIZE}, as the deploy profiles; 0: unset)")
    parser.add_argument("--no-cache", action="store_true",
                        help="dagster-postgres's run and event log storages instead of the platform's (the saving)")
    parser.add_argument("--daemon-cap", type=float, default=120.0,
                        help="seconds to let the daemon create runs before the rate is taken (default 120)")
    parser.add_argument("--drain-slots", type=int, default=200, help="drain simulation: slots (default 200)")
    parser.add_argument("--drain-run-seconds", type=float, default=600.0,
                        help="drain simulation: seconds per run (default 600)")
    parser.add_argument("--drain-scale", type=float, default=20.0,
                        help="drain simulation: slots and run time divided by this (default 20)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for var in ("R2_ENDPOINT_URL", "R2_ACCESS_KEY_ID", "R2_SECRET_ACCESS_KEY"):
        os.environ.pop(var, None)
    results: dict[int, dict[str, dict[str, float]]] = {}
    with moto_server() as endpoint:
        os.environ.update({"R2_ENDPOINT_URL": endpoint, "R2_ACCESS_KEY_ID": "testing",
                           "R2_SECRET_ACCESS_KEY": "testing"})  # moto's placeholders, not credentials
        for n in args.shards or [2_000, 10_000, 100_000]:
            results[n] = measure_bucket(n, endpoint, args)
    sizes = sorted(results)
    if len(sizes) > 1:
        small, large = sizes[0], sizes[-1]
        print()
        for run_size in args.run_sizes:
            a, b = results[small][run_size], results[large][run_size]
            ratio = b["rate"] / a["rate"] if a["rate"] else 0.0
            same = a["shards_per_run"] == b["shards_per_run"]
            print(f"flat, NEUCODEC_SHARDS_PER_RUN={run_size}: run creation at {large:,} shards ({b['rate']:.2f}/s, "
                  f"{b['shards_per_run']} shards per run) is {ratio:.0%} of the rate at {small:,} "
                  f"({a['rate']:.2f}/s, {a['shards_per_run']} per run)" +
                  (f"  (target >= {FLAT_TARGET:.0%}: {'met' if ratio >= FLAT_TARGET else 'NOT MET'})" if same else
                   "  (runs of different sizes: not the flatness figure; shards queued "
                   f"{b['rate'] * b['shards_per_run'] / (a['rate'] * a['shards_per_run']):.1f}x)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
