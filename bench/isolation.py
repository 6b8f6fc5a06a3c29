"""What decoding in a worker process costs an ordinary image: ``python -m bench.isolation``.

The same photos through ``server.preprocess.preprocess`` in this thread and through a
``server.decodepool`` worker process (the server's default), interleaved image by image so
both see the same machine; prints the median wall time of each and their difference, and
checks the crops are byte-identical. One thread, one worker: the per-image tax of isolation.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import numpy as np

from server.cpuinfo import read_cpuinfo
from server.decode import DecodeLimits
from server.decodepool import DecodeBudget, DecodePool
from server.modelmeta import Preprocessing
from server.photos import verification_photos
from server.preprocess import preprocess

from .hw import load_average

SPEC = Preprocessing.from_dict({"resize_size": 256, "crop_size": 224,
                                "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                                "interpolation": "bilinear"})  # fmt: skip


def _photos() -> list[tuple[str, bytes]]:
    import io

    from PIL import Image

    out = [(p.name, p.data) for p in verification_photos()]
    base = Image.open(io.BytesIO(out[5][1])).convert("RGB")  # grace_hopper.jpg, 512x600
    for name, size in [("0.25MP", (577, 433)), ("2MP", (1633, 1225)), ("12MP", (4000, 3000))]:
        buf = io.BytesIO()
        base.resize(size, Image.Resampling.BICUBIC).save(buf, "JPEG", quality=90)
        out.append((f"{name}.jpg", buf.getvalue()))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.isolation", description=__doc__)
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args(argv)
    pool = DecodePool(DecodeBudget())
    worker, never, limits = pool.worker(), threading.Event(), DecodeLimits()
    out = np.empty((224, 224, 3), np.uint8)
    cpu = read_cpuinfo().describe()
    print(f"CPU: {cpu['model']} ({', '.join(cpu['matrix_flags'])}); load average "
          f"{load_average()[0]:.2f}")  # fmt: skip
    print(f"{'photo':18s} {'bytes':>9s} {'thread ms':>10s} {'process ms':>11s} {'tax ms':>8s}")
    try:
        for name, data in _photos():
            thread, process = [], []
            for _ in range(args.repeats):
                t = time.perf_counter()
                expected = preprocess(data, SPEC, limits)
                thread.append(time.perf_counter() - t)
                t = time.perf_counter()
                worker.preprocess(data, SPEC, limits, out, never)
                process.append(time.perf_counter() - t)
            assert np.array_equal(out, expected), name
            a, b = statistics.median(thread) * 1e3, statistics.median(process) * 1e3
            print(f"{name:18s} {len(data):9d} {a:10.2f} {b:11.2f} {b - a:+8.2f}")
    finally:
        pool.close()


if __name__ == "__main__":
    main()
