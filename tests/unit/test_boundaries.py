"""The layer order: each part of the server imports only from the layers below it. The engine
knows nothing of HTTP, the wire format or chat; the chat layer knows no web framework."""

import ast
from pathlib import Path

SERVER = Path(__file__).resolve().parents[2] / "server"

# Lowest first. A module may import its own layer's and any lower layer's modules.
LAYERS: list[set[str]] = [
    {"config", "logs"},
    {"protocol"},  # request/stored schemas, limits, errors: the wire protocol
    {"engine"},  # scheduling, KV slots, model forward, sampling
    {"constrained", "storage", "media"},  # grammars and masks; the completion store; request media
    {"parsers", "metrics"},  # tool-call/reasoning formats; Prometheus metrics
    {"models"},  # loading checkpoints, token tables
    {"chat"},  # templates, tools, per-choice pipelines, the served-model registry
    {"api"},  # FastAPI routes, auth, SSE, middleware
    {"app", "cli", "__main__"},
]


def _layer_of(part: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if part in names)


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _part(path: Path) -> str:
    relative = path.relative_to(SERVER)
    return relative.parts[0].removesuffix(".py") if len(relative.parts) > 1 else relative.stem


def test_every_part_of_the_server_has_a_layer() -> None:
    parts = {_part(p) for p in SERVER.rglob("*.py") if p.name != "__init__.py" or p.parent != SERVER}
    assert parts <= set().union(*LAYERS), parts - set().union(*LAYERS)


def test_each_part_imports_only_from_its_layer_or_below() -> None:
    bad = []
    for path in SERVER.rglob("*.py"):
        if path.parent == SERVER and path.name == "__init__.py":
            continue
        layer = _layer_of(_part(path))
        for name in _imports(path):
            if name.startswith("server."):
                target = name.split(".")[1]
                if _layer_of(target) > layer:
                    bad.append(f"{path.relative_to(SERVER)} imports {name}")
    assert bad == []


def test_engine_imports_no_http_or_chat_layer() -> None:
    forbidden = ("fastapi", "starlette", "openai", "server.api", "server.chat", "server.models")
    bad = [
        name
        for path in (SERVER / "engine").rglob("*.py")
        for name in _imports(path)
        if name.startswith(forbidden)
    ]
    assert bad == []


def test_below_the_api_no_web_framework() -> None:
    web = ("fastapi", "starlette", "uvicorn")
    top = _layer_of("api")
    bad = [
        f"{path.relative_to(SERVER)} imports {name}"
        for path in SERVER.rglob("*.py")
        if path.parent != SERVER or path.name != "__init__.py"
        if _layer_of(_part(path)) < top
        for name in _imports(path)
        if name.startswith(web)
    ]
    assert bad == []
