"""Run-failure alerts that arrive: `neucodec_alert_sensor` against a real local HTTP server that fails (HTTP 500s,
connection refused, no answer), on a real Postgres instance, with real failed runs: runs executed until their step
fails the way `neucodec_tokens` fails on a broken shard, and tokens runs failed the way run monitoring fails a dead
worker. The sensor runs through Dagster's sensor daemon over workspace.yaml, or by its own evaluation with its
cursor carried from tick to tick as the daemon carries it.
"""

from __future__ import annotations

import logging
import time

import dagster as dg
import pytest

from gpu_executor.launch.names import GPU_TAG, HOST_TAG
from gpu_executor.settings import load_settings
from neucodec_assets.definitions import build_definitions
from neucodec_assets.progress.alert_messages import (
    DIGEST_BACKFILLS,
    DIGEST_KINDS,
    DIGEST_RUNS,
    DIGEST_SHARDS,
    OTHER,
    UI_URL_ENV,
    failed_runs_url,
    utc_text,
)
from neucodec_assets.progress.alert_outbox import DIGEST_THRESHOLD, DIGEST_WINDOW_TICKS, TICK_SECONDS, AlertOutbox
from neucodec_assets.progress.alerts import SENSOR_NAME, WEBHOOK_ENV, neucodec_alert_sensor
from neucodec_assets.progress.webhook import POST_TIMEOUT_SECONDS
from neucodec_assets.tokens.asset import failed_shards_table
from tests.fixtures.dagster_api import wait_for
from tests.fixtures.platform import REPO_ROOT, started_tokens_run
from tests.fixtures.webhook import SECRET, FlakyWebhook

KEYS = [f"corpus/hi/shard_{i:03d}" for i in range(40)]
UI = "https://dagster.example.com"
DEAD_WORKER = "run worker exited unexpectedly"  # what run monitoring writes
NO_TAR = "ShardError: shard {key} has no audio.tar (file:///data/bucket/{key}/audio.tar does not exist)"
NO_TAR_KIND = "ShardError: shard <shard> has no audio.tar (<url> does not exist)"


@dg.op(config_schema={"keys": [str], "failed": [str]})
def encode_shards(context) -> None:  # no annotation: Dagster reads it, and annotations are strings here
    """Fails as neucodec_tokens does when shards of its run cannot be encoded: a Failure with `failed_shards`."""
    keys, failed = context.op_config["keys"], context.op_config["failed"]
    raise dg.Failure(
        description=f"{len(failed)} of {len(keys)} shards failed: "
        + "; ".join(f"{k}: {NO_TAR.format(key=k)}" for k in failed),
        metadata={"failed_shards": failed_shards_table([(k, NO_TAR.format(key=k)) for k in failed])})


@dg.job(executor_def=dg.in_process_executor)
def shard_job() -> None:
    encode_shards()


def fail_on_broken_shards(instance: dg.DagsterInstance, keys: list[str], failed: list[str],
                          backfill: str = "bf-deploy") -> str:
    """A real run over a range of shards whose step fails on the broken ones."""
    result = shard_job.execute_in_process(
        instance=instance, raise_on_error=False,
        run_config={"ops": {"encode_shards": {"config": {"keys": keys, "failed": failed}}}},
        tags={"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1],
              "dagster/backfill": backfill})
    assert not result.success
    return result.run_id


def fail_dead_worker(instance: dg.DagsterInstance, key: str) -> str:
    """A started tokens run on a GPU host, failed the way run monitoring fails a run whose worker died."""
    run = started_tokens_run(instance, key, tags={GPU_TAG: "0", HOST_TAG: "gpu-box-1", "dagster/backfill": "bf-deploy"})
    instance.report_run_failed(run, DEAD_WORKER)
    return run.run_id


def failed_at(instance: dg.DagsterInstance, run_id: str) -> float:
    return instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)[0].timestamp


