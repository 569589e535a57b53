"""Fleet-scale figures of the platform's bookkeeping: discovery, a discovery-sensor tick, a partition backfill's
submission (GraphQL, as the UI's backfill dialog sends it), one backfill-daemon iteration and the asset page's
partition view query, at 10,000 and 100,000 shards.

Why: Dagster's recommended ceiling is 100,000 partitions per asset and the sensor timeout is 60 s; this says
whether our code paths (and Dagster's, as we use them) stay inside those at the fleet's size.

Real parts: moto's S3 server over HTTP (started here; shards are a few-byte ``audio.tar`` each, which is all
listing looks at), a Dagster instance from the repository's dagster.yaml on the local PostgreSQL in a fresh
database created and dropped here (``--sqlite`` for a SQLite instance), and a workspace loading
``neucodec_assets.definitions`` through workspace.yaml. Nothing is launched: the daemon iteration queues runs.

    .venv/bin/python bench/fleet_scale.py                 # 10,000 and 100,000 shards
    .venv/bin/python bench/fleet_scale.py --shards 10000  # one size
"""

from __future__ import annotations

import argparse
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
def dagster_home(sqlite: bool):
    """A fresh DAGSTER_HOME: the repository's dagster.yaml on a new Postgres database (dropped afterwards), or
    an empty one (SQLite storage)."""
    home = Path(tempfile.mkdtemp(prefix="fleet-scale-home-"))
    db = None
    saved = dict(os.environ)
    try:
        os.environ["DAGSTER_HOME"] = str(home)
        if not sqlite:
            db = create_database("neucodec_bench")
            shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
            os.environ.update({
                "DAGSTER_PG_HOST": PG_HOST, "DAGSTER_PG_PORT": str(PG_PORT), "DAGSTER_PG_USERNAME": PG_USER,
                "DAGSTER_PG_PASSWORD": "", "DAGSTER_PG_DB": db,
            })
        yield home
    finally:
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(home, ignore_errors=True)
        if db:
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


