"""The naive peer: FastAPI + ONNX Runtime, no batching.

One global engine (the server's own, same provider and precision) is created at start-up;
each request's handler decodes the body and runs the engine on a batch of one. The handler is
a plain ``def``, so FastAPI runs it in its thread pool: requests preprocess concurrently and
take turns on the engine (one lock, as one OpenVINO infer request or one ORT session would
serve them), but never share a batch.

Run: ``python -m bench.peers.naive --model-path models/resnet18.onnx --port 8100``.
"""

from __future__ import annotations

import threading
from typing import Annotated, Any

import numpy as np
import uvicorn
from fastapi import Depends, FastAPI, Request

from contract.images.preprocess import preprocess
from server.models.engines import Engine

from ..threads import name_threads
from .common import load, parse_args, response


async def _body(request: Request) -> bytes:
    return await request.body()


def create_app(engine: Engine) -> FastAPI:
    app = FastAPI()
    meta, lock = engine.meta, threading.Lock()
    name = meta.architecture

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post(f"/predict/{name}")
    def predict(body: Annotated[bytes, Depends(_body)]) -> dict[str, Any]:
        pixels = preprocess(body, meta.preprocessing)[np.newaxis]
        with lock:
            logits = engine.run(0, pixels)
        return response(logits[0], meta)

    return app


def main() -> None:
    args = parse_args(__doc__ or "")
    name_threads()  # the benchmark attributes CPU time to threads by name
    uvicorn.run(create_app(load(args)), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
