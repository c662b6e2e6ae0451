"""How much memory a model will take once loaded, estimated before loading it (to make room under
`server.max_loaded_bytes`); the registry replaces the estimate with the measure once it is loaded."""

from __future__ import annotations

import json
from pathlib import Path

from server.config import ModelSpec, ServerConfig
from server.models.loader import ModelLoadError, resolve_source

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_GGUF_GROWTH = 7  # ~4.5-bit GGUF weights dequantized to float32
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def estimate_bytes(spec: ModelSpec, config: ServerConfig) -> int:
    """Weights plus the KV budget at its fullest; 0 for what cannot be known without loading (a
    hub model not downloaded yet)."""
    try:
        source = resolve_source(spec, config.base_dir)
    except ModelLoadError:
        return 0  # loading will say why
    if not source.is_local:
        return 0
    folder = Path(source.location)
    if source.gguf_file:
        gguf = folder / source.gguf_file
        return gguf.stat().st_size * _GGUF_GROWTH if gguf.is_file() else 0
    weights = sum(p.stat().st_size for p in folder.iterdir() if p.suffix in _WEIGHT_SUFFIXES and p.is_file())
    return weights + _kv_budget_bytes(spec, folder)


def _kv_budget_bytes(spec: ModelSpec, folder: Path) -> int:
    try:
        raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 0
    text = raw.get("text_config") or raw
    layers = int(text.get("num_hidden_layers") or 0)
    heads = int(text.get("num_attention_heads") or 1)
    kv_heads = int(text.get("num_key_value_heads") or heads)
    head_dim = int(text.get("head_dim") or (int(text.get("hidden_size") or 0) // heads))
    context = spec.context_length or int(text.get("max_position_embeddings") or 2048)
    tokens = spec.engine.max_kv_tokens or spec.engine.max_running * context
    itemsize = _DTYPE_BYTES.get(spec.dtype, 4)
    return 2 * layers * kv_heads * head_dim * itemsize * tokens
