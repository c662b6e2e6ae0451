"""Weight-only quantized linear layers on the CPU (models.yaml `quantization: auto | int8 | int4`).

The weights are kept as int8 (one scale per output row) or int4 (groups of 32 inputs, a scale and
a zero each), multiplied by torch's own CPU kernels, which read bfloat16 activations: each layer's
input is rounded to bfloat16 on the way in, its output returned in the model's dtype. Measured on
a 2-core AVX-512 BF16 EPYC with the default model's shapes: at one row the int4 kernel is 2-11x
faster than float32 (the 49152-row lm_head 8.8 ms -> 0.8 ms). Both kernels give a row the same
result whatever else is in the batch; the rest of the step is made so too where the model is
quantized (see StepLayout.decode_rows_alone), since rounding each layer's input to bfloat16 turns
last-bit differences between batches into visible ones (11 of 16 greedy answers changed before).
A GGUF file's 4-bit blocks keep their own codes (`four_bit_grid`): "auto", the default, serves such
a file's model as the file holds it rather than dequantized.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Literal, NamedTuple

import torch
from torch import nn

logger = logging.getLogger(__name__)

# "auto": int4 for the linears whose weights already lie on 4-bit grids (a GGUF file's Q4 blocks),
# the others as they are; the output layer in int8 when any was.
WeightFormat = Literal["int8", "int4", "auto"]
GROUP = 32  # int4: inputs per scale/zero pair (GGUF's Q4 block size)
EXACT_SHARE = 0.99  # "auto": the share of a linear's groups that must lie on their own grid


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
    kernel's form). A group whose values already lie on a 4-bit grid (a GGUF Q4_0, Q4_1 or Q4_K
    block, dequantized) keeps that grid exactly; any other is rounded onto 16 levels between its
    minimum and maximum (see `four_bit_grid`)."""

    def __init__(self, linear: nn.Linear, grid: FourBitGrid | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        rows, cols = linear.weight.shape
        grid = grid or weight_grid(linear)
        self.exact_groups, self.groups = int(grid.exact.sum()), grid.exact.numel()
        self.packed = torch._convert_weight_to_int4pack_for_cpu(grid.codes.reshape(rows, cols), 1)
        # [groups, out_features, 2]: the scale and zero of each group of each output row.
        pairs = torch.stack([grid.scale, grid.low + 8 * grid.scale], dim=-1).transpose(0, 1)
        self.scales_and_zeros = pairs.contiguous().to(torch.bfloat16)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        out = torch._weight_int4pack_mm_for_cpu(flat, self.packed, GROUP, self.scales_and_zeros)
        out = out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias


QUANTIZED_LINEARS = (Int8Linear, Int4Linear)


def weight_grid(linear: nn.Linear) -> FourBitGrid:
    weight = linear.weight.detach().float()
    return four_bit_grid(weight.reshape(weight.shape[0], -1, GROUP))


class FourBitGrid(NamedTuple):
    codes: torch.Tensor  # int32 [..., GROUP] in 0..15
    low: torch.Tensor  # [...] the value of code 0
    scale: torch.Tensor  # [...] the step between codes
    exact: torch.Tensor  # bool [...]: low + codes * scale is the group's own values


def four_bit_grid(groups: torch.Tensor) -> FourBitGrid:
    """Codes for float32 `groups` [..., GROUP]. A 4-bit quantizer puts a group's values on a grid
    low + k * step, k in 0..15. Q4_1 spans the codes 0..15, so the grid between the group's extremes
    is its own; Q4_0's and Q4_K's often do not, and rounding them onto 16 levels between their
    extremes would lose the file's values: their step is the smallest gap between distinct values,
    or a half or a third of it where no two values sit on neighbouring codes. A group on no such
    grid (any float weight) is rounded min/max."""
    shape = groups.shape[:-1]
    flat = groups.reshape(-1, GROUP)
    low, high = flat.amin(dim=-1), flat.amax(dim=-1)
    span = high - low
    scale = (span / 15).clamp(min=1e-12)
    found = (flat - low[:, None]) / scale[:, None]
    codes = found.round().clamp(0, 15)
    exact = (found - codes).abs().amax(dim=-1) < 0.02
    rest = (~exact).nonzero().squeeze(1)
    # Float weights sit on no grid: a sample of the groups tells, before searching them all.
    if rest.numel() and _search_steps(flat[rest[:1024]], low[rest[:1024]], span[rest[:1024]])[0].any():
        fits, levels, fitted = _search_steps(flat[rest], low[rest], span[rest])
        found_at = rest[fits]
        codes[found_at], scale[found_at], exact[found_at] = levels[fits], fitted[fits], True
    return FourBitGrid(
        codes.to(torch.int32).reshape(*shape, GROUP),
        low.reshape(shape),
        scale.reshape(shape),
        exact.reshape(shape),
    )


def _search_steps(
    groups: torch.Tensor, low: torch.Tensor, span: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For groups [n, GROUP] whose codes do not span 0..15: which lie on a grid of at most 16
    levels from `low`, their codes and their step."""
    gaps = groups.sort(dim=-1).values.diff(dim=-1)
    smallest = torch.where(gaps > span[:, None] * 1e-3, gaps, torch.inf).amin(dim=-1)
    fits = torch.zeros_like(span, dtype=torch.bool)
    levels = torch.zeros_like(groups)
    fitted = torch.ones_like(span)
    for divisor in (1, 2, 3):
        found = ((groups - low[:, None]) / (smallest / divisor)[:, None]).nan_to_num(posinf=99.0)
        rounded = found.round()
        top = rounded.amax(dim=-1)
        new = ~fits & (top <= 15) & ((found - rounded).abs().amax(dim=-1) < 0.02)
        levels = torch.where(new[:, None], rounded, levels)
        # The step from the extremes and the top code: as precise as the values themselves.
        fitted = torch.where(new, span / top.clamp(min=1), fitted)
        fits |= new
    return fits, levels, fitted


def quantizer(kind: WeightFormat) -> Callable[[nn.Linear], nn.Module]:
    """A linear's quantized twin; one whose shape the kernel cannot take stays as it is, and with
    "auto" one whose weights are not on 4-bit grids too."""

    def quantize(linear: nn.Linear) -> nn.Module:
        if kind != "int8" and (linear.in_features % GROUP or linear.out_features % 16):
            logger.info(
                "a %dx%d linear stays unquantized (int4 needs multiples of 32 and 16)",
                linear.out_features,
                linear.in_features,
            )
            return linear
        if kind == "int8":
            return Int8Linear(linear)
        if kind == "int4":
            return Int4Linear(linear)
        grid = weight_grid(linear)
        return Int4Linear(linear, grid) if grid.exact.float().mean() >= EXACT_SHARE else linear

    return quantize


def check_device(model: nn.Module, kind: WeightFormat) -> None:
    device = next(model.parameters()).device
    if device.type != "cpu":
        raise ValueError(f"quantization {kind!r} runs on the CPU only so far; this model is on {device}")


def quantize_model(model: nn.Module, kind: WeightFormat, quantized_elsewhere: bool = False) -> int:
    """Every nn.Linear of `model` quantized, in place; the output layer (lm_head) as int8: it is
    what GGUF files keep at higher precision (Q6_K/Q8_0), and int4 there costs the default model
    0.05 nats/token of KL against 0.0003 for all its other layers together
    (scripts/quant_quality.py), for a speed int8 nearly matches. With "auto", the output layer
    only where another linear was quantized (here, or `quantized_elsewhere`: fused projections
    held outside the model). Returns how many were swapped."""
    output = getattr(model, "get_output_embeddings", lambda: None)()
    inner = quantizer(kind)
    count = quantize_linears(model, lambda linear: linear if linear is output else inner(linear))
    if kind != "auto" or count or quantized_elsewhere:
        finer = quantizer("int8")
        count += quantize_linears(model, lambda linear: finer(linear) if linear is output else linear)
    return count


def log_exact_groups(modules: Iterable[object]) -> None:
    layers = [m for m in modules if isinstance(m, Int4Linear)]
    if layers:
        exact, total = sum(m.exact_groups for m in layers), sum(m.groups for m in layers)
        logger.info(
            "int4: %d of %d weight groups (%.1f%%) kept on their own 4-bit grid, the rest rounded",
            exact,
            total,
            100 * exact / total,
        )


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
