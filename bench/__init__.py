"""The benchmark suite (``python -m bench``, ``make bench``).

One run measures, in one process tree, every *variant* (a served model on a provider:
fp32 / INT8 / bf16 on ONNX Runtime's CPU provider or the OpenVINO runtime, as this machine
and model directory allow): the machine's limits (the raw engine per batch size,
preprocessing, the in-process pipeline, agreement with fp32 on real photos), the server under
closed- and open-loop load, the peers (a naive FastAPI app and LitServe) on the fast variant,
overload, the CPU time of the server's threads, thread splits and the batching policies; then
writes ``BENCHMARKS.md``, ``BATCHING.md`` and PNG plots.
"""
