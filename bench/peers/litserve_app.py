"""The LitServe peer: the same model and preprocessing behind LitServe's dynamic batching.

The image travels as JSON ``{"image": "<base64 JPEG>"}``: LitServe passes each request
from its HTTP process to its worker process through a multiprocessing queue, and a multipart
upload (an ``UploadFile``) cannot be pickled there. The one inference worker process, which decodes (``decode_request``), stacks up to
``max_batch_size`` requests that arrive within ``batch_timeout`` seconds, runs them as one
batch and unbatches the logits.

Run: ``python -m bench.peers.litserve_app --model-path models/resnet18.onnx --port 8200``.
"""

# No ``from __future__ import annotations``: LitServe compares the annotation of
# ``decode_request`` with ``fastapi.Request`` at run time, and a string would not match.
import base64
from typing import Any

import litserve as ls
import numpy as np
from fastapi import Request

from contract.images.preprocess import preprocess

from .common import load, parse_args, response

ARGS = parse_args(__doc__ or "")


class ResNetAPI(ls.LitAPI):  # type: ignore[misc]
    """The server's engine (same provider and precision) in LitServe's worker process."""

    def setup(self, device: str) -> None:
        self.engine = load(ARGS)
        self.meta = self.engine.meta

    def decode_request(self, request: Request) -> np.ndarray:
        # LitServe hands over ``await request.json()`` (a dict) for a Request annotation.
        data = base64.b64decode(request["image"])
        return preprocess(data, self.meta.preprocessing)

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.engine.run(0, x)

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return list(output)

    def encode_response(self, output: np.ndarray) -> dict[str, Any]:
        return response(output, self.meta)


def main() -> None:
    api = ResNetAPI(max_batch_size=ARGS.max_batch_size, batch_timeout=ARGS.batch_timeout_ms / 1000)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1, timeout=60)
    server.run(
        host="127.0.0.1",
        port=ARGS.port,
        num_api_servers=1,
        log_level="warning",
        generate_client_file=False,
    )


if __name__ == "__main__":
    main()
