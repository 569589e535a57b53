"""One Postgres connection held per process for the platform's Dagster storages.

Why: dagster-postgres's storages open a new connection for every statement (NullPool). The backfill daemon made ~47
connections per run it created, half its time on a loaded host, and 200 run workers each opening and closing
connections all day is what a PgBouncer in front of Postgres is usually added for. Here each storage keeps one
connection (SQLAlchemy's QueuePool of size 1; more are opened only while several threads use it at once and closed on
return), pre-pinged so a restarted Postgres costs one reconnect, recycled hourly. A connection is never used across a
fork: a forked child drops the pool it inherited without closing its sockets (``engine.dispose(close=False)`` at
fork, SQLAlchemy's documented recipe; a pre-ping would otherwise go out on the parent's socket before any checkout
hook runs), and a checkout hook still compares process ids. Behind PgBouncer in transaction mode the held connection
is a client connection only (deploy/README.md).
"""

from __future__ import annotations

import os
import weakref
from typing import Any

import sqlalchemy as sa
import sqlalchemy.pool as sa_pool

from gpu_executor.launch.dagster_internals import create_pg_engine


def pooled_engine(postgres_url: str, token_provider: Any = None) -> sa.engine.Engine:
    """An AUTOCOMMIT engine holding one connection per process; connections from a parent process are dropped."""
    engine = create_pg_engine(postgres_url, token_provider, isolation_level="AUTOCOMMIT",
                              poolclass=sa_pool.QueuePool, pool_size=1, max_overflow=-1, pool_pre_ping=True,
                              pool_recycle=3600)

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, record: Any) -> None:
        record.info["pid"] = os.getpid()

    @sa.event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        if record.info.get("pid") != os.getpid():
            record.dbapi_connection = proxy.dbapi_connection = None
            raise sa.exc.DisconnectionError("connection opened in another process; reconnecting")

    _ENGINES.add(engine)
    return engine


# The engines of this process, for the fork hook (weakly: a disposed storage's engine is not kept alive by it).
_ENGINES: weakref.WeakSet[sa.engine.Engine] = weakref.WeakSet()


def _forget_in_child() -> None:
    for engine in list(_ENGINES):
        engine.dispose(close=False)  # the parent's sockets stay the parent's


os.register_at_fork(after_in_child=_forget_in_child)
