"""Errors as exceptions carrying the OpenAI error fields; rendered in one place (`error_body`)."""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers: dict[str, str] = {}
        if code is not None:
            self.code = code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


class InvalidRequest(APIError):
    status = 400
    type = "invalid_request_error"


class UnsupportedParameter(InvalidRequest):
    code = "unsupported_parameter"

    def __init__(self, param: str, why: str = "is not supported yet by this server") -> None:
        super().__init__(f"The parameter '{param}' {why}.", param=param)


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class AuthenticationFailed(APIError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.headers["WWW-Authenticate"] = "Bearer"


class PermissionDenied(APIError):
    status = 403
    type = "permission_error"
    code = "admin_key_required"


class Conflict(APIError):
    status = 409
    type = "invalid_request_error"
    code = "model_busy"


class NotFound(APIError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model '{printable(model)}' does not exist.", param="model")


class RateLimited(APIError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.headers["Retry-After"] = str(retry_after_s)


class ServiceUnavailable(APIError):
    status = 503
    type = "service_unavailable"
    code = "model_loading"


class ShuttingDown(ServiceUnavailable):
    code = "server_shutting_down"


class InternalError(APIError):
    status = 500
    type = "server_error"
    code = "internal_error"


class StoreFailed(InternalError):
    """`store: true` and the completion could not be stored: the response must not look like success."""

    code = "store_failed"


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def printable(text: str, limit: int = 256) -> str:
    """Client input echoed in an error message: control characters, lone surrogates and other
    unprintable characters written as escapes (never raw NUL bytes, never text UTF-8 cannot
    encode), and a long value cut short."""
    if len(text) > limit:
        text = text[:limit] + "..."
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
