"""Write or check openapi/openapi.json: `python -m service.openapi_export [--check]`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from service.main import create_app

SPEC_PATH = Path(__file__).resolve().parent.parent / "openapi" / "openapi.json"


def render() -> str:
    """The app's OpenAPI document as stable, indented JSON."""
    return json.dumps(create_app().openapi(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not SPEC_PATH.exists() or SPEC_PATH.read_text() != text:
            sys.stderr.write(
                f"{SPEC_PATH} differs from the app; run python -m service.openapi_export\n"
            )
            return 1
        return 0
    SPEC_PATH.parent.mkdir(parents=True, exist_ok=True)
    SPEC_PATH.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
