"""Session persistence behind one small interface (``SessionStore``); SQLite (WAL) by default.

A session row holds its spec (JSON), the running counts and the counts its current plan was
solved for (float64 blobs ``[num_layers, num_experts]``), the plan (JSON), its version, the
number of observations and when it was last used (unix seconds, for the TTL). An EP session
row holds its spec, placement ``[L, R]`` (JSON), version and batch count; each acknowledged
batch is one appended row of ``ep_batches`` (int32 blob ``[L, E]``), and rows older than the
session's window are deleted in the same transaction, so the window on disk stays bounded
and nothing is ever rewritten whole.

Every write is committed before it is acknowledged; WAL mode keeps a commit durable across a
killed process, and a plan swap is one transaction, so a reader sees the old plan or the new
one, never half of one.

In SQLite an observation does not rewrite the session's counts: it appends one small row to
``observation_log`` (the histogram's nonzero entries, sealed, with the decay and cap it was
counted with), committed before the ack, and the store keeps the running counts in memory
(one process serves an SQLite file). Every ``FOLD_EVERY``-th observation folds the log into
the counts blob instead, in one transaction; a reader (and a restart after kill -9) gets the
counts as the blob plus the log replayed in order, bit for bit the counts held in memory.
(Rewriting the ~13 KB blob, read and sealed, was about half a millisecond per observation.)

Damage is looked for at start-up, and reported as ``StoreError`` naming the file:
``PRAGMA quick_check``; an existing but empty (0-byte) main file; a main file whose last run
did not stop cleanly while its write-ahead log is gone (committed sessions would be lost);
rows that do not decode; a write-ahead log whose current frames fail their checksums
(SQLite would drop them silently). On a clean stop the log is checkpointed into the main file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import struct
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("moesched.store")
SCHEMA_VERSION = 3  # 2: every numeric blob carries a seal (``_seal``); 3: observation_log
FOLD_EVERY = 64  # observations per session between folds of the log into the counts blob


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


@dataclass
class CountsUpdate:
    """A session after an observation: the running counts and the plan's, both ``[L, E]``."""

    counts: np.ndarray
    num_observations: int
    plan_counts: np.ndarray
    version: int
    counted: bool  # False: the observation id was seen before, nothing changed


@dataclass
class EpRow:
    """One EP session as stored: placement ``[L, R]`` int64, window ``[W, L, E]`` int64
    (oldest batch first)."""

    id: str
    spec_json: str
    placement: np.ndarray
    window: np.ndarray
    version: int
    num_batches: int
    moved_last: int


def decode_ep_row(
    where: str, row: tuple[Any, ...], hists: list[bytes], shape: tuple[int, int]
) -> EpRow:
    """An EP session from its stored cells, in either store.

    Args:
        where: the database, for the error.
        row: (id, spec, placement JSON, version, num_batches, moved_last).
        hists: the window's batches, oldest first, each an int32 [layers, experts] blob.
        shape: (layers, experts).

    Raises:
        StoreDamaged: a cell that does not decode to those shapes.
    """
    sid, spec, placement, version, nbatches, moved = row
    try:
        win = np.zeros((len(hists), *shape), dtype=np.int64)
        for i, h in enumerate(hists):
            win[i] = np.frombuffer(h, dtype=np.int32).reshape(shape)
        place = np.asarray(json.loads(placement), dtype=np.int64).reshape(shape[0], -1)
    except (ValueError, TypeError) as exc:
        raise StoreDamaged(f"{where}: EP session {sid} does not decode: {exc}") from None
    return EpRow(sid, spec, place, win, version, nbatches, moved)


class StoreError(Exception):
    """The store cannot be opened or used (corrupt, not a database); names the file."""


class WouldWait(Exception):
    """``observe_nowait`` cannot proceed without waiting (a lock, a first load, the network):
    nothing was done; call ``observe`` off the event loop instead."""


class StoreBusy(StoreError):
    """The database stayed locked longer than the busy timeout (another writer holds it)."""


class StoreDamaged(StoreError):
    """A stored row does not decode (the file was changed under the server)."""


