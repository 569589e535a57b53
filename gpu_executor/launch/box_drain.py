"""Telling a box to stop taking runs, through the broker: drain requests, and the queue lengths an idle box checks.

`request_drain(client, box)` sets a Redis key (`neucodec:drain:<box>`, holding the broker time of the request) that
`gpu-worker` polls; the box then drains as on SIGTERM (running runs finish, none is taken) and exits 0. A key is
honoured only by a box started before the request, so a box relaunched under the same name on new code is not
drained by the request that retired its predecessor. A plain key rather than Celery's remote-control `shutdown`: it
is not lost when nobody listens at that moment (a box still starting, a worker between restarts) and it names a
box, not each of its workers. No torch and no Dagster here.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

from gpu_executor.launch.worker_beats import KEEP_SECONDS, broker_now

DRAIN_KEY = "neucodec:drain:{box}"


def request_drain(client: redis.Redis, box: str) -> float:
    """Ask box `box` to drain and exit; returns the request's broker time. Expires after an hour unanswered."""
    now = broker_now(client)
    client.set(DRAIN_KEY.format(box=box), repr(now), ex=int(KEEP_SECONDS))
    return now


def drain_requested(client: redis.Redis, box: str, started_at: float) -> bool:
    """True once, for a box started at broker time `started_at`, when a drain was requested after it started."""
    key = DRAIN_KEY.format(box=box)
    value = client.get(key)
    if value is None:
        return False
    try:
        requested = float(value)
    except ValueError:
        requested = started_at
    if requested < started_at:
        return False
    client.delete(key)
    return True


def queue_lengths(broker: str, queues: Sequence[str]) -> dict[str, int]:
    """Messages waiting in each queue, as the broker counts them (Redis: every priority list; RabbitMQ: a passive
    queue_declare). A queue the broker does not know yet holds nothing."""
    from kombu import Connection
    from kombu.exceptions import ChannelError, OperationalError

    out: dict[str, int] = {}
    with Connection(broker, connect_timeout=10) as conn:
        for name in dict.fromkeys(queues):
            channel = conn.channel()
            try:
                out[name] = int(channel.queue_declare(queue=name, passive=True).message_count)
            except ChannelError:
                out[name] = 0
            except OperationalError:
                raise
            except Exception as exc:  # amqp's NotFound is a ChannelError subclass; anything else is a real error
                if "NOT_FOUND" in str(exc):
                    out[name] = 0
                else:
                    raise
            finally:
                try:
                    channel.close()
                except Exception:
                    pass
    return out
