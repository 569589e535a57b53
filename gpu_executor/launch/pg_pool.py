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
from collections.abc import Mapping
from typing import Any, Self

import sqlalchemy as sa
import sqlalchemy.pool as sa_pool

from gpu_executor.launch.dagster_internals import (
    ConfigurableClassData,
    create_pg_engine,
    get_token_provider_from_config,
    pg_url_from_config,
)


class HeldConnection:
    """Mixin for a dagster-postgres storage (listed before it): its engine swapped for ``pooled_engine`` once built,
    built from the same ``postgres_db`` config, its connection closed with the instance."""

    postgres_url: str
    _token_provider: Any
    _engine: sa.engine.Engine

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._engine.dispose()
        self._engine = pooled_engine(self.postgres_url, self._token_provider)

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]) -> Self:
        return cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
        )

    def dispose(self) -> None:
        super().dispose()  # type: ignore[misc]
        self._engine.dispose()  # the held connection closes with the instance, not at garbage collection


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
