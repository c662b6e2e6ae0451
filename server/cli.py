"""Command line: `python -m server serve --config models.yaml --host H --port P`, `models`, `prepare`,
`pull HUB_ID`."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from typing import NoReturn

from server.config import ConfigError, ServerConfig, load_config
from server.logs import configure_logging

logger = logging.getLogger("server")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m server", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the configured models over HTTP")
    serve.add_argument("--config", default="models.yaml", help="the models file (default: models.yaml)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--log-format", choices=["text", "json"], help="overrides server.log_format from the config"
    )
    listing = sub.add_parser("models", help="list the models a config file declares")
    listing.add_argument("--config", default="models.yaml")
    prepare = sub.add_parser("prepare", help="load every model once (converting GGUF files into the cache)")
    prepare.add_argument("--config", default="models.yaml")
    pull = sub.add_parser("pull", help="download a model into the Hugging Face cache (with progress)")
    pull.add_argument("hub_id", help="owner/name on the Hugging Face hub")
    pull.add_argument("--revision", help="a branch, tag or commit (default: main)")
    pull.add_argument(
        "--from",
        dest="source",
        metavar="DIR",
        help="import this local checkpoint directory (or file:// URL) instead",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "pull":
        return _pull(args.hub_id, args.revision, args.source)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(
        getattr(args, "log_level", "info"), getattr(args, "log_format", None) or config.server.log_format
    )
    if args.command == "models":
        return _list_models(config)
    if args.command == "prepare":
        return _prepare(config)
    return _serve(config, args.host, args.port, args.log_level)


def _list_models(config: ServerConfig) -> int:
    print(f"{'id':32} {'dtype':9} {'device':8} source")
    for spec in config.models:
        print(f"{spec.id:32} {spec.dtype:9} {spec.device!s:8} {spec.source.describe()}")
    return 0


def _pull(hub_id: str, revision: str | None, source: str | None) -> int:
    from server.models.pull import PullError, pull

    try:
        folder = pull(hub_id, revision, source)
    except PullError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # no network, no such repository, a disk that is full
        print(f"error: {hub_id}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"{hub_id}: in the cache at {folder}; use `source: {{hub: {hub_id}}}` in models.yaml")
    return 0


def _prepare(config: ServerConfig) -> int:
    from server.models.loader import load_model

    for spec in config.models:
        load_model(spec, config.server, config.base_dir)
        logger.info("model %s: prepared", spec.id)
    return 0


def _serve(config: ServerConfig, host: str, port: int, log_level: str) -> int:
    import uvicorn

    from server.api.lifecycle import GracefulServer
    from server.app import create_app

    failed = False

    def on_fatal() -> None:
        nonlocal failed
        failed = True
        server.should_exit = True

    try:
        app = create_app(config, on_fatal=on_fatal)
    except ConfigError as exc:  # e.g. an API-keys file that cannot be read
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Our own middleware writes the access log (with request ids); uvicorn's loggers go to ours.
    uvicorn_config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=1,  # the drain has already ended or stopped every request
    )
    server = GracefulServer(uvicorn_config, drain=app.state.drain)
    listener = uvicorn_config.bind_socket()
    if config.server.send_buffer_bytes is not None:  # accepted connections inherit it
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, config.server.send_buffer_bytes)
    server.run(sockets=[listener])
    return _exit_now(1 if failed else 0)


def _exit_now(code: int) -> NoReturn:
    """Everything is closed by now (engines stopped, the store flushed and closed). The
    interpreter's own teardown would still garbage-collect every object of the loaded models, seconds
    of a shutdown that must end within shutdown_timeout_s: skip it."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
