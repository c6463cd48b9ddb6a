"""Swagger UI and ReDoc work with no network: the pages reference only this server's files, the
files are served, and a headless browser (when one is installed) renders every operation."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from bench.live import Server
from service.main import create_app

URL_ATTR = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url\(\s*["']?([^"')]+)""")


def referenced_urls(html: str) -> list[str]:
    """Every src/href attribute and CSS url() of a page, plus the URLs its inline script loads."""
    urls = [a or b for a, b in URL_ATTR.findall(html)]
    urls += re.findall(r"""url\s*:\s*['"]([^'"]+)['"]""", html)  # SwaggerUIBundle({url: ...})
    urls += re.findall(r"""spec-url\s*=\s*["']([^"']+)""", html)  # <redoc spec-url=...>
    return urls


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_reference_only_local_files_and_they_are_served(page: str) -> None:
    client = TestClient(create_app())
    html = client.get(page).text
    urls = referenced_urls(html)
    assert urls, html
    external = [u for u in urls if not u.startswith("/") or u.startswith("//")]
    assert external == [], external
    assert "cdn" not in html.lower() and "googleapis" not in html
    for url in urls:
        r = client.get(url)
        assert r.status_code == 200 and len(r.content) > 100, url


def test_a_cdn_link_would_be_caught() -> None:
    """The check above fails on the page FastAPI serves by default (jsDelivr)."""
    from fastapi.openapi.docs import get_swagger_ui_html

    html = get_swagger_ui_html(openapi_url="/openapi.json", title="t").body.decode()
    assert any(u.startswith("https://") for u in referenced_urls(html))


def browser() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "sessions.db")
    try:
        srv.start(timeout_s=120)  # a loaded CI machine starts it slowly
        yield srv
    finally:
        srv.stop()  # also when it never became healthy


@pytest.mark.skipif(browser() is None, reason="no chromium installed (.ci/run installs it)")
def test_headless_browser_lists_every_operation_with_no_network(
    server: Server, tmp_path: Path
) -> None:
    spec = TestClient(create_app()).get("/openapi.json").json()
    operations = [(method.upper(), path) for path, item in spec["paths"].items() for method in item]
    out = subprocess.run(
        [
            browser() or "chromium", "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
            # no network: every host but the test server's loopback address fails to resolve
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--proxy-server=http://0.0.0.0:9", "--proxy-bypass-list=127.0.0.1",
            "--virtual-time-budget=20000", "--dump-dom", f"{server.url}/docs",
        ],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    dom = out.stdout
    assert "swagger-ui" in dom, out.stderr[-2000:]
    rendered = set(
        re.findall(r'opblock-summary-method">(\w+)<.*?data-path="([^"]+)"', dom, flags=re.S)
    )
    missing = [op for op in operations if op not in rendered]
    assert not missing, (missing, len(rendered))