class SensorTicks:
    """The real sensor evaluated as the daemon evaluates it: its cursor carried from tick to tick."""

    def __init__(self, instance: dg.DagsterInstance):
        self.instance, self.cursor, self.messages = instance, None, []

    def tick(self) -> str:
        result = neucodec_alert_sensor(dg.build_sensor_context(instance=self.instance, cursor=self.cursor))
        assert not result.run_requests
        self.cursor = result.cursor
        self.messages.append(result.skip_reason.skip_message)
        return self.messages[-1]

    @property
    def outbox(self) -> AlertOutbox:
        return AlertOutbox.from_cursor(self.cursor)


@pytest.fixture
def ticks(pg_instance: dg.DagsterInstance, webhook: FlakyWebhook, monkeypatch: pytest.MonkeyPatch) -> SensorTicks:
    """The sensor on a fresh instance with the webhook set and its first tick (which starts its cursor) done."""
    monkeypatch.setenv(WEBHOOK_ENV, webhook.url)
    monkeypatch.delenv(UI_URL_ENV, raising=False)
    pg_instance.add_dynamic_partitions("shards", KEYS)
    ticks = SensorTicks(pg_instance)
    assert ticks.tick() == "started: runs that fail from now on are alerted"
    return ticks


def test_a_webhook_that_recovers_gets_every_alert_once_through_the_daemon(pg_instance, webhook, tmp_path,
                                                                         monkeypatch) -> None:
    from gpu_executor.launch.dagster_internals import (
        InstigatorType,
        WorkspaceFileTarget,
        create_test_daemon_workspace_context,
        execute_sensor_iteration,
        freeze_time,
    )

    # The deployment's environment as the code location loads: the URL set, so the sensor starts on.
    monkeypatch.setenv(WEBHOOK_ENV, webhook.url)
    monkeypatch.setenv(UI_URL_ENV, UI)
    monkeypatch.setenv("NEUCODEC_BUCKET", (tmp_path / "bucket").as_uri())
    monkeypatch.setenv("NEUCODEC_AUTOMATION", "off")
    monkeypatch.chdir(REPO_ROOT)
    pg_instance.add_dynamic_partitions("shards", KEYS)
    logger = logging.getLogger("test_alerts")
    clock, seen = [time.time()], []

    def daemon_tick() -> tuple[str, int]:
        """One sensor-daemon iteration, the daemon's clock one interval later; the tick's message and the posts
        that reached the webhook so far."""
        with freeze_time(clock[0]):
            list(execute_sensor_iteration(workspace, logger, None, None))
        clock[0] += TICK_SECONDS + 1
        state = next(s for s in pg_instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
                     if s.instigator_name == SENSOR_NAME)
        tick = pg_instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1)[0]
        seen.append(tick.tick_id)
        return tick.skip_reason or "", len(webhook.attempts)

    target = WorkspaceFileTarget(paths=[str(REPO_ROOT / "workspace.yaml")])
    with create_test_daemon_workspace_context(target, pg_instance) as workspace:
        assert daemon_tick()[0] == "started: runs that fail from now on are alerted"
        runs = [fail_on_broken_shards(pg_instance, KEYS[0:3], [KEYS[1]]), fail_dead_worker(pg_instance, KEYS[3]),
                fail_on_broken_shards(pg_instance, KEYS[4:6], KEYS[4:6])]
        webhook.fail_next(500, 500)
        history = [daemon_tick(), daemon_tick(), daemon_tick()]  # 500; 500; waiting (2 ticks after the 2nd failure)
        webhook.stop()  # the endpoint goes down: connection refused
        history += [daemon_tick()]
        webhook.start()  # back on the same port
        history += [daemon_tick() for _ in range(4)]  # waiting 4 ticks after the 3rd failure, then all three posted
        runs.append(fail_dead_worker(pg_instance, KEYS[6]))
        history += [daemon_tick()]  # the webhook works: a new failure goes out on the next tick
        cursor = next(s for s in pg_instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
                      if s.instigator_name == SENSOR_NAME).instigator_data.cursor
    assert len(set(seen)) == len(seen) == 10  # every iteration ticked the sensor once

    messages = [m for m, _ in history]
    assert [n for _, n in history] == [1, 2, 2, 2, 2, 2, 2, 5, 6]  # attempts at ticks 1, 2, 4 (refused), 8; 9
    first = utc_text(failed_at(pg_instance, runs[0]))
    for message in messages[:7]:
        assert message.startswith(f"3 alerts pending since {first} (the oldest failure)"), message
    assert "failed 1 post in a row" in messages[0] and "(last: HTTP 500); next attempt in 1 tick" in messages[0]
    assert "failed 2 posts in a row" in messages[1] and messages[1].endswith("next attempt in 2 ticks")
    assert messages[2].endswith("next attempt in 1 tick")
    assert "(last: ConnectionRefusedError: Connection refused); next attempt in 4 ticks" in messages[3]
    assert messages[7] == f"posted 3 alerts (runs {', '.join(runs[:3])})"
    assert messages[8] == f"posted 1 alert (runs {runs[3]})"
    assert webhook.attempts == [500, 500, 200, 200, 200, 200]
    assert [b["run_id"] for b in webhook.received] == runs  # each exactly once, in the order the runs failed
    assert not any(SECRET in m or "127.0.0.1" in m for m in messages)
    outbox = AlertOutbox.from_cursor(cursor)
    assert outbox.waiting == 0 and (outbox.posts, outbox.retried_posts, outbox.delivered_runs) == (4, 3, 4)

    # The messages of single runs: their text and fields as before, with a link to the run in the UI.
    broken, dead, both = webhook.received[:3]
    assert webhook.content_types == ["application/json"] * 4
    assert broken["type"] == "run_failure" and broken["job"] == "shard_job" and broken["status"] == "FAILURE"
    assert broken["shards"] == KEYS[0:3] and broken["backfill"] == "bf-deploy"
    assert broken["failed_shards"] == [{"shard": KEYS[1], "error": NO_TAR.format(key=KEYS[1])}]
    assert broken["error"].startswith("encode_shards: 1 of 3 shards failed") and broken["error_kind"] == NO_TAR_KIND
    assert broken["text"] == (f"neucodec run {runs[0]} (shard_job) failed; failed shards: {KEYS[1]}\n"
                              f"{broken['error']}\n{UI}/runs/{runs[0]}")
    assert broken["url"] == f"{UI}/runs/{runs[0]}"
    assert dead["job"] == "neucodec_tokens_job" and dead["shards"] == [KEYS[3]] and dead["failed_shards"] == []
    assert dead["error"] == DEAD_WORKER and (dead["gpu"], dead["host"]) == ("0", "gpu-box-1")
    assert f"; shards: {KEYS[3]}\n{DEAD_WORKER}" in dead["text"]
    assert [r["shard"] for r in both["failed_shards"]] == KEYS[4:6]


