"""KV memory for the running sequences, and the attention that reads it.

Layout: per layer, one key and one value tensor of shape [slots, kv_heads, capacity, head_dim]. A
running sequence owns a slot; its tokens' keys and values sit contiguously in it, so the decode
tokens of the whole batch attend with one SDPA call over a view of the pool (no gather, no copy).
The capacity grows lazily (doubling) with the longest sequence; the slot count times the capacity
never exceeds the configured KV budget (the scheduler decides both, see `Scheduler.plan`).

The attention function is registered with transformers' AttentionInterface, so any Hugging Face
model whose attention goes through that interface runs on this cache unchanged: the model is
called with a packed batch of shape [1, tokens] and the step's layout rides along in kwargs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import AttentionMaskInterface

ATTENTION_NAME = "openweights_slots"
BATCH_KWARG = "openweights_batch"


@dataclass(slots=True)
class PrefillSegment:
    offset: int  # where the chunk's tokens sit in the packed batch
    length: int
    slot: int
    past: int  # tokens of this sequence already in the cache
    causal_mask: torch.Tensor | None = None  # [length, past + length], None when past == 0


@dataclass(slots=True)
class StepLayout:
    """Where every token of one packed forward pass reads and writes its keys and values."""

    cache: SlotKVCache
    decode_slots: torch.Tensor  # [decodes] slot of each decode token (the first tokens of the batch)
    decode_positions: torch.Tensor  # [decodes] position each decode token is written at
    decode_rows: int  # the decode attention runs over slots [0, decode_rows)
    decode_bias: torch.Tensor | None  # [decode_rows, 1, 1, decode_len] 0 or -inf
    decode_len: int
    decode_contiguous: bool  # decode slots are exactly 0..decodes-1 in order
    prefills: list[PrefillSegment] = field(default_factory=list)

    @property
    def num_decodes(self) -> int:
        return int(self.decode_slots.numel())


class SlotKVCache:
    def __init__(self, model: PreTrainedModel, device: torch.device, dtype: torch.dtype) -> None:
        text = model.config.get_text_config()
        self.num_layers = int(text.num_hidden_layers)
        self.kv_heads = int(getattr(text, "num_key_value_heads", None) or text.num_attention_heads)
        self.head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads)
        self.device = device
        self.dtype = dtype
        self.num_slots = 0
        self.capacity = 0
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    @property
    def bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.kv_heads * self.head_dim * self.dtype.itemsize

    def resize(self, num_slots: int, capacity: int) -> None:
        """Reallocates to [num_slots, capacity], keeping what fits of slots and tokens already held."""
        if (num_slots, capacity) == (self.num_slots, self.capacity):
            return
        keep_slots, keep_tokens = min(num_slots, self.num_slots), min(capacity, self.capacity)
        shape = (num_slots, self.kv_heads, capacity, self.head_dim)
        for store in (self.keys, self.values):
            for layer in range(self.num_layers):
                fresh = torch.zeros(shape, dtype=self.dtype, device=self.device)
                if store and keep_slots and keep_tokens:
                    fresh[:keep_slots, :, :keep_tokens] = store[layer][:keep_slots, :, :keep_tokens]
                if len(store) > layer:
                    store[layer] = fresh
                else:
                    store.append(fresh)
        self.num_slots, self.capacity = num_slots, capacity

    def copy_prefix(self, source: int, target: int, tokens: int) -> None:
        for store in (self.keys, self.values):
            for tensor in store:
                tensor[target, :, :tokens] = tensor[source, :, :tokens]

    def release(self) -> None:
        self.keys, self.values = [], []
        self.num_slots = self.capacity = 0


def slot_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # [1, heads, tokens, head_dim]
    key: torch.Tensor,  # [1, kv_heads, tokens, head_dim]
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    layout = kwargs[BATCH_KWARG]
    assert isinstance(layout, StepLayout)
    layer = int(module.layer_idx)  # type: ignore[arg-type]
    keys, values = layout.cache.keys[layer], layout.cache.values[layer]
    heads, tokens, head_dim = query.shape[1], query.shape[2], query.shape[3]
    kv_heads = key.shape[1]
    group = heads // kv_heads
    out = query.new_empty((tokens, heads, head_dim))

    decodes = layout.num_decodes
    if decodes:
        new_k = key[0, :, :decodes].transpose(0, 1)  # [decodes, kv_heads, head_dim]
        new_v = value[0, :, :decodes].transpose(0, 1)
        keys[layout.decode_slots, :, layout.decode_positions] = new_k
        values[layout.decode_slots, :, layout.decode_positions] = new_v
        # Query heads sharing a kv head become that head's "queries": one SDPA call, no repeat.
        q = query[0, :, :decodes].transpose(0, 1).reshape(decodes, kv_heads, group, head_dim)
        if not layout.decode_contiguous:
            rows = q.new_zeros((layout.decode_rows, kv_heads, group, head_dim))
            rows[layout.decode_slots] = q
            q = rows
        attended = F.scaled_dot_product_attention(
            q,
            keys[: layout.decode_rows, :, : layout.decode_len],
            values[: layout.decode_rows, :, : layout.decode_len],
            attn_mask=layout.decode_bias,
            scale=scaling,
        )
        if not layout.decode_contiguous:
            attended = attended[layout.decode_slots]
        out[:decodes] = attended.reshape(decodes, heads, head_dim)

    for seg in layout.prefills:
        end = seg.past + seg.length
        keys[seg.slot, :, seg.past : end] = key[0, :, seg.offset : seg.offset + seg.length]
        values[seg.slot, :, seg.past : end] = value[0, :, seg.offset : seg.offset + seg.length]
        attended = F.scaled_dot_product_attention(
            query[:, :, seg.offset : seg.offset + seg.length],
            keys[seg.slot : seg.slot + 1, :, :end],
            values[seg.slot : seg.slot + 1, :, :end],
            attn_mask=seg.causal_mask,
            is_causal=seg.causal_mask is None,
            scale=scaling,
            enable_gqa=group > 1,
        )
        out[seg.offset : seg.offset + seg.length] = attended[0].transpose(0, 1)
    return out.unsqueeze(0), None


def _no_mask(*args: object, **kwargs: object) -> None:
    """The layout carries its own masks; transformers need not build one."""
    return None


def install(model: PreTrainedModel) -> None:
    AttentionInterface.register(ATTENTION_NAME, slot_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, _no_mask)
    model.set_attn_implementation(ATTENTION_NAME)
