"""Swagger UI and ReDoc served from files installed with the package (no CDN): FastAPI's
self-hosting recipe, with the JavaScript and CSS that the `fastapi-offline` wheel ships.

Air-gapped GPU-NDP boxes and H20 clusters get working docs; nothing is fetched at run time.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC_URL = "/static/docs"
ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")


def _package_dir(name: str) -> Path:
    """An installed package's directory, found without importing (executing) the package."""
    spec = find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {name} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def assets_dir() -> Path:
    """The installed directory holding ``ASSETS``."""
    return _package_dir("fastapi_offline") / "static"


def install_docs(app: FastAPI) -> None:
    """Serve /docs (Swagger UI), /redoc and the OAuth2 redirect from local files.

    The app must be created with ``docs_url=None, redoc_url=None``.
    """
    static = assets_dir()
    missing = [name for name in ASSETS if not (static / name).exists()]
    if missing:
        raise RuntimeError(f"docs assets missing from {static}: {missing}")
    app.mount(STATIC_URL, StaticFiles(directory=static), name="docs-static")
    # plotly's script for the ?format=html timelines (service.pictures.PLOTLY_JS_URL)
    plotly_dir = _package_dir("plotly") / "package_data"
    app.mount("/static/plotly", StaticFiles(directory=plotly_dir), name="plotly-static")
    openapi_url = app.openapi_url or "/openapi.json"
    redirect_url = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=redirect_url,
            swagger_js_url=f"{STATIC_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{STATIC_URL}/swagger-ui.css",
            swagger_favicon_url=f"{STATIC_URL}/favicon.png",
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @app.get(redirect_url, include_in_schema=False)
    def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{STATIC_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{STATIC_URL}/favicon.png",
            with_google_fonts=False,
        )
