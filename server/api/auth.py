"""API keys: `Authorization: Bearer <key>` on every /v1 route; each key belongs to a project."""

from __future__ import annotations

import hmac
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import yaml
from fastapi import Request

from server.api.errors import AuthenticationFailed
from server.config import ConfigError, ServerConfig

logger = logging.getLogger(__name__)

DEFAULT_PROJECT = "default"


@dataclass(slots=True, frozen=True)
class ApiKeys:
    keys: tuple[tuple[bytes, str], ...]  # (key, project)

    def project_of(self, presented: str) -> str | None:
        """Compares against every key in constant time, so timing tells nothing about which matched."""
        candidate = presented.encode()
        found: str | None = None
        for key, project in self.keys:
            if hmac.compare_digest(candidate, key) and found is None:
                found = project
        return found


def load_api_keys(config: ServerConfig) -> ApiKeys | None:
    """None when no key is configured: the server is open."""
    settings = config.server
    pairs: list[tuple[str, str]] = []
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
    return ApiKeys(tuple((key.encode(), project) for key, project in pairs))


def _from_file(path: Path) -> list[tuple[str, str]]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"server.api_keys_file: cannot read {path}: {exc}") from exc
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"server.api_keys_file: {path} must hold `keys: [{{key: ..., project: ...}}, ...]`")
    pairs = []
    for index, entry in enumerate(entries):
        key = entry.get("key") if isinstance(entry, dict) else None
        if not isinstance(key, str) or len(key) < 8:
            raise ConfigError(
                f"server.api_keys_file: {path}: keys[{index}].key must be a string of 8+ characters"
            )
        pairs.append((key, str(entry.get("project") or DEFAULT_PROJECT)))
    return pairs


def _from_env(raw: str, name: str) -> list[tuple[str, str]]:
    pairs = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        key, _, project = item.partition("=")
        if len(key) < 8:
            raise ConfigError(f"server.api_keys_env: a key in {name} is shorter than 8 characters")
        pairs.append((key, project or DEFAULT_PROJECT))
    return pairs


async def authenticate(request: Request) -> None:
    """Router dependency of the /v1 routes: sets `request.state.project`, or answers 401."""
    keys: ApiKeys | None = request.app.state.api_keys
    if keys is None:
        request.state.project = ""
        return
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise AuthenticationFailed(
            "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'."
        )
    project = keys.project_of(presented.strip())
    if project is None:
        raise AuthenticationFailed(f"Incorrect API key provided: {_masked(presented.strip())}.")
    request.state.project = project


def _masked(key: str) -> str:
    return f"{key[:3]}***{key[-2:]}" if len(key) > 8 else "***"
