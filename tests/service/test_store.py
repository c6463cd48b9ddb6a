"""The session store: EP batches appended one by one within a bounded window, expiry, a held
lock as StoreBusy (503 over HTTP), the old schema migrated, and damaged files refused by name."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from bench.live import ROOT
from service.ep_sessions import EpBounds, EpSessions
from service.main import create_app
from service.schemas import EpBatch, EpSessionCreate
from service.settings import Settings
from service.store import READERS_KEPT, SessionRow, SQLiteStore, StoreBusy, StoreError, WouldWait

SPEC = json.dumps({"num_layers": 2, "num_experts": 3})


def _row(sid: str) -> SessionRow:
    return SessionRow(sid, "{}", np.ones((2, 3)), np.ones((2, 3)), "{}", 1, 0)


def test_ep_batches_are_appended_and_the_window_stays_bounded(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    store = SQLiteStore(db)
    store.ep_create("a", SPEC, np.zeros((2, 4), dtype=np.int64))
    for seq in range(1, 51):
        assert store.ep_append("a", seq, np.full((2, 3), seq), keep=8)
    assert not store.ep_append("gone", 1, np.zeros((2, 3)), keep=8)
    # No close: the next store opens the file as a killed server left it.
    again = SQLiteStore(db)
    row = again.ep_get("a", (2, 3))
    assert row is not None and row.num_batches == 50
    assert row.window[:, 0, 0].tolist() == list(range(43, 51))
    n = sqlite3.connect(db).execute("SELECT count(*) FROM ep_batches").fetchone()[0]
    assert n == 8
    assert again.ep_swap("a", np.ones((2, 4), dtype=np.int64), 2, 5)
    assert again.ep_delete("a") and again.ep_get("a", (2, 3)) is None
    again.close()
    store.close()


def test_sessions_idle_past_the_ttl_expire(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    store.create(_row("old"))
    store.ep_create("ep-old", SPEC, np.zeros((2, 4), dtype=np.int64))
    cut = time.time()
    store.create(_row("new"))
    assert store.expire(cut) == (["old"], ["ep-old"])
    assert store.count() == (1, 0)
    got = store.add_counts("new", np.full((2, 3), 2.0**60), 1.0, 2.0**50)
    assert got is not None and float(got[0].max()) == 2.0**50  # capped, finite
    store.close()


def test_a_held_lock_is_store_busy_and_a_503(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    store = SQLiteStore(db, busy_timeout_s=0.2)
    store.create(_row("a"))
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreBusy, match="locked"):
            store.add_counts("a", np.ones((2, 3)), 1.0, 2.0**50)
    finally:
        holder.execute("ROLLBACK")
    store.close()
    app = create_app(Settings(db_path=tmp_path / "h.db", db_busy_timeout_s=0.2))
    with TestClient(app) as c:
        spec = {"num_layers": 2, "num_experts": 4, "num_gpus": 2, "num_replicas": 4}
        sid = c.post("/v1/ep-sessions", json=spec).json()["id"]
        holder = sqlite3.connect(tmp_path / "h.db", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            r = c.post(f"/v1/ep-sessions/{sid}/batches", json={"histogram": [[1, 2, 3, 4]] * 2})
        finally:
            holder.execute("ROLLBACK")
        assert r.status_code == 503 and r.json()["error_type"] == "store_busy"
        assert "retry-after" in r.headers
        assert c.get("/healthz").status_code == 200
        ok = c.post(f"/v1/ep-sessions/{sid}/batches", json={"histogram": [[1, 2, 3, 4]] * 2})
        assert ok.status_code == 200
        assert c.delete(f"/v1/ep-sessions/{sid}").status_code == 204
        assert c.get(f"/v1/ep-sessions/{sid}").status_code == 404
        assert c.delete(f"/v1/ep-sessions/{sid}").status_code == 404


def test_an_old_database_is_migrated(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    con = sqlite3.connect(db, isolation_level=None)
    con.execute(
        "CREATE TABLE ep_sessions (id TEXT PRIMARY KEY, spec TEXT NOT NULL, "
        "placement TEXT NOT NULL, window BLOB NOT NULL, version INTEGER NOT NULL, "
        "num_batches INTEGER NOT NULL)"
    )
    window = np.arange(2 * 2 * 3, dtype=np.int64).reshape(2, 2, 3)
    con.execute(
        "INSERT INTO ep_sessions VALUES ('a', ?, '[[0, 1], [1, 0]]', ?, 3, 40)",
        (SPEC, window.tobytes()),
    )
    con.close()
    store = SQLiteStore(db)
    row = store.ep_get("a", (2, 3))
    assert row is not None and row.version == 3 and row.num_batches == 40
    assert row.window.tolist() == window.tolist()
    store.close()


def _filled(tmp_path: Path) -> Path:
    """40 sessions committed by a process that then dies without closing (like kill -9)."""
    db = tmp_path / "d.db"
    code = (
        "import os, sys; import numpy as np; from service.store import SQLiteStore, SessionRow\n"
        "s = SQLiteStore(sys.argv[1])\n"
        "for i in range(40): s.create(SessionRow(f's{i}', '{}', np.ones((2, 3)), "
        "np.ones((2, 3)), '{}', 1, 0))\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(db)], check=True, cwd=ROOT)
    assert Path(str(db) + "-wal").stat().st_size > 0
    return db


def _clean(db: Path) -> Path:
    """The filled database after a clean stop: everything in the main file, no log."""
    SQLiteStore(db).close()
    Path(str(db) + "-wal").unlink(missing_ok=True)
    return db


def _flip(path: Path, n: int, seed: int) -> None:
    """``n`` random bytes of ``path`` inverted (a seeded draw)."""
    data = bytearray(path.read_bytes())
    for pos in np.random.default_rng(seed).integers(0, len(data), n):
        data[pos] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate_half(db: Path) -> None:
    data = _clean(db).read_bytes()
    db.write_bytes(data[: len(data) // 2])


def _damage_wal(db: Path) -> None:
    wal = Path(str(db) + "-wal")
    log = bytearray(wal.read_bytes())
    log[len(log) // 2] ^= 0xFF  # one byte of a frame in the middle of the log
    wal.write_bytes(bytes(log))


DAMAGES = {
    "main truncated to 0": (lambda db: db.write_bytes(b""), "{db}"),
    "main truncated to half": (_truncate_half, "{db}"),
    "main header and first page overwritten": (
        lambda db: db.write_bytes((d := _clean(db).read_bytes())[:100] + b"\xff" * 200 + d[300:]),
        "{db}",
    ),
    "WAL deleted after an unclean stop": (
        lambda db: Path(str(db) + "-wal").unlink(),
        "{db}-wal is missing",
    ),
    "WAL damaged": (_damage_wal, "{db}-wal: the write-ahead log is damaged"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_each_damaged_database_is_refused_naming_the_file(tmp_path: Path, damage: str) -> None:
    db = _filled(tmp_path)
    harm, message = DAMAGES[damage]
    harm(db)
    with pytest.raises(StoreError, match=re.escape(message.format(db=db))):
        SQLiteStore(db)


def _rows(db: Path) -> list[tuple[object, ...]]:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT * FROM sessions ORDER BY id").fetchall()
    finally:
        con.close()


@pytest.mark.parametrize("seed", range(6))
def test_random_byte_flips_are_refused_by_name_or_change_nothing(tmp_path: Path, seed: int) -> None:
    """64 random bytes inverted in the main file: either a refusal naming the file, or a
    start that reports what it found, with every stored session as it was, answered
    without a 5xx (never numbers silently changed: seed 2 changed 7 of the 40 sessions'
    counts before the blobs carried seals)."""
    db = _clean(_filled(tmp_path))
    before = _rows(db)
    _flip(db, 64, seed)
    try:
        store = SQLiteStore(db)
    except StoreError as exc:
        assert str(db) in str(exc)
        return
    assert store.found.startswith("opened: ")
    store.close()
    assert _rows(db) == before
    app = create_app(Settings(db_path=db))
    with TestClient(app) as c:
        for i in range(40):
            assert c.get(f"/v1/sessions/s{i}/plan").status_code < 500


def test_a_changed_number_is_refused_at_start_up(tmp_path: Path) -> None:
    """One count changed on disk (a valid float, so SQLite sees nothing wrong) and one EP
    batch: each is refused at start-up, naming the file and the session."""
    db = tmp_path / "s.db"
    store = SQLiteStore(db)
    store.create(_row("a"))
    store.ep_create("e", SPEC, np.array([[0, 1, 2], [2, 1, 0]]))
    assert store.ep_append("e", 1, np.ones((2, 3)), 4)
    store.close()
    con = sqlite3.connect(db, isolation_level=None)
    (counts,) = con.execute("SELECT counts FROM sessions").fetchone()
    changed = np.frombuffer(counts[:-8], np.float64).copy()
    changed[0] = 2.0
    con.execute("UPDATE sessions SET counts = ?", (changed.tobytes() + counts[-8:],))
    with pytest.raises(StoreError, match=re.escape(f"{db}: 1 stored sessions") + ".*'a'"):
        SQLiteStore(db)
    con.execute("UPDATE sessions SET counts = ?", (counts,))
    (hist,) = con.execute("SELECT hist FROM ep_batches").fetchone()
    con.execute("UPDATE ep_batches SET hist = ?", (b"\x02" + hist[1:],))
    con.close()
    with pytest.raises(StoreError, match=re.escape(f"{db}: 1 stored sessions") + ".*'e'"):
        SQLiteStore(db)


def test_a_clean_stop_leaves_everything_in_the_main_file(tmp_path: Path) -> None:
    """After a clean stop the log holds nothing: the main file alone (a backup) opens with
    every session, and says so."""
    db = _clean(_filled(tmp_path))
    store = SQLiteStore(db)
    assert store.count() == (40, 0)
    assert store.found == "opened: 40 sessions, 0 EP sessions"
    store.close()


def test_an_ep_session_keeps_the_database_under_its_bound(tmp_path: Path) -> None:
    """300 batches through a small log (64 KiB): the main file and the log together stay
    under ``EpBounds.db_bytes`` after every batch, and the window on disk holds only the
    window's batches (the log is checkpointed and truncated, the freed pages reused)."""
    db = tmp_path / "ep.db"
    settings = Settings(db_path=db, ep_window_max_bytes=64 * 2**10, db_wal_max_bytes=64 * 2**10)
    store = SQLiteStore(db, wal_max_bytes=settings.db_wal_max_bytes)
    eps = EpSessions(store, settings)
    spec = EpSessionCreate(
        num_layers=8, num_experts=64, num_gpus=4, num_replicas=72, window=1024,
        rebalance_below=0.01,
    )  # fmt: skip
    bound = EpBounds(settings).db_bytes([spec])
    sid = eps.create(spec).id
    rng = np.random.default_rng(0)
    sizes = []
    for _ in range(300):
        eps.batch(sid, EpBatch(histogram=rng.integers(0, 64, (8, 64)).tolist()))
        sizes.append(sum(p.stat().st_size for p in tmp_path.glob("ep.db*")))
    kept = EpBounds(settings).window_of(spec)
    rows = store._read("SELECT count(*) FROM ep_batches", ())[0][0]
    eps.close()
    store.close()
    assert kept == 32 and rows == kept
    assert max(sizes) <= bound, (max(sizes), bound)
    assert max(sizes[150:]) <= max(sizes[:150])  # flat once the window and the log are full


