"""Logging set-up: plain text or one JSON object per line, each line carrying its request id."""

from __future__ import annotations

import contextvars
import json
import logging
import time
from typing import Any, Literal

LogFormat = Literal["text", "json"]

# Set by the observability middleware for the duration of a request (tasks it starts inherit it).
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


_installed = False


def install_request_ids() -> None:
    """Every log record made from now on carries `request_id` (None outside a request) and
    `request_tag` (" [id]" or ""), whichever handler formats it. Idempotent."""
    global _installed
    if _installed:
        return
    _installed = True
    make_record = logging.getLogRecordFactory()

    def with_request_id(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        request_id = request_id_var.get()
        vars(record).update(request_id=request_id, request_tag=f" [{request_id}]" if request_id else "")
        return record

    logging.setLogRecordFactory(with_request_id)


class JsonFormatter(logging.Formatter):
    """`{"time", "level", "logger", "message", "request_id", ...}`; access lines add their fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            line["request_id"] = request_id
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            line.update({k: v for k, v in access.items() if v is not None})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging(level: str = "info", fmt: LogFormat = "text") -> None:
    """Root logging for the whole process, uvicorn's loggers included (they propagate to it)."""
    install_request_ids()
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s%(request_tag)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
