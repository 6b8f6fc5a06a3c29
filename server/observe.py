"""Count and time each request by model and outcome."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from .errors import ServerError
from .metrics import UNKNOWN_MODEL, Metrics


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
    finally:
        metrics.requests.labels(label, endpoint, outcome).inc()
        metrics.request_duration.labels(label, endpoint).observe(time.monotonic() - start)
