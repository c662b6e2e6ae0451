"""Weight-only quantized linear layers on the CPU (models.yaml `quantization: int8 | int4`).

The weights are kept as int8 (one scale per output row) or int4 (groups of 32 inputs, a scale and
a zero each), multiplied by torch's own CPU kernels, which read bfloat16 activations: each layer's
input is rounded to bfloat16 on the way in, its output returned in the model's dtype. Measured on
a 2-core AVX-512 BF16 EPYC with the default model's shapes: at one row the int4 kernel is 2-11x
faster than float32 (the 49152-row lm_head 8.8 ms -> 0.8 ms). Both kernels give a row the same
result whatever else is in the batch, yet a served model's greedy answers are not batch-independent
with them (11 of 16 changed beside 15 others, default model): rounding each layer's input to
bfloat16 turns the last-bit differences of the float32 parts between batches into visible ones.
Hence opt-in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

logger = logging.getLogger(__name__)

Quantization = Literal["int8", "int4"]
GROUP = 32  # int4: inputs per scale/zero pair (GGUF's Q4 block size)


class Int8Linear(nn.Module):
    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127
        self.qweight = (weight / scale[:, None]).round().clamp(-128, 127).to(torch.int8)
        self.scale = scale.to(torch.bfloat16)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        out = torch._weight_int8pack_mm(flat, self.qweight, self.scale).to(x.dtype)
        out = out.reshape(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias


class Int4Linear(nn.Module):
    """Asymmetric int4 in groups of GROUP inputs: w = (q - 8) * scale + zero, q in 0..15 (the
    kernel's form; a GGUF Q4_1 block's d * q + m is scale = d, zero = m + 8 d)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().float()
        rows, cols = weight.shape
        groups = weight.reshape(rows, cols // GROUP, GROUP)
        low, high = groups.amin(dim=-1), groups.amax(dim=-1)
        scale = ((high - low) / 15).clamp(min=1e-12)
        q = ((groups - low[..., None]) / scale[..., None]).round().clamp(0, 15).to(torch.int32)
        self.packed = torch._convert_weight_to_int4pack_for_cpu(q.reshape(rows, cols), 1)
        # [groups, out_features, 2]: the scale and zero of each group of each output row.
        pairs = torch.stack([scale, low + 8 * scale], dim=-1).transpose(0, 1)
        self.scales_and_zeros = pairs.contiguous().to(torch.bfloat16)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        out = torch._weight_int4pack_mm_for_cpu(flat, self.packed, GROUP, self.scales_and_zeros)
        out = out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias


def quantizer(kind: Quantization) -> Callable[[nn.Linear], nn.Module]:
    """A linear's quantized twin; one whose shape the kernel cannot take stays as it is."""

    def quantize(linear: nn.Linear) -> nn.Module:
        if kind == "int4" and (linear.in_features % GROUP or linear.out_features % 16):
            logger.info(
                "a %dx%d linear stays unquantized (int4 needs multiples of 32 and 16)",
                linear.out_features,
                linear.in_features,
            )
            return linear
        return Int4Linear(linear) if kind == "int4" else Int8Linear(linear)

    return quantize


def check_device(model: nn.Module, kind: Quantization) -> None:
    device = next(model.parameters()).device
    if device.type != "cpu":
        raise ValueError(f"quantization {kind!r} runs on the CPU only so far; this model is on {device}")


def quantize_model(model: nn.Module, kind: Quantization) -> int:
    """Every nn.Linear of `model` quantized, in place; with int4, the output layer (lm_head) as
    int8: it is what GGUF files keep at higher precision (Q6_K/Q8_0), and int4 there costs the
    default model 0.05 nats/token of KL against 0.0003 for all its other layers together
    (scripts/quant_quality.py), for a speed int8 nearly matches. Returns how many were swapped."""
    output = getattr(model, "get_output_embeddings", lambda: None)()
    inner, finer = quantizer(kind), quantizer("int8")
    return quantize_linears(model, lambda linear: finer(linear) if linear is output else inner(linear))


def quantize_linears(model: nn.Module, quantize: Callable[[nn.Linear], nn.Module]) -> int:
    """Swaps every nn.Linear of `model` for its quantized twin, in place; returns how many."""
    swaps = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear
    ]
    count = 0
    with torch.no_grad():
        for parent, name, child in swaps:
            twin = quantize(child)
            if twin is not child:
                setattr(parent, name, twin)
                count += 1
    return count
