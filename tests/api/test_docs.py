"""/docs (Swagger UI) and /redoc work offline: their pages name no outside URL, every asset they load
comes from the service itself (service/api/docs.py), and a headless Chromium that cannot reach
anything but 127.0.0.1 renders the operations.

Chromium is the Debian package `chromium` (`make tools` installs it as root); without it the render
test is skipped, except in CI (CI=true), where it fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from service.api.docs import STATIC_URL
from service.app import create_app
from service.settings import Settings
from tests.api.gated import SCRIPT

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "tests" / ".artifacts"
SUBPROCESS_TIMEOUT_S = 60
API_KEY = "docs-test-key"


class AssetLinks(HTMLParser):
    """Every <script src> and <link href> of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = {"script": "src", "link": "href"}.get(tag)
        for name, value in attrs:
            if name == wanted and value:
                self.urls.append(value)


def asset_urls(html: str) -> list[str]:
    parser = AssetLinks()
    parser.feed(html)
    return parser.urls


@pytest.fixture
def server(scripted_server) -> str:
    # API keys on: the docs, the schema and the assets stay open without one.
    return scripted_server(SCRIPT, api_keys=API_KEY)


@pytest.mark.parametrize("page, scripts", [("/docs", {"swagger-ui-bundle.js"}), ("/redoc", {"redoc.standalone.js"})])
def test_docs_pages_load_only_local_assets(server, page, scripts):
    response = httpx.get(f"{server}{page}", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert re.findall(r"https?://", html) == []  # no CDN, no Google Fonts, no validator badge
    assert "/openapi.json" in html
    urls = asset_urls(html)
    assert scripts <= {url.rsplit("/", 1)[-1] for url in urls}, urls
    for url in urls:
        assert url.startswith(f"{STATIC_URL}/"), url
        asset = httpx.get(f"{server}{url}", timeout=30)
        assert asset.status_code == 200, url
        assert len(asset.content) > 4000, url  # favicon.png is the smallest, ~5 kB


def test_docs_routes_are_open_and_not_in_the_schema(server):
    assert httpx.post(f"{server}/v1/tipo", json={"tags": "1girl"}).status_code == 401  # keys are on
    redirect = httpx.get(f"{server}/docs/oauth2-redirect")
    assert redirect.status_code == 200 and re.findall(r"https?://", redirect.text) == []
    schema = httpx.get(f"{server}/openapi.json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert "/v1/tipo" in paths
    assert not [p for p in paths if p.startswith(("/docs", "/redoc", "/static"))]


def test_docs_urls_follow_the_root_path(tmp_path):
    # No lifespan runs (no `with`): the pages need no engine.
    app = create_app(Settings(engine="scripted", scripted_path=str(tmp_path / "none.json")))
    client = TestClient(app, root_path="/tipo")  # as behind a proxy serving the app under /tipo
    docs, redoc = client.get("/tipo/docs").text, client.get("/tipo/redoc").text
    assert "'/tipo/openapi.json'" in docs and "'/tipo/docs/oauth2-redirect'" in docs
    assert '"/tipo/openapi.json"' in redoc
    urls = asset_urls(docs) + asset_urls(redoc)
    assert f"/tipo{STATIC_URL}/swagger-ui-bundle.js" in urls and f"/tipo{STATIC_URL}/redoc.standalone.js" in urls
    for url in urls:  # ASGI: the path a browser sends includes the root_path
        assert client.get(url).status_code == 200, url


# --- a real browser, with every outside URL unreachable

def chromium_binary() -> str:
    binary = shutil.which("chromium")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing on CI (make tools: apt-get install -y chromium)")
        pytest.skip("chromium not installed (Debian package chromium; `make tools` as root)")
    return binary


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    # A proxy on a dead port: anything but 127.0.0.1 fails to load, so the page renders offline or not at all.
    command = [chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-first-run", f"--user-data-dir={tmp_path / 'chromium-profile'}",
               "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=127.0.0.1", "--virtual-time-budget=10000", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def test_chromium_renders_swagger_ui_and_redoc_offline(server, tmp_path):
    chromium_binary()
    swagger = chromium(tmp_path, "--dump-dom", f"{server}/docs").stdout
    # Only what the scripts built from /openapi.json: operation blocks, paths and summaries.
    assert 'class="opblock opblock-post' in swagger, swagger[-2000:]
    assert "/v1/tipo" in swagger and "/v1/chat/completions" in swagger
    assert "Optimize one prompt with TIPO" in swagger

    redoc = chromium(tmp_path, "--dump-dom", f"{server}/redoc").stdout
    assert "http-verb post" in redoc, redoc[-2000:]
    assert "/v1/tipo" in redoc and "/v1/chat/completions" in redoc
    assert "Optimize one prompt with TIPO" in redoc

    screenshot = tmp_path / "docs.png"
    chromium(tmp_path, f"--screenshot={screenshot}", "--window-size=1280,2000", f"{server}/docs")
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 20_000
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(screenshot, ARTIFACTS / "docs.png")
