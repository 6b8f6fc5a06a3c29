"""The exposure settings, on one real server with all of them on: ``allowed_hosts`` (DNS
rebinding; probes exempt), ``docs`` (Swagger UI pinned, under its CSP) and ``metrics_auth``
(/metrics and the v2 statistics behind the key); and their validation."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from server.http.routes.docs import SWAGGER_UI, content_security_policy
from server.settings import Settings
from tests.conftest import ROOT, ServerProcess, start_server
from tests.imagegen import jpeg
from tests.reliability.helpers import assert_error, connect, read_response
from tests.reliability.test_exposure import KEY, UNAUTHORIZED

GOOD = {"host": "api.example.com"}
KEYED = {**GOOD, "x-api-key": KEY}


@pytest.fixture(scope="module")
def srv(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    s = start_server(
        model_dir,
        tmp_path_factory.mktemp("exposure"),
        models="resnet18",
        api_key=KEY,
        metrics_auth="true",
        docs="true",
        warmup_batch_sizes="1",
        allowed_hosts="API.example.com, *.svc.cluster.local",
    )
    yield s
    s.stop()


@pytest.mark.parametrize(
    "host", ["evil.example", "api.example.com.evil.example", "svc.cluster.local", "127.0.0.1",
             "example.com", "x" * 200],
)  # fmt: skip
@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/models"), ("GET", "/metrics"), ("GET", "/openapi.json"),
                         ("GET", "/docs"), ("POST", "/predict"), ("GET", "/nope"), ("GET", "/")],
)  # fmt: skip
def test_other_hosts_are_refused_before_anything_else(
    srv: ServerProcess, host: str, method: str, path: str
) -> None:
    r = srv.client().request(method, path, headers={"host": host, "x-api-key": KEY})
    shown = host if len(host) <= 64 else host[:64] + "..."
    assert_error(r, 400, "invalid_host")
    assert r.json()["error"] == f"host {shown!r} is not served here"


@pytest.mark.parametrize(
    "host", ["api.example.com", "API.EXAMPLE.COM:8000", "resnet.default.svc.cluster.local",
             "a.b.svc.cluster.local:80"],
)  # fmt: skip
def test_allowed_names_any_case_any_port(srv: ServerProcess, host: str) -> None:
    r = srv.client().post(
        "/predict",
        content=jpeg(64, 64, seed=1),
        headers={"host": host, "content-type": "image/jpeg", "x-api-key": KEY},
    )
    assert r.status_code == 200, r.text
    assert len(r.json()["results"][0]["predictions"]) == 5


@pytest.mark.parametrize("host", ["10.244.1.7:8000", "evil.example", ""])
def test_probes_answer_whatever_the_host(srv: ServerProcess, host: str) -> None:
    """Kubernetes' httpGet probes send the pod IP as Host: they must not need it listed."""
    c = srv.client()
    assert c.get("/healthz", headers={"host": host}).json() == {"status": "ok"}
    assert c.get("/readyz", headers={"host": host}).json() == {"status": "ready"}
    assert c.get("/v2/health/live", headers={"host": host}).status_code == 200
    assert c.get("/v2/health/ready", headers={"host": host}).status_code == 200


def test_refused_inference_is_counted_like_any_answer(srv: ServerProcess) -> None:
    def refused() -> float:
        text = srv.client().get("/metrics", headers=KEYED).text
        found = re.search(
            r'^resnet_requests_total\{endpoint="predict",model="resnet18",'
            r'outcome="invalid_host"\} (\S+)$',
            text,
            re.M,
        )
        return float(found[1]) if found else 0.0

    before = refused()
    for path in ("/predict", "/predict/resnet18"):
        r = srv.client().post(path, content=b"x", headers={"host": "evil.example"})
        assert_error(r, 400, "invalid_host")
    assert refused() == before + 2


