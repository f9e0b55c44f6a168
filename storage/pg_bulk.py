"""PostgreSQL's bulk write of task runs: COPY into a staging table, then one merging INSERT ... SELECT.

executemany of the merging upsert (even pipelined) costs PostgreSQL a parse-bind-execute per row
and psycopg a round of parameter adaptation per row; COPY streams the batch's rows in one
command, and a single ``INSERT INTO task_runs SELECT ... FROM staging ON CONFLICT DO UPDATE``
merges them with the very SET clause of storage.runs' upsert (``excluded`` is the staged row), so
the SQL twin of storage.merge.merge_run is the one merge, whichever path wrote the row.

- The staging table is TEMPORARY (private to the connection: several daemons on one server never
  see each other's rows), made if missing at each write (a refused batch's rollback takes it
  along) and emptied after each merge.
- The INSERT is an ordinary row-level insert-or-update: triggers on task_runs fire for every row.
- Rows are merged in task_id order, so concurrent writers take row locks in the same order and
  wait for each other instead of deadlocking; ON CONFLICT re-reads the committed row it waited for.
- COPY has no bound-parameter limit (65,535 per statement on the wire); a batch is still staged
  and merged at most ``STAGE_ROWS`` rows per statement, which bounds each statement's work and
  memory on the server.
"""
from __future__ import annotations

import functools
from typing import Iterable

from sqlalchemy import Connection

STAGING = "pg_temp.taskmon_runs_staging"  # pg_temp: never a table of the schema
STAGE_ROWS = 8192  # rows per COPY + INSERT ... SELECT (a batch is one transaction of such steps)
_TYPES = "taskmon_runs_staging_types"  # key in the pooled connection's info: the staged columns' type oids


@functools.lru_cache(maxsize=4)
def merge_from_staging_sql(upsert_sql: str, names: tuple[str, ...]) -> str:
    """The merging upsert (``INSERT ... VALUES (..) ON CONFLICT ... DO UPDATE SET ...``) reading the staging table."""
    head, sep, tail = upsert_sql.partition(" VALUES (")
    _, on, rest = tail.partition(") ON CONFLICT ")
    if not sep or not on or "%(" in rest or "%s" in rest:
        raise RuntimeError("unexpected shape of the task_runs upsert")
    cols = ", ".join(names)
    # ORDER BY: row locks in key order (see the module's docstring).
    return f"{head} SELECT {cols} FROM {STAGING} ORDER BY task_id ON CONFLICT {rest}"


def _staging(cursor, info: dict, names: tuple[str, ...]) -> list[int]:
    """Create the staging table if this connection has none; the type oids of ``names`` in it.

    Every call: a transaction that created it and then rolled back (a refused batch) took it along.
    LIKE: the same types and limits as task_runs, so a value the table would refuse is refused here.
    """
    cursor.execute(f"CREATE TEMPORARY TABLE IF NOT EXISTS {STAGING} (LIKE task_runs INCLUDING DEFAULTS) "
                   "ON COMMIT DELETE ROWS")
    oids = info.get(_TYPES)
    if oids is None:
        cursor.execute(f"SELECT attname, atttypid FROM pg_attribute WHERE attrelid = '{STAGING}'::regclass "
                       "AND attnum > 0 AND NOT attisdropped")
        by_name = dict(cursor.fetchall())
        oids = info[_TYPES] = [int(by_name[n]) for n in names]
    return oids


def copy_merge(conn: Connection, upsert_sql: str, names: tuple[str, ...], key_at: int | str,
               chunks: Iterable[list]) -> None:
    """Stage ``chunks`` (lists of rows' parameters: dicts keyed by ``names``, or lists in that order) and merge them.

    Runs in ``conn``'s transaction. psycopg's errors come out as SQLAlchemy's (OperationalError,
    DataError, ...), as from any other statement, and a lost connection is invalidated.
    """
    import psycopg  # here: only PostgreSQL's writer needs it

    merge = merge_from_staging_sql(upsert_sql, names)
    copy_sql = f"COPY {STAGING} ({', '.join(names)}) FROM STDIN (FORMAT BINARY)"
    cursor = conn.connection.driver_connection.cursor()
    statement = "CREATE TEMPORARY TABLE"
    try:
        # The info of the pooled connection: it lives as long as the DBAPI connection.
        oids = _staging(cursor, conn.connection.info, names)
        groups = _groups(chunks, STAGE_ROWS, key_at)
        group = next(groups, None)
        while group is not None:
            statement = copy_sql
            with cursor.copy(copy_sql) as copy:
                copy.set_types(oids)  # binary: no text formatting and parsing of every value
                for values in group:
                    copy.write_row(values.values() if isinstance(values, dict) else values)
            statement = merge
            cursor.execute(merge)
            # Emptied now, not at commit: the transaction may stage more (another call, the next group).
            statement = f"TRUNCATE {STAGING}"
            cursor.execute(statement)
            group = next(groups, None)
    except psycopg.Error as exc:
        raise _translated(conn, cursor, statement, exc) from exc
    finally:
        cursor.close()


def _groups(chunks: Iterable[list], most: int, key_at: int | str):
    """The rows of ``chunks``, in order, in lists of at most ``most`` rows with no task_id twice.

    One INSERT ... ON CONFLICT cannot update a row twice; the writer's batches hold one row per
    task, but a caller of storage.runs.upsert_runs may pass a task twice: its second row then
    starts the next group, merged after the first, as executemany would.
    """
    group: list = []
    keys: set = set()
    for params in chunks:  # unpickled one chunk at a time
        for values in params:
            key = values[key_at]
            if len(group) >= most or key in keys:
                yield group
                group, keys = [], set()
            group.append(values)
            keys.add(key)
    if group:
        yield group


def _translated(conn: Connection, cursor, statement: str, exc) -> Exception:
    """The SQLAlchemy error for a psycopg one, as SQLAlchemy raises it for its own statements."""
    import psycopg
    from sqlalchemy.exc import DBAPIError

    disconnect = conn.dialect.is_disconnect(exc, conn.connection.dbapi_connection, cursor)
    if disconnect:
        conn.invalidate(exc)
    return DBAPIError.instance(statement, None, exc, psycopg.Error, connection_invalidated=disconnect,
                               dialect=conn.dialect)
