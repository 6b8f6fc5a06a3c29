"""The naive peer: FastAPI + ONNX Runtime, no batching.

One global session is created at start-up (creating one per request would cost ~50-300 ms
per request and is not what anyone ships); each request's handler decodes the body and calls
``session.run`` on a batch of one. The handler is a plain ``def``, so FastAPI runs it in its
thread pool: requests preprocess and infer concurrently, but never share a batch.

Run: ``python -m bench.peers.naive --model-path models/resnet18.onnx --port 8100``.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import uvicorn
from fastapi import Depends, FastAPI, Request

from server.preprocess import preprocess

from .common import load, parse_args, response


async def _body(request: Request) -> bytes:
    return await request.body()


def create_app(session: Any, meta: Any) -> FastAPI:
    app = FastAPI()
    name = meta.architecture

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post(f"/predict/{name}")
    def predict(body: Annotated[bytes, Depends(_body)]) -> dict[str, Any]:
        pixels = preprocess(body, meta.preprocessing)[np.newaxis]
        logits = session.run([meta.output_name], {meta.input_name: pixels})[0]
        return response(logits[0], meta)

    return app


def main() -> None:
    args = parse_args(__doc__ or "")
    session, meta = load(args.model_path, args.threads)
    uvicorn.run(create_app(session, meta), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
