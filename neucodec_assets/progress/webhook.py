"""One JSON post to a webhook whose URL is a secret (Slack's carries its token): errors name the HTTP status or what
went wrong, never the URL."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

#: How long one post may take; a tick makes at most a few posts (alert_outbox.DIGEST_THRESHOLD).
POST_TIMEOUT_SECONDS = 5.0


class WebhookError(RuntimeError):
    """A post that did not succeed; its text never contains the URL."""


def post_json(url: str, body: dict, *, timeout: float = POST_TIMEOUT_SECONDS) -> int:
    """POST ``body`` as JSON once; returns the HTTP status, raises WebhookError. Retrying is the caller's business
    (the alert sensor retries on later ticks)."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - a configured https URL
            return response.status
    except urllib.error.HTTPError as exc:
        raise WebhookError(f"HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError):
            raise WebhookError(f"no answer within {timeout:g} s") from None
        strerror = getattr(reason, "strerror", None)  # "Connection refused"; str() of some errors holds the host
        raise WebhookError(f"{type(reason).__name__}: {strerror}" if strerror else type(reason).__name__) from None
