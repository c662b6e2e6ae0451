"""Graceful shutdown: on SIGTERM stop taking requests (503, `/health` too), let the running ones
finish up to a deadline, cancel what is left, then let the server exit (status 0), within the
deadline plus about 3 seconds whatever the clients do.

`DrainGate` (ASGI middleware) counts the requests in flight, runs each as a task of its own (so
that one whose client never lets it finish can be stopped), and refuses new ones while draining;
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

from server.api.asgi_errors import TrackedSend, send_error
from server.protocol.errors import ShuttingDown

logger = logging.getLogger(__name__)

# Still answered while draining: the load balancer's probe (which then says 503) and the metrics.
UNGATED_PATHS = ("/health", "/metrics")
# After cancelling the generations, how long their responses get to end cleanly: a stream whose
# client reads slowly (a loaded 2-core box) still has deltas queued; measured up to 0.66 s.
CANCEL_GRACE_S = 1.5
STOP_GRACE_S = 0.5  # after stopping the requests that did not end, how long they get to unwind


class Lifecycle:
    def __init__(self) -> None:
        self.draining = False
        self.drain_started = asyncio.Event()  # requests still sending their bodies give up on it
        self.in_flight = 0
        self.requests: set[asyncio.Task[None]] = set()

    async def drain(self, deadline_s: float, cancel_all: Callable[[], None]) -> None:
        """Refuses new requests from now on; returns once none is in flight: after `deadline_s`
        the generations still running are cancelled, a moment later any request still going
        (a client that does not read its stream, say) is stopped."""
        self.draining = True
        self.drain_started.set()
        logger.info(
            "draining: %d requests in flight, new ones get 503 (deadline %.0f s)", self.in_flight, deadline_s
        )
        if not await self._until_idle(deadline_s):
            logger.warning("deadline passed: cancelling the %d requests still in flight", self.in_flight)
            cancel_all()
            if not await self._until_idle(CANCEL_GRACE_S):
                logger.warning("stopping %d requests that did not end after being cancelled", self.in_flight)
                for request in list(self.requests):
                    request.cancel()
                if not await self._until_idle(STOP_GRACE_S):
                    logger.warning("%d requests are still in flight", self.in_flight)
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
        tracked = TrackedSend(send)
        lifecycle = self.lifecycle
        request = asyncio.ensure_future(self.app(scope, receive, tracked))
        lifecycle.in_flight += 1
        lifecycle.requests.add(request)
        try:
            await asyncio.wait({request})
        except asyncio.CancelledError:  # the server's own task was cancelled: so is the request
            request.cancel()
            raise
        finally:
            lifecycle.in_flight -= 1
            lifecycle.requests.discard(request)
        if not request.cancelled():
            request.result()  # what the app raised goes on up
            return
        # Stopped by the drain: answer if nothing was sent yet; else the connection is closed as it is.
        if not tracked.started:
            message = "The server is shutting down; this request was cancelled."
            await send_error(send, ShuttingDown(message), headers=((b"connection", b"close"),))


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

    async def shutdown(self, sockets: Any = None) -> None:
        """After the drain no request is left, but a connection can still be flushing a response
        to a client that reads nothing (a transport closes only once its buffer is sent): those are
        dropped, or uvicorn would wait for them."""
        for connection in list(self.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None and transport.get_write_buffer_size() > 0:
                transport.abort()
        await super().shutdown(sockets)

    async def _drain_then_exit(self) -> None:
        try:
            await self._drain()
        except Exception:
            logger.exception("draining failed; shutting down anyway")
        finally:
            self.should_exit = True
