"""Store writes on their own thread: a slow or failing database never delays a response."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from server.storage.records import CompletionStore, StoredCompletion

# A record, or a function that builds it: building (folding a stream) is also kept off the response path.
Pending = StoredCompletion | Callable[[], StoredCompletion]

logger = logging.getLogger(__name__)


class StoreWriter:
    def __init__(self, store: CompletionStore) -> None:
        self.store = store
        self.written = 0
        self.failed = 0
        self._queue: queue.Queue[Pending | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._thread.start()

    def submit(self, record: Pending) -> None:
        self._queue.put(record)

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def close(self, timeout: float = 30) -> None:
        """Writes what is queued, then stops."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (pending := self._queue.get()) is not None:
            try:
                record = pending if isinstance(pending, StoredCompletion) else pending()
                self.store.save(record)
                self.written += 1
            except Exception:  # logged and counted; the client already has its response
                self.failed += 1
                logger.exception("storing a completion failed")
