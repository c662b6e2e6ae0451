"""Store writes on their own thread; a response with `store: true` completes once its write has.

The record is built (a stream folded) and saved on the writer thread, so nothing of it runs on the
event loop or delays a token. The caller awaits the commit before it sends the end of the response
(the body, or `[DONE]`): a completion is readable, from any replica sharing the database, as soon
as its client has it whole. A write that fails or takes longer than `SAVE_TIMEOUT_S` raises
StoreWriteError, which the response reports, never a 200 for a completion that is not there.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
from collections.abc import Callable

from server.storage.records import CompletionStore, StoredCompletion

# A record, or a function that builds it: building (folding a stream) is also kept off the event loop.
Pending = StoredCompletion | Callable[[], StoredCompletion]
SAVE_TIMEOUT_S = 30.0

logger = logging.getLogger(__name__)


class StoreWriteError(Exception):
    """The record was not stored; the message says why, in words fit for the client."""


class StoreWriter:
    def __init__(self, store: CompletionStore) -> None:
        self.store = store
        self.written = 0
        self.failed = 0
        self._queue: queue.Queue[tuple[Pending, concurrent.futures.Future[None]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._thread.start()

    async def save(self, record: Pending) -> None:
        """Returns once the record is committed; raises StoreWriteError when it could not be."""
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._queue.put((record, done))
        try:
            await asyncio.wait_for(asyncio.wrap_future(done), SAVE_TIMEOUT_S)
        except TimeoutError:
            raise StoreWriteError(f"storing it took longer than {SAVE_TIMEOUT_S:.0f} s") from None
        except Exception as exc:
            raise StoreWriteError(f"the store failed ({type(exc).__name__})") from exc

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def close(self, timeout: float = 30) -> None:
        """Writes what is queued, then stops."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            pending, done = item
            # A save that timed out was cancelled by its waiter: settling it then is a no-op.
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                try:
                    self.store.save(pending if isinstance(pending, StoredCompletion) else pending())
                except Exception as exc:  # logged and counted; the response it belongs to says so
                    self.failed += 1
                    logger.exception("storing a completion failed")
                    done.set_exception(exc)
                else:
                    self.written += 1
                    done.set_result(None)
