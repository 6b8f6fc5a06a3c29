"""DirectRoute: FastAPI documents it, nothing of FastAPI's runs per request, and a route that
declares what would not run is refused at declaration."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response

from contract.errors import InvalidParameter
from server.app import create_app
from server.http.direct import DirectRoute, int_query, path_param, query_param
from server.http.errors import install_handlers
from server.http.routes import predict, v2
from server.settings import Settings


def _request(query: bytes) -> Request:
    return Request({"type": "http", "query_string": query, "headers": []})


@pytest.mark.parametrize(
    ("query", "expected"),
    [(b"", 5), (b"top_k=3", 3), (b"top_k=+7", 7), (b"top_k=-2", -2), (b"top_k=%2012%20", 12),
     (b"top_k=1&top_k=9", 9), (b"top_k=999999999", 999999999), (b"other=x", 5)],
)  # fmt: skip
def test_int_query_reads_integers(query: bytes, expected: int) -> None:
    assert int_query(_request(query), "top_k", 5) == expected


@pytest.mark.parametrize(
    "query",
    [b"top_k=", b"top_k=abc", b"top_k=2.5", b"top_k=1e3", b"top_k=1_000", b"top_k=%D9%A3",
     b"top_k=+", b"top_k=--1", b"top_k=1000000000", b"top_k=" + b"9" * 5000],
)  # fmt: skip
def test_int_query_refuses_the_rest_naming_the_parameter(query: bytes) -> None:
    with pytest.raises(InvalidParameter, match=r"query parameter top_k: .* is not an integer") as e:
        int_query(_request(query), "top_k", 5)
    assert len(str(e.value)) < 120  # a huge value is not echoed whole


def test_declared_parameters_or_dependencies_are_refused() -> None:
    async def check() -> None:
        pass

    router = APIRouter(route_class=DirectRoute)
    with pytest.raises(TypeError, match="top_k"):

        @router.post("/a")
        async def with_query(request: Request, top_k: Annotated[int, Query()] = 5) -> Response:
            return Response()

    with pytest.raises(TypeError, match="model"):

        @router.post("/b/{model}")
        async def with_path(request: Request, model: str) -> Response:
            return Response()

    guarded = APIRouter(route_class=DirectRoute, dependencies=[Depends(check)])
    with pytest.raises(TypeError, match="check"):  # an API-key dependency would be skipped

        @guarded.post("/c")
        async def under_a_dependency(request: Request) -> Response:
            return Response()


@pytest.mark.asyncio
async def test_endpoint_gets_the_request_and_errors_map_as_usual() -> None:
    router = APIRouter(route_class=DirectRoute)

    @router.post(
        "/m/{name}",
        openapi_extra={"parameters": [path_param("name"), query_param("n", {"type": "integer"})]},
    )
    async def endpoint(request: Request) -> Response:
        n = int_query(request, "n", 1)
        return Response(f"{request.path_params['name']}:{n}", media_type="text/plain")

    app = FastAPI()
    app.include_router(router)
    install_handlers(app)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        ok = await client.post("/m/abc?n=4")
        assert (ok.status_code, ok.text) == (200, "abc:4")
        bad = await client.post("/m/abc?n=x")
        assert bad.status_code == 422
        assert bad.json() == {
            "error": "invalid request: query parameter n: 'x' is not an integer",
            "code": "invalid_parameter",
        }
    params = app.openapi()["paths"]["/m/{name}"]["post"]["parameters"]
    assert [(p["in"], p["name"], p["required"]) for p in params] == [
        ("path", "name", True),
        ("query", "n", False),
    ]


def test_the_servers_direct_routes_document_their_parameters(tmp_path: Path) -> None:
    """Nothing checks a DirectRoute's openapi_extra against what its endpoint reads: pin it."""
    app = create_app(Settings(model_dir=tmp_path))
    routers = (predict.router, v2.router)  # included by reference: app.routes holds the routers
    direct = [r for router in routers for r in router.routes if isinstance(r, DirectRoute)]
    paths = app.openapi()["paths"]
    documented = {
        r.path: [(p["in"], p["name"], p["required"]) for p in paths[r.path]["post"]["parameters"]]
        for r in direct
    }
    top_k, model_q = ("query", "top_k", False), ("query", "model", False)
    model, version = ("path", "model", True), ("path", "version", True)
    header = ("header", "Inference-Header-Content-Length", False)
    assert documented == {
        "/predict": [top_k, model_q],
        "/predict/{model}": [model, top_k],
        "/predict/{model}/versions/{version}": [model, version, top_k],
        "/v2/models/{model}/infer": [model, ("query", "version", False), header],
        "/v2/models/{model}/versions/{version}/infer": [model, version, header],
    }
    for r in direct:  # every one still answers 401 / 422 / 503 as a JSON error
        assert {"401", "422", "503"} <= set(paths[r.path]["post"]["responses"]), r.path
