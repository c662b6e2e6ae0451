"""Prompt rows that come from an encoder (a vision tower, an audio encoder) instead of the
embedding table, computed once per request on the engine thread.

The model itself merges its encoders' outputs into the prompt embeddings (each family has its own
placeholder tokens, projector and scaling); the engine runs that part of the model's forward once
and keeps what reaches the language model: the rows at the placeholder positions and, for models
with multi-axis rotary positions (Qwen2-VL's M-RoPE), every prompt position's ids. A prompt chunk
read later, in any split, or again after a preemption, takes its rows from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel

# Config fields naming a model's media placeholder token, by kind, across families.
PLACEHOLDER_FIELDS = {
    "image": ("image_token_id", "image_token_index"),
    "audio": ("audio_token_id", "audio_token_index"),
    "video": ("video_token_id",),
}


def placeholder_tokens(config: Any) -> dict[str, int]:
    """Media kind -> the token id its rows stand at in the processed prompt."""
    found: dict[str, int] = {}
    for kind, names in PLACEHOLDER_FIELDS.items():
        for name in names:
            value = getattr(config, name, None)
            if isinstance(value, int) and value >= 0:
                found[kind] = value
                break
    return found


def is_multimodal(config: Any) -> bool:
    """A checkpoint with a vision tower or an audio encoder beside its language model."""
    return config.get_text_config() is not config and bool(placeholder_tokens(config))


def multi_axis(config: Any) -> bool:
    """Whether the language model's rotary positions have several axes (Qwen2-VL's M-RoPE)."""
    text = config.get_text_config()
    for name in ("rope_parameters", "rope_scaling"):
        found = getattr(text, name, None)
        if isinstance(found, dict) and "mrope_section" in found:
            return True
    return False


def media_token_id(digest: bytes) -> int:
    """The id that stands for a media row in a sequence's tokens: negative (never a vocabulary
    id), equal for equal media, so prefix reuse compares media by content."""
    return -1 - int.from_bytes(digest[:7], "big")


@dataclass(slots=True, eq=False)
class PromptMedia:
    """One request's processed media, shared by its choices."""

    inputs: dict[str, torch.Tensor]  # the processor's output, input_ids included
    positions: torch.Tensor  # [rows] long: prompt positions whose rows the encoders give
    # [start, end) prompt spans whose rows attend to each other both ways (Gemma 3's images).
    bidirectional: tuple[tuple[int, int], ...] = ()
    audio_rows: int = 0  # of the rows, how many are audio (usage: audio_tokens)
    rows: torch.Tensor | None = None  # [rows, hidden] once encoded
    # [axes, prompt] position ids, and the offset of every later position, where the model's
    # rotary positions have several axes; None: plain positions.
    axes: torch.Tensor | None = None
    axes_offset: int = 0


class _Captured(Exception):
    pass


def encode(model: PreTrainedModel, media: PromptMedia, multi_axis: bool) -> None:
    """Runs the model's forward on the processed inputs until its language model is called, and
    keeps what that call receives (the merged embeddings, and the positions where `multi_axis`)."""
    if media.rows is not None:
        return
    language_model = _language_model(model)
    seen: dict[str, Any] = {}

    def stop(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen.update(kwargs)
        raise _Captured

    device = next(model.parameters()).device
    inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in media.inputs.items()}
    handle = language_model.register_forward_pre_hook(stop, with_kwargs=True)
    try:
        with torch.inference_mode():
            model(**inputs, use_cache=False)
    except _Captured:
        pass
    finally:
        handle.remove()
    embeds = seen.get("inputs_embeds")
    if embeds is None:
        raise RuntimeError(f"{type(model).__name__} did not hand its language model merged embeddings")
    media.rows = embeds[0, media.positions.to(embeds.device)].detach()
    media.inputs = {}  # pixels and features are not needed again (a recompute takes the rows)
    if multi_axis:
        positions = seen.get("position_ids")
        if positions is None or positions.dim() != 3:
            raise RuntimeError(f"{type(model).__name__} did not give multi-axis position ids")
        axes = positions[-3:, 0].detach()  # [3, prompt]: temporal, height, width
        media.axes = axes
        media.axes_offset = int(axes.max().item()) + 1 - axes.shape[1]


def _language_model(model: PreTrainedModel) -> torch.nn.Module:
    base = getattr(model, "model", model)
    for name in ("language_model", "text_model"):
        found = getattr(base, name, None)
        if isinstance(found, torch.nn.Module):
            return found
    raise RuntimeError(f"{type(model).__name__} has no language model to hand media to")
