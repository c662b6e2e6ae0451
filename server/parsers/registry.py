"""Tool-call parsers by name, and the choice of one from a model's chat template."""

from __future__ import annotations

import logging

from server.parsers.base import ToolCallParser
from server.parsers.deepseek import DeepSeekParser
from server.parsers.gemma import GemmaParser
from server.parsers.harmony import HarmonyParser
from server.parsers.hermes import HermesParser
from server.parsers.llama3_json import Llama3JsonParser
from server.parsers.mistral import GraniteParser, MistralParser, Phi4MiniParser
from server.parsers.mistral_args import MistralArgsParser
from server.parsers.pythonic import PythonicParser
from server.parsers.qwen3_xml import Qwen3XmlParser

logger = logging.getLogger(__name__)

# Detection order matters: a pythonic Llama template also mentions `<|python_tag|>`; a v11 Mistral
# template (`[ARGS]`) also has `[TOOL_CALLS]`; Qwen3-Coder's XML calls sit in `<tool_call>` too;
# any Gemma template (`<start_of_turn>`) that has a tool format of its own names it.
PARSERS: dict[str, type[ToolCallParser]] = {
    parser.name: parser
    for parser in (
        DeepSeekParser,
        MistralArgsParser,
        MistralParser,
        PythonicParser,
        Phi4MiniParser,
        GraniteParser,
        HarmonyParser,
        Qwen3XmlParser,
        HermesParser,
        Llama3JsonParser,
        GemmaParser,
    )
}


def parser_for_template(template: str, override: str | None = None) -> type[ToolCallParser]:
    """`override` (models.yaml `tool_parser`) wins; else the format whose markers the template has;
    else Hermes, the format of the built-in tool prompt used for templates without tool support."""
    if override is not None:
        return PARSERS[override]
    for parser in PARSERS.values():
        if any(m in template for m in parser.template_markers):
            return parser
    return HermesParser
