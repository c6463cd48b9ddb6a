"""Sessions on a real PostgreSQL server (started for the test run by tests/with_services.sh):
the same store contract as SQLite, and what several replicas on one database rely on."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from service.pg_store import PostgresStore
from service.store import SessionRow

PG_URL = os.environ.get("MOESCHED_TEST_PG_URL", "")
pytestmark = pytest.mark.skipif(
    not PG_URL, reason="needs MOESCHED_TEST_PG_URL (make test starts a PostgreSQL server)"
)


@pytest.fixture
def store() -> Iterator[PostgresStore]:
    s = PostgresStore(PG_URL)
    yield s
    s.close()


def new_row(shape: tuple[int, int] = (2, 4)) -> SessionRow:
    counts = np.arange(shape[0] * shape[1], dtype=np.float64).reshape(shape)
    return SessionRow(uuid.uuid4().hex, '{"x": 1}', counts, counts.copy(), '{"plan": 1}', 1, 0)


def test_migrations_apply_once_even_when_replicas_start_together() -> None:
    stores: list[PostgresStore] = []
    threads = [threading.Thread(target=lambda: stores.append(PostgresStore(PG_URL)))
               for _ in range(3)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        versions = stores[0]._read("SELECT version FROM schema_migrations ORDER BY version")
        assert versions == [(1,)]
        assert all("up to date" in s.found or "applied" in s.found for s in stores)
    finally:
        for s in stores:
            s.close()


def test_session_round_trip_counts_and_plan_swap(store: PostgresStore) -> None:
    row = new_row()
    store.create(row)
    got = store.get(row.id)
    assert got is not None and np.array_equal(got.counts, row.counts) and got.version == 1
    hist = np.ones((2, 4))
    counts, nobs = store.add_counts(row.id, hist, decay=0.5, cap=3.0) or (None, 0)
    assert nobs == 1
    assert counts is not None and np.array_equal(counts, np.minimum(row.counts * 0.5 + 1, 3.0))
    assert store.swap_plan(row.id, '{"plan": 2}', counts) == 2
    again = store.get(row.id)
    assert again is not None and again.plan_json == '{"plan": 2}' and again.version == 2
    assert np.array_equal(again.plan_counts, counts)
    assert store.add_counts("nope", hist, 1.0, 10.0) is None
    assert store.swap_plan("nope", "{}", counts) is None
    assert store.delete(row.id) and not store.delete(row.id)
    assert store.get(row.id) is None


def test_an_observation_id_is_counted_once(store: PostgresStore) -> None:
    row = new_row()
    store.create(row)
    hist = np.ones((2, 4))
    first = store.observe(row.id, hist, 1.0, 1e9, "obs-1")
    retry = store.observe(row.id, hist, 1.0, 1e9, "obs-1")
    other = store.observe(row.id, hist, 1.0, 1e9, "obs-2")
    assert first is not None and retry is not None and other is not None
    assert (first.num_observations, retry.num_observations, other.num_observations) == (1, 1, 2)
    assert (first.counted, retry.counted, other.counted) == (True, False, True)
    assert np.array_equal(retry.counts, first.counts)
    assert np.array_equal(other.counts, row.counts + 2)
    assert np.array_equal(other.plan_counts, row.plan_counts) and other.version == 1


def test_two_replicas_count_every_concurrent_observation(store: PostgresStore) -> None:
    row = new_row((3, 8))
    store.create(row)
    other = PostgresStore(PG_URL)
    try:
        hist = np.ones((3, 8))

        def observe(s: PostgresStore, n: int) -> None:
            for _ in range(n):
                s.add_counts(row.id, hist, 1.0, 1e12)

        threads = [threading.Thread(target=observe, args=(s, 25))
                   for s in (store, other) for _ in range(2)]  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        got = store.get(row.id)
        assert got is not None and got.num_observations == 100
        assert np.array_equal(got.counts, row.counts + 100)
    finally:
        other.close()


def test_one_replica_at_a_time_holds_the_resolve_lease(store: PostgresStore) -> None:
    row = new_row()
    store.create(row)
    assert store.try_lease(row.id, "replica-a", 30.0)
    assert not store.try_lease(row.id, "replica-b", 30.0)
    assert store.try_lease(row.id, "replica-a", 30.0)  # the holder may renew
    store.release_lease(row.id, "replica-b")  # not the owner: no effect
    assert not store.try_lease(row.id, "replica-b", 30.0)
    store.release_lease(row.id, "replica-a")
    assert store.try_lease(row.id, "replica-b", 0.0)  # expires at once
    assert store.try_lease(row.id, "replica-a", 30.0)  # an expired lease is free


def test_ep_window_is_appended_and_bounded(store: PostgresStore) -> None:
    sid = uuid.uuid4().hex
    placement = np.array([[0, 1, 2, 3], [3, 2, 1, 0]])
    store.ep_create(sid, '{"num_layers": 2, "num_experts": 4}', placement)
    for seq in range(1, 6):
        assert store.ep_append(sid, seq, np.full((2, 4), seq), keep=3)
    got = store.ep_get(sid, (2, 4))
    assert got is not None and got.num_batches == 5
    assert [int(w[0, 0]) for w in got.window] == [3, 4, 5]
    assert np.array_equal(got.placement, placement)
    assert store.ep_swap(sid, placement[:, ::-1], version=2, moved=4)
    again = store.ep_get(sid, (2, 4))
    assert again is not None and again.version == 2 and again.moved_last == 4
    assert store.ep_spec(sid) == '{"num_layers": 2, "num_experts": 4}'
    assert store.ep_delete(sid) and store.ep_get(sid, (2, 4)) is None
    assert not store.ep_append(sid, 6, np.zeros((2, 4)), keep=3)


def test_expire_forgets_idle_sessions(store: PostgresStore) -> None:
    row = new_row()
    store.create(row)
    gone, _ = store.expire(idle_before_s=1e18)
    assert row.id in gone and store.get(row.id) is None
    assert store.count()[0] >= 0 and store.db_bytes() > 0
