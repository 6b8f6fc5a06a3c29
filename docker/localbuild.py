#!/usr/bin/env python3
"""Build and run this project's images on a machine with no registry and no Docker engine.

buildah (chroot isolation) builds the project's Dockerfile unchanged; debootstrap makes the base
image that Docker users pull from Docker Hub. Run as root.

    python3 docker/localbuild.py base                     # localhost/resnet-base:bookworm
    python3 docker/localbuild.py build --target cpu --weights random
    python3 docker/localbuild.py run localhost/resnet-server:cpu --port 8000

``base``   Debian 12 (minbase + python3, python3-venv, ca-certificates) from this machine's
           Debian mirror, committed as a local image: the ``PYTHON_IMAGE`` of the build.
``build``  ``buildah bud --format docker`` (HEALTHCHECK is Docker-format only) with that base;
           the CPU torch wheel from pip's ``find-links`` folder when it holds one (then torch's
           own dependencies come from PyPI), else from the Dockerfile's default index; and the
           host's CA bundle mounted for the build's downloads only (a TLS-intercepting proxy).
``run``    an image's ENTRYPOINT + CMD as its USER, with its ENV. chroot isolation has no network
           namespace: the server's port is a port of this machine. Ctrl-C or SIGTERM stop it as
           ``docker stop`` does (the image's STOPSIGNAL to the server, which drains), and the
           container is removed.

A failure is one message naming its cause, and whatever the failed command made (containers,
images) is removed by id. Standard library only, so that it runs before any virtualenv exists.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import types
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
BASE_IMAGE = "localhost/resnet-base:bookworm"
BASE_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
PYPI_SIMPLE = "https://pypi.org/simple"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
IMAGE_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"  # Debian's; pip and urllib read it there

# Lines of a failed build that mean "the network (or TLS through a proxy) failed", checked in
# this order: the first match names the cause.
_TLS_FAILURE = re.compile(r"CERTIFICATE_VERIFY_FAILED|certificate verify failed")
_NETWORK_FAILURE = re.compile(
    r"Temporary failure in name resolution|Name or service not known|Network is unreachable"
    r"|No route to host|Failed to establish a new connection|Connection timed out"
    r"|Could not fetch URL|Read timed out"
)
_WEIGHTS_DOWNLOAD = "downloading the ImageNet weights failed"
_STEP = re.compile(r"^\[\d+/\d+\] STEP \d+/\d+: (.*)$")


class LocalBuildError(Exception):
    """A failure whose message says what to do; what the failed command made is removed."""


class PortInUse(LocalBuildError):
    """The server's port is taken on this machine (the container shares its network)."""


# --------------------------------------------------------------------------------------------
# buildah plumbing
# --------------------------------------------------------------------------------------------


