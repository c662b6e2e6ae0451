"""create_app: wiring and lifespan only."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

import server
from server.api import handlers
from server.api.routes import chat, health, models
from server.chat.service import ChatService
from server.config import ServerConfig
from server.models.registry import ModelRegistry

logger = logging.getLogger(__name__)


def create_app(
    config: ServerConfig,
    *,
    registry: ModelRegistry | None = None,
    on_fatal: Callable[[], None] | None = None,
) -> FastAPI:
    """`on_fatal` is called when the models cannot be loaded (the CLI stops the server then)."""
    registry = registry or ModelRegistry(config)

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

    app = FastAPI(
        title="openweights-server",
        version=server.__version__,
        summary="OpenAI-compatible Chat Completions for open-weight models",
        lifespan=lifespan,
    )
    app.state.registry = registry
    app.state.chat_service = ChatService(registry)
    handlers.install(app)
    for module in (chat, models, health):
        app.include_router(module.router)
    return app


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
