"""resnet-server: ImageNet classification over HTTP and gRPC on ONNX Runtime or OpenVINO."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("resnet-server")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"