def test_a_webhook_that_stays_down_keeps_alerts_pending_bounded_then_one_digest(ticks, webhook) -> None:
    instance = ticks.instance
    webhook.fail_all(500)
    runs = [fail_dead_worker(instance, KEYS[i]) for i in range(3)]
    first = utc_text(failed_at(instance, runs[0]))
    said = [(ticks.tick(), len(runs))]
    assert len(ticks.outbox.pending) == 3 and ticks.outbox.digest is None  # few: waiting as single messages
    sizes = {}
    for i in range(3, 15):  # the failures go on while the webhook is down: 4 more runs a tick
        runs.append(fail_on_broken_shards(instance, [KEYS[i]], [KEYS[i]]) if i % 4 == 0
                    else fail_dead_worker(instance, KEYS[i]))
        if i % 4 == 2:
            said.append((ticks.tick(), len(runs)))
            sizes[len(runs)] = len(ticks.cursor)
    while ticks.outbox.tick < 40:
        said.append((ticks.tick(), len(runs)))

    # Attempts only at ticks 1, 2, 4, 8, 16 and 32 (backoff of 1, 2, 4, 8, 16, 16 ticks); every tick said so.
    assert webhook.attempts == [500] * 6 and webhook.received == []
    for message, failed in said:
        assert message.startswith(f"{failed} alerts pending since {first} (the oldest failure); the webhook failed")
    assert "failed 6 posts in a row since" in said[-1][0] and "(last: HTTP 500)" in said[-1][0]
    assert said[-1][0].endswith("next attempt in 8 ticks")  # the 7th attempt is due at tick 48
    # Past DIGEST_THRESHOLD the failures are counted in one digest: the cursor hardly grows with them.
    assert ticks.outbox.pending == [] and ticks.outbox.digest.runs == len(runs) == 15
    assert sizes[15] - sizes[11] < 100 and max(sizes.values()) < 4000, sizes

    webhook.recover()
    while not webhook.received:
        ticks.tick()
    assert ticks.outbox.tick == 48 and ticks.messages[-1] == "posted a digest of 15 failed runs"
    assert len(webhook.received) == 1  # one post for 15 runs, none lost
    digest = webhook.received[0]
    assert digest["type"] == "digest" and digest["runs"] == 15 and digest["shards"] == 15
    assert digest["error_kinds"] == {DEAD_WORKER: 12, NO_TAR_KIND: 3}
    assert [r["run_id"] for r in digest["first_runs"]] == runs[:5]
    assert digest["first_shards"] == KEYS[:10] and digest["backfills"] == {"bf-deploy": 15}
    assert digest["url"] is None and UI_URL_ENV in digest["where"] and "Runs page" in digest["where"]
    assert digest["text"].startswith(f"neucodec: 15 runs failed ({first} - ")
    assert f"  12 x {DEAD_WORKER}\n  3 x {NO_TAR_KIND}" in digest["text"]
    assert "and 10 more" in digest["text"] and "(15 in all)" in digest["text"]
    assert ticks.outbox.retried_posts == 6 and ticks.outbox.delivered_runs == 15


