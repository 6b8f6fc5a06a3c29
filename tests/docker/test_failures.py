"""Bad input and failure: each is one clear message from docker/localbuild.py (what the make
targets run), and nothing is left behind in buildah's storage."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

import pytest
from docker_helpers import Image, localbuild

from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.slow

LOCALBUILD = [sys.executable, str(ROOT / "docker" / "localbuild.py")]


def localbuild_cli(
    *args: str, prefix: tuple[str, ...] = (), timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, *LOCALBUILD, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_missing_base_image(base_image: str) -> None:
    before = localbuild.snapshot()
    missing = f"localhost/resnet-base:missing-{os.getpid()}"
    proc = localbuild_cli("build", "--target", "cpu", "--base", missing, "--weights", "random")
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"error: base image {missing!r} is not in local storage, and this build pulls nothing "
        "(no registry is assumed reachable). Make it with `make docker-base` (Debian 12 by "
        "debootstrap), or pass as base an image that `buildah images` lists. Nothing was built."
    )
    assert localbuild.snapshot() == before


def test_build_without_network(base_image: str) -> None:
    """The whole build in a network namespace of its own: no route anywhere."""
    unshare = shutil.which("unshare")
    assert unshare, "unshare (util-linux) is needed to take the network away"
    before = localbuild.snapshot()
    tag = f"localhost/resnet-server:no-network-{os.getpid()}"
    proc = localbuild_cli(
        "build",
        "--target",
        "cpu",
        "--tag",
        tag,
        "--base",
        base_image,
        "--weights",
        "random",
        prefix=(unshare, "--net"),
    )
    assert proc.returncode == 1, proc.stdout[-3000:]
    message = proc.stderr
    assert message.startswith("\nerror: the image build needs the network and could not reach it")
    assert "First failure:" in message and "at step: RUN" in message, message
    assert "removed what the build made:" in message
    assert localbuild.image_id(tag) is None
    assert localbuild.snapshot() == before


def test_port_already_taken(cpu_image: Image) -> None:
    before = localbuild.snapshot()
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        proc = localbuild_cli("run", cpu_image.ref, "--port", str(port), timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"error: port {port} is already in use on this machine. With chroot isolation the "
        "container has no network of its own, so its server listens on this machine's port: "
        f"stop what holds it (`ss -ltnp 'sport = :{port}'`) or choose another port. No "
        "container was created."
    )
    assert localbuild.snapshot() == before
