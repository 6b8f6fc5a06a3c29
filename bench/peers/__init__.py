"""Peer servers the benchmark compares against, each serving the same ONNX model with the same
preprocessing (``contract.images.preprocess``) and the same ONNX Runtime session options:

* ``naive``: FastAPI + ONNX Runtime, one global session created at start-up, ``session.run``
  inline in each request's handler, no batching (what most people write first);
* ``litserve``: Lightning AI's LitServe with its own dynamic batching.
"""
