"""Session persistence behind one small interface; SQLite (WAL) by default.

A session row holds its spec (JSON), the running counts and the counts its current plan was
solved for (float64 blobs ``[num_layers, num_experts]``), the plan (JSON), its version and the
number of observations. Every observation is committed before it is acknowledged; WAL mode
keeps a commit durable across a killed process, and a plan swap is one transaction, so a
reader sees the old plan or the new one, never half of one.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np


@dataclass
class SessionRow:
    """One session as stored."""

    id: str
    spec_json: str
    counts: np.ndarray  # [num_layers, num_experts] float64, decayed running counts
    plan_counts: np.ndarray  # the counts the current plan was solved for
    plan_json: str | None
    version: int
    num_observations: int


class StoreError(Exception):
    """The store cannot be opened or used (corrupt, locked, not a database)."""


class SessionStore(Protocol):
    """What the service needs from a store; a server database can implement it later."""

    def create(self, row: SessionRow) -> None: ...
    def get(self, session_id: str) -> SessionRow | None: ...
    def add_counts(
        self, session_id: str, hist: np.ndarray, decay: float
    ) -> tuple[np.ndarray, int] | None: ...
    def swap_plan(self, session_id: str, plan_json: str, plan_counts: np.ndarray) -> int | None: ...
    def delete(self, session_id: str) -> bool: ...
    def count(self) -> int: ...


def _blob(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a, dtype=np.float64).tobytes()


class SQLiteStore:
    """SQLite, one connection per thread, WAL journal; safe for the server's threads."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self._local = threading.local()
        self._write = threading.Lock()  # one writer at a time keeps read-modify-write atomic
        try:
            con = self._con()
            con.execute("PRAGMA journal_mode=WAL")
            con.execute(
                "CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, spec TEXT NOT NULL, "
                "num_layers INTEGER NOT NULL, num_experts INTEGER NOT NULL, counts BLOB NOT NULL, "
                "plan_counts BLOB NOT NULL, plan TEXT, version INTEGER NOT NULL, "
                "num_observations INTEGER NOT NULL)"
            )
            con.execute(
                "CREATE TABLE IF NOT EXISTS ep_sessions (id TEXT PRIMARY KEY, spec TEXT NOT NULL, "
                "placement TEXT NOT NULL, window BLOB NOT NULL, version INTEGER NOT NULL, "
                "num_batches INTEGER NOT NULL)"
            )
            con.commit()
            con.execute("SELECT count(*) FROM sessions").fetchone()
            ok = con.execute("PRAGMA quick_check").fetchone()
            if ok is None or ok[0] != "ok":
                raise StoreError(f"{self.path}: integrity check failed: {ok}")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: cannot open the session database: {exc}") from None

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(
                self.path, timeout=2.0, isolation_level=None, check_same_thread=True
            )
            con.execute("PRAGMA synchronous=NORMAL")
            con.execute("PRAGMA busy_timeout=2000")
            self._local.con = con
        return con

    def _row(self, r: tuple) -> SessionRow:
        sid, spec, num_layers, num_experts, counts, plan_counts, plan, version, nobs = r
        shape = (num_layers, num_experts)
        return SessionRow(
            sid,
            spec,
            np.frombuffer(counts, dtype=np.float64).reshape(shape).copy(),
            np.frombuffer(plan_counts, dtype=np.float64).reshape(shape).copy(),
            plan,
            version,
            nobs,
        )

    def create(self, row: SessionRow) -> None:
        with self._write:
            con = self._con()
            con.execute(
                "INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    row.id, row.spec_json, row.counts.shape[0], row.counts.shape[1],
                    _blob(row.counts), _blob(row.plan_counts), row.plan_json, row.version,
                    row.num_observations,
                ),
            )  # fmt: skip

    def get(self, session_id: str) -> SessionRow | None:
        r = self._con().execute("SELECT * FROM sessions WHERE id = ?", (session_id,)).fetchone()
        return None if r is None else self._row(r)

    def add_counts(
        self, session_id: str, hist: np.ndarray, decay: float
    ) -> tuple[np.ndarray, int] | None:
        """counts = decay * counts + hist, committed; returns (counts, observations) or None."""
        with self._write:
            con = self._con()
            con.execute("BEGIN IMMEDIATE")
            try:
                r = con.execute(
                    "SELECT counts, num_layers, num_experts, num_observations FROM sessions "
                    "WHERE id = ?",
                    (session_id,),
                ).fetchone()
                if r is None:
                    con.execute("ROLLBACK")
                    return None
                counts = np.frombuffer(r[0], dtype=np.float64).reshape(r[1], r[2]) * decay + hist
                con.execute(
                    "UPDATE sessions SET counts = ?, num_observations = ? WHERE id = ?",
                    (_blob(counts), r[3] + 1, session_id),
                )
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            return counts, r[3] + 1

    def swap_plan(self, session_id: str, plan_json: str, plan_counts: np.ndarray) -> int | None:
        """Install a new plan in one transaction; returns the new version (None: no session)."""
        with self._write:
            con = self._con()
            cur = con.execute(
                "UPDATE sessions SET plan = ?, plan_counts = ?, version = version + 1 WHERE id = ? "
                "RETURNING version",
                (plan_json, _blob(plan_counts), session_id),
            )
            r = cur.fetchone()
            return None if r is None else int(r[0])

    def delete(self, session_id: str) -> bool:
        with self._write:
            cur = self._con().execute("DELETE FROM sessions WHERE id = ?", (session_id,))
            return cur.rowcount > 0

    def count(self) -> int:
        return int(self._con().execute("SELECT count(*) FROM sessions").fetchone()[0])

    # ------------------------------------------------------------ expert-parallel sessions

    def ep_put(
        self,
        session_id: str,
        spec_json: str,
        placement: np.ndarray,
        window: np.ndarray,
        version: int,
        num_batches: int,
    ) -> None:
        """Insert or replace an EP session: placement ``[L, R]``, window ``[W, L, E]`` (int64)."""
        with self._write:
            self._con().execute(
                "INSERT OR REPLACE INTO ep_sessions VALUES (?, ?, ?, ?, ?, ?)",
                (
                    session_id, spec_json, json.dumps(placement.tolist()),
                    np.ascontiguousarray(window, dtype=np.int64).tobytes(), version, num_batches,
                ),
            )  # fmt: skip

    def ep_get(
        self, session_id: str, shape: tuple[int, int]
    ) -> tuple[str, np.ndarray, np.ndarray, int, int] | None:
        """(spec, placement [L, R], window [W, L, E], version, batches) or None."""
        r = self._con().execute("SELECT * FROM ep_sessions WHERE id = ?", (session_id,)).fetchone()
        if r is None:
            return None
        _, spec, placement, window, version, nbatches = r
        win = np.frombuffer(window, dtype=np.int64).reshape(-1, *shape).copy()
        return spec, np.asarray(json.loads(placement), dtype=np.int64), win, version, nbatches

    def ep_spec(self, session_id: str) -> str | None:
        r = (
            self._con()
            .execute("SELECT spec FROM ep_sessions WHERE id = ?", (session_id,))
            .fetchone()
        )
        return None if r is None else str(r[0])
