"""KV memory for the running sequences, and the attention that reads it.

Layout: per layer, one key and one value tensor of shape [slots, kv_heads, capacity, head_dim]. A
running sequence owns a slot; its tokens' keys and values sit contiguously in it, so the decode
tokens of the whole batch attend with one SDPA call over a view of the pool (no gather, no copy),
or each in a call of its own over exactly its keys where the result must not depend on the batch
(see StepLayout.decode_rows_alone); prompt rows attend in fixed blocks (see PrefillSegment).
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

from server.engine.types import PREFILL_BLOCK

ATTENTION_NAME = "openweights_slots"
BATCH_KWARG = "openweights_batch"


@dataclass(slots=True)
class PrefillSegment:
    """A prompt chunk of one sequence. Its rows attend in blocks whose bounds are multiples of the
    step's block size in the sequence's own positions, each block over exactly the keys up to its
    end: a row's attention is then the same computation however the prompt was cut into chunks
    (the scheduler ends a chunk on a block bound unless it ends the prompt) and whatever else the
    step holds, so greedy answers do not depend on the other requests."""

    offset: int  # where the chunk's tokens sit in the packed batch
    length: int
    slot: int
    past: int  # tokens of this sequence already in the cache
    # [start, end) spans of the chunk whose rows also attend to each other's later rows (Gemma 3's
    # images); the scheduler never ends a chunk inside one.
    spans: tuple[tuple[int, int], ...] = ()

    def blocks(self, size: int) -> list[tuple[int, int]]:
        """[start, end) positions of the chunk's query blocks."""
        out, start, end = [], self.past, self.past + self.length
        while start < end:
            stop = min(end, (start // size + 1) * size)
            out.append((start, stop))
            start = stop
        return out


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
    # Each decode row attends alone, over exactly its own keys: (slot, keys held) per decode. Slower
    # at many rows than one call over the padded batch, but a row's result is then the same beside
    # any others (a padded call sums in an order that depends on the longest row).
    decode_rows_alone: list[tuple[int, int]] | None = None
    block: int = PREFILL_BLOCK
    # Masks made once per step, shared by the layers: keyed by (-1, window) for the decode rows,
    # (start, end, window) for a prompt block.
    masks: dict[tuple[int, ...], torch.Tensor] = field(default_factory=dict)

    @property
    def num_decodes(self) -> int:
        return int(self.decode_slots.numel())

    def decode_mask(self, window: int | None) -> torch.Tensor | None:
        """The decode rows' additive mask, with keys older than `window` hidden too."""
        if window is None or self.decode_bias is None or self.decode_last is None:
            return self.decode_bias
        mask = self.masks.get((-1, window))
        if mask is None:
            old = torch.arange(self.decode_len, device=self.decode_last.device) <= (
                self.decode_last - window
            ).unsqueeze(1)
            mask = self.decode_bias.masked_fill(
                old.view(self.decode_rows, 1, 1, self.decode_len), float("-inf")
            )
            self.masks[(-1, window)] = mask
        return mask

    def block_mask(
        self,
        start: int,
        end: int,
        first_key: int,
        window: int | None,
        spans: tuple[tuple[int, int], ...] = (),
        last_key: int | None = None,
    ) -> torch.Tensor | None:
        """The boolean mask (True: attend) of query rows [start, end) over keys [first_key,
        last_key or end): causal, or both within one of `spans`; within `window` when given; None
        when plain causal attention is exactly it."""
        keys_end = end if last_key is None else last_key
        if start == first_key and not spans and (window is None or end - first_key <= window):
            return None
        key = (start, end, -1 if window is None else window, keys_end, *(b for span in spans for b in span))
        mask = self.masks.get(key)
        if mask is None:
            device = self.decode_slots.device
            rows = torch.arange(start, end, device=device).unsqueeze(1)
            cols = torch.arange(first_key, keys_end, device=device).unsqueeze(0)
            mask = cols <= rows
            for low, high in spans:
                mask |= (rows >= low) & (rows < high) & (cols >= low) & (cols < high)
            if window is not None:
                mask &= cols > rows - window
            self.masks[key] = mask
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
    head_dim = query.shape[3]
    scale = scaling if scaling is not None else head_dim**-0.5
    out = packed_attention(
        int(module.layer_idx),  # type: ignore[arg-type]
        query[0].transpose(0, 1),
        key[0].transpose(0, 1),
        value[0].transpose(0, 1),
        scale,
        layout,
        sliding_window,
        softcap,
        s_aux,
    )
    return out.unsqueeze(0), None


def packed_attention(
    layer: int,
    query: torch.Tensor,  # [tokens, heads, head_dim]: the step's packed tokens
    key: torch.Tensor,  # [tokens, kv_heads, head_dim]
    value: torch.Tensor,
    scale: float,
    layout: StepLayout,
    sliding_window: int | None = None,
    softcap: float | None = None,
    s_aux: torch.Tensor | None = None,
) -> torch.Tensor:
    """Writes the step's keys and values into the layer's slots and attends: [tokens, heads, head_dim]."""
    keys, values = layout.cache.keys[layer], layout.cache.values[layer]
    tokens, heads, head_dim = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads

    decodes = layout.num_decodes
    if decodes:
        new_k, new_v = key[:decodes], value[:decodes]  # [decodes, kv_heads, head_dim]
        if layout.decode_rows_alone is not None and decodes == 1:  # one stream: a plain copy
            slot, held = layout.decode_rows_alone[0]
            keys[slot, :, held - 1].copy_(new_k[0])
            values[slot, :, held - 1].copy_(new_v[0])
        else:
            keys[layout.decode_slots, :, layout.decode_positions] = new_k
            values[layout.decode_slots, :, layout.decode_positions] = new_v
        # Query heads sharing a kv head become that head's "queries": one SDPA call, no repeat.
        q = query[:decodes].reshape(decodes, kv_heads, group, head_dim)
        sinks = None if s_aux is None else s_aux.view(kv_heads, group, 1)
        if layout.decode_rows_alone is not None:
            parts = []
            for i, (slot, held) in enumerate(layout.decode_rows_alone):
                first = 0 if sliding_window is None else max(0, held - sliding_window)
                k, v = keys[slot : slot + 1, :, first:held], values[slot : slot + 1, :, first:held]
                parts.append(_attend_grouped(q[i : i + 1], k, v, None, scale, softcap, sinks))
            attended = torch.cat(parts) if len(parts) > 1 else parts[0]
        else:
            if not layout.decode_contiguous:
                rows = q.new_zeros((layout.decode_rows, kv_heads, group, head_dim))
                rows[layout.decode_slots] = q
                q = rows
            k = keys[: layout.decode_rows, :, : layout.decode_len]
            v = values[: layout.decode_rows, :, : layout.decode_len]
            mask = layout.decode_mask(sliding_window)
            attended = _attend_grouped(q, k, v, mask, scale, softcap, sinks)
            if not layout.decode_contiguous:
                attended = attended[layout.decode_slots]
        if not layout.prefills:  # a decode-only step: no buffer to assemble
            return attended.reshape(decodes, heads, head_dim)
    out = query.new_empty((tokens, heads, head_dim))
    if decodes:
        out[:decodes] = attended.reshape(decodes, heads, head_dim)

    for seg in layout.prefills:
        end = seg.past + seg.length
        keys[seg.slot, :, seg.past : end] = key[seg.offset : seg.offset + seg.length].transpose(0, 1)
        values[seg.slot, :, seg.past : end] = value[seg.offset : seg.offset + seg.length].transpose(0, 1)
        for start, stop in seg.blocks(layout.block):
            at = seg.offset + start - seg.past
            first = 0 if sliding_window is None else max(0, start - sliding_window + 1)
            spans = tuple(s for s in seg.spans if s[0] < stop and s[1] > start)
            last = max([stop, *(s[1] for s in spans)])  # a span's rows see its later rows too
            q = query[at : at + stop - start].transpose(0, 1).unsqueeze(0)
            k = keys[seg.slot : seg.slot + 1, :, first:last]
            v = values[seg.slot : seg.slot + 1, :, first:last]
            mask = layout.block_mask(start, stop, first, sliding_window, spans, last)
            attended = _attend_rows(q, k, v, mask, scale, softcap, s_aux)
            out[at : at + stop - start] = attended[0].transpose(0, 1)
    return out


def _attend_grouped(
    q: torch.Tensor,  # [batch, kv_heads, group, head_dim]: one query row, its heads grouped by kv head
    k: torch.Tensor,  # [batch, kv_heads, keys, head_dim]
    v: torch.Tensor,
    mask: torch.Tensor | None,  # additive [batch, 1, 1, keys], or None: every key
    scale: float,
    softcap: float | None,
    sinks: torch.Tensor | None,  # [kv_heads, group, 1]
) -> torch.Tensor:
    if softcap is None and sinks is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return _explicit_attention(q, k, v, mask, scale, softcap, sinks)


def _attend_rows(
    q: torch.Tensor,  # [1, heads, rows, head_dim]: prompt rows, the last `rows` positions of the keys
    k: torch.Tensor,  # [1, kv_heads, keys, head_dim]
    v: torch.Tensor,
    mask: torch.Tensor | None,  # bool [rows, keys] (True: attend), or None: causal, rows == keys
    scale: float,
    softcap: float | None,
    s_aux: torch.Tensor | None,  # [heads]
) -> torch.Tensor:
    heads, rows, group = q.shape[1], q.shape[2], q.shape[1] // k.shape[1]
    if softcap is None and s_aux is None:
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None, scale=scale, enable_gqa=group > 1
        )
    if mask is None:
        mask = torch.ones(rows, k.shape[2], dtype=torch.bool, device=q.device).tril(k.shape[2] - rows)
    sinks = None if s_aux is None else s_aux.view(1, heads, 1, 1)
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    return _explicit_attention(q, k, v, mask, scale, softcap, sinks)


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
    """This attention for the language model; a vision tower or audio encoder keeps its own (it
    runs once per request on the whole input, outside the KV slots)."""
    AttentionInterface.register(ATTENTION_NAME, slot_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, _no_mask)
    config = model.config
    if config.get_text_config() is config:
        model.set_attn_implementation(ATTENTION_NAME)
        return
    parts = {
        name: getattr(config, name)._attn_implementation
        for name in config.sub_configs
        if getattr(config, name, None) is not None
    }
    parts[_text_config_name(config)] = ATTENTION_NAME
    model.set_attn_implementation(parts)


def _text_config_name(config: object) -> str:
    text = config.get_text_config()  # type: ignore[attr-defined]
    for name in config.sub_configs:  # type: ignore[attr-defined]
        if getattr(config, name, None) is text:
            return name
    raise UnsupportedAttention(f"{type(config).__name__} names no text config among its parts")
