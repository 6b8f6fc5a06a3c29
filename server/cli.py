"""``resnet-serve`` / ``python -m server``: settings from env + flags, then uvicorn."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from types import FrameType

import uvicorn
from pydantic import ValidationError

from .app import create_app
from .repository import discover
from .settings import Settings
from .state import AppState

log = logging.getLogger("server")


def build_parser() -> argparse.ArgumentParser:
    """One ``--flag-name VALUE`` per settings field; values are validated by ``Settings``."""
    parser = argparse.ArgumentParser(
        prog="resnet-serve",
        description="Serve exported ResNet ONNX models. Every flag also reads from the "
        "environment as RESNET_<NAME> (flags win).",
    )
    for name, field in Settings.model_fields.items():
        parser.add_argument(
            "--" + name.replace("_", "-"), dest=name, default=None, metavar="VALUE",
            help=f"{field.description or ''} (default: {field.get_default(call_default_factory=True)!r})",
        )  # fmt: skip
    return parser


def load_settings(argv: list[str] | None = None) -> Settings:
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        return Settings(**overrides)
    except ValidationError as e:
        lines = [
            f"  {'.'.join(map(str, err['loc'])) or 'settings'}: {err['msg']}" for err in e.errors()
        ]
        sys.exit("invalid settings:\n" + "\n".join(lines))


class DrainingServer(uvicorn.Server):
    """On the first SIGTERM/SIGINT: readiness turns 503 at once, requests keep being served
    for ``shutdown_delay_s`` (so load balancers notice), then uvicorn's graceful shutdown
    (stop accepting, finish in-flight requests) and the lifespan's bounded batcher drain."""

    def __init__(self, config: uvicorn.Config, state: AppState) -> None:
        super().__init__(config)
        self._state = state
        self._exit_at: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._exit_at is not None:
            super().handle_exit(sig, frame)  # a second signal: uvicorn forces the exit
            return
        self._state.lifecycle.draining = True
        self._exit_at = time.monotonic() + self._state.settings.shutdown_delay_s
        log.info("signal %d: draining (readiness now 503)", sig)

    async def on_tick(self, counter: int) -> bool:
        if self._exit_at is not None and time.monotonic() >= self._exit_at:
            self.should_exit = True
        if self._state.lifecycle.startup_error:  # a model failed to load: exit, do not linger
            self.should_exit = True
        return await super().on_tick(counter)


def main(argv: list[str] | None = None) -> None:
    settings = load_settings(argv)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        discover(settings)
    except FileNotFoundError as e:
        sys.exit(str(e))
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        server_header=False,
        timeout_graceful_shutdown=settings.drain_timeout_s,  # type: ignore[arg-type]
        access_log=settings.log_level == "debug",
        lifespan="on",
    )
    state: AppState = app.state.server
    DrainingServer(config, state).run()
    if state.lifecycle.startup_error:
        sys.exit(f"exiting: {state.lifecycle.startup_error}")


if __name__ == "__main__":  # pragma: no cover
    main()
