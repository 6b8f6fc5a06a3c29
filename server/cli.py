"""``resnet-serve`` / ``python -m server``: settings from env + flags, then one server process
(``serving``) or a supervisor of several (``workers``)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys

from pydantic import ValidationError

from contract.errors import validation_problems
from server.models.repository import discover
from server.serving import serve
from server.settings import MIN_API_KEY_CHARS, Settings
from server.workers import Supervisor


def build_parser() -> argparse.ArgumentParser:
    """One ``--flag-name VALUE`` per settings field; values are validated by ``Settings``."""
    parser = argparse.ArgumentParser(
        prog="resnet-serve",
        description="Serve exported ResNet ONNX models. Every flag also reads from the "
        "environment as RESNET_<NAME> (flags win).",
    )
    for name, field in Settings.model_fields.items():
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=None,
            metavar="VALUE",
            help=f"{field.description or ''} (default: {field.get_default(call_default_factory=True)!r})",
        )
    return parser


def load_settings(argv: list[str] | None = None) -> Settings:
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        return Settings(**overrides)
    except ValidationError as e:
        lines = validation_problems(e.errors(), "settings", limit=None)
        sys.exit("invalid settings:\n" + "\n".join(f"  {line}" for line in lines))


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
    _warn_if_open(settings)
    if settings.workers > 1:
        sys.exit(Supervisor(settings).run())
    error = serve(settings)
    if error:
        sys.exit(f"exiting: {error}")


def _warn_if_open(settings: Settings) -> None:
    """Say so when anyone who can reach the port can use the server."""
    if settings.api_key is not None:
        return
    try:
        loopback = ipaddress.ip_address(settings.host).is_loopback
    except ValueError:
        loopback = settings.host == "localhost"
    if not loopback:
        logging.getLogger("server").warning(
            "serving without an API key on %s: anyone who can reach port %d can use it; set "
            "RESNET_API_KEY (%d+ characters) or bind to 127.0.0.1",
            settings.host,
            settings.port,
            MIN_API_KEY_CHARS,
        )


if __name__ == "__main__":  # pragma: no cover
    main()
