"""What is stored for one completion, and what a listing returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Order = Literal["asc", "desc"]


@dataclass(slots=True)
class StoredCompletion:
    id: str
    created: int
    model: str
    completion: dict[str, Any]  # the chat.completion object as it was returned
    messages: list[dict[str, Any]]  # the request's messages, as sent
    params: dict[str, Any]  # the request's parameters (temperature, seed, tools, ...)
    metadata: dict[str, str] = field(default_factory=dict)
    project: str = ""  # the API key's project; "" when the server runs without keys


@dataclass(slots=True, frozen=True)
class ListQuery:
    project: str = ""
    after: str | None = None
    limit: int = 20
    order: Order = "asc"
    model: str | None = None
    metadata: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True, frozen=True)
class Page:
    items: list[StoredCompletion]
    has_more: bool


class CompletionStore(Protocol):
    """Blocking calls: the server runs them off the event loop (writes on a writer thread)."""

    def save(self, record: StoredCompletion) -> None: ...
    def get(self, completion_id: str, project: str) -> StoredCompletion | None: ...
    def list(self, query: ListQuery) -> Page: ...
    def update_metadata(
        self, completion_id: str, project: str, metadata: dict[str, str]
    ) -> StoredCompletion | None: ...
    def delete(self, completion_id: str, project: str) -> bool: ...
    def close(self) -> None: ...
