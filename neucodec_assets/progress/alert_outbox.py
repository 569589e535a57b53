"""The alert sensor's memory, kept as its cursor: where it is in the run-failure events, the alerts not delivered yet,
and when to try the webhook again. The daemon stores the cursor after every tick, so an alert whose post failed stays
here until a post succeeds: nothing but a delivered post takes an alert out.

The policy: one message per failed run, at most DIGEST_THRESHOLD of them per window; more failures than that become
one digest, and while failures go on the next post (digest or messages) waits until a window has passed since the
last digest. Time is counted in the sensor's ticks: the sensor does nothing between ticks, and counting them makes the
backoff and the window the same on every machine and in every test.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from neucodec_assets.progress.alert_messages import Digest, plural, utc_text
from neucodec_assets.progress.webhook import WebhookError

#: The sensor's interval: the length of a tick.
TICK_SECONDS = 30
#: At most this many single-run messages per window; more failures than that become one digest.
DIGEST_THRESHOLD = 5
#: The window, and the least time between two digests (10 ticks: 5 minutes at 30 s).
DIGEST_WINDOW_TICKS = 10
#: After the n-th failed post in a row, the next one waits 2**(n-1) ticks, at most this many (8 minutes at 30 s).
MAX_BACKOFF_TICKS = 16


@dataclass
class AlertOutbox:
    """What the sensor carries from tick to tick (its cursor). Bounded: at most DIGEST_THRESHOLD messages wait one
    by one; beyond that every waiting failure is folded into one Digest, whose size does not grow with its runs."""

    after: int  # storage id of the last run-failure event read
    tick: int = 0
    pending: list[dict] = field(default_factory=list)  # single-run messages not delivered yet, oldest first
    digest: Digest | None = None  # failed runs waiting for one digest post
    single_ticks: list[int] = field(default_factory=list)  # the tick of each single-run message in the window
    last_digest_tick: int | None = None
    failed_posts: int = 0  # failed posts in a row
    next_attempt_tick: int = 0
    failing_since: float | None = None
    last_error: str | None = None
    # Totals since the sensor started.
    delivered_runs: int = 0
    posts: int = 0
    retried_posts: int = 0  # posts made after a failed one (failed again or delivered)

    # -- the cursor ----------------------------------------------------------------------------------------------
    def to_cursor(self) -> str:
        data = {**self.__dict__, "digest": self.digest.to_dict() if self.digest is not None else None}
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_cursor(cls, cursor: str) -> AlertOutbox:
        data = json.loads(cursor)
        if "record_id" in data:  # the cursor of Dagster's run_failure_sensor, which this sensor replaced
            return cls(after=int(data["record_id"]))
        digest = data.pop("digest")
        return cls(**data, digest=Digest.from_dict(digest) if digest is not None else None)

    # -- a tick --------------------------------------------------------------------------------------------------
    @property
    def waiting(self) -> int:
        """Failed runs not alerted yet."""
        return len(self.pending) + (self.digest.runs if self.digest is not None else 0)

    def begin_tick(self) -> None:
        self.tick += 1
        self.single_ticks = [t for t in self.single_ticks if t > self.tick - DIGEST_WINDOW_TICKS]

    def add(self, alerts: list[dict]) -> None:
        """New failed runs, oldest first. More than DIGEST_THRESHOLD waiting: all of them go into the digest."""
        self.pending += alerts
        if self.digest is not None or len(self.pending) > DIGEST_THRESHOLD:
            self._fold()

    def _fold(self) -> None:
        self.digest = self.digest or Digest()
        for alert in self.pending:
            self.digest.add(alert)
        self.pending = []

    def deliver(self, post: Callable[[dict], object], ui_url: str | None, *, reading_backlog: bool = False) -> str:
        """Posts what is due (``post`` raises WebhookError when a post fails) and says what happened. With
        ``reading_backlog`` (more failures wait to be read) a digest waits for the next tick, to count them too."""
        if not self.waiting:
            return "no failed run to alert"
        if self.tick < self.next_attempt_tick:
            return self._pending_text(f"next attempt in {plural(self.next_attempt_tick - self.tick, 'tick')}")
        storm_wait = 0 if self.last_digest_tick is None else self.last_digest_tick + DIGEST_WINDOW_TICKS - self.tick
        if self.digest is None and len(self.single_ticks) + len(self.pending) > DIGEST_THRESHOLD:
            self._fold()  # the window's share of single messages is used up
        if storm_wait > 0:
            return self._pending_text(f"failures go on: the next post waits until {plural(DIGEST_WINDOW_TICKS, 'tick')}"
                                      f" after the last digest, in {plural(storm_wait, 'tick')}")
        if self.digest is not None and reading_backlog:
            return self._pending_text("more failures are read before the digest is posted")
        delivered: list[str] = []
        try:
            return self._post_due(post, ui_url, delivered)
        except WebhookError as exc:
            self._post_failed(str(exc))
            done = f"posted {plural(len(delivered), 'alert')} (runs {', '.join(delivered)}); " if delivered else ""
            return done + self._pending_text(f"next attempt in {plural(self.next_attempt_tick - self.tick, 'tick')}")

    def _post_due(self, post: Callable[[dict], object], ui_url: str | None, delivered: list[str]) -> str:
        if self.digest is not None:
            runs = self.digest.runs
            why = f"more than {DIGEST_THRESHOLD} failed within {DIGEST_WINDOW_TICKS * TICK_SECONDS // 60} minutes"
            self._post(post, self.digest.message(ui_url, why), runs)
            self.digest, self.last_digest_tick = None, self.tick
            return f"posted a digest of {plural(runs, 'failed run')}"
        while self.pending:
            self._post(post, self.pending[0], 1)
            self.single_ticks.append(self.tick)
            delivered.append(self.pending.pop(0)["run_id"])
        return f"posted {plural(len(delivered), 'alert')} (runs {', '.join(delivered)})"

    def _post(self, post: Callable[[dict], object], body: dict, runs: int) -> None:
        retry = self.failed_posts > 0
        post(body)
        self.posts += 1
        self.retried_posts += retry
        self.delivered_runs += runs
        self.failed_posts, self.next_attempt_tick, self.failing_since, self.last_error = 0, 0, None, None

    def _post_failed(self, error: str) -> None:
        self.retried_posts += self.failed_posts > 0
        self.failed_posts += 1
        self.next_attempt_tick = self.tick + min(2 ** (self.failed_posts - 1), MAX_BACKOFF_TICKS)
        self.failing_since = self.failing_since or time.time()
        self.last_error = error

    def _pending_text(self, next_step: str) -> str:
        oldest = self.pending[0]["failed_at"] if self.pending else self.digest and self.digest.first_failure_at
        text = f"{plural(self.waiting, 'alert')} pending since {oldest} (the oldest failure)"
        if self.failed_posts:
            text += (f"; the webhook failed {plural(self.failed_posts, 'post')} in a row since "
                     f"{utc_text(self.failing_since)} (last: {self.last_error})")  # type: ignore[arg-type]
        return f"{text}; {next_step}"