def test_a_burst_of_failures_becomes_one_digest_then_single_messages_again(ticks, webhook, monkeypatch) -> None:
    instance = ticks.instance
    monkeypatch.setenv(UI_URL_ENV, UI + "/")
    burst = [fail_dead_worker(instance, KEYS[i]) for i in range(DIGEST_THRESHOLD)]
    burst += [fail_on_broken_shards(instance, KEYS[10:17], KEYS[10:16], backfill="bf-other")]
    assert ticks.tick() == "posted a digest of 6 failed runs"
    assert len(webhook.received) == 1
    digest = webhook.received[0]
    assert digest["runs"] == 6 and digest["shards"] == 11 and digest["first_shards"] == KEYS[:5] + KEYS[10:15]
    assert digest["error_kinds"] == {DEAD_WORKER: 5, NO_TAR_KIND: 1}
    assert digest["backfills"] == {"bf-deploy": 5, "bf-other": 1}
    assert digest["url"] == failed_runs_url(UI) == f"{UI}/runs?q%5B%5D=status%3AFAILURE"
    assert digest["text"].endswith(f"failed runs: {UI}/runs?q%5B%5D=status%3AFAILURE")
    assert "(11 in all)" in digest["text"] and [r["run_id"] for r in digest["first_runs"]] == burst[:5]

    # Failures that go on are held until a window has passed since the digest, then sent as they fit.
    later = [fail_dead_worker(instance, KEYS[20 + i]) for i in range(2)]
    for _ in range(DIGEST_WINDOW_TICKS - 1):
        assert "failures go on: the next post waits" in ticks.tick()
    assert ticks.tick() == f"posted 2 alerts (runs {', '.join(later)})"
    assert [b["type"] for b in webhook.received] == ["digest", "run_failure", "run_failure"]
    assert webhook.received[1]["url"] == f"{UI}/runs/{later[0]}"


def test_post_timeout_a_slow_webhook_delivers_a_silent_one_stays_pending(ticks, webhook) -> None:
    instance = ticks.instance
    webhook.delay = 1.0  # slow but alive: answered well within the timeout
    slow = fail_dead_worker(instance, KEYS[0])
    assert ticks.tick() == f"posted 1 alert (runs {slow})"
    webhook.delay = 0.0

    webhook.hang()  # accepts the connection, never answers
    silent = fail_dead_worker(instance, KEYS[1])
    message = ticks.tick()
    assert f"(last: no answer within {POST_TIMEOUT_SECONDS:g} s); next attempt in 1 tick" in message
    assert message.startswith("1 alert pending since")
    webhook.release()  # the hung request ends unaccepted (503)
    wait_for("the hung post to end", lambda: len(webhook.attempts) == 2)
    assert ticks.tick() == f"posted 1 alert (runs {silent})"
    assert [b["run_id"] for b in webhook.received] == [slow, silent]
    assert webhook.attempts == [200, 503, 200]