def buildah(
    *args: str, check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run ``buildah args``; with ``check``, a non-zero exit raises LocalBuildError."""
    proc = subprocess.run(
        ["buildah", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise LocalBuildError(
            f"`buildah {' '.join(args)}` failed (exit {proc.returncode}): {proc.stderr.strip()}"
        )
    return proc


def require(*tools: str) -> None:
    """Root and the named tools, or a message saying how to get them."""
    if os.geteuid() != 0:
        raise LocalBuildError(
            "buildah with chroot isolation and debootstrap need root: run this as root"
        )
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise LocalBuildError(
            f"{' and '.join(missing)} not found: apt-get install {' '.join(missing)}"
        )


@dataclass(frozen=True)
class Snapshot:
    """The ids of every container and image in buildah's storage at one moment."""

    containers: frozenset[str]
    images: frozenset[str]


def snapshot() -> Snapshot:
    containers = buildah("containers", "--all", "--quiet", "--notruncate").stdout.split()
    images = buildah("images", "--all", "--quiet", "--no-trunc").stdout.split()
    return Snapshot(frozenset(containers), frozenset(i.removeprefix("sha256:") for i in images))


def remove_new(before: Snapshot, keep_images: Iterable[str] = ()) -> Snapshot:
    """Remove, by id, the containers and images that appeared since ``before``.

    Returns what was removed. Images go after containers (a container pins its image), and
    in rounds, since an image can only go once no newer image needs it.
    """
    now = snapshot()
    containers = now.containers - before.containers
    for cid in containers:
        buildah("rm", cid, check=False)
    pending = set(now.images - before.images - set(keep_images))
    removed: set[str] = set()
    while pending:
        gone = {
            iid
            for iid in sorted(pending)
            if buildah("rmi", "--force", iid, check=False).returncode == 0
        }
        if not gone:
            break
        removed |= gone
        pending -= gone
    left = snapshot()
    stuck = (left.containers & containers) | (left.images & (removed | pending))
    if stuck:
        raise LocalBuildError(
            f"could not remove {sorted(stuck)}: remove them with buildah rm / rmi"
        )
    return Snapshot(frozenset(containers), frozenset(removed))


def image_id(ref: str) -> str | None:
    """The full id of a local image, or None when local storage has no such image."""
    proc = buildah("images", "--quiet", "--no-trunc", ref, check=False)
    ids = proc.stdout.split() if proc.returncode == 0 else []
    return ids[0].removeprefix("sha256:") if ids else None


def image_size(ref: str) -> str:
    """The image's size as ``buildah images`` (and ``docker images``) print it, e.g. 721 MB."""
    iid = image_id(ref)
    listing = buildah("images", "--no-trunc", "--format", "{{.ID}} {{.Size}}").stdout
    for line in listing.splitlines():
        found, _, size = line.strip().partition(" ")
        if iid and found.removeprefix("sha256:") == iid:
            return size.strip()
    raise LocalBuildError(f"image {ref} is not in local storage")


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an image's Docker config that running it needs."""

    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    user: str
    env: Mapping[str, str]
    healthcheck: tuple[str, ...]  # argv; () when the image has none
    healthcheck_timeout_s: float
    stop_signal: signal.Signals
    exposed_ports: tuple[str, ...]


def image_config(ref: str) -> ImageConfig:
    raw = json.loads(buildah("inspect", "--type", "image", ref).stdout)
    cfg: dict[str, Any] = raw["Docker"]["config"]
    test = list((cfg.get("Healthcheck") or {}).get("Test") or [])
    if test[:1] == ["CMD-SHELL"]:
        health: tuple[str, ...] = ("/bin/sh", "-c", *test[1:])
    elif test[:1] == ["CMD"]:
        health = tuple(test[1:])
    else:
        health = ()
    timeout_ns = (cfg.get("Healthcheck") or {}).get("Timeout") or 30_000_000_000
    stop = cfg.get("StopSignal") or "SIGTERM"
    return ImageConfig(
        entrypoint=tuple(cfg.get("Entrypoint") or ()),
        cmd=tuple(cfg.get("Cmd") or ()),
        user=cfg.get("User") or "",
        env=dict(e.split("=", 1) for e in cfg.get("Env") or ()),
        healthcheck=health,
        healthcheck_timeout_s=timeout_ns / 1e9,
        stop_signal=signal.Signals[stop if stop.startswith("SIG") else f"SIG{stop}"],
        exposed_ports=tuple(cfg.get("ExposedPorts") or ()),
    )


# --------------------------------------------------------------------------------------------
# base image
# --------------------------------------------------------------------------------------------


def apt_mirror(etc: Path = Path("/etc/apt")) -> str:
    """The Debian archive this machine's apt uses (deb822 ``URIs:`` or one-line ``deb``)."""
    files = [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*"))]
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        uris: list[str] = re.findall(r"^URIs:\s*(.+)$", text, re.MULTILINE)
        uris = [u for line in uris for u in line.split()]
        uris += re.findall(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)", text, re.MULTILINE)
        for uri in uris:
            if urllib.parse.urlparse(uri).path.rstrip("/").endswith("/debian"):
                return uri
    return DEFAULT_MIRROR


def _stream(cmd: Sequence[str], out: IO[str], **kw: Any) -> tuple[int, list[str]]:
    """Run ``cmd``, copying its combined output to ``out``; return (exit code, lines)."""
    lines: list[str] = []
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", **kw
    ) as proc:
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                out.write(line)
                out.flush()
                lines.append(line.rstrip("\n"))
        except BaseException:
            proc.terminate()
            proc.wait()
            raise
    return proc.returncode, lines


def make_base(
    tag: str = BASE_IMAGE,
    *,
    suite: str = BASE_SUITE,
    mirror: str | None = None,
    force: bool = False,
    out: IO[str] = sys.stdout,
) -> str:
    """Make ``tag`` from debootstrap unless it exists (``force`` remakes it). Returns its id."""
    require("buildah", "debootstrap")
    existing = image_id(tag)
    if existing and not force:
        print(f"{tag} is already in local storage ({existing[:12]}); --force remakes it", file=out)
        return existing
    mirror = mirror or apt_mirror()
    before = snapshot()
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="resnet-base-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
               suite, str(rootfs), mirror]  # fmt: skip
        print("+", " ".join(cmd), file=out, flush=True)
        rc, lines = _stream(cmd, out)
        if rc != 0:
            raise LocalBuildError(
                f"debootstrap of Debian {suite} from {mirror} failed (exit {rc}); no network, or "
                f"not a Debian mirror? Its last lines:\n" + "\n".join(lines[-15:])
            )
        # What apt needs only to install more: the image installs nothing with apt.
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for p in (rootfs / junk).glob("*"):
                if p.is_file():
                    p.unlink()
        for p in (rootfs / "var/cache/apt").glob("*.bin"):
            p.unlink()
        try:
            cid = buildah("from", "scratch").stdout.strip()
            mount = buildah("mount", cid).stdout.strip()
            subprocess.run(["cp", "-a", f"{rootfs}/.", mount], check=True)
            buildah("umount", cid)
            buildah("config", "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "--cmd", "/bin/bash",
                    "--label", f"org.opencontainers.image.description=Debian {suite} minbase + "
                    f"{' '.join(BASE_PACKAGES)}, debootstrap from {mirror}", cid)  # fmt: skip
            buildah("commit", "--rm", "--format", "docker", cid, tag)
        except BaseException:
            remove_new(before)
            raise
    iid = image_id(tag)
    assert iid is not None
    print(
        f"{tag}: {iid[:12]}, {image_size(tag)}, made in {time.monotonic() - start:.0f} s", file=out
    )
    return iid


