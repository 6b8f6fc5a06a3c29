"""The KServe v2 / Triton ``GRPCInferenceService`` and ``grpc.health.v1``, served by ``grpc.aio``
in the same process and event loop as REST, on the same models, pipeline, admission, API key
and metrics (docs/V2_PROTOCOL.md, "gRPC").

``serve`` starts and drains the server in the app's lifespan; ``servicer`` answers the RPCs;
``translate`` turns protobuf messages into the v2 front door's requests and answers back;
``status`` maps the server's errors onto gRPC status codes; ``health`` keeps the health service
in step with readiness; ``proto`` holds Triton's vendored ``.proto`` files and their stubs.
"""
