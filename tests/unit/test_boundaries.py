"""The engine knows nothing of HTTP or the wire format; the chat layer knows no web framework."""

import ast
from pathlib import Path

SERVER = Path(__file__).resolve().parents[2] / "server"


def _imports(package: str) -> set[str]:
    names: set[str] = set()
    for path in (SERVER / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
    return names


def test_engine_imports_no_http_or_chat_layer() -> None:
    forbidden = ("fastapi", "starlette", "openai", "server.api", "server.chat", "server.models")
    bad = [name for name in _imports("engine") if name.startswith(forbidden)]
    assert bad == []


def test_chat_layer_imports_no_web_framework() -> None:
    bad = [name for name in _imports("chat") if name.startswith(("fastapi", "starlette", "uvicorn"))]
    assert bad == []
