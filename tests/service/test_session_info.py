"""A session's info never pairs "not resolving" with a plan a re-solve already replaced.

A client waits for ``resolving`` to turn false and then trusts the version and drift (the
sidecar test does, before a kill -9). The flag is read before the row: a re-solve that ends
between the two reads shows as still resolving with the old row. Read after the row, it showed
as done with the old version and drift, and the next read (another process after a restart)
disagreed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.schemas import SessionCreate
from service.sessions import SessionManager
from service.settings import Settings
from service.store import SQLiteStore


@pytest.mark.parametrize("as_json", [False, True])
def test_a_re_solve_ending_during_the_read_shows_as_resolving(
    tmp_path: Path, as_json: bool
) -> None:
    spec = SessionCreate.model_validate(
        {
            "hardware_preset": "gpu-ndp-4dimm",
            "model_preset": "deepseek-v2-lite",
            "layout": "striped",
            "policy": {"backend": "greedy"},
        }
    )
    settings = Settings(db_path=tmp_path / "s.db")
    manager = SessionManager(SQLiteStore(settings.db_path), settings)
    try:
        sid = manager.create(spec).id
        manager._resolving.add(sid)  # a re-solve is running ...
        read_row = manager.store.get

        def get_then_finish(session_id: str):  # type: ignore[no-untyped-def]
            row = read_row(session_id)
            manager._resolving.discard(session_id)  # ... and ends right after the row is read
            return row

        manager.store.get = get_then_finish  # type: ignore[method-assign]
        if as_json:
            resolving = json.loads(manager.info_json(sid))["resolving"]
        else:
            resolving = manager.info(sid).resolving
        assert resolving, "an old row was reported with the re-solve done"
        assert not manager.info(sid).resolving  # the next read sees it finished
    finally:
        manager.close()
