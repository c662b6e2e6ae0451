"""Greedy output on the real default model is the same alone or beside 15 other requests."""

from __future__ import annotations

import asyncio

import openai
import pytest

from scripts.bench import PROMPTS
from tests.e2e.conftest import MODEL, served_in_float32

pytestmark = pytest.mark.e2e
# Batched matrix multiplies may round differently from single-row ones (another kernel, another
# summation order); a near-tie between two tokens can then flip. Measured: 0 of 16 diverging in
# float32 on the CPU (every CPU kind: `dtype: auto` is float32 there), 9 of 16 in bfloat16 on an
# AVX-512 BF16 CPU, 2 of 16 in bfloat16 on an H200 (where auto picks bfloat16).
MAX_DIVERGING = 1 if served_in_float32() else 4


async def _greedy(client: openai.AsyncOpenAI, prompt: str) -> str:
    r = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=48
    )
    return r.choices[0].message.content


async def test_greedy_alone_equals_greedy_beside_fifteen_others(async_client: openai.AsyncOpenAI) -> None:
    alone = [await _greedy(async_client, p) for p in PROMPTS]
    together = await asyncio.gather(*(_greedy(async_client, p) for p in PROMPTS))
    diverging = sum(a != b for a, b in zip(alone, together, strict=True))
    assert diverging <= MAX_DIVERGING, f"{diverging} of {len(PROMPTS)} greedy outputs changed under load"
