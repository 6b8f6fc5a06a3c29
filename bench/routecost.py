"""What FastAPI's per-request machinery costs a route: ``python -m bench.routecost``.

Four routes answer the same ``POST /x/{model}?top_k=3`` with the same tiny response, called
as ASGI apps in this process (no sockets, no server: only the framework's own work):

- ``fastapi``: the shape ``POST /predict`` had: a router-level API-key dependency that
  depends on the app state, the state as a dependency, a path and a query parameter;
- ``fastapi-request``: a FastAPI route taking the request only, parameters read by hand;
- ``direct``: :class:`server.http.direct.DirectRoute`, what ``/predict`` is now;
- ``starlette``: a plain Starlette ``Route``, the floor.

Rounds interleave the routes; prints the median CPU time (this thread) per call in us.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import MutableMapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from starlette.routing import Route

from contract.cpuinfo import read_cpuinfo
from server.http.direct import DirectRoute, int_query

_BODY = b'{"ok":true}'


async def _state(request: Request) -> object:
    return request.app.state.server


async def _key(request: Request, state: Annotated[object, Depends(_state)]) -> None:
    request.headers.get("authorization", "")


async def _by_hand(request: Request) -> Response:
    """What every route but ``fastapi`` does itself: state, key header, path, query."""
    _ = request.app.state.server, request.headers.get("authorization", "")
    _ = request.path_params["model"], int_query(request, "top_k", 5)
    return Response(_BODY, media_type="application/json")


def build() -> FastAPI:
    app = FastAPI()
    app.state.server = object()
    dependent = APIRouter(dependencies=[Depends(_key)])

    @dependent.post("/fastapi/{model}")
    async def with_dependencies(
        request: Request,
        state: Annotated[object, Depends(_state)],
        model: str,
        top_k: Annotated[int, Query()] = 5,
    ) -> Response:
        return Response(_BODY, media_type="application/json")

    plain = APIRouter()
    plain.add_api_route("/fastapi-request/{model}", _by_hand, methods=["POST"])
    direct = APIRouter(route_class=DirectRoute)
    direct.add_api_route("/direct/{model}", _by_hand, methods=["POST"])
    for router in (dependent, plain, direct):
        app.include_router(router)
    app.router.routes.append(Route("/starlette/{model}", _by_hand, methods=["POST"]))
    return app


async def _call(app: FastAPI, path: str) -> None:
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"top_k=3",
        "root_path": "",
        "headers": [(b"host", b"bench"), (b"content-type", b"image/jpeg")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(scope, receive, send)
    if status != [200]:
        raise RuntimeError(f"{path}: answered {status}")


async def measure(calls: int, rounds: int) -> dict[str, list[float]]:
    """us of this thread's CPU per call, one entry per round, by route."""
    app = build()
    names = ["fastapi", "fastapi-request", "direct", "starlette"]
    for name in names:  # warm: first calls build caches
        for _ in range(200):
            await _call(app, f"/{name}/m")
    out: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        for name in names:
            start = time.thread_time()
            for _ in range(calls):
                await _call(app, f"/{name}/m")
            out[name].append((time.thread_time() - start) / calls * 1e6)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=3000, help="calls per route per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    cpu = read_cpuinfo()
    print(f"CPU: {cpu.model}, int8 units {cpu.int8_units}, bf16 {cpu.bf16}, {os.cpu_count()} cores")
    res = asyncio.run(measure(args.calls, args.rounds))
    base = statistics.median(res["fastapi"])
    print("| route | us / call (median) | rounds | vs fastapi |")
    print("|---|---|---|---|")
    for name, xs in res.items():
        med = statistics.median(xs)
        print(f"| {name} | {med:.0f} | {', '.join(f'{x:.0f}' for x in xs)} | {med / base:.2f} |")


if __name__ == "__main__":
    main()
