"""ImageNet-1k class names and WordNet ids shipped with the package, in class-index order.

``data/imagenet_classes.txt``: torchvision 0.29.1's ``_IMAGENET_CATEGORIES``.
``data/imagenet_synsets.txt``: the WordNet ids (``n01440764`` = class 0, tench), copied
unchanged from timm 1.0.31's ``timm/data/_info/imagenet_synsets.txt`` (Apache-2.0; sha256
70002b0f...); sorted, as torchvision's ``ImageFolder`` orders ImageNet's class folders.
"""

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


def imagenet_synsets() -> list[str]:
    """Return the 1000 WordNet ids; index ``i`` is the id of logit ``i``.

    Raises ``RuntimeError`` if the packaged file does not hold exactly 1000 distinct ids.
    """
    text = resources.files("export").joinpath("data/imagenet_synsets.txt").read_text("utf-8")
    ids = text.split()
    if len(set(ids)) != NUM_CLASSES:
        raise RuntimeError(f"imagenet_synsets.txt holds {len(set(ids))} ids, not {NUM_CLASSES}")
    return ids