def test_ended_threads_leave_no_open_connections(tmp_path: Path) -> None:
    """Reads from 20 short-lived threads (as a server's worker threads come and go) leave at
    most the writer and ``READERS_KEPT`` idle readers open on the file (one connection per
    thread had leaked each ended thread's connection and page cache)."""
    db = tmp_path / "c.db"
    store = SQLiteStore(db)
    for _ in range(20):
        t = threading.Thread(target=store.count)
        t.start()
        t.join()
    fds = [os.readlink(f) for f in Path("/proc/self/fd").iterdir() if f.exists()]
    open_on_db = sum(1 for target in fds if target == str(db))
    store.close()
    assert open_on_db <= READERS_KEPT + 1


def _reference(counts: np.ndarray, hists: list[np.ndarray], decay: float, cap: float) -> np.ndarray:
    """The running counts as the formula states them: min(decay * counts + hist, cap)."""
    for h in hists:
        counts = np.minimum(counts * decay + h, cap)
    return counts


def _hists(n: int) -> list[np.ndarray]:
    """Observations of every kind the log encodes: single tokens, dense batches, fractional
    counts, counts past 2**32 and empty ones."""
    rng = np.random.default_rng(7)
    out = []
    for i in range(n):
        h = np.zeros((4, 8))
        h[np.arange(4), rng.integers(0, 8, 4)] = 1.0
        if i % 5 == 1:
            h = rng.integers(0, 300, (4, 8)).astype(float)
        elif i % 5 == 2:
            h = h * 0.25
        elif i % 5 == 3:
            h = h * 2.0**33
        elif i % 17 == 4:
            h = np.zeros((4, 8))
        out.append(h)
    return out


