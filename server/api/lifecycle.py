"""Graceful shutdown: on SIGTERM stop taking requests (503, `/health` too), let the running ones
finish up to a deadline, cancel what is left, then let the server exit (status 0).

`DrainGate` (ASGI middleware) counts the requests in flight and refuses new ones while draining;
`GracefulServer` is uvicorn's server with the first SIGTERM/SIGINT turned into a drain.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

import uvicorn

from server.api.errors import ShuttingDown, send_error

logger = logging.getLogger(__name__)

# Still answered while draining: the load balancer's probe (which then says 503) and the metrics.
UNGATED_PATHS = ("/health", "/metrics")
CANCEL_GRACE_S = 5.0  # after cancelling, how long the cancelled responses get to end cleanly


class Lifecycle:
    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0

    async def drain(self, deadline_s: float, cancel_all: Callable[[], None]) -> None:
        """Refuses new requests from now on; returns once none is in flight (cancelling the
        generations still running after `deadline_s`)."""
        self.draining = True
        logger.info(
            "draining: %d requests in flight, new ones get 503 (deadline %.0f s)", self.in_flight, deadline_s
        )
        if not await self._until_idle(deadline_s):
            logger.warning("deadline passed: cancelling the %d requests still in flight", self.in_flight)
            cancel_all()
            if not await self._until_idle(CANCEL_GRACE_S):
                logger.warning("%d requests did not end after being cancelled", self.in_flight)
        logger.info("drained")

    async def _until_idle(self, seconds: float) -> bool:
        end = time.monotonic() + seconds
        while self.in_flight and time.monotonic() < end:
            await asyncio.sleep(0.05)
        return not self.in_flight


class DrainGate:
    def __init__(self, app: Any, lifecycle: Lifecycle) -> None:
        self.app = app
        self.lifecycle = lifecycle

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in UNGATED_PATHS:
            await self.app(scope, receive, send)
            return
        if self.lifecycle.draining:
            message = "The server is shutting down and takes no new requests; retry on another replica."
            await send_error(send, ShuttingDown(message), headers=((b"connection", b"close"),))
            return
        self.lifecycle.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.lifecycle.in_flight -= 1


class GracefulServer(uvicorn.Server):
    """The first SIGTERM (or Ctrl-C) runs `drain` and then exits normally; a second one is
    uvicorn's own handling (a second Ctrl-C forces the exit)."""

    def __init__(self, config: uvicorn.Config, drain: Callable[[], Awaitable[None]]) -> None:
        super().__init__(config)
        self._drain = drain
        self._draining = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Future[None] | None = None

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining or self.should_exit or self._loop is None:
            super().handle_exit(sig, frame)
            return
        self._draining = True
        logger.info("received signal %d: draining, then exiting (send it again to stop at once)", sig)
        self._loop.call_soon_threadsafe(self._start_draining)

    def _start_draining(self) -> None:
        self._drain_task = asyncio.ensure_future(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        try:
            await self._drain()
        except Exception:
            logger.exception("draining failed; shutting down anyway")
        finally:
            self.should_exit = True
