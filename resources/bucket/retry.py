"""Retry policy for bucket requests: transient failures (throttling, 5xx, dropped connections) are retried
with capped exponential backoff and full jitter, so one flaky request never costs a whole shard."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

#: S3 error codes that mean "try again later" rather than "this request is wrong".
RETRYABLE_ERROR_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
    "TooManyRequestsException", "ProvisionedThroughputExceededException", "TransactionInProgressException",
    "RequestLimitExceeded", "BandwidthLimitExceeded", "LimitExceededException", "RequestThrottled",
    "SlowDown", "EC2ThrottledException", "RequestTimeout", "RequestTimeoutException",
    "PriorRequestNotComplete", "InternalError", "ServiceUnavailable", "InternalServerError",
})
RETRYABLE_HTTP_STATUS = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry one request. ``max_attempts`` counts the first try."""

    max_attempts: int = 8
    base_delay_s: float = 0.5
    max_delay_s: float = 20.0

    def delay(self, attempt: int) -> float:
        """Full-jitter backoff before retry number ``attempt`` (1-based)."""
        return random.uniform(0, min(self.max_delay_s, self.base_delay_s * (2 ** (attempt - 1))))


def is_transient(exc: BaseException) -> bool:
    """True for failures that a later identical request may not see: throttling, 5xx, connection problems."""
    from botocore.exceptions import (
        ClientError,
        HTTPClientError,
        ResponseStreamingError,
    )
    from botocore.exceptions import (
        ConnectionError as BotoConnectionError,
    )
    from urllib3.exceptions import HTTPError as Urllib3HTTPError

    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return err.get("Code") in RETRYABLE_ERROR_CODES or status in RETRYABLE_HTTP_STATUS
    return isinstance(
        exc,
        (BotoConnectionError, HTTPClientError, ResponseStreamingError, Urllib3HTTPError,
         ConnectionError, TimeoutError),
    )


def call_with_retries(fn: Callable[[], T], policy: RetryPolicy, what: str) -> T:
    """Run ``fn`` until it succeeds, retrying transient failures per ``policy``; re-raise anything else."""
    attempt = 1
    while True:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified below
            if not is_transient(exc) or attempt >= policy.max_attempts:
                raise
            pause = policy.delay(attempt)
            log.warning("%s: transient failure (%s: %s); retry %d/%d in %.2f s", what,
                        type(exc).__name__, exc, attempt, policy.max_attempts - 1, pause)
            time.sleep(pause)
            attempt += 1
