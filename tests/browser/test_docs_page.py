"""``/docs`` (the ``docs`` setting) in a real Chromium: Swagger UI renders the server's
OpenAPI document under the page's Content-Security-Policy, and a bundle that is not the
pinned one is refused by its integrity hash.

The CDN is played by a local HTTPS server holding npm's ``swagger-ui-dist`` at the pinned
version (what jsDelivr serves byte for byte, fetched with ``npm pack``): Chromium resolves
cdn.jsdelivr.net to it (``--host-resolver-rules``) and accepts its self-signed certificate.
Skipped where npm or its registry is unreachable.
"""

from __future__ import annotations

import functools
import http.server
import shutil
import ssl
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.http.routes.docs import SWAGGER_UI
from tests.browser.chromium import Browser
from tests.conftest import ServerProcess, free_port, start_server

VERSION = SWAGGER_UI.rsplit("@", 1)[1]
TITLE = "return document.querySelector('.swagger-ui .info .title')?.textContent || ''"
OPERATIONS = "return document.querySelectorAll('.swagger-ui .opblock').length"
_HEALTHZ = "document.querySelector('#operations-health-healthz_healthz_get')"
TRY_HEALTHZ = f"{_HEALTHZ}.querySelector('.try-out__btn').click();"
HEALTHZ_ANSWER = f"""
const op = {_HEALTHZ};
const run = op.querySelector('.execute');
if (run && !op.dataset.ran) {{ op.dataset.ran = '1'; run.click(); }}
return op.querySelector('.responses-wrapper').textContent;  // the live answer: "ok"
"""


class _Cdn(http.server.SimpleHTTPRequestHandler):
    def end_headers(self) -> None:
        self.send_header("Access-Control-Allow-Origin", "*")  # as jsDelivr: SRI needs CORS
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def swagger_ui_dist(out: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed")
    got = subprocess.run(
        [npm, "pack", f"swagger-ui-dist@{VERSION}"],
        cwd=out,
        capture_output=True,
        text=True,
        timeout=180,
    )
    if got.returncode != 0:
        pytest.skip(f"npm pack swagger-ui-dist@{VERSION} failed: {got.stderr[-300:]}")
    with tarfile.open(out / got.stdout.strip().splitlines()[-1]) as tar:
        tar.extractall(out, filter="data")
    return out / "package"


@pytest.fixture(scope="module")
def cdn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """(port, the directory behind /npm/swagger-ui-dist@VERSION/) of a local HTTPS 'CDN'."""
    tmp = tmp_path_factory.mktemp("cdn")
    served = tmp / "root" / "npm" / f"swagger-ui-dist@{VERSION}"
    served.parent.mkdir(parents=True)
    shutil.copytree(swagger_ui_dist(tmp), served)
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=cdn.jsdelivr.net",
            "-keyout",
            str(tmp / "key.pem"),
            "-out",
            str(tmp / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
    handler = functools.partial(_Cdn, directory=str(tmp / "root"))
    port = free_port()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield port, served
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def docs_server(
    model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    srv = start_server(
        model_dir,
        tmp_path_factory.mktemp("docs"),
        models="resnet18",
        warmup_batch_sizes="1",
        docs="true",
    )
    yield srv
    srv.stop()


@pytest.fixture
def browser(cdn: tuple[int, Path], tmp_path: Path) -> Iterator[Browser]:
    flags = (
        f"--host-resolver-rules=MAP cdn.jsdelivr.net:443 127.0.0.1:{cdn[0]}",
        "--ignore-certificate-errors",
    )
    b = Browser(tmp_path / "profile", tmp_path / "chromedriver.log", flags)
    yield b
    b.quit()


def csp_violations(browser: Browser) -> list[str]:
    return [e["message"] for e in browser.console() if "Content Security Policy" in e["message"]]


def test_swagger_ui_renders_the_document_under_its_policy(
    docs_server: ServerProcess, browser: Browser
) -> None:
    browser.driver.get(f"{docs_server.url}/docs")
    browser.wait(lambda: "resnet-server" in browser.js(TITLE))
    paths = docs_server.client().get("/openapi.json").json()["paths"]
    operations = sum(len(item) for item in paths.values())
    browser.wait(lambda: browser.js(OPERATIONS) == operations)
    # Open every operation (parameters, schemas, highlighted examples), then try /healthz out:
    # the request goes from the page to this server, as connect-src 'self' allows.
    browser.js("document.querySelectorAll('.opblock-summary-control').forEach((s) => s.click())")
    browser.wait(
        lambda: (
            browser.js("return document.querySelectorAll('.opblock.is-open').length") == operations
        )
    )
    browser.js(TRY_HEALTHZ)
    browser.wait(lambda: '"status": "ok"' in browser.js(HEALTHZ_ANSWER))
    assert csp_violations(browser) == []
    hosts = {r.url.split("/")[2] for r in browser.requests() if r.url.startswith("http")}
    assert hosts == {docs_server.url.split("/")[2], "cdn.jsdelivr.net"}, hosts


def test_a_bundle_that_is_not_the_pinned_one_is_never_run(
    docs_server: ServerProcess, browser: Browser, cdn: tuple[int, Path]
) -> None:
    bundle = cdn[1] / "swagger-ui-bundle.js"
    original = bundle.read_bytes()
    bundle.write_bytes(original + b"\nwindow.tampered = true;\n")
    try:
        browser.driver.get(f"{docs_server.url}/docs")
        browser.wait(lambda: any("integrity" in e["message"] for e in browser.console()), 30)
        assert browser.js("return typeof SwaggerUIBundle") == "undefined"
        assert browser.js("return window.tampered === true") is False
        assert browser.js(TITLE) == ""
    finally:
        bundle.write_bytes(original)
