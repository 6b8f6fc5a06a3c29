"""Helpers for the image tests: the images under test, containers, readiness, metrics."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, free_port

sys.path.append(str(ROOT / "docker"))
import localbuild

__all__ = ["BUILDS", "Image", "build_image", "localbuild", "metric", "start", "wait_until"]


@dataclass(frozen=True)
class Image:
    """An image under test; ``built`` is None when it was given, not built here."""

    ref: str
    built: localbuild.Built | None


BUILDS: list[localbuild.Built] = []  # what this session built, for the terminal summary


def build_image(target: str, env: str, base: str, logs: Path) -> Image:
    """The image named by the environment variable ``env``, else ``target`` built from the
    Dockerfile (offline: WEIGHTS=random) and recorded in BUILDS."""
    given = os.environ.get(env)
    if given:
        return Image(given, None)
    tag = f"localhost/resnet-server:{target}-test-{os.getpid()}"
    with (logs / f"build-{target}.log").open("w") as out:
        try:
            # --layers: the GPU build reuses the venv, export and app stages of the CPU build
            # (the session_storage fixture removes that cache at the end).
            built = localbuild.build(target, tag, base=base, weights="random", layers=True, out=out)
        except localbuild.LocalBuildError as e:
            pytest.fail(f"{target} image build failed (log: {out.name}):\n{e}")
    BUILDS.append(built)
    return Image(tag, built)


def wait_until(
    container: localbuild.Container,
    done: Callable[[httpx.Response], bool],
    path: str = "/readyz",
    timeout: float = 300,
) -> httpx.Response:
    """Poll ``path`` until ``done(response)``; a server that exits first fails with its cause."""
    assert container.proc is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if container.proc.poll() is not None:
            raise container.failed_to_start()
        try:
            r = httpx.get(container.url + path, timeout=5)
            if done(r):
                return r
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(
        f"{container.image}: {path} not as expected in {timeout:.0f} s:\n"
        + container.output()[-3000:]
    )


def start(image: str, log_dir: Path, **env: str) -> localbuild.Container:
    """A running container of ``image`` on a free port, with RESNET_* ``env``."""
    settings = {f"RESNET_{k.upper()}": v for k, v in env.items()}
    port = free_port()
    # The container shares this machine's network: a free gRPC port too, never the image's 8001.
    settings.setdefault("RESNET_GRPC_PORT", str(free_port()))
    return localbuild.Container(image, port, settings, log=log_dir / f"server-{port}.log").start()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of the one sample ``name{labels...}`` (a subset of its labels) in ``text``."""
    found = [
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    ]
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
    return float(found[0])
