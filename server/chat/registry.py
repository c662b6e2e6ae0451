"""Model id (or alias) -> a served model, loaded at start-up or on its first request, unloaded when
idle past its keep_alive or to make room under `server.max_loaded_bytes` (least recently used
first). Requests hold a lease on the model they use: a model with leases or sequences in its
engine is never unloaded."""

from __future__ import annotations

import asyncio
import enum
import gc
import logging
import threading
import time
from dataclasses import dataclass, field

import torch

from server.chat.served_model import ServedModel, build_served
from server.config import ModelSpec, ServerConfig
from server.models.footprint import estimate_bytes
from server.protocol.errors import ModelNotFound, RateLimited, ServiceUnavailable

logger = logging.getLogger(__name__)

ON_DEMAND_KEEP_ALIVE_S = 300.0  # an on-demand model's default idle time before it is unloaded
_POLL_S = 0.05
_REAPER_PERIOD_S = 0.5
_FULL_RETRY_AFTER_S = 5  # Retry-After while no memory can be freed for a model
_ROOM_WAIT_S = 2.0  # how long a request waits for busy models to become idle before that 429


class ModelState(enum.Enum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


_HOLDING = (ModelState.LOADING, ModelState.READY)  # states whose memory counts against the budget


@dataclass(slots=True, eq=False)
class ModelSlot:
    spec: ModelSpec
    at_startup: bool
    keep_alive_s: float | None  # None: never unloaded when idle
    state: ModelState = ModelState.UNLOADED
    served: ServedModel | None = None
    error: str | None = None
    phase: str = ""  # what loading is doing now
    load_started: float = 0.0
    attempt: int = 0  # loads started so far
    leases: int = 0  # requests using it now
    last_used: float = 0.0  # time.monotonic() of the last request's start or end
    reserved_bytes: int = 0  # counted against the budget: the estimate while loading, then the measure
    loads: int = 0  # completed loads since start
    unloads: int = 0

    @property
    def memory_kind(self) -> str:
        """The budget it counts against: "cpu", or "cuda:N" (a device map counts as cuda:0)."""
        device = self.served.device if self.served is not None else _configured_device(self.spec)
        if device.startswith("cuda"):
            return device if ":" in device else "cuda:0"
        return "cuda:0" if device == "device_map" else "cpu"

    def busy(self) -> bool:
        if self.leases:
            return True
        engine = self.served.engine.engine if self.served is not None else None
        return engine is not None and (engine.num_running + engine.num_waiting) > 0


@dataclass(slots=True)
class _Budget:
    limits: dict[str, int] = field(default_factory=dict)  # memory kind ("cpu", "cuda", "cuda:N") -> bytes

    def limit(self, kind: str) -> int | None:
        if kind in self.limits:
            return self.limits[kind]
        if kind.startswith("cuda") and "cuda" in self.limits:
            return self.limits["cuda"]
        return self.limits.get("*")


class ModelRegistry:
    def __init__(self, config: ServerConfig) -> None:
        self._config = config
        self._slots: dict[str, ModelSlot] = {}
        self._names: dict[str, ModelSlot] = {}  # ids and aliases
        for index, spec in enumerate(config.models):
            at_startup = spec.load == "startup" or (spec.load is None and index == 0)
            keep = spec.keep_alive
            if keep is None:
                keep = -1.0 if at_startup else ON_DEMAND_KEEP_ALIVE_S
            slot = ModelSlot(spec, at_startup, None if keep == -1 else float(keep))
            self._slots[spec.id] = slot
            for name in (spec.id, *spec.aliases):
                self._names[name] = slot
        limit = config.server.max_loaded_bytes
        self._budget = _Budget({"*": limit} if isinstance(limit, int) else dict(limit or {}))
        self._lock = threading.RLock()
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._reaper: threading.Thread | None = None
        self.failure: str | None = None

    # --- what the API reads ---------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """The start-up models are loaded."""
        return self._ready.is_set()

    @property
    def configured_ids(self) -> list[str]:
        return list(self._slots)

    @property
    def names(self) -> list[str]:
        """Every id and alias, ids first in file order."""
        return [*self._slots, *(a for slot in self._slots.values() for a in slot.spec.aliases)]

    def slot(self, name: str) -> ModelSlot:
        found = self._names.get(name)
        if found is None:
            raise ModelNotFound(name)
        return found

    def slots(self) -> list[ModelSlot]:
        return list(self._slots.values())

    def served(self) -> list[ServedModel]:
        with self._lock:
            return [s.served for s in self._slots.values() if s.served is not None]

    def get(self, name: str) -> ServedModel:
        """The model if it is loaded now (no lease: for inspection)."""
        slot = self.slot(name)
        with self._lock:
            if slot.served is None:
                raise ServiceUnavailable(f"The model '{name}' is not loaded.")
            return slot.served

    # --- start-up and shutdown --------------------------------------------------------------

    def load_all(self) -> None:
        """Blocking: loads the start-up models, then starts unloading idle ones past keep_alive."""
        try:
            for slot in self._slots.values():
                if slot.at_startup:
                    with self._lock:
                        self._start_load(slot, background=False)
                    if slot.state is not ModelState.READY:
                        raise RuntimeError(slot.error or f"model {slot.spec.id} did not load")
        except Exception as exc:
            self.failure = f"{type(exc).__name__}: {exc}"
            raise
        self._ready.set()
        self._reaper = threading.Thread(target=self._reap, name="model-keep-alive", daemon=True)
        self._reaper.start()

    def abort_all(self) -> None:
        """Cancels every generation queued or running, on every model."""
        for served in self.served():
            served.engine.engine.abort_all()

    def shutdown(self) -> None:
        self._stopping.set()
        for served in self.served():
            served.engine.engine.stop()

    # --- requests ---------------------------------------------------------------------------

    async def acquire(self, name: str) -> ServedModel:
        """The model for a request, with a lease (give it back with `release`): loaded now if it
        is not (the request waits up to the model's max_queue_wait_s), after unloading idle models
        if the memory budget needs room; 429 with Retry-After while no room can be made."""
        slot = self.slot(name)
        if not self.ready and slot.at_startup:
            raise ServiceUnavailable("The server is still loading its models; try again shortly.")
        wait = slot.spec.engine.max_queue_wait_s
        deadline = None if wait is None else time.monotonic() + wait
        mine: int | None = None
        arrived = time.monotonic()
        while True:
            with self._lock:
                if slot.state is ModelState.READY and slot.served is not None:
                    slot.leases += 1
                    slot.last_used = time.monotonic()
                    return slot.served
                if slot.state is ModelState.FAILED and mine is not None and slot.attempt == mine:
                    raise ServiceUnavailable(f"The model '{name}' failed to load: {slot.error}")
                if slot.state in (ModelState.UNLOADED, ModelState.FAILED):
                    try:
                        self._start_load(slot, background=True)
                    except RateLimited:
                        # A model whose last request just ended may still be finishing it:
                        # room is retried for a moment before the caller is told to come back.
                        if time.monotonic() - arrived >= _ROOM_WAIT_S:
                            raise
                    else:
                        mine = slot.attempt
            if deadline is not None and time.monotonic() > deadline:
                raise RateLimited(
                    f"The model '{name}' is still loading ({slot.phase or 'starting'}); retry shortly.",
                    retry_after_s=max(1, int(wait or 1)),
                )
            await asyncio.sleep(_POLL_S)

    def release(self, served: ServedModel) -> None:
        with self._lock:
            slot = self._slots[served.spec.id]
            if slot.served is served and slot.leases > 0:
                slot.leases -= 1
                slot.last_used = time.monotonic()

    # --- admin ------------------------------------------------------------------------------

    def load(self, name: str) -> ModelSlot:
        """Starts loading a model now (admin route); returns its slot."""
        slot = self.slot(name)
        with self._lock:
            if slot.state in (ModelState.UNLOADED, ModelState.FAILED):
                self._start_load(slot, background=True)
        return slot

    def unload(self, name: str) -> bool:
        """Unloads a model now unless requests are using it (admin route): whether it is unloaded."""
        slot = self.slot(name)
        with self._lock:
            if slot.state is ModelState.LOADING or (slot.state is ModelState.READY and slot.busy()):
                return False
            detached = self._detach(slot, "asked to")
        _dispose(detached)
        return True

    # --- loading and unloading --------------------------------------------------------------
    # Decisions are taken under the lock; stopping an engine and freeing its memory happen after
    # it, on the loading, reaper or admin thread: never on the event loop.

    def _start_load(self, slot: ModelSlot, background: bool) -> None:
        need = estimate_bytes(slot.spec, self._config)
        kind = slot.memory_kind
        fits, evicted = self._make_room(kind, need, slot)
        if not fits:
            limit = self._budget.limit(kind)
            raise RateLimited(
                f"The model '{slot.spec.id}' needs about {need / 2**30:.1f} GiB and the loaded models leave "
                f"less of server.max_loaded_bytes ({(limit or 0) / 2**30:.1f} GiB on {kind}) free while they "
                "serve requests; retry shortly.",
                retry_after_s=_FULL_RETRY_AFTER_S,
            )
        slot.state, slot.error, slot.phase = ModelState.LOADING, None, "starting"
        slot.attempt += 1
        slot.load_started = time.monotonic()
        slot.reserved_bytes = need
        logger.info("model %s: loading (%s)", slot.spec.id, "on demand" if background else "at start-up")
        if background:
            threading.Thread(
                target=self._load, args=(slot, evicted), name=f"load-{slot.spec.id}", daemon=True
            ).start()
        else:
            self._lock.release()  # a start-up load takes minutes: the lock is not held meanwhile
            try:
                self._load(slot, evicted)
            finally:
                self._lock.acquire()

    def _load(self, slot: ModelSlot, evicted: list[ServedModel]) -> None:
        _dispose(evicted)  # the room made for it, freed before its weights arrive
        try:
            served = build_served(slot.spec, self._config, lambda phase: setattr(slot, "phase", phase))
        except Exception as exc:
            logger.exception("model %s: loading failed", slot.spec.id)
            with self._lock:
                slot.state, slot.error, slot.reserved_bytes = (
                    ModelState.FAILED,
                    f"{type(exc).__name__}: {exc}",
                    0,
                )
            return
        with self._lock:
            slot.served, slot.reserved_bytes = served, served.footprint_bytes
            kind, limit = slot.memory_kind, self._budget.limit(slot.memory_kind)
            if limit is not None and served.footprint_bytes > limit:
                error = (
                    f"it takes {served.footprint_bytes / 2**30:.2f} GiB (weights and KV budget), more than "
                    f"server.max_loaded_bytes allows on {kind} ({limit / 2**30:.2f} GiB)"
                )
                evicted = self._detach(slot, "too large")
                slot.state, slot.error = ModelState.FAILED, error
                logger.error("model %s: %s", slot.spec.id, error)
            else:
                # The measure may exceed the estimate: idle others make room.
                evicted = self._make_room(kind, 0, slot)[1]
                slot.state, slot.phase = ModelState.READY, ""
                slot.last_used = time.monotonic()
                slot.loads += 1
                logger.info(
                    "model %s: ready in %.1f s (%.2f GiB with its KV budget)",
                    slot.spec.id,
                    time.monotonic() - slot.load_started,
                    served.footprint_bytes / 2**30,
                )
        _dispose(evicted)

    def _make_room(self, kind: str, need: int, for_slot: ModelSlot) -> tuple[bool, list[ServedModel]]:
        """Takes idle models on `kind` out of service, least recently used first, until `need`
        more bytes fit: whether they do, and the models to dispose of (none when they would not
        make enough room: nothing is unloaded in vain)."""
        limit = self._budget.limit(kind)
        if limit is None:
            return True, []
        others = [s for s in self._slots.values() if s is not for_slot and s.memory_kind == kind]
        free = limit - need - sum(s.reserved_bytes for s in others if s.state in _HOLDING)
        candidates = sorted(
            (
                s
                for s in others
                if s.state is ModelState.READY and s.keep_alive_s is not None and not s.busy()
            ),
            key=lambda s: s.last_used,
        )
        chosen: list[ModelSlot] = []
        while free < 0 and candidates:
            chosen.append(candidates.pop(0))
            free += chosen[-1].reserved_bytes
        if free < 0:
            return False, []
        return True, [served for slot in chosen for served in self._detach(slot, "to make room")]

    def _detach(self, slot: ModelSlot, why: str) -> list[ServedModel]:
        """Out of service now (under the lock); what to dispose of once the lock is released."""
        served, slot.served = slot.served, None
        slot.state, slot.reserved_bytes = ModelState.UNLOADED, 0
        if served is None:
            return []
        slot.unloads += 1
        logger.info("model %s: unloaded (%s)", slot.spec.id, why)
        return [served]

    def _reap(self) -> None:
        while not self._stopping.wait(_REAPER_PERIOD_S):
            now = time.monotonic()
            evicted: list[ServedModel] = []
            with self._lock:
                for slot in self._slots.values():
                    keep = slot.keep_alive_s
                    if (
                        slot.state is ModelState.READY
                        and keep is not None
                        and now - slot.last_used >= keep
                        and not slot.busy()
                    ):
                        evicted += self._detach(slot, f"idle for {keep:g} s")
            _dispose(evicted)


def _dispose(models: list[ServedModel]) -> None:
    """Stops the models' engines and frees their memory (blocking: never on the event loop)."""
    if not models:
        return
    for served in models:
        served.engine.engine.stop()
    models.clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _configured_device(spec: ModelSpec) -> str:
    device = spec.device
    if isinstance(device, dict) or device in ("balanced", "balanced_low_0", "sequential"):
        return "device_map"
    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    return device
