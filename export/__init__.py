"""Export ResNet18/50 to self-describing ONNX artifacts for the server (see docs/EXPORT.md).

The only package of the project that imports torch. Entry point: ``python -m export``.
"""
