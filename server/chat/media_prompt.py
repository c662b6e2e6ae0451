"""A rendered prompt and its request's media -> the model's inputs, through its processor.

The processor expands each image's or audio clip's placeholder into the rows the model gives it;
at those positions the prompt's token ids become the media's content ids (engine.media), so the
prefix cache tells two images apart and recognises the same image in the next turn.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch

from server.chat.templating import Prompt
from server.engine.media import PromptMedia, media_token_id, placeholder_tokens
from server.media.parts import MediaItem, MediaTarget, Modality, RequestMedia
from server.protocol.errors import InvalidRequest

# Families whose image rows attend to each other both ways (Gemma 3's; the rest is causal).
_BIDIRECTIONAL_IMAGES = frozenset({"gemma3"})


@dataclass(slots=True, frozen=True)
class MediaSupport:
    processor: Any
    modalities: frozenset[Modality]
    placeholders: dict[str, int]  # "image" / "audio" -> its placeholder token id in the processed prompt
    sampling_rate: int
    bidirectional_images: bool

    @classmethod
    def build(cls, processor: Any, modalities: tuple[str, ...], config: Any) -> MediaSupport:
        # The kinds a request can carry (no video part in the API) that the processor takes.
        placeholders = {
            kind: token for kind, token in placeholder_tokens(config).items() if kind in modalities
        }
        extractor = getattr(processor, "feature_extractor", None)
        return cls(
            processor=processor,
            modalities=frozenset(m for m in modalities if m == "text" or m in placeholders),  # type: ignore[misc]
            placeholders=placeholders,
            sampling_rate=int(getattr(extractor, "sampling_rate", None) or 16000),
            bidirectional_images=config.model_type in _BIDIRECTIONAL_IMAGES,
        )

    def target(self, model_id: str) -> MediaTarget:
        return MediaTarget(model_id, self.modalities, self.sampling_rate)

    def attach(self, prompt: Prompt, media: RequestMedia) -> tuple[Prompt, PromptMedia]:
        """Blocking (the processor resizes images, computes audio features)."""
        items = media.items
        by_kind = {kind: [i for i in items if i.kind == kind] for kind in ("image", "audio")}
        given: dict[str, Any] = {}
        if by_kind["image"]:
            given["images"] = [item.value for item in by_kind["image"]]
        if by_kind["audio"]:
            given["audio"] = [item.value for item in by_kind["audio"]]
        try:
            inputs = self.processor(text=prompt.text, return_tensors="pt", add_special_tokens=False, **given)
        except (ValueError, TypeError, RuntimeError) as exc:
            raise InvalidRequest(
                f"The model's processor could not take the request's media: {exc}",
                param="messages",
                code="invalid_media",
            ) from exc
        ids: list[int] = inputs["input_ids"][0].tolist()
        positions: list[int] = []
        spans: list[tuple[int, int]] = []
        audio_rows = 0
        for kind, placeholder in self.placeholders.items():
            runs = _runs(ids, placeholder)
            if not by_kind[kind]:
                continue  # the token typed as text, no media behind it: the embedding table's row
            for (start, end), digest in zip(runs, _digests(by_kind[kind], len(runs)), strict=True):
                ids[start:end] = [media_token_id(digest)] * (end - start)
                positions.extend(range(start, end))
                if kind == "image" and self.bidirectional_images:
                    spans.append((start, end))
                if kind == "audio":
                    audio_rows += end - start
        positions.sort()
        held = PromptMedia(
            inputs=dict(inputs),
            positions=torch.tensor(positions, dtype=torch.long),
            bidirectional=tuple(sorted(spans)),
            audio_rows=audio_rows,
        )
        return Prompt(prompt.text, ids), held


def _runs(ids: list[int], token: int) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    start = None
    for index, value in enumerate([*ids, None]):
        if value == token and start is None:
            start = index
        elif value != token and start is not None:
            runs.append((start, index))
            start = None
    return runs


def _digests(items: list[MediaItem], runs: int) -> list[bytes]:
    """Each placeholder run's content digest: its own item's where the runs and items pair up one
    to one (as every processor here writes them), else one digest of all (still exact: equal
    prompts, equal media)."""
    if runs == len(items):
        return [item.digest for item in items]
    joined = hashlib.sha256(b"".join(item.digest for item in items)).digest()
    return [joined] * runs
