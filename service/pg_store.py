"""Sessions on PostgreSQL: the ``SessionStore`` interface for several service replicas.

Selected by ``MOESCHED_DB_URL=postgresql://...`` (the embedded SQLite file stays the default).
The schema comes from the versioned SQL files in ``service/migrations/postgres/``, applied at
start-up in order under an advisory lock, so replicas that start together migrate once.

What makes several replicas on one database safe:

* every read-modify-write (observations, EP batches) locks its row (``SELECT ... FOR UPDATE``)
  inside one transaction, so observations sent to either replica are all counted;
* an observation may carry an id: an id seen before is not counted again (a client that
  retries after a replica died mid-request counts it exactly once);
* a re-solve runs under a lease row (``try_lease``): one replica at a time solves a session,
  and a lease whose holder died expires;
* a plan swap names the version it replaces, so the versions form one sequence.

Arrays are stored as raw blobs, as in the SQLite store: counts float64 ``[L, E]``, EP batches
int32 ``[L, E]``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Any

import numpy as np
import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool

from service.store import (
    SEEN_IDS_KEPT,
    CountsUpdate,
    EpRow,
    SessionRow,
    SessionStore,
    StoreBusy,
    StoreDamaged,
    StoreError,
    decode_ep_row,
    placement_text,
)

log = logging.getLogger("moesched.pg_store")
MIGRATIONS = "service.migrations.postgres"
_MIGRATION_LOCK = 0x6D6F6573  # pg_advisory_lock key: "moes"


def _blob(a: np.ndarray, dtype: type = np.float64) -> bytes:
    return np.ascontiguousarray(a, dtype=dtype).tobytes()


def migrations() -> list[tuple[int, str]]:
    """The versioned SQL files, ``NNNN_name.sql``, as (version, SQL) in version order."""
    out = []
    for f in resources.files(MIGRATIONS).iterdir():
        if f.name.endswith(".sql"):
            out.append((int(f.name.split("_", 1)[0]), f.read_text()))
    return sorted(out)


class PostgresStore(SessionStore):
    """PostgreSQL through a small psycopg connection pool.

    Args:
        url: a libpq URL, ``postgresql://user@host:port/db``.
        busy_timeout_s: how long a statement waits for a row lock before ``StoreBusy``.
        pool_size: connections kept open.
    """

    def __init__(self, url: str, busy_timeout_s: float = 2.0, pool_size: int = 4) -> None:
        self.url = url
        self.busy_timeout_s = busy_timeout_s
        self._where = url.split("@")[-1]  # no credentials in messages
        lock_ms = int(busy_timeout_s * 1000)
        try:
            self.pool = ConnectionPool(
                url,
                min_size=1,
                max_size=pool_size,
                kwargs={"autocommit": True, "options": f"-c lock_timeout={lock_ms}"},
                open=True,
                timeout=max(5.0, busy_timeout_s),
            )
            self.pool.wait(timeout=10.0)
            self.found = self._migrate()
        except (psycopg.Error, OSError) as exc:
            raise StoreError(f"{self._where}: cannot open the session database: {exc}") from None
        log.info("session store %s: %s", self._where, self.found)

    # ------------------------------------------------------------------ plumbing

    def _migrate(self) -> str:
        """Apply the migrations this database has not seen; what was found, in words."""
        with self.pool.connection() as con:
            con.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
            try:
                con.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                    "applied_s DOUBLE PRECISION NOT NULL)"
                )
                done = {r[0] for r in con.execute("SELECT version FROM schema_migrations")}
                applied = []
                for version, sql in migrations():
                    if version in done:
                        continue
                    with con.transaction():
                        con.execute(sql)
                        con.execute(
                            "INSERT INTO schema_migrations VALUES (%s, %s)", (version, time.time())
                        )
                    applied.append(version)
            finally:
                con.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
        sessions, eps = self.count()
        how = f"applied migrations {applied}" if applied else "schema up to date"
        return f"{how}; {sessions} sessions, {eps} EP sessions"

    @contextmanager
    def _tx(self) -> Iterator[psycopg.Connection[Any]]:
        """One transaction on a pooled connection; lock waits past the timeout: StoreBusy."""
        try:
            with self.pool.connection() as con, con.transaction():
                yield con
        except pg_errors.LockNotAvailable:
            raise StoreBusy(
                f"{self._where}: a session row stayed locked {self.busy_timeout_s} s"
            ) from None
        except psycopg.OperationalError as exc:
            raise StoreError(f"{self._where}: {exc}") from None

    def _read(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        with self._tx() as con:
            return con.execute(sql, args).fetchall()

    # ------------------------------------------------------------------ sessions

    def _row(self, r: tuple[Any, ...]) -> SessionRow:
        sid, spec, num_layers, num_experts, counts, plan_counts, plan, version, nobs = r
        shape = (num_layers, num_experts)
        try:
            return SessionRow(
                sid,
                spec,
                np.frombuffer(counts, dtype=np.float64).reshape(shape).copy(),
                np.frombuffer(plan_counts, dtype=np.float64).reshape(shape).copy(),
                plan,
                version,
                nobs,
            )
        except (ValueError, TypeError) as exc:
            raise StoreDamaged(f"{self._where}: session {sid} does not decode: {exc}") from None

    _SESSION_COLUMNS = (
        "id, spec, num_layers, num_experts, counts, plan_counts, plan, version, num_observations"
    )

    def create(self, row: SessionRow) -> None:
        with self._tx() as con:
            con.execute(
                f"INSERT INTO sessions ({self._SESSION_COLUMNS}, touched_s) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    row.id, row.spec_json, row.counts.shape[0], row.counts.shape[1],
                    _blob(row.counts), _blob(row.plan_counts), row.plan_json, row.version,
                    row.num_observations, time.time(),
                ),
            )  # fmt: skip

    def get(self, session_id: str) -> SessionRow | None:
        rows = self._read(
            f"SELECT {self._SESSION_COLUMNS} FROM sessions WHERE id = %s", (session_id,)
        )
        return self._row(rows[0]) if rows else None

    def observe(
        self,
        session_id: str,
        hist: np.ndarray,
        decay: float,
        cap: float,
        observation_id: str | None = None,
    ) -> CountsUpdate | None:
        with self._tx() as con:
            r = con.execute(
                "SELECT counts, num_layers, num_experts, num_observations, plan_counts, version "
                "FROM sessions WHERE id = %s FOR UPDATE",
                (session_id,),
            ).fetchone()
            if r is None:
                return None
            blob, num_layers, num_experts, nobs, plan_blob, version = r
            shape = (num_layers, num_experts)
            try:
                old = np.frombuffer(blob, dtype=np.float64).reshape(shape)
                plan_counts = np.frombuffer(plan_blob, dtype=np.float64).reshape(shape).copy()
            except ValueError as exc:
                raise StoreDamaged(f"{self._where}: session {session_id}: {exc}") from None
            if observation_id is not None:
                fresh = con.execute(
                    "INSERT INTO observations_seen VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                    (session_id, observation_id, nobs + 1),
                ).rowcount
                if not fresh:  # a retry of one already counted
                    return CountsUpdate(old.copy(), nobs, plan_counts, version, counted=False)
                con.execute(
                    "DELETE FROM observations_seen WHERE session_id = %s AND seq <= %s",
                    (session_id, nobs + 1 - SEEN_IDS_KEPT),
                )
            counts = np.minimum(old * decay + hist, cap)
            con.execute(
                "UPDATE sessions SET counts = %s, num_observations = %s, touched_s = %s "
                "WHERE id = %s",
                (_blob(counts), nobs + 1, time.time(), session_id),
            )
            return CountsUpdate(counts, nobs + 1, plan_counts, version, counted=True)

    def swap_plan(self, session_id: str, plan_json: str, plan_counts: np.ndarray) -> int | None:
        with self._tx() as con:
            r = con.execute(
                "UPDATE sessions SET plan = %s, plan_counts = %s, version = version + 1 "
                "WHERE id = %s RETURNING version",
                (plan_json, _blob(plan_counts), session_id),
            ).fetchone()
            return None if r is None else int(r[0])

    def try_lease(self, session_id: str, owner: str, seconds: float) -> bool:
        now = time.time()
        with self._tx() as con:
            return (
                con.execute(
                    "UPDATE sessions SET lease_owner = %s, lease_until_s = %s WHERE id = %s "
                    "AND (lease_until_s IS NULL OR lease_until_s < %s OR lease_owner = %s)",
                    (owner, now + seconds, session_id, now, owner),
                ).rowcount
                > 0
            )

    def release_lease(self, session_id: str, owner: str) -> None:
        with self._tx() as con:
            con.execute(
                "UPDATE sessions SET lease_owner = NULL, lease_until_s = NULL "
                "WHERE id = %s AND lease_owner = %s",
                (session_id, owner),
            )

    def delete(self, session_id: str) -> bool:
        with self._tx() as con:
            return con.execute("DELETE FROM sessions WHERE id = %s", (session_id,)).rowcount > 0

    # ------------------------------------------------------------------ EP sessions

    def ep_create(
        self,
        session_id: str,
        spec_json: str,
        placement: np.ndarray,
        placement_json: bytes | None = None,
    ) -> None:
        with self._tx() as con:
            con.execute(
                "INSERT INTO ep_sessions (id, spec, placement, version, num_batches, moved_last, "
                "touched_s) VALUES (%s, %s, %s, 1, 0, 0, %s)",
                (session_id, spec_json, placement_text(placement, placement_json), time.time()),
            )

    def ep_get(self, session_id: str, shape: tuple[int, int]) -> EpRow | None:
        with self._tx() as con:
            r = con.execute(
                "SELECT id, spec, placement, version, num_batches, moved_last FROM ep_sessions "
                "WHERE id = %s",
                (session_id,),
            ).fetchone()
            if r is None:
                return None
            hists = con.execute(
                "SELECT hist FROM ep_batches WHERE session_id = %s ORDER BY seq", (session_id,)
            ).fetchall()
        return decode_ep_row(self._where, tuple(r), [bytes(h) for (h,) in hists], shape)

    def ep_spec(self, session_id: str) -> str | None:
        rows = self._read("SELECT spec FROM ep_sessions WHERE id = %s", (session_id,))
        return str(rows[0][0]) if rows else None

    def ep_append(self, session_id: str, seq: int, hist: np.ndarray, keep: int) -> bool:
        with self._tx() as con:
            updated = con.execute(
                "UPDATE ep_sessions SET num_batches = %s, touched_s = %s WHERE id = %s",
                (seq, time.time(), session_id),
            ).rowcount
            if not updated:
                return False
            con.execute(
                "INSERT INTO ep_batches VALUES (%s, %s, %s) ON CONFLICT (session_id, seq) "
                "DO UPDATE SET hist = EXCLUDED.hist",
                (session_id, seq, _blob(hist, np.int32)),
            )
            con.execute(
                "DELETE FROM ep_batches WHERE session_id = %s AND seq <= %s",
                (session_id, seq - keep),
            )
            return True

    def ep_swap(
        self,
        session_id: str,
        placement: np.ndarray,
        version: int,
        moved: int,
        placement_json: bytes | None = None,
    ) -> bool:
        with self._tx() as con:
            return (
                con.execute(
                    "UPDATE ep_sessions SET placement = %s, version = %s, moved_last = %s "
                    "WHERE id = %s",
                    (placement_text(placement, placement_json), version, moved, session_id),
                ).rowcount
                > 0
            )

    def ep_delete(self, session_id: str) -> bool:
        with self._tx() as con:
            return con.execute("DELETE FROM ep_sessions WHERE id = %s", (session_id,)).rowcount > 0

    # ------------------------------------------------------------------ housekeeping

    def expire(self, idle_before_s: float) -> tuple[list[str], list[str]]:
        with self._tx() as con:
            gone = [
                r[0]
                for r in con.execute(
                    "DELETE FROM sessions WHERE touched_s < %s RETURNING id", (idle_before_s,)
                )
            ]
            ep_gone = [
                r[0]
                for r in con.execute(
                    "DELETE FROM ep_sessions WHERE touched_s < %s RETURNING id", (idle_before_s,)
                )
            ]
        return gone, ep_gone

    def count(self) -> tuple[int, int]:
        rows = self._read(
            "SELECT (SELECT count(*) FROM sessions), (SELECT count(*) FROM ep_sessions)"
        )
        return int(rows[0][0]), int(rows[0][1])

    def db_bytes(self) -> int:
        return int(self._read("SELECT pg_database_size(current_database())")[0][0])

    def close(self) -> None:
        """Return every connection (PostgreSQL makes each commit durable itself)."""
        self.pool.close()