class SessionStore(ABC):
    """What the service needs from a session store. ``SQLiteStore`` implements it; a server
    database can implement the same methods. Every method may raise ``StoreBusy``."""

    @abstractmethod
    def create(self, row: SessionRow) -> None:
        """Insert a new session."""

    @abstractmethod
    def get(self, session_id: str) -> SessionRow | None:
        """The session, or None."""

    @abstractmethod
    def observe(
        self,
        session_id: str,
        hist: np.ndarray,
        decay: float,
        cap: float,
        observation_id: str | None = None,
    ) -> CountsUpdate | None:
        """counts = min(decay * counts + hist, cap), committed, once per ``observation_id``
        (an id seen before changes nothing; None: always counted); None when no session."""

    def observe_nowait(
        self,
        session_id: str,
        hist: np.ndarray,
        decay: float,
        cap: float,
        observation_id: str | None = None,
    ) -> CountsUpdate | None:
        """``observe`` when it can be done without waiting, so the event loop may call it;
        raises ``WouldWait`` (having done nothing) otherwise. A store over the network never
        can: this default always raises."""
        raise WouldWait

    def add_counts(
        self, session_id: str, hist: np.ndarray, decay: float, cap: float
    ) -> tuple[np.ndarray, int] | None:
        """``observe`` without an id: (counts, observations) or None."""
        got = self.observe(session_id, hist, decay, cap)
        return None if got is None else (got.counts, got.num_observations)

    def try_lease(self, session_id: str, owner: str, seconds: float) -> bool:
        """Take the session's re-solve lease for ``seconds`` unless another owner holds a
        live one; True when ``owner`` holds it. A store that serves one process (SQLite)
        needs none: the process's own bookkeeping keeps one re-solve per session."""
        return True

    def release_lease(self, session_id: str, owner: str) -> None:
        """Give the lease back (only the owner's); nothing to give back without leases."""
        return None

    @abstractmethod
    def swap_plan(self, session_id: str, plan_json: str, plan_counts: np.ndarray) -> int | None:
        """Install a new plan in one transaction; the new version, or None (no session)."""

    @abstractmethod
    def delete(self, session_id: str) -> bool:
        """Forget a session; False when there was none."""

    @abstractmethod
    def ep_create(
        self,
        session_id: str,
        spec_json: str,
        placement: np.ndarray,
        placement_json: bytes | None = None,
    ) -> None:
        """Insert a new EP session: version 1, no batches (``placement_json``: the placement
        already encoded, by the worker that made it)."""

    @abstractmethod
    def ep_get(self, session_id: str, shape: tuple[int, int]) -> EpRow | None:
        """The EP session with its stored window, or None."""

    @abstractmethod
    def ep_spec(self, session_id: str) -> str | None:
        """The EP session's spec JSON, or None."""

    @abstractmethod
    def ep_append(self, session_id: str, seq: int, hist: np.ndarray, keep: int) -> bool:
        """Append batch number ``seq`` (``[L, E]``), keep the last ``keep`` batches, set the
        batch count to ``seq``; one transaction. False when the session is gone."""

    @abstractmethod
    def ep_swap(
        self,
        session_id: str,
        placement: np.ndarray,
        version: int,
        moved: int,
        placement_json: bytes | None = None,
    ) -> bool:
        """Install a placement with its version (``placement_json`` as for ``ep_create``);
        False when the session is gone."""

    @abstractmethod
    def ep_delete(self, session_id: str) -> bool:
        """Forget an EP session and its window; False when there was none."""

    @abstractmethod
    def expire(self, idle_before_s: float) -> tuple[list[str], list[str]]:
        """Delete sessions and EP sessions last used before this unix time; their ids."""

    @abstractmethod
    def count(self) -> tuple[int, int]:
        """(sessions, EP sessions)."""

    @abstractmethod
    def db_bytes(self) -> int:
        """Bytes the store occupies on disk (main file + log)."""

    @abstractmethod
    def close(self) -> None:
        """Flush everything durable (checkpoint) and release the store."""


WAL_MAGIC = (0x377F0682, 0x377F0683)  # little- / big-endian checksums