def run_size(n: int, endpoint: str, args: argparse.Namespace) -> None:
    import boto3
    from botocore.config import Config
    from dagster_graphql.test.utils import execute_dagster_graphql

    from gpu_executor.launch.dagster_internals import WorkspaceFileTarget, create_test_daemon_workspace_context
    from neucodec_assets import cli
    from neucodec_assets.tokens import discovery_sensor
    from neucodec_assets.tokens.discovery import DiscoveryCursor
    from neucodec_assets.tokens.partitions import shards_partitions
    from resources.dagster_resources import BucketResource
    from tests.fixtures.dagster_api import launch_asset_backfill

    bucket_name = f"fleet-{n}-{uuid.uuid4().hex[:6]}"
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                          region_name="us-east-1", config=Config(max_pool_connections=args.threads))
    client.create_bucket(Bucket=bucket_name)
    prefixes = shard_prefixes(n)
    print(f"\n== {n:,} shards (bucket s3://{bucket_name}, {'SQLite' if args.sqlite else 'PostgreSQL'} instance)")
    seconds = seed(client, bucket_name, prefixes, args.threads)
    print(f"seeding moto: {n:,} PUTs with {args.threads} threads in {seconds:.1f} s ({n / seconds:,.0f}/s)")

    os.environ["NEUCODEC_BUCKET"] = f"s3://{bucket_name}"
    with dagster_home(args.sqlite):
        instance = dg.DagsterInstance.get()
        try:
            # 1. discovery as a user runs it: `neucodec-platform discover` (list everything, add the partitions).
            start = time.perf_counter()
            assert cli.main(["discover"]) == 0
            discover_s = time.perf_counter() - start
            assert len(instance.get_dynamic_partitions(shards_partitions.name)) == n
            print(f"discovery (list {n:,} shards + add partitions)  {verdict(discover_s, TARGET_S)}")

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
                  f"{budget.seconds:g} s)  {verdict(tick_s, TARGET_S)}")
            instance.add_dynamic_partitions(shards_partitions.name, found)
            keys = instance.get_dynamic_partitions(shards_partitions.name)

            os.chdir(REPO_ROOT)
            target = WorkspaceFileTarget(paths=[str(REPO_ROOT / "workspace.yaml")])
            with create_test_daemon_workspace_context(target, instance) as workspace:
                # 3. a partition backfill of every shard, launched as the UI's backfill dialog launches it.
                start = time.perf_counter()
                launch_asset_backfill(workspace, dg.AssetKey("neucodec_tokens"), keys, title="fleet-scale bench")
                submit_s = time.perf_counter() - start
                print(f"backfill submission (GraphQL launchPartitionBackfill, {len(keys):,} partitions)  "
                      f"{verdict(submit_s, TARGET_S)}")

                # 4. one backfill-daemon iteration: it plans the runs (backfill policy) and queues them all. It runs
                # in a child process (Dagster's own iteration over this instance and workspace), stopped at
                # --daemon-cap seconds; past the cap the time for all runs is projected from the rate so far.
                from gpu_executor.settings import load_settings

                shards_per_run = load_settings().shards_per_run
                expected = -(-len(keys) // shards_per_run)
                child = subprocess.Popen([sys.executable, __file__, "--daemon-iteration"], cwd=REPO_ROOT,
                                         env=dict(os.environ))
                start = time.perf_counter()
                try:
                    child.wait(timeout=args.daemon_cap)
                    capped = False
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
                    capped = True
                daemon_s = time.perf_counter() - start
                runs = instance.get_runs_count()
                rate = runs / daemon_s
                if capped:
                    projected = expected / rate if rate else float("inf")
                    print(f"backfill daemon iteration: stopped after {daemon_s:.0f} s with {runs:,} of {expected:,} "
                          f"runs queued ({rate:,.1f} runs/s, workspace load included); all runs projected at "
                          f"{verdict(projected, TARGET_S)}")
                else:
                    print(f"backfill daemon iteration ({runs:,} runs of {shards_per_run} shards queued, "
                          f"{rate:,.1f} runs/s, workspace load included)  {verdict(daemon_s, TARGET_S)}")

                # 5. the asset page's partition view.
                times = []
                for _ in range(3):
                    start = time.perf_counter()
                    res = execute_dagster_graphql(workspace.create_request_context(), PARTITION_HEALTH_QUERY,
                                                  {"assetKey": {"path": ["neucodec_tokens"]}})
                    times.append(time.perf_counter() - start)
                node = res.data["assetNodeOrError"]
                assert len(node["partitionKeysByDimension"][0]["partitionKeys"]) == len(keys), node.keys()
                print(f"partition view (PartitionHealthQuery, best of 3; first {times[0]:.2f} s)  "
                      f"{verdict(min(times), VIEW_TARGET_S)}")
        finally:
            instance.dispose()


def daemon_iteration() -> int:
    """One iteration of Dagster's backfill daemon over DAGSTER_HOME and the repository's workspace (child process)."""
    from gpu_executor.launch.dagster_internals import (
        WorkspaceFileTarget,
        create_test_daemon_workspace_context,
        execute_backfill_iteration,
    )

    with dg.DagsterInstance.get() as instance, create_test_daemon_workspace_context(
            WorkspaceFileTarget(paths=[str(REPO_ROOT / "workspace.yaml")]), instance) as workspace:
        list(execute_backfill_iteration(workspace, logging.getLogger("fleet_scale")))
    return 0


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:] == ["--daemon-iteration"]:
        return daemon_iteration()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, action="append",
                        help="bucket size; repeat for several (default: 10000 and 100000)")
    parser.add_argument("--sqlite", action="store_true", help="a SQLite instance instead of PostgreSQL")
    parser.add_argument("--threads", type=int, default=48, help="parallel PUTs when seeding moto (default 48)")
    parser.add_argument("--daemon-cap", type=float, default=180.0,
                        help="seconds to let the daemon iteration queue runs before canceling and projecting "
                        "(default 180)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for var in ("R2_ENDPOINT_URL", "R2_ACCESS_KEY_ID", "R2_SECRET_ACCESS_KEY"):
        os.environ.pop(var, None)
    with moto_server() as endpoint:
        os.environ.update({"R2_ENDPOINT_URL": endpoint, "R2_ACCESS_KEY_ID": "testing",
                           "R2_SECRET_ACCESS_KEY": "testing"})  # moto's placeholders, not credentials
        for n in args.shards or [10_000, 100_000]:
            run_size(n, endpoint, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