def test_observations_logged_and_folded_survive_a_kill_bit_for_bit(tmp_path: Path) -> None:
    """150 observations (folds at 64 and 128) by a process that dies without closing: the
    next store gives the counts the formula gives, to the bit, with 150 observations, from
    the counts blob and the 22 logged since the last fold; and goes on counting from there."""
    db = tmp_path / "k.db"
    code = (
        "import os, sys; import numpy as np\n"
        "from service.store import SQLiteStore, SessionRow\n"
        "from tests.service.test_store import _hists\n"
        "s = SQLiteStore(sys.argv[1])\n"
        "s.create(SessionRow('a', '{}', np.ones((4, 8)), np.ones((4, 8)), '{}', 1, 0))\n"
        "for i, h in enumerate(_hists(150)):\n"
        "    got = s.observe('a', h, 0.9, 2.0**40, f'id{i}' if i % 3 else None)\n"
        "    assert got is not None and got.num_observations == i + 1\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(db)], check=True, cwd=ROOT)
    want = _reference(np.ones((4, 8)), _hists(150), 0.9, 2.0**40)
    store = SQLiteStore(db)
    row = store.get("a")
    assert row is not None and row.num_observations == 150
    assert np.array_equal(row.counts, want)
    assert store._read("SELECT count(*) FROM observation_log", ())[0][0] == 150 - 128
    again = store.observe("a", np.ones((4, 8)), 0.9, 2.0**40, "id1")  # a retry: not counted
    assert again is not None and not again.counted and again.num_observations == 150
    more = store.observe("a", np.ones((4, 8)), 0.9, 2.0**40)
    assert more is not None and more.num_observations == 151
    assert np.array_equal(more.counts, _reference(want, [np.ones((4, 8))], 0.9, 2.0**40))
    got = store.get("a")
    assert got is not None and np.array_equal(got.counts, more.counts)
    store.close()


def test_a_damaged_or_missing_log_row_is_refused_at_start_up(tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    store = SQLiteStore(db)
    store.create(_row("a"))
    for _ in range(5):
        store.observe("a", np.ones((2, 3)), 1.0, 2.0**50)
    store.close()
    con = sqlite3.connect(db, isolation_level=None)
    (hist,) = con.execute("SELECT hist FROM observation_log WHERE seq = 3").fetchone()
    con.execute("UPDATE observation_log SET hist = ? WHERE seq = 3", (b"\x07" + hist[1:],))
    with pytest.raises(StoreError, match=re.escape(f"{db}: 1 stored sessions") + ".*'a'"):
        SQLiteStore(db)
    con.execute("UPDATE observation_log SET hist = ? WHERE seq = 3", (hist,))
    SQLiteStore(db).close()  # restored: it opens
    con.execute("DELETE FROM observation_log WHERE seq = 3")
    con.close()
    with pytest.raises(StoreError, match=re.escape(f"{db}: 1 stored sessions") + ".*'a'"):
        SQLiteStore(db)


def test_an_observation_keeps_a_session_from_expiring_between_folds(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    store.create(_row("seen"))
    store.create(_row("idle"))
    time.sleep(0.01)
    store.observe("seen", np.ones((2, 3)), 1.0, 2.0**50)  # logged: the session row untouched
    assert store.expire(time.time() - 0.005) == (["idle"], [])
    assert store.expire(time.time() + 1) == (["seen"], [])
    assert store._read("SELECT count(*) FROM observation_log", ())[0][0] == 0
    assert store.observe("seen", np.ones((2, 3)), 1.0, 2.0**50) is None
    store.close()


def test_observing_without_waiting_waits_for_nothing_and_changes_nothing(tmp_path: Path) -> None:
    """``observe_nowait`` does nothing (WouldWait) for a session whose counts it does not
    hold yet, or while another connection holds the database; then it counts."""
    db = tmp_path / "n.db"
    store = SQLiteStore(db, busy_timeout_s=5.0)
    store.create(_row("a"))
    with pytest.raises(WouldWait):
        store.observe_nowait("a", np.ones((2, 3)), 1.0, 2.0**50)
    assert store.observe("a", np.ones((2, 3)), 1.0, 2.0**50) is not None
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    start = time.perf_counter()
    with pytest.raises(WouldWait):
        store.observe_nowait("a", np.ones((2, 3)), 1.0, 2.0**50)
    assert time.perf_counter() - start < 1.0  # not the 5 s busy timeout
    holder.execute("ROLLBACK")
    holder.close()
    got = store.observe_nowait("a", np.ones((2, 3)), 1.0, 2.0**50)
    assert got is not None and got.num_observations == 2
    row = store.get("a")
    assert row is not None and row.num_observations == 2 and np.array_equal(row.counts, got.counts)
    store.close()


def test_closing_while_threads_write_and_read_is_safe_and_final(tmp_path: Path) -> None:
    """A session's re-solve may still write (its plan, its lease) or read while the server
    stops; close must not close a connection under it (that crashed the process), and after
    close every call is a StoreError, not a new connection."""
    store = SQLiteStore(tmp_path / "c.db")
    store.create(_row("s"))
    errors: list[BaseException] = []
    stop = threading.Event()

    def hammer(write: bool) -> None:
        try:
            while not stop.is_set():
                if write:
                    store.swap_plan("s", "{}", np.ones((2, 3)))
                else:
                    store.get("s")
        except StoreError as exc:  # the store closed under the loop: the only way out
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(w,)) for w in (True, True, False, False)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    store.close()
    for t in threads:
        t.join(timeout=30)
    stop.set()
    assert not any(t.is_alive() for t in threads)
    assert len(errors) == 4 and all("closed" in str(e) for e in errors), errors
    with pytest.raises(StoreError, match="closed"):
        store.swap_plan("s", "{}", np.ones((2, 3)))
    with pytest.raises(StoreError, match="closed"):
        store.get("s")
    assert SQLiteStore(tmp_path / "c.db").get("s") is not None  # and the file is whole