# --------------------------------------------------------------------------------------------
# build
# --------------------------------------------------------------------------------------------


def dockerfile_arg(name: str, dockerfile: Path = DOCKERFILE) -> str:
    """The default of ``ARG name=...`` in the Dockerfile (one source of truth for versions)."""
    m = re.search(rf"^ARG {re.escape(name)}=(\S+)$", dockerfile.read_text(), re.MULTILINE)
    if not m:
        raise LocalBuildError(f"{dockerfile} declares no default for ARG {name}")
    return m.group(1)


def pip_find_links(python: str = sys.executable) -> list[Path]:
    """The local folders pip is configured to look in (``PIP_FIND_LINKS``, pip config)."""
    values = [os.environ.get("PIP_FIND_LINKS", "")]
    try:
        proc = subprocess.run(
            [python, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60
        )
        values += re.findall(r"find-links='([^']*)'", proc.stdout)
    except (OSError, subprocess.TimeoutExpired):
        pass
    found: list[Path] = []
    for value in values:
        for item in value.split():
            path = Path(urllib.parse.urlparse(item).path if item.startswith("file:") else item)
            if path.is_dir() and path not in found:
                found.append(path)
    return found


def local_torch_wheels(version: str) -> Path | None:
    """A pip ``find-links`` folder holding the CPU torch wheel ``version``, if any."""
    for folder in pip_find_links():
        if any(folder.glob(f"torch-{version}+cpu-*.whl")):
            return folder
    return None


@dataclass(frozen=True)
class Built:
    """A built image: its tag and id, how long the build took and the image's size."""

    tag: str
    image_id: str
    target: str
    seconds: float
    size: str
    log: list[str] = field(repr=False)


def explain_build_failure(lines: Sequence[str], torch_source: str) -> str:
    """One message for a failed ``buildah bud``, from its output; ``torch_source`` says where
    the build takes torch from."""
    step = next((m.group(1) for line in reversed(lines) if (m := _STEP.match(line))), "?")
    tail = "\n".join(lines[-20:])
    if any(_WEIGHTS_DOWNLOAD in line for line in lines):
        return (
            "the export stage could not download the ImageNet weights (no network?): build "
            "with --weights random (make docker-build WEIGHTS=random) for an offline "
            "smoke-test image whose predictions are meaningless, or with a local file, "
            "--weights docker/weights/<file>.pth"
        )
    tls = next((line for line in lines if _TLS_FAILURE.search(line)), None)
    if tls:
        return (
            "the image build could not verify TLS certificates while downloading packages (a "
            "proxy that intercepts TLS?): pass its CA bundle with --ca-bundle (default: this "
            f"machine's {HOST_CA_BUNDLE}).\nFirst failure: {tls.strip()}"
        )
    net = next((line for line in lines if _NETWORK_FAILURE.search(line)), None)
    if net:
        return (
            "the image build needs the network and could not reach it: it installs Python "
            f"packages from PyPI ({PYPI_SIMPLE}) and torch {torch_source}. Check this "
            "machine's network and proxy.\n"
            f"First failure: {net.strip()}\nat step: {step}"
        )
    return f"the image build failed at step: {step}\nIts last lines:\n{tail}"


def build(
    target: str,
    tag: str,
    *,
    base: str = BASE_IMAGE,
    weights: str = "imagenet",
    models: str | None = None,
    build_args: Mapping[str, str] | None = None,
    torch_wheels: Path | str | None = "auto",
    torch_index_url: str | None = None,
    ca_bundle: Path | None = HOST_CA_BUNDLE,
    layers: bool = False,
    out: IO[str] = sys.stdout,
) -> Built:
    """``buildah bud`` the Dockerfile's ``target`` as ``tag``; see the module docstring.

    ``torch_wheels="auto"``: pip's find-links folder if it holds the CPU torch wheel, else
    none (the Dockerfile's index). Raises LocalBuildError with the cause; a failed build leaves
    no container or image behind, a successful one only ``tag`` (and, with ``layers``, its
    cached layers).
    """
    require("buildah")
    if image_id(base) is None:
        raise LocalBuildError(
            f"base image {base!r} is not in local storage, and this build pulls nothing (no "
            "registry is assumed reachable). Make it with `make docker-base` (Debian 12 by "
            "debootstrap), or pass as base an image that `buildah images` lists. Nothing was "
            "built."
        )
    if torch_wheels == "auto":
        torch_wheels = local_torch_wheels(dockerfile_arg("TORCH_VERSION"))
    if isinstance(torch_wheels, str):
        torch_wheels = Path(torch_wheels)
    if torch_index_url is None:
        # With a local wheel, torch's own dependencies (sympy, networkx, ...) come from PyPI.
        torch_index_url = PYPI_SIMPLE if torch_wheels else dockerfile_arg("TORCH_INDEX_URL")
    torch_source = (
        f"from the local wheel in {torch_wheels} (its dependencies from {torch_index_url})"
        if torch_wheels
        else f"from {torch_index_url}"
    )
    args: dict[str, str] = {
        "PYTHON_IMAGE": base,
        "WEIGHTS": weights,
        "TORCH_INDEX_URL": torch_index_url,
    }
    if models:
        args["MODELS"] = models
    args.update(build_args or {})
    cmd = ["buildah", "bud", "--isolation", "chroot", "--format", "docker", "--pull=never",
           "--force-rm", f"--layers={str(layers).lower()}", "--target", target, "--tag", tag,
           "--file", str(DOCKERFILE)]  # fmt: skip
    for key, value in args.items():
        cmd += ["--build-arg", f"{key}={value}"]
    if torch_wheels:
        cmd += ["--build-context", f"torch-wheels={torch_wheels}"]
    if ca_bundle:
        cmd += ["--volume", f"{ca_bundle}:{IMAGE_CA_BUNDLE}:ro"]
    cmd.append(str(ROOT))
    before = snapshot()
    print("+", " ".join(cmd), file=out, flush=True)
    start = time.monotonic()
    try:
        rc, lines = _stream(cmd, out, cwd=ROOT)
    except BaseException:
        remove_new(before)
        raise
    seconds = time.monotonic() - start
    iid = image_id(tag) if rc == 0 else None
    if iid is None:
        removed = remove_new(before)
        raise LocalBuildError(
            explain_build_failure(lines, torch_source)
            + f"\n(removed what the build made: {len(removed.containers)} containers, "
            f"{len(removed.images)} images)"
        )
    # buildah 1.28 leaves the working container of an unused `FROM scratch` stage behind.
    keep = [iid] if not layers else list(snapshot().images - before.images)
    remove_new(before, keep_images=keep)
    return Built(tag, iid, target, seconds, image_size(tag), lines)


# --------------------------------------------------------------------------------------------
# run
# --------------------------------------------------------------------------------------------


def check_port_free(port: int) -> None:
    """PortInUse unless the server could listen on ``port`` (as uvicorn does, SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
            raise PortInUse(
                f"port {port} is already in use on this machine. With chroot isolation the "
                "container has no network of its own, so its server listens on this machine's "
                f"port: stop what holds it (`ss -ltnp 'sport = :{port}'`) or choose another "
                "port. No container was created."
            ) from None


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            continue
    return kids


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


@dataclass
class Container:
    """One run of an image: ``buildah from`` + ``buildah run`` of its ENTRYPOINT + CMD.

    ``env`` is added to the image's ENV (as ``docker run -e``); ``RESNET_PORT`` is set to
    ``port``. ``log`` receives the server's output (None: this process's stdout/stderr).
    """

    image: str
    port: int
    env: Mapping[str, str] = field(default_factory=dict)
    log: Path | None = None
    cid: str = ""
    proc: subprocess.Popen[bytes] | None = None
    config: ImageConfig | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def argv(self) -> tuple[str, ...]:
        assert self.config is not None
        return self.config.entrypoint + self.config.cmd

    def create(self) -> Container:
        """``buildah from`` the image and set its env; nothing runs yet (for ``exec``)."""
        require("buildah")
        self.config = image_config(self.image)
        self.cid = buildah("from", "--pull=never", self.image).stdout.strip().splitlines()[-1]
        try:
            # `buildah from` prints the container's name; keep its id.
            self.cid = buildah("inspect", "--format", "{{.ContainerID}}", self.cid).stdout.strip()
            env = {**self.env, "RESNET_PORT": str(self.port)}
            for key, value in env.items():
                buildah("config", "--env", f"{key}={value}", self.cid)
        except BaseException:
            self.remove()
            raise
        return self

    def start(self) -> Container:
        """Create the container and run the image's command in it, in the background."""
        check_port_free(self.port)
        self.create()
        try:
            out = self.log.open("ab") if self.log else None
            try:
                self.proc = subprocess.Popen(
                    ["buildah", "run", "--isolation", "chroot", self.cid, "--", *self.argv],
                    stdout=out, stderr=subprocess.STDOUT if out else None,
                    start_new_session=True,  # a Ctrl-C reaches us, not the server directly
                )  # fmt: skip
            finally:
                if out:
                    out.close()
        except BaseException:
            self.remove()
            raise
        return self

    def server_pid(self, timeout: float = 30) -> int:
        """The pid of the image's command (the process ``docker stop`` would signal)."""
        assert self.proc is not None
        want = self.argv
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            todo = [self.proc.pid]
            while todo:
                pid = todo.pop()
                argv = _cmdline(pid)
                # The command itself, not `buildah run` nor buildah's chroot helper above it.
                if argv[1:] == list(want[1:]) and Path(argv[0]).name == Path(want[0]).name:
                    return pid
                todo += _children(pid)
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise LocalBuildError(f"no process {' '.join(want)} under buildah run {self.proc.pid}")

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log and self.log.exists() else ""

    def failed_to_start(self) -> LocalBuildError:
        """The error for a server that exited before it was ready, from its output."""
        assert self.proc is not None
        log = self.output()
        if "address already in use" in log.lower():
            return PortInUse(
                f"port {self.port} is already in use on this machine (taken while the server "
                "was starting); with chroot isolation the container listens on this machine's "
                "port: choose another port."
            )
        return LocalBuildError(
            f"the server in {self.image} exited with {self.proc.returncode} before it was "
            "ready:\n" + "\n".join(log.splitlines()[-20:])
        )

    def exec(self, argv: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in this container (as its user, with its env), like ``docker exec``."""
        return subprocess.run(
            ["buildah", "run", "--isolation", "chroot", self.cid, "--", *argv],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def healthcheck(self) -> subprocess.CompletedProcess[str]:
        """The image's HEALTHCHECK command, run in the container (its exit code is the verdict).

        ``buildah run`` costs a second or two of setup on top of the command, so the
        subprocess deadline is the HEALTHCHECK timeout plus that margin.
        """
        assert self.config is not None
        if not self.config.healthcheck:
            raise LocalBuildError(f"{self.image} has no HEALTHCHECK")
        return self.exec(self.config.healthcheck, timeout=self.config.healthcheck_timeout_s + 30)

    def stop(self, timeout: float = 60) -> int:
        """The image's STOPSIGNAL to the server, then wait for it; returns its exit code."""
        assert self.proc is not None and self.config is not None
        if self.proc.poll() is None:
            os.kill(self.server_pid(), self.config.stop_signal)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                raise LocalBuildError(
                    f"the server did not exit within {timeout:.0f} s of {self.config.stop_signal.name}"
                ) from None
        return self.proc.returncode

    def remove(self) -> None:
        """Kill the server if it still runs, and remove the container."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.server_pid(timeout=5), signal.SIGKILL)
            except (LocalBuildError, ProcessLookupError):
                self.proc.kill()
            self.proc.wait(30)
        if self.cid:
            buildah("rm", self.cid)
            self.cid = ""

    def __enter__(self) -> Container:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.remove()


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def _cmd_base(args: argparse.Namespace) -> int:
    make_base(args.tag, suite=args.suite, mirror=args.mirror, force=args.force)
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    extra = dict(a.split("=", 1) for a in args.build_arg)
    wheels: Path | str | None = "auto" if args.torch_wheels is None else (args.torch_wheels or None)
    built = build(args.target, args.tag or f"localhost/resnet-server:{args.target}",
                  base=args.base, weights=args.weights, models=args.models, build_args=extra,
                  torch_wheels=wheels, torch_index_url=args.torch_index_url,
                  ca_bundle=Path(args.ca_bundle) if args.ca_bundle else None,
                  layers=args.layers)  # fmt: skip
    print(f"\n{built.tag}: {built.image_id[:12]}, {built.size}, built in {built.seconds:.0f} s")
    if args.weights == "random":
        print("!!! built with WEIGHTS=random: its predictions are meaningless")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    stop_requested: list[int] = []

    def on_signal(signum: int, _frame: types.FrameType | None) -> None:
        stop_requested.append(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    env = dict(e.split("=", 1) for e in args.env)
    container = Container(args.image, args.port, env)
    container.start()
    try:
        print(f"container {container.cid[:12]}: {container.url} (Ctrl-C stops it)", flush=True)
        assert container.proc is not None
        while container.proc.poll() is None and not stop_requested:
            time.sleep(0.2)
        return container.stop() if stop_requested else container.proc.returncode
    finally:
        container.remove()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("base", help="make the Debian 12 base image with debootstrap")
    b.add_argument("--tag", default=BASE_IMAGE)
    b.add_argument("--suite", default=BASE_SUITE)
    b.add_argument("--mirror", help="Debian archive URL (default: the one apt uses here)")
    b.add_argument("--force", action="store_true", help="remake it even if it exists")
    b.set_defaults(func=_cmd_base)

    d = sub.add_parser("build", help="build an image of the Dockerfile with buildah")
    d.add_argument("--target", choices=["cpu", "gpu"], default="cpu")
    d.add_argument("--tag", help="default localhost/resnet-server:<target>")
    d.add_argument("--base", default=BASE_IMAGE, help=f"PYTHON_IMAGE (default {BASE_IMAGE})")
    d.add_argument(
        "--weights", default="imagenet", help="imagenet | random | docker/weights/<file>"
    )
    d.add_argument("--models", help='default "resnet18 resnet50"')
    d.add_argument("--build-arg", action="append", default=[], metavar="KEY=VALUE")
    d.add_argument("--torch-wheels", help="folder with the CPU torch wheel ('' for none; "
                   "default: pip's find-links folder if it has one)")  # fmt: skip
    d.add_argument(
        "--torch-index-url", help="default: PyPI with a local wheel, else the Dockerfile's"
    )
    d.add_argument("--ca-bundle", default=str(HOST_CA_BUNDLE),
                   help="CA bundle for the build's downloads ('' for the image's own)")  # fmt: skip
    d.add_argument("--layers", action="store_true", help="keep cached layers for rebuilds")
    d.set_defaults(func=_cmd_build)

    r = sub.add_parser("run", help="run an image's server on this machine's network")
    r.add_argument("image")
    r.add_argument("--port", type=int, default=8000)
    r.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE")
    r.set_defaults(func=_cmd_run)

    args = p.parse_args(argv)
    try:
        return int(args.func(args))
    except LocalBuildError as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
