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
    decode_last: torch.Tensor | None = None  # [decode_rows] the position each row's query sits at
    # Masks of sliding-window layers, made once per step: (segment offset or -1 for decodes, window).
    window_masks: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)

    @property
    def num_decodes(self) -> int:
        return int(self.decode_slots.numel())

    def decode_mask(self, window: int | None) -> torch.Tensor | None:
        """The decode rows' additive mask, with keys older than `window` hidden too."""
        if window is None or self.decode_bias is None or self.decode_last is None:
            return self.decode_bias
        mask = self.window_masks.get((-1, window))
        if mask is None:
            old = torch.arange(self.decode_len, device=self.decode_last.device) <= (
                self.decode_last - window
            ).unsqueeze(1)
            mask = self.decode_bias.masked_fill(
                old.view(self.decode_rows, 1, 1, self.decode_len), float("-inf")
            )
            self.window_masks[(-1, window)] = mask
        return mask

    def prefill_mask(self, seg: PrefillSegment, window: int | None) -> torch.Tensor | None:
        """A prompt chunk's boolean mask (True: attend): causal, and within `window` when given."""
        if window is None:
            return seg.causal_mask
        mask = self.window_masks.get((seg.offset, window))
        if mask is None:
            device = self.decode_slots.device
            rows = torch.arange(seg.length, device=device).unsqueeze(1) + seg.past
            cols = torch.arange(seg.past + seg.length, device=device).unsqueeze(0)
            mask = (cols <= rows) & (cols > rows - window)
            self.window_masks[(seg.offset, window)] = mask
        return mask


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


# Keyword arguments transformers' attention modules pass that change nothing here (inference: no
# dropout; our own cache, positions and masks). Any other one with a value is refused.
_INERT_KWARGS = frozenset(
    {BATCH_KWARG, "position_ids", "use_cache", "cache_position", "output_attentions", "output_router_logits"}
)


class UnsupportedAttention(RuntimeError):
    """The model's attention takes something this engine does not compute: it must not start."""


def slot_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # [1, heads, tokens, head_dim]
    key: torch.Tensor,  # [1, kv_heads, tokens, head_dim]
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,  # this layer attends to the last `sliding_window` keys only
    softcap: float | None = None,  # Gemma 2: scores -> tanh(scores / softcap) * softcap
    s_aux: torch.Tensor | None = None,  # gpt-oss: one sink logit per head, in the softmax, no value
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    if not _INERT_KWARGS.issuperset(kwargs):  # one set operation per layer call on the hot path
        _refuse_unknown(kwargs)
    layout = kwargs[BATCH_KWARG]
    assert isinstance(layout, StepLayout)
    layer = int(module.layer_idx)  # type: ignore[arg-type]
    keys, values = layout.cache.keys[layer], layout.cache.values[layer]
    heads, tokens, head_dim = query.shape[1], query.shape[2], query.shape[3]
    kv_heads = key.shape[1]
    group = heads // kv_heads
    scale = scaling if scaling is not None else head_dim**-0.5
    explicit = softcap is not None or s_aux is not None
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
        k = keys[: layout.decode_rows, :, : layout.decode_len]
        v = values[: layout.decode_rows, :, : layout.decode_len]
        mask = layout.decode_mask(sliding_window)
        if explicit:
            sinks = None if s_aux is None else s_aux.view(kv_heads, group, 1)
            attended = _explicit_attention(q, k, v, mask, scale, softcap, sinks)
        else:
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        if not layout.decode_contiguous:
            attended = attended[layout.decode_slots]
        out[:decodes] = attended.reshape(decodes, heads, head_dim)

    for seg in layout.prefills:
        end = seg.past + seg.length
        keys[seg.slot, :, seg.past : end] = key[0, :, seg.offset : seg.offset + seg.length]
        values[seg.slot, :, seg.past : end] = value[0, :, seg.offset : seg.offset + seg.length]
        q = query[:, :, seg.offset : seg.offset + seg.length]
        k, v = keys[seg.slot : seg.slot + 1, :, :end], values[seg.slot : seg.slot + 1, :, :end]
        mask = layout.prefill_mask(seg, sliding_window)
        if explicit:
            if mask is None:
                mask = torch.ones(seg.length, end, dtype=torch.bool, device=q.device).tril(seg.past)
            sinks = None if s_aux is None else s_aux.view(1, heads, 1, 1)
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
            attended = _explicit_attention(q, k, v, mask, scale, softcap, sinks)
        else:
            attended = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=mask is None, scale=scale, enable_gqa=group > 1
            )
        out[seg.offset : seg.offset + seg.length] = attended[0].transpose(0, 1)
    return out.unsqueeze(0), None


def _refuse_unknown(kwargs: dict[str, object]) -> None:
    unknown = sorted(
        name for name, given in kwargs.items() if name not in _INERT_KWARGS and given is not None
    )
    if unknown:
        raise UnsupportedAttention(
            f"its attention takes {', '.join(unknown)}, which this engine does not compute"
        )


def _explicit_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,  # bool (True: attend) or additive
    scale: float,
    softcap: float | None,
    sinks: torch.Tensor | None,  # broadcastable to the scores' shape without the key dimension
) -> torch.Tensor:
    """Attention written out, for what SDPA cannot do: softcapped scores (as Gemma 2's eager
    attention: softmax in float32), attention sinks (as gpt-oss's: a per-head logit joins the
    softmax and is dropped after it)."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    if sinks is not None:
        sink = sinks.to(scores.dtype).expand(*scores.shape[:-1], 1)
        scores = torch.cat([scores, sink], dim=-1)
        scores = scores - scores.amax(dim=-1, keepdim=True)
        probs = F.softmax(scores, dim=-1, dtype=scores.dtype)[..., :-1]
    else:
        probs = F.softmax(scores, dim=-1, dtype=torch.float32)
    return torch.matmul(probs.to(v.dtype), v)


def _no_mask(*args: object, **kwargs: object) -> None:
    """The layout carries its own masks; transformers need not build one."""
    return None


def install(model: PreTrainedModel) -> None:
    AttentionInterface.register(ATTENTION_NAME, slot_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, _no_mask)
    model.set_attn_implementation(ATTENTION_NAME)
