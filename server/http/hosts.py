"""The ``allowed_hosts`` check: answer only requests addressed to a name the server goes by.

Against DNS rebinding: a page on ``evil.example`` that re-points its name to an internal
address can make a browser send requests to a server with no API key; the browser still
sends ``Host: evil.example``, which is not on the list. Starlette's ``TrustedHostMiddleware``
rules (an exact name, ``*.domain`` for its subdomains, ``*`` for any; the port ignored;
case-insensitive), with two differences: a refusal is the server's JSON error (400
``invalid_host``), and the health probes are exempt, since Kubernetes' HTTP probes send the
pod's IP as ``Host`` (which changes with every pod) and they read nothing an attacker wants.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from contract.errors import InvalidHost, ServerError
from server.http.limits import send_error

#: Answered whatever the Host: liveness and readiness, both protocols.
PROBES = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})


def host_allowed(host: str, allowed: list[str]) -> bool:
    """Whether ``host`` (a Host header, port and all) matches a pattern of ``allowed``
    (lowercase names, ``*.domain`` or ``*``)."""
    host = host.lower()
    # The port off: "name:port", "[IPv6]:port".
    name = host.split("]", 1)[0] + "]" if host.startswith("[") else host.split(":", 1)[0]
    for pattern in allowed:
        if pattern == "*" or name == pattern:
            return True
        if pattern.startswith("*.") and name.endswith(pattern[1:]):
            return True
    return False


class AllowedHosts:
    """ASGI middleware: HTTP requests whose Host matches none of ``allowed`` get 400, counted
    by ``on_refusal`` (no route sees them)."""

    def __init__(
        self,
        app: ASGIApp,
        allowed: list[str],
        on_refusal: Callable[[Scope, ServerError], None] = lambda scope, err: None,
    ) -> None:
        self.app = app
        self.allowed = allowed
        self.on_refusal = on_refusal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in PROBES:
            host = Headers(scope=scope).get("host", "")
            if not host_allowed(host, self.allowed):
                shown = host if len(host) <= 64 else host[:64] + "..."
                err = InvalidHost(f"host {shown!r} is not served here")
                self.on_refusal(scope, err)
                await send_error(send, err)
                return
        await self.app(scope, receive, send)
