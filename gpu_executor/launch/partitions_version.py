"""A version of the dynamic partitions table that costs one primary-key read, kept by Postgres itself.

Why: the caching event log storage must know, on every read of the shards' keys, whether any process changed them.
An aggregate over the definition's rows (``count``, ``max(id)``, ``sum(id)``) answers that but scans every row: ~12 ms
at 100,000 shards, three times for each run the backfill daemon creates, which made run creation slow down as the
bucket grew. Here a statement-level trigger on ``dynamic_partitions`` adds one to a counter row in the same
transaction as any insert, update, delete or truncate, whoever makes it (any Dagster process, any storage class, a
hand-run SQL statement). The counter is a table row, not a sequence: a change and its bump become visible together
at commit, so a reader that saw the old counter never labels new keys with it.

What could make a counter lie is taken into the reading: the counter table's identity (a table dropped and made again
has a new oid), a row made again starts at the clock in microseconds (above any count it could repeat), a trigger
(re)created bumps the counter (changes made while it was missing were not counted), and a reading taken while the
trigger is missing or disabled is no version at all (the storage revalidates that read with the aggregate).

The table, function and trigger are made sure of by every process when it first touches the partitions table,
idempotently and under an advisory lock (several processes start at once). Where they cannot be created (a database
user without the right to create triggers) the storage falls back to the aggregate and says so in its log.
``UNINSTALL`` is the SQL that removes them.
"""

from __future__ import annotations

from collections.abc import Hashable

import sqlalchemy as sa

VERSION_TABLE = "neucodec_dynamic_partitions_version"
TRIGGER = f"{VERSION_TABLE}_bump"
_LOCK_KEY = 0x6E6575636F646563  # "neucodec": serializes the installs of concurrent processes

# Run by every process when it first touches the partitions (idempotent; cheap once done): the counter and its row
# are made again if someone removed them, since the trigger would otherwise fail every writer's statement.
_COUNTER = [
    f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (id integer PRIMARY KEY CHECK (id = 1), version bigint NOT NULL)",
    f"""INSERT INTO {VERSION_TABLE} (id, version)
        VALUES (1, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint) ON CONFLICT (id) DO NOTHING""",
]
# Only where the trigger is missing or disabled. The function keeps the search path it was created with, so a writer
# whose search path differs (another schema first, a DBA's session) still finds the counter.
_TRIGGER = [
    f"""CREATE OR REPLACE FUNCTION {TRIGGER}() RETURNS trigger LANGUAGE plpgsql
        SET search_path FROM CURRENT AS $$
        BEGIN UPDATE {VERSION_TABLE} SET version = version + 1 WHERE id = 1; RETURN NULL; END $$""",
    f"DROP TRIGGER IF EXISTS {TRIGGER} ON dynamic_partitions",
    f"""CREATE TRIGGER {TRIGGER} AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON dynamic_partitions
        FOR EACH STATEMENT EXECUTE FUNCTION {TRIGGER}()""",
    f"UPDATE {VERSION_TABLE} SET version = version + 1 WHERE id = 1",
]
# Removing it all (the storage then falls back to the aggregate; run as the tables' owner, trigger first):
UNINSTALL = (f"DROP TRIGGER IF EXISTS {TRIGGER} ON dynamic_partitions; DROP FUNCTION IF EXISTS {TRIGGER}(); "
             f"DROP TABLE IF EXISTS {VERSION_TABLE};")

_ACTIVE = (f"EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'dynamic_partitions'::regclass "
           f"AND tgname = '{TRIGGER}' AND tgenabled <> 'D')")
_READ = sa.text(f"SELECT tableoid::bigint, version, {_ACTIVE} FROM {VERSION_TABLE} WHERE id = 1")
_AGGREGATE = sa.text(
    "SELECT count(*), max(id), sum(id) FROM dynamic_partitions WHERE partitions_def_name = :name")


def install_trigger(conn: sa.Connection) -> None:
    """Make sure the counter, its row, its function and an enabled trigger exist. ``conn`` is in a transaction: the
    advisory lock is held until it ends, and a failure leaves nothing half-made."""
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
    for statement in _COUNTER:
        conn.execute(sa.text(statement))
    if not conn.execute(sa.text(f"SELECT {_ACTIVE}")).scalar_one():
        for statement in _TRIGGER:
            conn.execute(sa.text(statement))


def read_counter(conn: sa.Connection) -> Hashable | None:
    """The counter with its table's identity: equal readings mean no change to any dynamic partition committed in
    between. None where the counter cannot vouch for that (its row or its trigger missing or disabled)."""
    row = conn.execute(_READ).first()
    if row is None or not row[2]:
        return None
    return int(row[0]), int(row[1])


def aggregate_version(conn: sa.Connection, partitions_def_name: str) -> tuple[int, int | None, int | None]:
    """The fallback: ids are never reused, so ``max`` moves on any add and ``count`` on any delete; ``sum`` catches a
    delete together with an add committed late with a smaller id (only changes whose id sums cancel exactly escape)."""
    count, max_id, id_sum = conn.execute(_AGGREGATE, {"name": partitions_def_name}).one()
    return int(count), max_id, None if id_sum is None else int(id_sum)
