"""Count and time each request by model and outcome."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from urllib.parse import parse_qs

from starlette.types import Scope

from contract.errors import ServerError
from server.metrics import UNKNOWN_MODEL, Metrics


@asynccontextmanager
async def observe_request(
    metrics: Metrics, endpoint: str, model: str, served: set[str] | frozenset[str]
) -> AsyncIterator[None]:
    """Record ``resnet_requests_total`` (outcome ``ok`` or the error code) and the duration.

    ``model`` becomes a label only if it is in ``served``: request-supplied names must not
    create new time series.
    """
    label = model if model in served else UNKNOWN_MODEL
    start, outcome = time.monotonic(), "ok"
    try:
        yield
    except ServerError as e:
        outcome = e.code
        raise
    except Exception:
        outcome = "internal_error"
        raise
    except asyncio.CancelledError:  # the server cancelled it (shutdown): not an answer
        outcome = "cancelled"
        raise
    finally:
        metrics.requests.labels(label, endpoint, outcome).inc()
        metrics.request_duration.labels(label, endpoint).observe(time.monotonic() - start)


def record_unrouted(
    metrics: Metrics, scope: Scope, served: Collection[str], default_model: str, error: ServerError
) -> None:
    """Count an answer that no route counted: a refusal by the limits middleware, or an
    error raised before the route body ran (a missing API key, a malformed query). The same
    ``resnet_requests_total`` series a route would have counted, with the model the path or
    query names (``_unknown`` if it is not served)."""
    path: str = scope.get("path", "")
    if path.startswith("/predict"):
        endpoint, model = "predict", path.removeprefix("/predict").strip("/")
        if not model:
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            model = query.get("model", [default_model])[0]
    else:  # /v2/models/{model}[/versions/{v}]/infer
        parts = path.split("/")
        endpoint, model = "v2_infer", parts[3] if len(parts) > 3 else ""
    label = model if model in served else UNKNOWN_MODEL
    metrics.requests.labels(label, endpoint, error.code).inc()
    metrics.request_duration.labels(label, endpoint).observe(0.0)
    if error.status == 503:
        metrics.rejected.labels(label, error.code).inc()