def test_a_request_without_host_is_refused(srv: ServerProcess) -> None:
    with connect(srv) as sock:
        sock.sendall(b"GET /models HTTP/1.0\r\n\r\n")
        r = read_response(sock)
    assert r.status == 400
    assert json.loads(r.body) == {"error": "host '' is not served here", "code": "invalid_host"}


def test_docs_pin_swagger_ui_and_allow_only_what_it_needs(srv: ServerProcess) -> None:
    r = srv.client().get("/docs", headers=GOOD)
    assert r.status_code == 200 and r.headers["content-type"] == "text/html; charset=utf-8"
    csp = r.headers["content-security-policy"]
    assert csp == content_security_policy()
    policy = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert policy["default-src"] == "'none'" and policy["connect-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'" and policy["base-uri"] == "'none'"
    assert "unsafe" not in csp  # no 'unsafe-inline', no 'unsafe-eval'
    assert policy["style-src"] == "https://cdn.jsdelivr.net"
    # Every script is the pinned bundle (with its integrity hash) or allowed by its hash.
    page = r.text
    external = re.findall(r'<script src="([^"]+)" integrity="(sha384-[^"]+)"', page)
    assert external == [(f"{SWAGGER_UI}/swagger-ui-bundle.js", external[0][1])]
    assert SWAGGER_UI.endswith("/swagger-ui-dist@5.31.0")  # one version, not "@5"
    inline = re.findall(r"<script>(.*?)</script>", page, re.S)
    assert len(inline) == 1 and page.count("<script") == 2
    digest = base64.b64encode(hashlib.sha256(inline[0].encode()).digest()).decode()
    assert policy["script-src"] == f"https://cdn.jsdelivr.net 'sha256-{digest}'"
    assert re.search(
        rf'<link rel="stylesheet" href="{SWAGGER_UI}/swagger-ui.css" '
        r'integrity="sha384-[A-Za-z0-9+/=]{64}" crossorigin="anonymous">',
        page,
    )
    assert "validatorUrl: null" in inline[0]  # no image from validator.swagger.io
    assert srv.client().get("/openapi.json", headers=GOOD).json()["info"]["title"] == (
        "resnet-server"
    )
    assert_error(srv.client().get("/redoc", headers=GOOD), 404, "not_found")


@pytest.mark.parametrize(
    "path", ["/metrics", "/v2/models/stats", "/v2/models/resnet18/stats",
             "/v2/models/resnet18/versions/1/stats"],
)  # fmt: skip
def test_metrics_auth_puts_metrics_and_statistics_behind_the_key(
    srv: ServerProcess, path: str
) -> None:
    c = srv.client()
    for headers in (GOOD, {**GOOD, "x-api-key": "wrong"}):
        assert_error(c.get(path, headers=headers), 401, "unauthorized", UNAUTHORIZED)
    r = c.get(path, headers=KEYED)
    assert r.status_code == 200, r.text
    if path == "/metrics":
        assert "resnet_requests_total" in r.text
    else:
        assert r.json()["model_stats"][0]["name"] == "resnet18"
    assert c.get("/models", headers=GOOD).status_code == 200  # metadata stays open


def test_metrics_auth_needs_a_key_and_hosts_are_names() -> None:
    with pytest.raises(ValidationError, match="metrics_auth needs api_key: there is no key"):
        Settings(model_dir=ROOT, metrics_auth=True)
    for bad in ["example.com:8000", "*example.com", "a.*.example.com", "http://example.com"]:
        with pytest.raises(ValidationError, match="a host name without port, a"):
            Settings(model_dir=ROOT, allowed_hosts=bad)
    s = Settings(model_dir=ROOT, allowed_hosts="Example.COM, *.svc , [::1],*")
    assert s.allowed_hosts == ["example.com", "*.svc", "[::1]", "*"]
    defaults = Settings(model_dir=ROOT)
    assert (defaults.docs, defaults.metrics_auth, defaults.allowed_hosts) == (False, False, [])
    assert defaults.stuck_after_s == 30.0
