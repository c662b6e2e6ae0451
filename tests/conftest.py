"""Shared fixtures: the default model's converted checkpoint and a tiny random-weight model."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from server.config import ServerConfig, load_config
from server.models.loader import resolve_source
from server.storage.sql_store import SqlCompletionStore

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "models.yaml"


@pytest.fixture(scope="session")
def default_config() -> ServerConfig:
    return load_config(DEFAULT_CONFIG)


@pytest.fixture(scope="session")
def default_checkpoint(default_config: ServerConfig) -> Path:
    """The default model as a plain checkpoint (converted from its GGUF file once, then cached)."""
    from server.models.loader import converted_gguf

    spec = default_config.models[0]
    return Path(converted_gguf(spec, resolve_source(spec, REPO), default_config.server))


@pytest.fixture(scope="session")
def tokenizer(default_checkpoint: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(default_checkpoint)


# The shape of every tiny random-weight model the tests build.
TINY_SIZES = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: PreTrainedTokenizerBase) -> Path:
    """A 2-layer random-weight Llama with the default model's tokenizer: fast, and deterministic."""
    target = tmp_path_factory.mktemp("tiny-model")
    torch.manual_seed(0)
    config = LlamaConfig(
        **TINY_SIZES,
        vocab_size=len(tokenizer),
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # sharper logits than the default init, so sampling settings matter
        model.lm_head.weight.normal_(0, 0.3)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def tiny_config_yaml(model_dir: Path, tmp_path: Path, extra: str = "", store_url: str | None = None) -> Path:
    path = tmp_path / "models.yaml"
    default_store = f"sqlite:///{tmp_path / 'completions.sqlite3'}"
    path.write_text(
        "models:\n"
        "  - id: tiny\n"
        f"    source: {{path: {model_dir}}}\n"
        "    dtype: float32\n"
        "    device: cpu\n" + extra + f"server:\n  store_url: {store_url or default_store}\n",
        encoding="utf-8",
    )
    return path


# --- the completion store's two back ends ---------------------------------------------------

POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://openweights@127.0.0.1:54329/openweights")


def _postgres_url() -> str:
    try:
        engine = sa.create_engine(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://", 1))
        with engine.connect():
            pass
        engine.dispose()
    except Exception as exc:  # any failure to connect means "not reachable"
        message = (
            f"no PostgreSQL server at {POSTGRES_URL} ({type(exc).__name__}); "
            "start one with scripts/postgres.sh, or set TEST_POSTGRES_URL"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return POSTGRES_URL


def _empty(store: SqlCompletionStore) -> SqlCompletionStore:
    with store.engine.begin() as conn:
        for table in ("completion_metadata", "completions"):
            conn.execute(sa.text(f"DELETE FROM {table}"))
    return store


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'completions.sqlite3'}"
        return
    url = _postgres_url()
    _empty(SqlCompletionStore(url)).close()
    yield url


@pytest.fixture
def store(store_url: str) -> Iterator[SqlCompletionStore]:
    s = SqlCompletionStore(store_url)
    yield s
    s.close()
