"""API keys: `Authorization: Bearer <key>` on every /v1 route; each key belongs to a project."""

from __future__ import annotations

import hmac
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from server.api.asgi_errors import send_error
from server.config import ConfigError, ServerConfig
from server.protocol.errors import AuthenticationFailed, printable

logger = logging.getLogger(__name__)

DEFAULT_PROJECT = "default"


@dataclass(slots=True, frozen=True)
class ApiKey:
    key: bytes
    project: str
    admin: bool = False  # may load and unload models


@dataclass(slots=True, frozen=True)
class ApiKeys:
    keys: tuple[ApiKey, ...]

    def find(self, candidate: bytes) -> ApiKey | None:
        """Compares against every key in constant time, so timing tells nothing about which matched."""
        found: ApiKey | None = None
        for entry in self.keys:
            if hmac.compare_digest(candidate, entry.key) and found is None:
                found = entry
        return found


def load_api_keys(config: ServerConfig) -> ApiKeys | None:
    """None when no key is configured: the server is open."""
    settings = config.server
    pairs: list[ApiKey] = []
    if settings.api_keys_file is not None:
        pairs += _from_file((config.base_dir / settings.api_keys_file).expanduser())
    if settings.api_keys_env is not None:
        raw = os.environ.get(settings.api_keys_env)
        if not raw:
            raise ConfigError(
                f"server.api_keys_env: the environment variable {settings.api_keys_env} is not set"
            )
        pairs += _from_env(raw, settings.api_keys_env)
    if not pairs:
        return None
    return ApiKeys(tuple(pairs))


def _from_file(path: Path) -> list[ApiKey]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"server.api_keys_file: cannot read {path}: {exc}") from exc
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(
            f"server.api_keys_file: {path} must hold `keys: [{{key: ..., project: ..., admin: false}}, ...]`"
        )
    pairs = []
    for index, entry in enumerate(entries):
        key = entry.get("key") if isinstance(entry, dict) else None
        if not isinstance(key, str) or len(key) < 8:
            raise ConfigError(
                f"server.api_keys_file: {path}: keys[{index}].key must be a string of 8+ characters"
            )
        admin = entry.get("admin", False)
        if not isinstance(admin, bool):
            raise ConfigError(f"server.api_keys_file: {path}: keys[{index}].admin must be true or false")
        pairs.append(ApiKey(key.encode(), str(entry.get("project") or DEFAULT_PROJECT), admin))
    return pairs


def _from_env(raw: str, name: str) -> list[ApiKey]:
    pairs = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        key, _, project = item.partition("=")
        if len(key) < 8:
            raise ConfigError(f"server.api_keys_env: a key in {name} is shorter than 8 characters")
        pairs.append(ApiKey(key.encode(), project or DEFAULT_PROJECT))
    return pairs


class ApiKeyGate:
    """ASGI middleware: the key is checked from the headers alone, before any of the body is read
    (an unauthenticated client cannot make the server buffer or wait for a body). Sets
    `request.state.project` on every /v1 route (and /metrics when `metrics_require_key`)."""

    def __init__(self, app: Any, keys: ApiKeys | None, metrics_require_key: bool = False) -> None:
        self.app = app
        self.keys = keys
        self.metrics_require_key = metrics_require_key

    def _guarded(self, path: str) -> bool:
        return path == "/v1" or path.startswith("/v1/") or (self.metrics_require_key and path == "/metrics")

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self._guarded(scope["path"]) or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        # No keys configured: the server is open, and every caller may administer it.
        found = ApiKey(b"", "", admin=True) if self.keys is None else self._key(scope)
        if isinstance(found, AuthenticationFailed):
            # Connection: close, since the body (if any) was never read.
            await send_error(send, found, headers=((b"connection", b"close"),))
            return
        state = scope.setdefault("state", {})
        state["project"], state["admin"] = found.project, found.admin
        await self.app(scope, receive, send)

    def _key(self, scope: dict) -> ApiKey | AuthenticationFailed:
        assert self.keys is not None
        header = b""
        for name, value in scope.get("headers") or ():
            if name == b"authorization":
                header = value
                break
        scheme, _, presented = header.partition(b" ")
        presented = presented.strip()
        if scheme.lower() != b"bearer" or not presented:
            return AuthenticationFailed(
                "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'."
            )
        found = self.keys.find(presented)
        if found is None:
            shown = _masked(presented.decode("utf-8", errors="replace"))
            return AuthenticationFailed(f"Incorrect API key provided: {printable(shown)}.")
        return found


def _masked(key: str) -> str:
    return f"{key[:3]}***{key[-2:]}" if len(key) > 8 else "***"
