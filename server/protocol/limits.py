"""The server's limits on a request's fields (how many messages, choices, tools, stop strings)."""

from __future__ import annotations

from server.config import RequestLimits
from server.protocol.errors import InvalidRequest
from server.protocol.request import ChatCompletionRequest


def check_limits(request: ChatCompletionRequest, limits: RequestLimits) -> None:
    def over(param: str, value: int, limit: int) -> None:
        if value > limit:
            raise InvalidRequest(
                f"Invalid '{param}': {value} is more than this server allows ({limit}).", param=param
            )

    over("messages", len(request.messages), limits.max_messages)
    over("n", request.n or 1, limits.max_n)
    over("tools", len(request.tools or []), limits.max_tools)
    over("functions", len(request.functions or []), limits.max_tools)
    over("stop", len(request.stop_sequences), limits.max_stop)
    if limits.max_tokens is not None:
        for param in ("max_tokens", "max_completion_tokens"):
            value = getattr(request, param)
            if value is not None:
                over(param, value, limits.max_tokens)
