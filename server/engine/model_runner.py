"""One packed forward pass of the shared Hugging Face model over a scheduled step."""

from __future__ import annotations

import logging

import torch
from transformers import PreTrainedModel

from server.engine import cpu_kernels, kv_cache, media, quantized
from server.engine.kv_cache import PrefillSegment, SlotKVCache, StepLayout, UnsupportedAttention
from server.engine.lean_forward import LeanForward
from server.engine.quantized import WeightFormat
from server.engine.scheduler import Chunk, StepPlan
from server.engine.sequence import Sequence
from server.engine.types import SamplingParams

logger = logging.getLogger(__name__)

_PROBE = SamplingParams(max_tokens=1)


class ModelRunner:
    def __init__(
        self,
        model: PreTrainedModel,
        lean: bool = True,
        quantization: WeightFormat | None = None,
        decode_rows_alone: bool | None = None,
    ) -> None:
        """`quantization`: the linear layers' weights kept as int8 or int4, or "auto" (CPU; see quantized.py).
        `decode_rows_alone`: each decode row attends in a call of its own, over exactly its keys, so
        that its result does not depend on the other rows (see StepLayout); default: when quantized,
        whose bfloat16 rounding makes the padded call's last-bit differences visible."""
        self.model = model
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.vocab_size = int(model.config.get_text_config().vocab_size)
        # Models with a vision tower or an audio encoder: prompts may hold rows from those, so the
        # model is fed embeddings (and runs its own forward: the lean one reads token ids only).
        self.multimodal = media.is_multimodal(model.config)
        self.multi_axis = media.multi_axis(model.config)
        lean = lean and not self.multimodal
        kv_cache.install(model)
        quantize = None
        if quantization is not None:
            quantized.check_device(model, quantization)
            quantize = quantized.quantizer(quantization)
        self.lean = LeanForward.build(model, quantize) if lean else None
        fused = self.lean.fused_projections() if self.lean else []
        self.quantized = False
        if quantization is not None:
            fused_quantized = any(isinstance(part, quantized.QUANTIZED_LINEARS) for part in fused)
            quantized.quantize_model(model, quantization, fused_quantized)
            # The layers the step runs: not the model's own projections the fused ones stand for
            # (kept, quantized alike, for the start-up probe of its own forward).
            stand_ins = self.lean.fused_parts if self.lean else frozenset()
            in_use = [*fused, *(m for m in model.modules() if id(m) not in stand_ins)]
            count = sum(isinstance(m, quantized.QUANTIZED_LINEARS) for m in in_use)
            logger.info("weights: %d linear layers kept quantized (%s)", count, quantization)
            quantized.log_exact_groups(in_use)
            self.quantized = count > 0
        self.decode_rows_alone = self.quantized if decode_rows_alone is None else decode_rows_alone
        cpu_kernels.pack_linears(model, skip=self.lean.fused_parts if self.lean else frozenset())
        self.cache = SlotKVCache(model, self.device, self.dtype)
        self._probe_own_forward()
        if self.lean is not None and not self._lean_matches():
            logger.warning("the lean forward pass does not match the model's own; using the model's")
            self.lean = None
            cpu_kernels.pack_linears(model)
        logger.info("forward pass: %s", "lean (fused projections)" if self.lean else "the model's own")

    @torch.inference_mode()
    def run(self, plan: StepPlan, lean: bool | None = None) -> torch.Tensor:
        """Applies the plan's KV layout and copies, feeds its tokens; returns float32 logits on the
        CPU, one row per chunk that samples, in the order of `plan.chunks`, a decode's row followed by
        one per proposed token (the logits after it). `lean` picks the forward pass (default: the
        lean one where the model has it)."""
        if plan.kv_ops:  # moves may read slots the new layout drops: apply them on the larger one
            grown = (max(plan.num_slots, self.cache.num_slots), max(plan.capacity, self.cache.capacity))
            self.cache.resize(*grown)
            for source, target, tokens in plan.kv_ops:
                self.cache.copy_prefix(source, target, self.cache.capacity if tokens is None else tokens)
        self.cache.resize(plan.num_slots, plan.capacity)
        ids: list[int] = []
        positions: list[int] = []
        sample_at: list[int] = []
        slots: list[int] = []
        for chunk in plan.decodes:  # a decode's proposals are decode rows of its slot, one each
            assert chunk.seq.slot is not None
            ids.append(chunk.seq.token_ids[chunk.start])
            ids.extend(chunk.draft)
            positions.extend(range(chunk.start, chunk.start + 1 + len(chunk.draft)))
            slots.extend([chunk.seq.slot] * (1 + len(chunk.draft)))
        sample_at.extend(range(len(ids)))
        segments: list[PrefillSegment] = []
        for chunk in plan.prefills:
            offset = len(ids)
            ids.extend(chunk.seq.token_ids[chunk.start : chunk.start + chunk.length])
            positions.extend(range(chunk.start, chunk.start + chunk.length))
            assert chunk.seq.slot is not None
            end = chunk.start + chunk.length
            spans = tuple(span for span in chunk.seq.spans if span[0] < end and span[1] > chunk.start)
            segments.append(PrefillSegment(offset, chunk.length, chunk.seq.slot, chunk.start, spans))
            if chunk.samples:
                sample_at.append(len(ids) - 1)
        proposals = len(slots) > len(plan.decodes)
        layout = self._layout(plan, slots, positions[: len(slots)], segments, alone=proposals)
        input_ids = torch.tensor([ids], device=self.device)
        position_ids = torch.tensor([positions], device=self.device)
        # int64 even when empty: a step may only read prompt chunks and sample nothing.
        keep = torch.tensor(sample_at, dtype=torch.long, device=self.device)
        if self.multimodal:
            embeds = self._embeddings(input_ids[0], plan)
            if self.multi_axis:
                position_ids = self._axes(position_ids[0], plan)
            logits = self.model(
                inputs_embeds=embeds.unsqueeze(0),
                position_ids=position_ids,
                use_cache=False,
                logits_to_keep=keep,
                **{kv_cache.BATCH_KWARG: layout},
            ).logits
        elif self.lean is not None and lean is not False:
            logits = self.lean(input_ids, position_ids, keep, layout)
        else:
            logits = self.model(
                input_ids=input_ids,
                position_ids=position_ids,
                use_cache=False,
                logits_to_keep=keep,
                **{kv_cache.BATCH_KWARG: layout},
            ).logits
        return logits[0].float().cpu()

    def _embeddings(self, ids: torch.Tensor, plan: StepPlan) -> torch.Tensor:
        """[tokens, hidden]: the embedding table's rows, and the encoders' at media positions (a
        request's media is encoded the first time a chunk of its prompt holds any)."""
        embeds = self.model.get_input_embeddings()(ids.clamp(min=0))
        if not bool((ids < 0).any()):
            return embeds
        offset = sum(1 + len(chunk.draft) for chunk in plan.decodes)
        for chunk in plan.prefills:
            held = chunk.seq.media
            if held is not None:
                start, end = chunk.start, chunk.start + chunk.length
                inside = (held.positions >= start) & (held.positions < end)
                if bool(inside.any()):
                    media.encode(self.model, held, self.multi_axis)
                    at = (held.positions[inside] + (offset - start)).to(self.device)
                    embeds[at] = held.rows[inside.to(held.rows.device)].to(embeds.dtype)
            offset += chunk.length
        return embeds

    def _axes(self, positions: torch.Tensor, plan: StepPlan) -> torch.Tensor:
        """[3, 1, tokens] multi-axis rotary positions: a text token's are its position on every axis
        (shifted past the media before it); a media row's, the model's own (media.PromptMedia.axes)."""
        axes = positions.unsqueeze(0).repeat(3, 1)
        offset = 0
        counts = [1 + len(c.draft) for c in plan.decodes] + [c.length for c in plan.prefills]
        for chunk, count in zip((*plan.decodes, *plan.prefills), counts, strict=True):
            held = chunk.seq.media
            if held is not None and held.axes is not None:
                own = positions[offset : offset + count]
                prompt = held.axes.shape[1]
                later = own >= prompt
                axes[:, offset : offset + count] = torch.where(
                    later, own + held.axes_offset, held.axes.to(own.device)[:, own.clamp(max=prompt - 1)]
                )
            offset += count
        return axes.unsqueeze(1)

    def _probe_own_forward(self) -> None:
        """A prompt read and a decode step through the model's own forward: a model whose attention
        takes what the engine does not compute refuses to start, naming it (never a silent
        approximation)."""
        seq = Sequence("probe", [i % self.vocab_size for i in range(1, 13)], 12, _PROBE)
        seq.slot = 0
        try:
            self.run(StepPlan(1, 64, prefills=[Chunk(seq, 0, 12)]), lean=False)
            seq.token_ids.append(7)
            self.run(StepPlan(1, 64, decodes=[Chunk(seq, 12, 1)]), lean=False)
        except UnsupportedAttention as exc:
            raise UnsupportedAttention(
                f"{self.model.config.model_type} models cannot be served: {exc}"
            ) from exc
        finally:
            self.cache.release()

    def _lean_matches(self) -> bool:
        try:
            return self._probe_lean()
        except Exception:
            logger.exception("the lean forward pass failed its probe")
            return False
        finally:
            self.cache.release()

    def _probe_lean(self) -> bool:
        """A prompt read and one decode step, through both forward passes (each into a slot of its own):
        the lean pass is used only if its logits match the model's own."""
        prompt = [i % self.vocab_size for i in range(1, 13)]
        seqs = [Sequence(f"probe-{slot}", list(prompt), len(prompt), _PROBE) for slot in (0, 1)]
        for slot, seq in enumerate(seqs):
            seq.slot = slot
        for step in range(2):
            outputs = []
            for seq, lean in zip(seqs, (False, True), strict=True):
                if step == 0:
                    plan = StepPlan(2, 64, prefills=[Chunk(seq, 0, len(prompt))])
                else:
                    seq.token_ids.append(7)
                    plan = StepPlan(2, 64, decodes=[Chunk(seq, len(prompt), 1)])
                outputs.append(self.run(plan, lean))
            reference, candidate = outputs
            scale = max(1.0, reference.abs().max().item())
            tolerance = (1e-4 if self.dtype == torch.float32 else 2e-2) * scale
            if not torch.allclose(reference, candidate, rtol=0, atol=tolerance):
                return False
        return True

    def _layout(
        self,
        plan: StepPlan,
        slots: list[int],
        positions: list[int],
        segments: list[PrefillSegment],
        alone: bool = False,
    ) -> StepLayout:
        """`slots` and `positions`: each decode row's. `alone`: every decode row attends alone
        (always with proposals: their rows share a slot, and each sees the keys up to its own
        position, as the decode steps they stand for would)."""
        rows = (max(slots) + 1) if slots else 0
        length = (max(positions) + 1) if positions else 0
        bias = last = None
        rows_alone: list[tuple[int, int]] | None = None
        if self.decode_rows_alone or alone:  # each row over its own keys: no padded mask to build
            rows_alone = [(slot, position + 1) for slot, position in zip(slots, positions, strict=True)]
        elif slots:
            last = torch.zeros(rows, dtype=torch.long)  # rows of slots not decoding see position 0 only
            last[torch.tensor(slots)] = torch.tensor(positions)
            visible = torch.arange(length).unsqueeze(0) <= last.unsqueeze(1)
            bias = torch.zeros(rows, 1, 1, length, dtype=self.dtype)
            bias.masked_fill_(~visible.view(rows, 1, 1, length), float("-inf"))
            bias = bias.to(self.device)
        return StepLayout(
            cache=self.cache,
            decode_slots=torch.tensor(slots, dtype=torch.long, device=self.device),
            decode_positions=torch.tensor(positions, dtype=torch.long, device=self.device),
            decode_rows=rows,
            decode_bias=bias,
            decode_len=length,
            decode_contiguous=slots == list(range(len(slots))),
            prefills=segments,
            decode_last=None if last is None else last.to(self.device),
            decode_rows_alone=rows_alone,
            block=plan.block,
        )
