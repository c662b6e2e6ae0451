"""create_app: wiring and lifespan only."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline

import server
from server.api import handlers, openapi
from server.api.auth import ApiKeyGate, load_api_keys
from server.api.body_limit import BodyLimit
from server.api.lifecycle import DrainGate, Lifecycle
from server.api.observability import Observability
from server.api.routes import chat, health, metrics, models, page, stored
from server.chat.registry import ModelRegistry
from server.chat.service import ChatService
from server.config import ServerConfig
from server.metrics import Metrics, ModelStatus
from server.storage.records import CompletionStore
from server.storage.sql_store import SqlCompletionStore
from server.storage.writer import StoreWriter

logger = logging.getLogger(__name__)


def create_app(
    config: ServerConfig,
    *,
    registry: ModelRegistry | None = None,
    store: CompletionStore | None = None,
    on_fatal: Callable[[], None] | None = None,
) -> FastAPI:
    """`on_fatal` is called when the models cannot be loaded (the CLI stops the server then).
    The completion store is opened here, so a database that cannot be reached stops start-up."""
    registry = registry or ModelRegistry(config)
    api_keys = load_api_keys(config)
    if api_keys is None:
        logger.warning(
            "NO API KEYS CONFIGURED: every /v1 route is open to anyone who can reach this server "
            "(set server.api_keys_file or server.api_keys_env in the config)"
        )
    store = store or SqlCompletionStore(_store_url(config))
    writer = StoreWriter(store)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.get_running_loop().run_in_executor(None, registry.load_all)
        loading.add_done_callback(lambda f: _after_loading(f, on_fatal))
        try:
            yield
        finally:
            if not loading.done():
                logger.info("shutting down while models are still loading")
            registry.shutdown()
            writer.close()  # what was generated is written before the process ends
            store.close()

    # /docs and /redoc from assets shipped in the package (fastapi-offline), not from a CDN: they
    # render on a machine without internet.
    app = FastAPIOffline(
        title="openweights-server",
        version=server.__version__,
        summary="OpenAI-compatible Chat Completions for open-weight models",
        lifespan=lifespan,
    )
    settings = config.server
    lifecycle = Lifecycle()
    app_metrics = Metrics(
        lambda: [(m.spec.id, m.engine.engine.stats) for m in registry.served()],
        writer,
        lambda: [
            ModelStatus(s.spec.id, s.state.value, s.loads, s.unloads, s.reserved_bytes)
            for s in registry.slots()
        ],
    )
    app.state.registry = registry
    app.state.api_keys = api_keys
    app.state.store = store
    app.state.store_writer = writer
    app.state.lifecycle = lifecycle
    app.state.metrics = app_metrics
    app.state.stalled_stream_timeout_s = settings.stalled_stream_timeout_s
    app.state.chat_service = ChatService(
        registry,
        writer,
        settings.limits,
        request_timeout_s=settings.request_timeout_s,
        metrics=app_metrics,
        log_content=settings.log_content,
        media=settings.media,
    )
    # Called by the CLI's server on SIGTERM.
    app.state.drain = lambda: lifecycle.drain(settings.shutdown_timeout_s, registry.abort_all)
    handlers.install(app)
    # Middleware, innermost first: the last added sees a request first. The key is checked before
    # the body is read; CORS answers preflights and marks every response, 401s included.
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.limits.max_body_bytes,
        timeout_s=settings.body_timeout_s,
        abandon=lifecycle.drain_started,
    )
    app.add_middleware(ApiKeyGate, keys=api_keys, metrics_require_key=settings.metrics_require_key)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-Request-Id"],
            expose_headers=["X-Request-Id"],
        )
    app.add_middleware(DrainGate, lifecycle=lifecycle)
    app.add_middleware(handlers.CatchUnexpected)
    app.add_middleware(Observability, metrics=app_metrics)
    for module in (chat, stored, models, health, metrics, page):
        app.include_router(module.router)
    app.mount("/ui", page.assets, name="ui")
    openapi.install(app)
    return app


def _store_url(config: ServerConfig) -> str:
    """A relative SQLite path is relative to the config file, like every path in it."""
    url = config.server.store_url
    prefix = "sqlite:///"
    if url.startswith(prefix) and not Path(url[len(prefix) :]).expanduser().is_absolute():
        return prefix + str(config.base_dir / url[len(prefix) :])
    return url


def _after_loading(future: asyncio.Future[None], on_fatal: Callable[[], None] | None) -> None:
    if future.cancelled():
        return
    error = future.exception()
    if error is None:
        logger.info("all models loaded; serving")
        return
    logger.error("loading the models failed: %s", error, exc_info=error)
    if on_fatal is not None:
        on_fatal()