def test_off_without_a_url_and_nothing_lost_meanwhile_nor_the_url_shown(ticks, webhook, monkeypatch, capfd) -> None:
    sensor = build_definitions(load_settings({})).resolve_sensor_def(SENSOR_NAME)
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED  # no URL when the code location loaded
    instance = ticks.instance
    monkeypatch.delenv(WEBHOOK_ENV)
    run = fail_dead_worker(instance, KEYS[0])
    cursor = ticks.cursor
    assert ticks.tick() == f"{WEBHOOK_ENV} is not set: no alert sent"
    assert ticks.cursor == cursor and webhook.attempts == []  # the failure waits in the event log

    monkeypatch.setenv(WEBHOOK_ENV, webhook.url)
    webhook.fail_next(403)
    capfd.readouterr()
    assert "(last: HTTP 403)" in ticks.tick()
    assert ticks.tick() == f"posted 1 alert (runs {run})"
    logged = capfd.readouterr().err  # the sensor's log (Dagster's handler writes to stderr)
    assert "(last: HTTP 403)" in logged and f"posted 1 alert (runs {run})" in logged
    assert SECRET not in logged and "127.0.0.1" not in logged
    assert not any(SECRET in m for m in ticks.messages)


def test_the_cursor_of_the_run_failure_sensor_it_replaced_is_continued(pg_instance, webhook, monkeypatch) -> None:
    """A deployment upgraded from Dagster's run_failure_sensor of the same name: no failure alerted twice or lost."""
    monkeypatch.setenv(WEBHOOK_ENV, webhook.url)
    pg_instance.add_dynamic_partitions("shards", KEYS)
    fail_dead_worker(pg_instance, KEYS[0])  # alerted by the old sensor before the upgrade

    @dg.run_failure_sensor(name=SENSOR_NAME)
    def previous_sensor(context) -> None:
        pass

    old_cursor = previous_sensor.evaluate_tick(dg.build_sensor_context(instance=pg_instance)).cursor
    assert old_cursor and "RunStatusSensorCursor" in old_cursor
    after_upgrade = fail_dead_worker(pg_instance, KEYS[1])
    result = neucodec_alert_sensor(dg.build_sensor_context(instance=pg_instance, cursor=old_cursor))
    assert result.skip_reason.skip_message == f"posted 1 alert (runs {after_upgrade})"
    assert [b["run_id"] for b in webhook.received] == [after_upgrade]


def test_what_waits_is_bounded_however_many_runs_fail() -> None:
    """The sensor's cursor with thousands of failures waiting, of more causes and backfills than a digest names."""
    outbox = AlertOutbox(after=0)
    sizes = {}
    for n in range(5000):
        outbox.add([{"type": "run_failure", "run_id": f"run-{n:05d}", "job": "neucodec_tokens_job",
                     "shards": [f"d/hi/shard_{n:05d}_{i}" for i in range(8)], "failed_shards": [],
                     "error_kind": f"cause {n % 40}", "failed_at": "2026-01-01 00:00:00 UTC",
                     "backfill": f"bf{n % 12}"}])
        if n + 1 in (100, 5000):
            sizes[n + 1] = len(outbox.to_cursor())
    digest = outbox.digest
    assert outbox.pending == [] and outbox.waiting == digest.runs == 5000 and digest.shards == 40_000
    assert len(digest.kinds) == DIGEST_KINDS + 1 and digest.kinds[OTHER] == 5000 * 30 // 40
    assert sum(digest.kinds.values()) == sum(digest.backfills.values()) == 5000
    assert [r["run_id"] for r in digest.first_runs] == [f"run-{n:05d}" for n in range(DIGEST_RUNS)]
    assert len(digest.first_shards) == DIGEST_SHARDS and len(digest.backfills) == DIGEST_BACKFILLS + 1
    assert sizes[5000] - sizes[100] < 100 and sizes[5000] < 4000, sizes  # only the counts grow digits
    assert AlertOutbox.from_cursor(outbox.to_cursor()) == outbox
