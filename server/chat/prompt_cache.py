"""Prompt caching as the API defines it, on the engine's prefix cache.

- Implicit (the default): any prefix a request shares with a cached one is reused, as always.
- `prompt_cache_breakpoint` on a content part pins the prompt's KV up to the end of that part for
  at least its `ttl` (see `server/engine/pins.py` for what happens when pins exceed their slots).
- `prompt_cache_options`: `mode: "explicit"` turns the implicit cache off for the request: a
  prefix is reused only up to one of its breakpoints, and with none, nothing is reused or kept.
  In implicit mode with options given, the implicit breakpoint (the whole prompt) is pinned for
  `ttl`.
- `prompt_cache_retention`: the longest the request's KV stays cached once it is done (`in_memory`
  an hour, as OpenAI's in-memory cache; `24h` a day). The cache is in memory only, never on disk.
- `prompt_cache_key` (else `user`, which it replaces): when a slot must be reused, the key that
  holds the most cached entries gives one up, so one busy key cannot flush the others' prefixes. A
  router in front of several replicas should hash on it, so that a key's requests meet its cache.
"""

from __future__ import annotations

from server.chat.templating import Prompt
from server.engine.types import CachePolicy
from server.protocol.errors import InvalidRequest
from server.protocol.request import ChatCompletionRequest

TTL_SECONDS = {"30m": 30 * 60.0, "12h": 12 * 3600.0}
RETENTION_SECONDS = {"in_memory": 3600.0, "24h": 24 * 3600.0}
MAX_BREAKPOINTS = 4  # per request, as OpenAI allows


def check_breakpoints(request: ChatCompletionRequest) -> None:
    seen = 0
    for index, message in enumerate(request.messages):
        content = getattr(message, "content", None)
        for part_index, part in enumerate(content if isinstance(content, list) else ()):
            if getattr(part, "prompt_cache_breakpoint", None) is None:
                continue
            seen += 1
            if seen > MAX_BREAKPOINTS:
                raise InvalidRequest(
                    f"A request can set at most {MAX_BREAKPOINTS} prompt cache breakpoints.",
                    param=f"messages[{index}].content[{part_index}].prompt_cache_breakpoint",
                )


def cache_policy(request: ChatCompletionRequest, prompt: Prompt) -> CachePolicy:
    options = request.prompt_cache_options
    explicit = options is not None and options.mode == "explicit"
    points = [(tokens, TTL_SECONDS[ttl]) for tokens, ttl in prompt.breakpoints if tokens > 0]
    pins = list(points)
    if options is not None and not explicit and len(prompt.token_ids) > 1:
        # The last prompt token is always read again (its logits give the first output token).
        pins.append((len(prompt.token_ids) - 1, TTL_SECONDS[options.ttl]))
    retention = request.prompt_cache_retention
    return CachePolicy(
        pins=tuple(pins),
        reuse_at=tuple(sorted(tokens for tokens, _ in points)) if explicit else None,
        keep=not explicit or bool(points),
        key=request.prompt_cache_key or request.user or "",
        retain_s=None if retention is None else RETENTION_SECONDS[retention],
    )
