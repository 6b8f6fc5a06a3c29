"""Assertions and raw-socket clients shared by the reliability tests."""

from __future__ import annotations

import select
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from tests.conftest import ServerProcess
from tests.integration.test_predict import metric

__all__ = ["RawResponse", "assert_error", "connect", "metric", "read_response", "wait_for"]


def assert_error(r: httpx.Response, status: int, code: str, fragment: str = "") -> None:
    """``r`` is the server's JSON error: exact status, exactly ``{"error", "code"}``, no
    stack trace."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json", r.headers
    body = r.json()
    assert set(body) == {"error", "code"} and isinstance(body["error"], str), body
    assert body["code"] == code, body
    assert fragment in body["error"], body
    assert "Traceback" not in r.text and 'File "' not in r.text, r.text
    if status == 503:
        assert int(r.headers["retry-after"]) >= 1


def wait_for(predicate: object, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(interval)
    return False


def connect(srv: ServerProcess, timeout: float = 10) -> socket.socket:
    parts = urlsplit(srv.url)
    return socket.create_connection((parts.hostname, parts.port), timeout=timeout)


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def readable(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def read_response(sock: socket.socket, timeout: float = 10) -> RawResponse:
    """Read one HTTP/1.1 response (Content-Length framed) from ``sock``."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a full response head: {data!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return RawResponse(int(lines[0].split()[1]), headers, body)
