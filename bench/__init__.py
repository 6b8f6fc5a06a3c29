"""The benchmark suite (``python -m bench``, ``make bench``).

One run measures, in one process tree: the machine's limits (raw ONNX Runtime, preprocessing,
the in-process pipeline, the FLOP rate), the server under closed- and open-loop load, peer
servers (a naive FastAPI app and LitServe) on the same images and models, and the batching
policies; then writes ``BENCHMARKS.md``, ``BATCHING.md`` and PNG plots.
"""
