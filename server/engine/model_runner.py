"""Runs the shared Hugging Face model: one forward pass per call, returning last-position logits."""

from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache, PreTrainedModel


class ModelRunner:
    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.vocab_size = int(model.config.get_text_config().vocab_size)
        # transformers renamed `past_key_values` to `cache`; pass whichever this version takes.
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    @torch.inference_mode()
    def forward(self, token_ids: list[int], cache: DynamicCache) -> torch.Tensor:
        """Feed `token_ids` after what `cache` already holds; returns logits of the last position."""
        past = cache.get_seq_length()
        input_ids = torch.tensor([token_ids], dtype=torch.long, device=self.device)
        positions = torch.arange(past, past + len(token_ids), device=self.device).unsqueeze(0)
        out = self.model(
            input_ids=input_ids,
            position_ids=positions,
            **{self._cache_arg: cache},
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[0, -1]

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.model.config)
