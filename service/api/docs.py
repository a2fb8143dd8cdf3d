"""`install_offline_docs(app)`: Swagger UI (/docs) and ReDoc (/redoc) without a CDN.

FastAPI's own pages load their JS/CSS from cdn.jsdelivr.net (and ReDoc its fonts from Google), so they
are blank offline and in locked-down clusters. Here the same pages (FastAPI's `get_swagger_ui_html`,
`get_redoc_html`) point at the assets shipped in the `fastapi-offline` wheel, served under STATIC_URL:
the HTML holds no outside URL. Only that package's static files are used, not its code.
Create the app with `docs_url=None, redoc_url=None`, then call this. URLs are prefixed with the
request's root_path, as FastAPI's `setup()` does. None of these routes is in the OpenAPI schema.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC_URL = "/static/docs"
DOCS_URL = "/docs"
REDOC_URL = "/redoc"


def asset_dir() -> Path:
    """swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js, favicon.png (package data of fastapi-offline)."""
    return Path(str(files("fastapi_offline").joinpath("static")))


def install_offline_docs(app: FastAPI, static_url: str = STATIC_URL, docs_url: str = DOCS_URL,
                         redoc_url: str = REDOC_URL) -> None:
    openapi_url = app.openapi_url
    if not openapi_url:
        return
    app.mount(static_url, StaticFiles(directory=asset_dir()), name="docs-assets")
    oauth2_redirect_url = app.swagger_ui_oauth2_redirect_url
    # Swagger UI's default validatorUrl would load a badge from validator.swagger.io for non-local hosts.
    swagger_ui_parameters = {"validatorUrl": None, **(app.swagger_ui_parameters or {})}

    async def swagger_ui_html(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{static_url}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{static_url}/swagger-ui.css",
            swagger_favicon_url=f"{root}{static_url}/favicon.png",
            oauth2_redirect_url=root + oauth2_redirect_url if oauth2_redirect_url else None,
            init_oauth=app.swagger_ui_init_oauth,
            swagger_ui_parameters=swagger_ui_parameters,
        )

    async def swagger_ui_redirect(request: Request) -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    async def redoc_html(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_redoc_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{static_url}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{static_url}/favicon.png",
            with_google_fonts=False,
        )

    app.add_route(docs_url, swagger_ui_html, include_in_schema=False)
    if oauth2_redirect_url:
        app.add_route(oauth2_redirect_url, swagger_ui_redirect, include_in_schema=False)
    app.add_route(redoc_url, redoc_html, include_in_schema=False)
