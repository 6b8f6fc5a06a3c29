"""The images, built for real from the Dockerfile with buildah, and containers running them.

Building takes minutes (torch, the model export, 2.5 GB of CUDA wheels), so these tests run
with ``make docker-test`` (which sets RESNET_DOCKER_TEST=1, needs root, buildah and the base
image) and are skipped by the default ``make test``.

RESNET_DOCKER_BASE names the base image (default: ``make docker-base``'s). To test images
built beforehand instead of building them, set RESNET_DOCKER_CPU_IMAGE / RESNET_DOCKER_GPU_IMAGE;
images the tests did not build are never removed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from docker_helpers import BUILDS, Image, build_image, localbuild

HERE = Path(__file__).resolve().parent
ENABLED = os.environ.get("RESNET_DOCKER_TEST") == "1"
BASE = os.environ.get("RESNET_DOCKER_BASE", localbuild.BASE_IMAGE)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if ENABLED:
        return
    skip = pytest.mark.skip(reason="builds the images for minutes: run `make docker-test`")
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for b in BUILDS:
        terminalreporter.write_line(
            f"image {b.target}: {b.tag} {b.image_id[:12]}, {b.size}, built in {b.seconds:.0f} s"
        )


@pytest.fixture(scope="session")
def base_image() -> str:
    try:
        localbuild.require("buildah")
    except localbuild.LocalBuildError as e:
        pytest.fail(str(e))
    if localbuild.image_id(BASE) is None:
        pytest.fail(f"base image {BASE} is not in local storage: make it with `make docker-base`")
    return BASE


@pytest.fixture(scope="session")
def session_storage(base_image: str) -> Iterator[localbuild.Snapshot]:
    """What buildah's storage held before the session; at the end, whatever the session added
    (images, their cached layers, containers) is removed by id."""
    before = localbuild.snapshot()
    yield before
    localbuild.remove_new(before)


@pytest.fixture(scope="session")
def cpu_image(
    session_storage: localbuild.Snapshot, base_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Image:
    return build_image(
        "cpu", "RESNET_DOCKER_CPU_IMAGE", base_image, tmp_path_factory.mktemp("build")
    )


@pytest.fixture(scope="session")
def gpu_image(
    session_storage: localbuild.Snapshot, base_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Image:
    return build_image(
        "gpu", "RESNET_DOCKER_GPU_IMAGE", base_image, tmp_path_factory.mktemp("build")
    )
