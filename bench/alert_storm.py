"""A bad day for alerts: a bad deploy fails many runs within minutes while the webhook is down (HTTP 500s, then
connection refused), then the webhook comes back; later a few runs fail on a calm day. Prints what
`neucodec_alert_sensor` posted: attempts, failed posts, retries, messages and digests, the runs they covered, and the
largest cursor it kept.

Real parts: a Dagster instance from the repository's dagster.yaml on the local PostgreSQL (a fresh database, dropped
afterwards), tokens runs failed the way run monitoring fails dead or hung workers, a local HTTP server as the webhook,
and the sensor evaluated tick after tick with its cursor carried as the daemon carries it.

    .venv/bin/python bench/alert_storm.py                       # 200 runs, 10 a tick, webhook down 12 ticks
    .venv/bin/python bench/alert_storm.py --runs 50 --per-tick 5
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import dagster as dg  # noqa: E402

from bench.fleet_scale import dagster_home  # noqa: E402
from tests.fixtures.platform import started_tokens_run  # noqa: E402
from tests.fixtures.webhook import FlakyWebhook  # noqa: E402

CAUSES = ["run worker exited unexpectedly",
          "Run {run} is hung: no segment encoded and no byte downloaded for 600 s. The run is failed so that run "
          "retries start it afresh."]


def storm(args: argparse.Namespace) -> None:
    from neucodec_assets.progress.alert_outbox import AlertOutbox
    from neucodec_assets.progress.alerts import WEBHOOK_ENV, neucodec_alert_sensor

    hook = FlakyWebhook()
    os.environ[WEBHOOK_ENV] = hook.url
    instance = dg.DagsterInstance.get()
    keys = [f"corpus/hi/shard_{i:06d}" for i in range(args.runs + args.calm_runs)]
    instance.add_dynamic_partitions("shards", keys)
    cursor = None
    largest = failed = failed_posts = 0

    def tick() -> str:
        nonlocal cursor, largest, failed_posts
        before = AlertOutbox.from_cursor(cursor).failed_posts if cursor else 0
        result = neucodec_alert_sensor(dg.build_sensor_context(instance=instance, cursor=cursor))
        cursor = result.cursor
        largest = max(largest, len(cursor))
        failed_posts += AlertOutbox.from_cursor(cursor).failed_posts > before  # one failed post ends a tick
        return result.skip_reason.skip_message

    def fail(count: int) -> None:
        nonlocal failed
        for _ in range(count):
            run = started_tokens_run(instance, keys[failed], tags={"dagster/backfill": "bf-bad-deploy"})
            instance.report_run_failed(run, CAUSES[failed % 3 == 2].format(run=run.run_id))
            failed += 1

    tick()  # the first tick starts the cursor
    hook.fail_all(500)
    number = 0
    while number < args.ticks:
        number += 1
        if failed < args.runs:
            fail(min(args.per_tick, args.runs - failed))
        if number == args.down_ticks * 2 // 3:
            hook.stop()  # connection refused from here
        if number == args.down_ticks + 1:
            hook.start()
            hook.recover()
        if number == args.ticks - 10:
            fail(args.calm_runs)
        message = tick()
        if args.verbose or message.startswith("posted"):
            print(f"tick {number:3d}: {message}")
    outbox = AlertOutbox.from_cursor(cursor)
    digests = [b for b in hook.received if b["type"] == "digest"]
    singles = [b for b in hook.received if b["type"] == "run_failure"]
    print(f"\n{failed} runs failed ({args.runs} in {-(-args.runs // args.per_tick)} ticks, then {args.calm_runs}); "
          f"webhook down for ticks 1-{args.down_ticks}")
    print(f"posts: {outbox.posts + failed_posts} attempted, {failed_posts} failed, {outbox.posts} delivered "
          f"({len(digests)} digests covering {sum(d['runs'] for d in digests)} runs, {len(singles)} single-run "
          f"messages), {outbox.retried_posts} retried posts; runs alerted: {outbox.delivered_runs} of {failed}; "
          f"still pending: {outbox.waiting}; largest cursor: {largest} bytes")
    hook.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="runs the bad deploy fails (default 200)")
    parser.add_argument("--per-tick", type=int, default=10, help="of them failing per sensor tick (default 10)")
    parser.add_argument("--down-ticks", type=int, default=12, help="ticks the webhook is down (default 12)")
    parser.add_argument("--calm-runs", type=int, default=3, help="runs failing on their own later (default 3)")
    parser.add_argument("--ticks", type=int, default=60, help="sensor ticks evaluated (default 60)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every tick's message")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # the sensor logs each tick; this prints what matters
    with dagster_home(sqlite=False):
        storm(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