def _wal_checksum(data: bytes, s1: int, s2: int, order: str) -> tuple[int, int]:
    """SQLite's WAL checksum over ``data`` (a multiple of 8 bytes), continued from (s1, s2)."""
    words = struct.unpack(f"{order}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s1 = (s1 + words[i] + s2) & 0xFFFFFFFF
        s2 = (s2 + words[i + 1] + s1) & 0xFFFFFFFF
    return s1, s2


def wal_damage(wal: bytes) -> str | None:
    """Why this write-ahead log would lose commits on recovery, or None.

    SQLite replays the frames of the log's current generation (those carrying the header's
    salts) while their running checksums hold, and silently ignores the rest; stale frames of
    older generations legitimately follow. Damage is a header that fails its checksum, or a
    current-generation frame at or after the first one that fails its checksum.
    """
    if len(wal) < 32:
        return None  # no header yet: SQLite ignores it, and nothing was committed to it
    magic, _, page_size, _, salt1, salt2, c1, c2 = struct.unpack(">8I", wal[:32])
    if magic not in WAL_MAGIC or page_size < 512 or page_size & (page_size - 1):
        return "bad header"
    order = ">" if magic & 1 else "<"
    s1, s2 = _wal_checksum(wal[:24], 0, 0, order)
    if (s1, s2) != (c1, c2):
        return "header checksum mismatch"
    frame = 24 + page_size
    count = (len(wal) - 32) // frame
    for i in range(count):
        off = 32 + i * frame
        _, _, fs1, fs2, fc1, fc2 = struct.unpack(">6I", wal[off : off + 24])
        if (fs1, fs2) == (salt1, salt2):
            s1, s2 = _wal_checksum(wal[off : off + 8], s1, s2, order)
            s1, s2 = _wal_checksum(wal[off + 24 : off + frame], s1, s2, order)
            if (s1, s2) == (fc1, fc2):
                continue
        # The log's valid part ends here; current-generation frames after it would be lost.
        later = [
            j
            for j in range(i, count)
            if struct.unpack(">2I", wal[32 + j * frame + 8 : 32 + j * frame + 16]) == (salt1, salt2)
        ]
        if later:
            return f"frame {later[0]} of {count} fails its checksum"
        return None
    return None


def placement_text(placement: np.ndarray, encoded: bytes | None = None) -> str:
    """An EP placement ``[L, R]`` as stored (JSON): ``encoded`` when a worker encoded it."""
    return encoded.decode() if encoded is not None else json.dumps(placement.tolist())


SEAL_BYTES = 8
PAGE_BYTES = 4096  # SQLite's default page size (this store never changes it)
CACHE_BYTES = 2000 * 1024  # page cache per connection (SQLite's default, stated)
READERS_KEPT = 4  # idle reading connections kept open; with the two writers, 6 page caches at most
WAL_FRAME_HEADER_BYTES = 24
ROW_OVERHEAD_BYTES = 64  # a row's header, key (session id, seq) and cell pointer, at most
DB_FIXED_BYTES = 256 * 2**10  # schema, meta, index interior pages, one commit's freed pages


def wal_pages(wal_max_bytes: int) -> int:
    """Pages the write-ahead log may hold before a commit checkpoints it."""
    return max(1, wal_max_bytes // (PAGE_BYTES + WAL_FRAME_HEADER_BYTES))


def wal_bound_bytes(wal_max_bytes: int, largest_commit_bytes: int) -> int:
    """Most bytes the log reaches: its checkpoint threshold plus the commit that crossed it
    (every page of it, each with its frame header; checkpoints not held up by a reader)."""
    commit_pages = -(-largest_commit_bytes // PAGE_BYTES) + 4  # + the pages the B-trees touch
    frames = wal_pages(wal_max_bytes) + commit_pages
    return 32 + frames * (PAGE_BYTES + WAL_FRAME_HEADER_BYTES)


def row_bound_bytes(payload_bytes: int) -> int:
    """Most bytes of the main file one row of ``payload_bytes`` occupies. A large payload
    spills onto overflow pages: whole pages. Small rows share pages that B-tree splits and
    deletes can leave half empty: twice the row."""
    cell = payload_bytes + ROW_OVERHEAD_BYTES
    usable = PAGE_BYTES - 2 * ROW_OVERHEAD_BYTES
    if cell <= usable // 4:
        return 2 * cell
    return PAGE_BYTES * -(-cell // usable)


def _seal(data: bytes, tag: int) -> bytes:
    """A checksum (blake2b, 8 bytes) of a numeric blob's bytes and the integer stored beside
    it (an observation count, a version, a batch number): random damage to the file that
    SQLite's own checks miss changes numbers silently; this catches it."""
    return hashlib.blake2b(data + struct.pack("<q", tag), digest_size=SEAL_BYTES).digest()


def _blob(a: np.ndarray, tag: int, dtype: type = np.float64) -> bytes:
    """An array's bytes (C order, ``dtype``) followed by its seal over them and ``tag``."""
    data = np.ascontiguousarray(a, dtype=dtype).tobytes()
    return data + _seal(data, tag)


def _unseal(where: str, blob: bytes, tag: int) -> bytes:
    """A sealed blob's bytes, checked.

    Raises:
        StoreDamaged: the seal does not match (the blob, or its tag, changed on disk).
    """
    data, seal = blob[:-SEAL_BYTES], blob[-SEAL_BYTES:]
    if len(blob) < SEAL_BYTES or _seal(data, tag) != seal:
        raise StoreDamaged(f"{where}: stored numbers fail their checksum (changed on disk)")
    return data


# A log row's value type by its value_bytes; the whole-number types with their largest value.
_LOG_VALUES: dict[int, type] = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.float64}
_WHOLE: tuple[tuple[type, int], ...] = ((np.uint8, 2**8 - 1), (np.uint16, 2**16 - 1),
                                        (np.uint32, 2**32 - 1))  # fmt: skip


def _index_dtype(size: int) -> type:
    return np.uint16 if size <= 2**16 else np.uint32


def sparse_hist(hist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A histogram's nonzero entries: flat indices (uint16 when they fit, else uint32) and
    values (the narrowest unsigned integer type holding them all when they are whole
    numbers, else float64): a single token's ``[26, 64]`` histogram is under 500 bytes."""
    flat = hist.reshape(-1)
    idx: np.ndarray = np.flatnonzero(flat).astype(_index_dtype(flat.size))
    values = flat[idx]
    if not values.size:
        return idx, values.astype(np.uint8)
    top, least = values.max(), values.min()
    if least >= 0 and top <= _WHOLE[-1][1]:  # (NaN compares False: float64)
        dtype = next(d for d, largest in _WHOLE if top <= largest)
        narrow = values.astype(dtype)
        if values.dtype.kind in "ui" or np.array_equal(narrow, values):
            return idx, narrow
    return idx, values.astype(np.float64)


def fold_counts(
    counts: np.ndarray, idx: np.ndarray, values: np.ndarray, decay: float, cap: float
) -> np.ndarray:
    """``min(decay * counts + hist, cap)`` for the histogram whose nonzero flat entries are
    ``values`` at ``idx`` (``sparse_hist``), as a new read-only array. The one formula both
    an observation and a replay of the log use, so both give the same bits."""
    out = counts * decay
    flat = out.reshape(-1)
    flat[idx] += values
    np.minimum(out, cap, out=out)
    out.flags.writeable = False
    return out


def _log_blob(idx: np.ndarray, values: np.ndarray, seq: int) -> bytes:
    """A log row's histogram: indices then values, sealed with the observation's number."""
    data = idx.tobytes() + values.tobytes()
    return data + _seal(data, seq)


def _log_entry(
    where: str, blob: bytes, seq: int, value_bytes: int, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """A log row's (indices, values), checked against ``size`` counted entries.

    Raises:
        StoreDamaged: a seal, width or index that does not hold.
    """
    data = _unseal(where, blob, seq)
    index = np.dtype(_index_dtype(size))
    dtype = _LOG_VALUES.get(value_bytes)
    n = len(data) // (index.itemsize + value_bytes) if dtype is not None else -1
    if dtype is None or n * (index.itemsize + value_bytes) != len(data):
        raise StoreDamaged(f"{where}: observation {seq} in the log does not decode")
    idx = np.frombuffer(data, index, n)
    values: np.ndarray = np.frombuffer(data, dtype, n, index.itemsize * n)
    if n and (int(idx.max()) >= size or len(np.unique(idx)) < n):
        raise StoreDamaged(f"{where}: observation {seq} in the log names no counted entry")
    return idx, values


_LOG_INSERT = "INSERT INTO observation_log VALUES (?, ?, ?, ?, ?, ?, ?)"
_LOG_SELECT = (
    "SELECT seq, hist, value_bytes, decay, cap FROM observation_log WHERE session_id = ? "
    "ORDER BY seq"
)


def replay_log(
    where: str, counts: np.ndarray, folded: int, log: list[tuple[Any, ...]]
) -> tuple[np.ndarray, int]:
    """The running counts and the number of observations: the blob's ``counts`` (holding
    ``folded`` observations) with the log rows ``(seq, hist, value_bytes, decay, cap)``
    folded in, in order.

    Raises:
        StoreDamaged: a row that does not decode, or numbers that do not follow ``folded``.
    """
    out = counts.copy()
    out.flags.writeable = False
    for i, (seq, blob, value_bytes, decay, cap) in enumerate(log):
        if seq != folded + 1 + i:
            raise StoreDamaged(f"{where}: the observation log skips from {folded + i} to {seq}")
        idx, values = _log_entry(where, blob, seq, value_bytes, out.size)
        out = fold_counts(out, idx, values, decay, cap)
    return out, folded + len(log)


@dataclass
class _Tally:
    """A session's committed running counts, held by the store between observations (an
    SQLite file is served by one process); ``folded`` of them are in the blob, the rest in
    the log."""

    counts: np.ndarray  # [L, E], read-only
    num_observations: int
    folded: int
    plan_counts: np.ndarray  # [L, E], read-only
    version: int


_TABLES = (
    "CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, spec TEXT NOT NULL, "
    "num_layers INTEGER NOT NULL, num_experts INTEGER NOT NULL, counts BLOB NOT NULL, "
    "plan_counts BLOB NOT NULL, plan TEXT, version INTEGER NOT NULL, "
    "num_observations INTEGER NOT NULL, touched_s REAL NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS ep_sessions (id TEXT PRIMARY KEY, spec TEXT NOT NULL, "
    "placement TEXT NOT NULL, version INTEGER NOT NULL, num_batches INTEGER NOT NULL, "
    "moved_last INTEGER NOT NULL DEFAULT 0, touched_s REAL NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS ep_batches (session_id TEXT NOT NULL, seq INTEGER NOT NULL, "
    "hist BLOB NOT NULL, PRIMARY KEY (session_id, seq))",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS observations_seen (session_id TEXT NOT NULL, "
    "observation_id TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (session_id, observation_id))",
    "CREATE TABLE IF NOT EXISTS observation_log (session_id TEXT NOT NULL, seq INTEGER NOT NULL, "
    "hist BLOB NOT NULL, value_bytes INTEGER NOT NULL, decay REAL NOT NULL, cap REAL NOT NULL, "
    "touched_s REAL NOT NULL, PRIMARY KEY (session_id, seq)) WITHOUT ROWID",
)
SEEN_IDS_KEPT = 4096  # observation ids remembered per session, for exactly-once retries


class SQLiteStore(SessionStore):
    """SQLite, one connection per thread, WAL journal; safe for the server's threads.

    Args:
        path: the database file (created when missing).
        busy_timeout_s: how long a write waits for a lock before ``StoreBusy``.
        wal_max_bytes: the write-ahead log is checkpointed past this size and truncated back
            to it after a checkpoint (``wal_autocheckpoint``, ``journal_size_limit``), so the
            log stays under ``wal_bound_bytes``.
    """

    def __init__(
        self, path: Path | str, busy_timeout_s: float = 2.0, wal_max_bytes: int = 4 * 2**20
    ) -> None:
        self.path = str(path)
        self.busy_timeout_s = busy_timeout_s
        self.wal_max_bytes = wal_max_bytes
        # One connection writes (under the write lock); readers borrow from a few idle ones.
        # Per-thread connections leaked one page cache each whenever a worker thread ended.
        self._writer: sqlite3.Connection | None = None
        self._nowait: sqlite3.Connection | None = None
        self._idle: list[sqlite3.Connection] = []
        self._cons_lock = threading.Lock()
        self._write = threading.Lock()  # one writer at a time keeps read-modify-write atomic
        self._closed = False  # set by close (under both locks): no connection is made after
        self._tallies: dict[str, _Tally] = {}  # sessions observed so far (under self._write)
        self.found = self._open()
        log.info("session store %s: %s", self.path, self.found)

    # ------------------------------------------------------------------ opening and checks

    def _open(self) -> str:
        main, wal = Path(self.path), Path(self.path + "-wal")
        existed = main.exists()
        if existed and main.stat().st_size == 0:
            raise StoreError(
                f"{self.path}: the database file is empty (0 bytes) but exists: truncated? "
                "Restore it from a backup, or delete it to start a new database."
            )
        wal_present = wal.exists() and wal.stat().st_size > 0
        if wal_present:
            damage = wal_damage(wal.read_bytes())
            if damage is not None:
                raise StoreError(
                    f"{wal}: the write-ahead log is damaged ({damage}); opening would drop the "
                    "commits after the damage. Restore it from a backup, or move it away to "
                    "start from the main file's last checkpoint."
                )
        try:
            con = self._con()
            if existed:
                self._refuse_lost_wal(con, wal_present)
            con.execute("PRAGMA journal_mode=WAL")
            with self._tx(con):
                for ddl in _TABLES:
                    con.execute(ddl)
                self._migrate(con)
                con.execute("INSERT OR REPLACE INTO meta VALUES ('clean_shutdown', '0')")
            # The "not stopped cleanly" mark must reach the main file (not only the log), so
            # that a lost log is noticed at the next start.
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            ok = con.execute("PRAGMA quick_check").fetchall()
            if [r[0] for r in ok] != ["ok"]:
                raise StoreError(f"{self.path}: integrity check failed: {ok[:5]}")
            sessions, eps = self.count()
            self._check_rows(con)
        except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
            # A damaged schema text fails to decode before SQLite notices anything.
            raise StoreError(f"{self.path}: cannot open the session database: {exc}") from None
        if not existed:
            return "new database (the file did not exist)"
        return f"opened: {sessions} sessions, {eps} EP sessions"

    def _refuse_lost_wal(self, con: sqlite3.Connection, wal_present: bool) -> None:
        has_meta = con.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
        ).fetchone()[0]
        if not has_meta:
            return
        row = con.execute("SELECT value FROM meta WHERE key = 'clean_shutdown'").fetchone()
        if row is not None and row[0] == "0" and not wal_present:
            raise StoreError(
                f"{self.path}: the last run did not stop cleanly and its write-ahead log "
                f"{self.path}-wal is missing: sessions committed since the last checkpoint "
                "would be lost. Restore the -wal file beside it, or delete the database to "
                "start anew."
            )

    @staticmethod
    def _migrate(con: sqlite3.Connection) -> None:
        """Bring a schema-0 database (EP window as one blob, no TTL columns) to this one."""
        version = con.execute("PRAGMA user_version").fetchone()[0]
        if version >= SCHEMA_VERSION:
            return
        if version < 2:  # seal the numeric blobs written before there were seals
            for sid, counts, plan_counts, v, nobs in con.execute(
                "SELECT id, counts, plan_counts, version, num_observations FROM sessions"
            ).fetchall():
                con.execute(
                    "UPDATE sessions SET counts = ?, plan_counts = ? WHERE id = ?",
                    (counts + _seal(counts, nobs), plan_counts + _seal(plan_counts, v), sid),
                )
            for sid, seq, hist in con.execute(
                "SELECT session_id, seq, hist FROM ep_batches"
            ).fetchall():
                con.execute(
                    "UPDATE ep_batches SET hist = ? WHERE session_id = ? AND seq = ?",
                    (hist + _seal(hist, seq), sid, seq),
                )
        cols = {r[1] for r in con.execute("PRAGMA table_info(sessions)")}
        if "touched_s" not in cols:
            con.execute("ALTER TABLE sessions ADD COLUMN touched_s REAL NOT NULL DEFAULT 0")
        ep_cols = {r[1] for r in con.execute("PRAGMA table_info(ep_sessions)")}
        if "window" in ep_cols:
            for sid, spec, window in con.execute("SELECT id, spec, window FROM ep_sessions"):
                s = json.loads(spec)
                win = np.frombuffer(window, dtype=np.int64).reshape(
                    -1, s["num_layers"], s["num_experts"]
                )
                for i, hist in enumerate(win):
                    con.execute(
                        "INSERT INTO ep_batches VALUES (?, ?, ?)",
                        (sid, i + 1, _blob(hist, i + 1, np.int32)),
                    )
            con.execute("ALTER TABLE ep_sessions DROP COLUMN window")
        for col in ("moved_last INTEGER NOT NULL DEFAULT 0", "touched_s REAL NOT NULL DEFAULT 0"):
            if col.split()[0] not in ep_cols:
                con.execute(f"ALTER TABLE ep_sessions ADD COLUMN {col}")
        now = time.time()
        con.execute("UPDATE sessions SET touched_s = ? WHERE touched_s = 0", (now,))
        con.execute("UPDATE ep_sessions SET touched_s = ? WHERE touched_s = 0", (now,))
        con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _check_rows(self, con: sqlite3.Connection) -> None:
        """Decode every row once: a file changed under the server is refused at start-up
        rather than failing the requests that touch it."""
        bad: list[str] = []
        for r in con.execute("SELECT * FROM sessions").fetchall():
            try:
                row = self._row(r)
                log = con.execute(_LOG_SELECT, (row.id,)).fetchall()
                replay_log(self.path, row.counts, row.num_observations, log)
                json.loads(r[1])
                if r[6] is not None:
                    json.loads(r[6])
            except (ValueError, TypeError, StoreDamaged):
                bad.append(str(r[0]))
        for sid, spec, placement, *_ in con.execute("SELECT * FROM ep_sessions"):
            try:
                s = json.loads(spec)
                np.asarray(json.loads(placement), dtype=np.int64).reshape(s["num_layers"], -1)
                want = 4 * s["num_layers"] * s["num_experts"] + SEAL_BYTES
                for seq, hist in con.execute(
                    "SELECT seq, hist FROM ep_batches WHERE session_id = ?", (sid,)
                ):
                    if len(hist) != want:
                        raise ValueError("window batch of the wrong size")
                    _unseal(self.path, hist, seq)
            except (ValueError, TypeError, KeyError, StoreDamaged):
                bad.append(str(sid))
        if bad:
            raise StoreError(
                f"{self.path}: {len(bad)} stored sessions do not decode (damaged file?): "
                f"{bad[:5]}. Restore the file from a backup, or delete those rows."
            )

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout_s,
            isolation_level=None,
            check_same_thread=False,
        )
        con.execute("PRAGMA synchronous=NORMAL")
        con.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
        con.execute(f"PRAGMA cache_size=-{CACHE_BYTES // 1024}")
        con.execute(f"PRAGMA wal_autocheckpoint={wal_pages(self.wal_max_bytes)}")
        con.execute(f"PRAGMA journal_size_limit={self.wal_max_bytes}")
        return con

    def _con(self, wait: bool = True) -> sqlite3.Connection:
        """The writing connection (used under the write lock, or alone at start-up); without
        ``wait``, a second one that never waits for another process's lock (busy timeout 0)."""
        if self._closed:
            raise StoreError(f"{self.path}: the store is closed")
        if not wait:
            if self._nowait is None:
                self._nowait = self._connect()
                self._nowait.execute("PRAGMA busy_timeout=0")
            return self._nowait
        if self._writer is None:
            self._writer = self._connect()
        return self._writer

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """An idle reading connection (a new one when none is idle); at most
        ``READERS_KEPT`` are kept idle, the others closed, so their page caches stay bounded."""
        with self._cons_lock:
            if self._closed:
                raise StoreError(f"{self.path}: the store is closed")
            con = self._idle.pop() if self._idle else None
        if con is None:
            con = self._connect()
        try:
            yield con
        finally:
            with self._cons_lock:
                keep = not self._closed and len(self._idle) < READERS_KEPT
                if keep:
                    self._idle.append(con)
            if not keep:
                con.close()

    @contextmanager
    def _tx(self, con: sqlite3.Connection, wait: bool = True) -> Iterator[None]:
        """One IMMEDIATE transaction: committed on success, rolled back on any error. Without
        ``wait``, ``WouldWait`` when another connection holds the database."""
        try:
            con.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if not wait and ("locked" in str(exc) or "busy" in str(exc)):
                raise WouldWait from None
            raise
        try:
            yield
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    @contextmanager
    def _locked(self, wait: bool = True) -> Iterator[None]:
        """The write lock, waited for at most the busy timeout (not at all without ``wait``:
        ``WouldWait``)."""
        if not self._write.acquire(timeout=self.busy_timeout_s if wait else 0):
            if not wait:
                raise WouldWait
            raise StoreBusy(f"{self.path}: the write lock stayed busy {self.busy_timeout_s} s")
        try:
            yield
        finally:
            self._write.release()

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """The write lock and a transaction, each waiting at most the busy timeout."""
        with self._locked():
            con = self._con()
            with self._busy(), self._tx(con):
                yield con

    @contextmanager
    def _busy(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise StoreBusy(
                    f"{self.path}: the database stayed locked {self.busy_timeout_s} s "
                    "(another process holds it)"
                ) from None
            raise StoreError(f"{self.path}: {exc}") from None
        except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
            raise StoreError(f"{self.path}: {exc}") from None

    def _read(self, sql: str, args: tuple[object, ...]) -> list[tuple]:
        with self._busy(), self._reading() as con:
            return con.execute(sql, args).fetchall()

    # ------------------------------------------------------------------ sessions

    def _row(self, r: tuple) -> SessionRow:
        sid, spec, num_layers, num_experts, counts, plan_counts, plan, version, nobs, _ = r
        shape, where = (num_layers, num_experts), f"{self.path}: session {sid}"
        try:
            return SessionRow(
                sid,
                spec,
                np.frombuffer(_unseal(where, counts, nobs), np.float64).reshape(shape).copy(),
                np.frombuffer(_unseal(where, plan_counts, version), np.float64)
                .reshape(shape)
                .copy(),
                plan,
                version,
                nobs,
            )
        except (ValueError, TypeError) as exc:
            raise StoreDamaged(f"{self.path}: session {sid} does not decode: {exc}") from None

    def create(self, row: SessionRow) -> None:
        with self._writing() as con:
            con.execute(
                "INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    row.id, row.spec_json, row.counts.shape[0], row.counts.shape[1],
                    _blob(row.counts, row.num_observations), _blob(row.plan_counts, row.version),
                    row.plan_json, row.version,
                    row.num_observations, time.time(),
                ),
            )  # fmt: skip

    def get(self, session_id: str) -> SessionRow | None:
        with self._busy(), self._reading() as con:
            con.execute("BEGIN")  # one snapshot: the blob and the log that continues it
            try:
                rows = con.execute("SELECT * FROM sessions WHERE id = ?", (session_id,)).fetchall()
                log = con.execute(_LOG_SELECT, (session_id,)).fetchall() if rows else []
            finally:
                con.execute("COMMIT")
        if not rows:
            return None
        row = self._row(rows[0])
        where = f"{self.path}: session {session_id}"
        row.counts, row.num_observations = replay_log(where, row.counts, row.num_observations, log)
        return row

    def _tally(self, con: sqlite3.Connection, session_id: str) -> _Tally | None:
        """The session's counts as committed (the blob and the log replayed), or None."""
        r = con.execute("SELECT * FROM sessions WHERE id = ?", (session_id,)).fetchone()
        if r is None:
            return None
        row = self._row(r)
        log = con.execute(_LOG_SELECT, (session_id,)).fetchall()
        where = f"{self.path}: session {session_id}"
        counts, nobs = replay_log(where, row.counts, row.num_observations, log)
        row.plan_counts.flags.writeable = False
        return _Tally(counts, nobs, row.num_observations, row.plan_counts, row.version)

    def observe(
        self,
        session_id: str,
        hist: np.ndarray,
        decay: float,
        cap: float,
        observation_id: str | None = None,
    ) -> CountsUpdate | None:
        return self._observe(session_id, hist, decay, cap, observation_id, wait=True)

    def observe_nowait(
        self,
        session_id: str,
        hist: np.ndarray,
        decay: float,
        cap: float,
        observation_id: str | None = None,
    ) -> CountsUpdate | None:
        """Without waiting for the write lock or another connection's lock, for a session
        observed before (its counts held): one small append, about a tenth of a millisecond."""
        return self._observe(session_id, hist, decay, cap, observation_id, wait=False)

    def _observe(
        self,
        session_id: str,
        hist: np.ndarray,
        decay: float,
        cap: float,
        observation_id: str | None,
        wait: bool,
    ) -> CountsUpdate | None:
        if not wait and session_id not in self._tallies:
            raise WouldWait  # its first observation here reads and replays the session
        with self._locked(wait):
            con = self._con(wait)
            with self._busy():
                tally = self._tallies.get(session_id)
                if tally is None:
                    with self._tx(con):
                        tally = self._tally(con, session_id)
                    if tally is None:
                        return None
                    self._tallies[session_id] = tally  # as committed
                seq, folded, now = tally.num_observations + 1, tally.folded, time.time()
                idx, values = sparse_hist(hist)
                counts = fold_counts(tally.counts, idx, values, decay, cap)
                log_row = (session_id, seq, _log_blob(idx, values, seq), values.itemsize,
                           decay, cap, now)  # fmt: skip
                if observation_id is None and seq - folded < FOLD_EVERY:
                    # The usual observation: one statement, its own transaction.
                    self._append(con, wait, log_row)
                else:
                    with self._tx(con, wait):
                        if observation_id is not None and not self._first_time(
                            con, session_id, observation_id, seq
                        ):  # a retry of one already counted
                            return CountsUpdate(tally.counts, seq - 1, tally.plan_counts,
                                                tally.version, counted=False)  # fmt: skip
                        if seq - folded >= FOLD_EVERY:  # the blob takes in the log's
                            con.execute(
                                "UPDATE sessions SET counts = ?, num_observations = ?, "
                                "touched_s = ? WHERE id = ?",
                                (_blob(counts, seq), seq, now, session_id),
                            )
                            con.execute(
                                "DELETE FROM observation_log WHERE session_id = ?", (session_id,)
                            )
                            folded = seq
                        else:
                            con.execute(_LOG_INSERT, log_row)
            # Committed: only now do the held counts move on.
            self._tallies[session_id] = replace(
                tally, counts=counts, num_observations=seq, folded=folded
            )
        return CountsUpdate(counts, seq, tally.plan_counts, tally.version, counted=True)

    @staticmethod
    def _append(con: sqlite3.Connection, wait: bool, log_row: tuple[Any, ...]) -> None:
        """One log row in a transaction of its own (``WouldWait`` without ``wait`` when
        another connection holds the database)."""
        try:
            con.execute(_LOG_INSERT, log_row)
        except sqlite3.OperationalError as exc:
            if not wait and ("locked" in str(exc) or "busy" in str(exc)):
                raise WouldWait from None
            raise

    @staticmethod
    def _first_time(
        con: sqlite3.Connection, session_id: str, observation_id: str, seq: int
    ) -> bool:
        """Record ``observation_id`` as observation ``seq`` unless the session has seen it
        (then False); the ids of the last ``SEEN_IDS_KEPT`` observations are kept."""
        fresh = con.execute(
            "INSERT OR IGNORE INTO observations_seen VALUES (?, ?, ?)",
            (session_id, observation_id, seq),
        ).rowcount
        if fresh:
            con.execute(
                "DELETE FROM observations_seen WHERE session_id = ? AND seq <= ?",
                (session_id, seq - SEEN_IDS_KEPT),
            )
        return bool(fresh)

    def swap_plan(self, session_id: str, plan_json: str, plan_counts: np.ndarray) -> int | None:
        with self._locked():
            con = self._con()
            with self._busy(), self._tx(con):
                r = con.execute(
                    "SELECT version FROM sessions WHERE id = ?", (session_id,)
                ).fetchone()
                if r is None:
                    return None
                version = int(r[0]) + 1
                con.execute(
                    "UPDATE sessions SET plan = ?, plan_counts = ?, version = ? WHERE id = ?",
                    (plan_json, _blob(plan_counts, version), version, session_id),
                )
            tally = self._tallies.get(session_id)
            if tally is not None:  # committed: the held plan counts move on
                held = np.array(plan_counts, dtype=np.float64)
                held.flags.writeable = False
                self._tallies[session_id] = replace(tally, plan_counts=held, version=version)
            return version

    def delete(self, session_id: str) -> bool:
        with self._writing() as con:
            self._tallies.pop(session_id, None)
            con.execute("DELETE FROM observations_seen WHERE session_id = ?", (session_id,))
            con.execute("DELETE FROM observation_log WHERE session_id = ?", (session_id,))
            return con.execute("DELETE FROM sessions WHERE id = ?", (session_id,)).rowcount > 0

    # ------------------------------------------------------------------ EP sessions

    def ep_create(
        self,
        session_id: str,
        spec_json: str,
        placement: np.ndarray,
        placement_json: bytes | None = None,
    ) -> None:
        with self._writing() as con:
            con.execute(
                "INSERT INTO ep_sessions VALUES (?, ?, ?, 1, 0, 0, ?)",
                (session_id, spec_json, placement_text(placement, placement_json), time.time()),
            )

    def ep_get(self, session_id: str, shape: tuple[int, int]) -> EpRow | None:
        rows = self._read("SELECT * FROM ep_sessions WHERE id = ?", (session_id,))
        if not rows:
            return None
        hists = self._read(
            "SELECT seq, hist FROM ep_batches WHERE session_id = ? ORDER BY seq", (session_id,)
        )
        where = f"{self.path}: EP session {session_id}"
        window = [_unseal(where, h, seq) for seq, h in hists]
        return decode_ep_row(str(self.path), rows[0][:6], window, shape)

    def ep_spec(self, session_id: str) -> str | None:
        rows = self._read("SELECT spec FROM ep_sessions WHERE id = ?", (session_id,))
        return str(rows[0][0]) if rows else None

    def ep_append(self, session_id: str, seq: int, hist: np.ndarray, keep: int) -> bool:
        with self._writing() as con:
            updated = con.execute(
                "UPDATE ep_sessions SET num_batches = ?, touched_s = ? WHERE id = ?",
                (seq, time.time(), session_id),
            ).rowcount
            if not updated:
                return False
            con.execute(
                "INSERT OR REPLACE INTO ep_batches VALUES (?, ?, ?)",
                (session_id, seq, _blob(hist, seq, np.int32)),
            )
            con.execute(
                "DELETE FROM ep_batches WHERE session_id = ? AND seq <= ?",
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
        with self._writing() as con:
            return (
                con.execute(
                    "UPDATE ep_sessions SET placement = ?, version = ?, moved_last = ? "
                    "WHERE id = ?",
                    (placement_text(placement, placement_json), version, moved, session_id),
                ).rowcount
                > 0
            )

    def ep_delete(self, session_id: str) -> bool:
        with self._writing() as con:
            con.execute("DELETE FROM ep_batches WHERE session_id = ?", (session_id,))
            return con.execute("DELETE FROM ep_sessions WHERE id = ?", (session_id,)).rowcount > 0

    # ------------------------------------------------------------------ housekeeping

    def expire(self, idle_before_s: float) -> tuple[list[str], list[str]]:
        with self._writing() as con:
            gone = [  # (an observation since the last fold touched its log row instead)
                r[0]
                for r in con.execute(
                    "DELETE FROM sessions WHERE touched_s < ? AND id NOT IN (SELECT session_id "
                    "FROM observation_log WHERE touched_s >= ?) RETURNING id",
                    (idle_before_s, idle_before_s),
                ).fetchall()
            ]
            ep_gone = [
                r[0]
                for r in con.execute(
                    "DELETE FROM ep_sessions WHERE touched_s < ? RETURNING id", (idle_before_s,)
                ).fetchall()
            ]
            for sid in gone:
                self._tallies.pop(sid, None)
                con.execute("DELETE FROM observations_seen WHERE session_id = ?", (sid,))
                con.execute("DELETE FROM observation_log WHERE session_id = ?", (sid,))
            for sid in ep_gone:
                con.execute("DELETE FROM ep_batches WHERE session_id = ?", (sid,))
        return gone, ep_gone

    def count(self) -> tuple[int, int]:
        a = self._read("SELECT count(*) FROM sessions", ())[0][0]
        b = self._read("SELECT count(*) FROM ep_sessions", ())[0][0]
        return int(a), int(b)

    def db_bytes(self) -> int:
        return sum(
            Path(self.path + suffix).stat().st_size
            for suffix in ("", "-wal")
            if Path(self.path + suffix).exists()
        )

    def close(self) -> None:
        """Checkpoint the log into the main file (a copy of the main file alone is then a
        complete backup), mark the stop clean, and close every connection.

        Under the write lock: a background thread still writing (a session's re-solve ending
        as the server stops) is never mid-transaction on a connection closed here (closing
        one another thread is using crashed the process), and none is made after: later
        calls raise ``StoreError``. A reading connection in use is closed when given back."""
        try:
            with self._writing() as con:
                con.execute("INSERT OR REPLACE INTO meta VALUES ('clean_shutdown', '1')")
        except (StoreError, sqlite3.Error):
            log.exception("marking the clean stop of %s failed", self.path)
        locked = self._write.acquire(timeout=self.busy_timeout_s)
        try:
            if self._writer is not None:
                try:
                    self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.Error:
                    log.exception("checkpoint of %s on shutdown failed", self.path)
            with self._cons_lock:
                self._closed = True
                writers = [c for c in (self._writer, self._nowait) if c is not None]
                cons, self._idle = [*self._idle, *writers], []
                self._writer = self._nowait = None
        finally:
            if locked:
                self._write.release()
        for con in cons:
            with suppress(sqlite3.Error):
                con.close()
