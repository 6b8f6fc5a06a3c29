"""A test-only launcher: the real server with a fault-injecting run function.

Run as ``python -m tests.fault_server`` (``start_server(..., module="tests.fault_server")``);
it takes the same settings as ``python -m server``. Each model's runners get the wrapped run
function (patched where the repository makes them; warm-up calls the engine directly, so it
is not affected), which looks at the crops of each batch:

- a *poison* crop (every pixel 0: an all-black image) makes the run raise ``RuntimeError``,
  so exactly the batch holding it fails;
- a *slow* crop (every pixel 255: an all-white image) makes the run sleep
  ``FAULT_SLOW_S`` seconds (environment, default 1.0) first, holding the runner busy so that
  later requests wait in the queue;
- a *NaN* crop (every pixel 128: a mid-grey image) gets NaN logits in its row only, as a
  numerically broken model would give.
"""

from __future__ import annotations

import os
import time
from typing import Any
from unittest import mock

import numpy as np

from server import cli
from server.flow.runner import EngineRun, Runner
from server.models import repository


def faulty(run: EngineRun) -> EngineRun:
    slow_s = float(os.environ.get("FAULT_SLOW_S", "1.0"))

    def wrapped(instance: int, images: np.ndarray) -> np.ndarray:
        flat = images.reshape(len(images), -1)
        if bool((flat.max(axis=1) == 0).any()):
            raise RuntimeError("poison image in batch (injected fault)")
        if bool((flat.min(axis=1) == 255).any()):
            time.sleep(slow_s)
        logits = run(instance, images)
        grey = (flat.min(axis=1) == 128) & (flat.max(axis=1) == 128)
        logits[grey] = np.nan
        return logits

    return wrapped


def main() -> None:
    def faulty_runner(name: str, run: EngineRun, *args: Any, **kwargs: Any) -> Runner:
        return Runner(name, faulty(run), *args, **kwargs)

    with mock.patch.object(repository, "Runner", faulty_runner):
        cli.main([])


if __name__ == "__main__":
    main()
