"""Schema fuzzing with schemathesis against a live server's own OpenAPI: every operation,
valid and invalid inputs; no 5xx, and every response matches its documented schema.

CI runs FUZZ_EXAMPLES (default 5) examples per operation and mode; `make fuzz` and
`moesched bench reliability` run many more. (schemathesis' pytest plugin does not load under
pytest 9, so ``bench.live.fuzz`` drives the operations' hypothesis strategies directly.)
"""

from __future__ import annotations

import os
from pathlib import Path

from bench.live import Server, fuzz

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "5"))


def test_no_server_errors_and_conforming_responses(tmp_path: Path) -> None:
    srv = Server(tmp_path / "fuzz.db", env={"MOESCHED_MAX_DEADLINE_S": "1"})
    srv.start()
    try:
        counts = fuzz(srv.url, EXAMPLES)
    finally:
        srv.stop()
    assert counts["cases"] > 50
    assert counts["server_errors"] == 0, counts
    assert counts["schema_violations"] == 0, counts
