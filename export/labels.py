"""The ImageNet-1k class names shipped with the package (torchvision's list, index order)."""

from __future__ import annotations

from importlib import resources

NUM_CLASSES = 1000


def imagenet_classes() -> list[str]:
    """Return the 1000 class names; index ``i`` is the name of logit ``i``.

    Raises ``RuntimeError`` if the packaged file does not hold exactly 1000 names.
    """
    text = resources.files("export").joinpath("data/imagenet_classes.txt").read_text("utf-8")
    names = text.splitlines()
    if len(names) != NUM_CLASSES:
        raise RuntimeError(f"imagenet_classes.txt holds {len(names)} names, not {NUM_CLASSES}")
    return names
