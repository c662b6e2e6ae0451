"""One models.yaml entry, loaded: the model on its engine thread, its tokenizer, templater, formats."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import PreTrainedModel, PreTrainedTokenizerBase

import server
from server.chat.media_prompt import MediaSupport
from server.chat.params import ModelLimits
from server.chat.reasoning import ReasoningSupport
from server.chat.templating import ChatTemplater
from server.config import ModelSpec, ServerConfig
from server.constrained.compiler import GrammarCompiler
from server.engine.engine import AsyncEngine, Engine
from server.engine.model_runner import ModelRunner
from server.engine.types import EngineConfig
from server.models.loader import LoadedModel, load_model
from server.models.token_table import TokenTable
from server.parsers.base import ToolCallParser
from server.parsers.reasoning import SYNTAX_MARKERS
from server.parsers.registry import parser_for_template

logger = logging.getLogger(__name__)

FALLBACK_CONTEXT_LENGTH = 2048


@dataclass(slots=True)
class ServedModel:
    spec: ModelSpec
    tokenizer: PreTrainedTokenizerBase
    templater: ChatTemplater
    tokens: TokenTable
    limits: ModelLimits
    engine: AsyncEngine
    grammars: GrammarCompiler
    tool_parser: type[ToolCallParser]
    # The special tokens the tool parser reads (decoded as their text for it when tools are given).
    tool_tokens: frozenset[int]
    reasoning: ReasoningSupport
    # The special tokens the reasoning parser reads (decoded for it in every answer).
    reasoning_tokens: frozenset[int]
    fingerprint: str
    created: int
    media: MediaSupport | None = None  # models that take images or audio
    input_modalities: tuple[str, ...] = ("text",)
    device: str = "cpu"  # where it runs ("cpu", "cuda:0", or "device_map")
    quantization: str = "none"  # its linear layers' weight format as served
    # What it holds in memory: its weights and buffers, plus its KV budget at its fullest.
    footprint_bytes: int = 0


def build_served(
    spec: ModelSpec, config: ServerConfig, on_phase: Callable[[str], None] | None = None
) -> ServedModel:
    """Blocking: loads the model on its engine thread and prepares what serving it needs."""
    phase = on_phase or (lambda _: None)
    template = _chat_template(spec, config.base_dir)
    loaded_on_engine_thread: list[LoadedModel] = []

    def build() -> tuple[ModelRunner, EngineConfig]:
        loaded = load_model(spec, config.server, config.base_dir, phase)
        loaded_on_engine_thread.append(loaded)
        phase("preparing the engine (probing its forward pass)")
        runner = ModelRunner(loaded.model, quantization=loaded.weight_format(spec.quantization))
        return runner, _engine_config(spec, _context_length(spec, loaded.model))

    engine = Engine(build, name=f"engine-{spec.id}")
    engine.start()
    loaded = loaded_on_engine_thread[0]
    tokenizer, model = loaded.tokenizer, loaded.model
    vocab_size = int(model.config.get_text_config().vocab_size)
    engine_config = engine.config
    tokens = TokenTable(tokenizer, vocab_size)
    limits = ModelLimits(
        context_length=engine_config.context_length,
        vocab_size=vocab_size,
        stop_token_ids=_stop_token_ids(tokenizer, model),
        defaults=spec.defaults,
        max_token_chars=tokens.max_token_chars,
    )
    media = None
    if loaded.processor is not None:
        media = MediaSupport.build(loaded.processor, loaded.input_modalities, model.config)
        logger.info("model %s: takes %s input", spec.id, " and ".join(sorted(media.modalities)))
        if template is None:  # a multimodal checkpoint may keep its template with the processor
            template = getattr(loaded.processor, "chat_template", None)
    templater = ChatTemplater(tokenizer, template)
    tool_parser = parser_for_template(templater.template, spec.tool_parser)
    templater.tool_format = tool_parser
    logger.info("model %s: tool calls in the %s format", spec.id, tool_parser.name)
    speculation = spec.engine.speculation
    if speculation.method == "ngram":
        logger.info(
            "model %s: prompt lookup proposes up to %d tokens a step (while <= %d sequences decode)",
            spec.id,
            speculation.max_tokens,
            speculation.max_batch,
        )
    grammars = GrammarCompiler(
        tokenizer, vocab_size, limits.stop_token_ids, config.server.limits.max_grammar_bytes
    )
    reasoning = ReasoningSupport.for_template(templater.template, spec.reasoning)
    if reasoning.format is not None:
        logger.info("model %s: reasoning in the %s format", spec.id, reasoning.format)
    marker_ids = (grammars.special_token(marker) for marker in tool_parser.syntax_markers)
    reasoning_markers = SYNTAX_MARKERS[reasoning.format] if reasoning.format is not None else ()
    reasoning_ids = (grammars.special_token(marker) for marker in reasoning_markers)
    return ServedModel(
        spec=spec,
        tokenizer=tokenizer,
        templater=templater,
        tokens=tokens,
        limits=limits,
        engine=AsyncEngine(engine),
        grammars=grammars,
        tool_parser=tool_parser,
        tool_tokens=frozenset(token_id for token_id in marker_ids if token_id is not None),
        reasoning=reasoning,
        reasoning_tokens=frozenset(token_id for token_id in reasoning_ids if token_id is not None),
        fingerprint=_fingerprint(spec, loaded),
        created=int(time.time()),
        media=media,
        input_modalities=loaded.input_modalities,
        device=loaded.device,
        quantization=loaded.weight_format(spec.quantization) or "none",
        footprint_bytes=_footprint(model, engine),
    )


def _chat_template(spec: ModelSpec, base_dir: Path) -> str | None:
    template = spec.chat_template
    if template is None or "{" in template:
        return template
    path = Path(template).expanduser()
    return (path if path.is_absolute() else base_dir / path).read_text(encoding="utf-8")


def _context_length(spec: ModelSpec, model: PreTrainedModel) -> int:
    if spec.context_length is not None:
        return spec.context_length
    text_config = model.config.get_text_config()
    return int(getattr(text_config, "max_position_embeddings", None) or FALLBACK_CONTEXT_LENGTH)


def _engine_config(spec: ModelSpec, context_length: int) -> EngineConfig:
    settings = spec.engine
    max_kv_tokens = settings.max_kv_tokens or settings.max_running * context_length
    return EngineConfig(
        max_running=settings.max_running,
        max_kv_tokens=max_kv_tokens,
        max_batch_tokens=settings.max_batch_tokens,
        max_waiting=settings.max_waiting,
        max_queue_wait_s=settings.max_queue_wait_s,
        min_capacity=min(256, context_length),
        # One sequence may use the whole KV budget, never more.
        context_length=min(context_length, max_kv_tokens),
        max_pinned_slots=(
            settings.max_running // 2 if settings.max_pinned_slots is None else settings.max_pinned_slots
        ),
        speculation=None if settings.speculation.method == "none" else settings.speculation.method,
        speculative_tokens=settings.speculation.max_tokens,
        prediction_tokens=settings.speculation.prediction_tokens,
        speculation_max_batch=settings.speculation.max_batch,
    )


def _footprint(model: PreTrainedModel, engine: Engine) -> int:
    tensors = [*model.parameters(), *model.buffers()]
    weights = sum(t.numel() * t.element_size() for t in tensors)
    return weights + engine.runner.cache.bytes_per_token * engine.config.max_kv_tokens


def _stop_token_ids(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> frozenset[int]:
    ids: set[int] = set()
    for value in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(v for v in value if isinstance(v, int))
    return frozenset(ids)


def _fingerprint(spec: ModelSpec, loaded: LoadedModel) -> str:
    """Changes whenever something that can change outputs for a fixed seed changes."""
    parts = [
        server.__version__,
        spec.id,
        spec.source.describe(),
        str(loaded.dtype),
        loaded.device,
        spec.chat_template or "",
        torch.__version__,
        transformers.__version__,
    ]
    return "fp_" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:10]
