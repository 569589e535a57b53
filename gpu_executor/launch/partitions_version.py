"""A version of the dynamic partitions table that costs one primary-key read, kept by Postgres itself.

Why: the caching event log storage must know, on every read of the shards' keys, whether any process changed them.
An aggregate over the definition's rows (``count``, ``max(id)``, ``sum(id)``) answers that but scans every row: ~12 ms
at 100,000 shards, three times for each run the backfill daemon creates, which made run creation slow down as the
bucket grew. Here a statement-level trigger on ``dynamic_partitions`` adds one to a counter row in the same
transaction as any insert, update, delete or truncate, whoever makes it (any Dagster process, any storage class, a
hand-run SQL statement). The counter is a table row, not a sequence: a change and its bump become visible together
at commit, so a reader that saw the old counter never labels new keys with it.

The table, function and trigger are created once, idempotently and under an advisory lock (several processes start
at once), by the storage when it first touches the partitions table. Where they cannot be created (a database user
without the right to create triggers) the storage falls back to the aggregate, and says so in its log.
"""

from __future__ import annotations

import sqlalchemy as sa

VERSION_TABLE = "neucodec_dynamic_partitions_version"
_LOCK_KEY = 0x6E6575636F646563  # "neucodec": serializes the installs of concurrent processes

_INSTALL = [
    f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (id integer PRIMARY KEY CHECK (id = 1), version bigint NOT NULL)",
    f"INSERT INTO {VERSION_TABLE} (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING",
    f"""CREATE OR REPLACE FUNCTION {VERSION_TABLE}_bump() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN UPDATE {VERSION_TABLE} SET version = version + 1 WHERE id = 1; RETURN NULL; END $$""",
    f"DROP TRIGGER IF EXISTS {VERSION_TABLE}_bump ON dynamic_partitions",
    f"""CREATE TRIGGER {VERSION_TABLE}_bump AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON dynamic_partitions
        FOR EACH STATEMENT EXECUTE FUNCTION {VERSION_TABLE}_bump()""",
]

# Installed already (by this or another process): the trigger exists on the table.
_INSTALLED = sa.text("SELECT 1 FROM pg_trigger WHERE tgname = :name AND tgrelid = 'dynamic_partitions'::regclass")
_READ = sa.text(f"SELECT version FROM {VERSION_TABLE} WHERE id = 1")
_AGGREGATE = sa.text(
    "SELECT count(*), max(id), sum(id) FROM dynamic_partitions WHERE partitions_def_name = :name")


def install_trigger(conn: sa.Connection) -> None:
    """Create the counter, its function and the trigger unless present. ``conn`` is in a transaction: the advisory
    lock is held until it ends, and a failure leaves nothing half-made."""
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
    if conn.execute(_INSTALLED, {"name": f"{VERSION_TABLE}_bump"}).first() is None:
        for statement in _INSTALL:
            conn.execute(sa.text(statement))


def read_counter(conn: sa.Connection) -> int:
    """The counter: equal readings mean no change to any dynamic partition committed in between."""
    return int(conn.execute(_READ).scalar_one())


def aggregate_version(conn: sa.Connection, partitions_def_name: str) -> tuple[int, int | None, int | None]:
    """The fallback: equal readings mean the same rows of the definition (ids are never reused; ``max`` moves on any
    add, ``count`` on any delete, ``sum`` on an add committed late with a smaller id together with a delete)."""
    count, max_id, id_sum = conn.execute(_AGGREGATE, {"name": partitions_def_name}).one()
    return int(count), max_id, None if id_sum is None else int(id_sum)
