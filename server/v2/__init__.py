"""The Open Inference Protocol v2 (KServe / Triton) REST front door.

``routes`` (endpoints) -> ``describe`` (metadata, config), ``inference`` (tensors to rows,
logits to outputs), ``stats`` (statistics from the Prometheus registry); ``codec`` is the wire
format, ``schemas`` the pydantic messages. See docs/V2_PROTOCOL.md.
"""
