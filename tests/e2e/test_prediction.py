"""`prediction` on the real default model through the official SDK. The small model does not
repeat a file it is asked to edit, so the prediction here is its own answer with one line changed
(what a model that makes the edit would be given): the same text as without the prediction, most
of it from accepted prediction tokens once the output re-joins the prediction after the edit, and
usage counting them as OpenAI does (rejected ones are completion tokens too)."""

from __future__ import annotations

import openai
import pytest

from tests.e2e.conftest import MODEL

pytestmark = pytest.mark.e2e

SOURCE = """def total_price(items, tax_rate):
    subtotal = 0
    for item in items:
        subtotal += item["price"] * item["quantity"]
    tax = subtotal * tax_rate
    return subtotal + tax


def cheapest(items):
    best = None
    for item in items:
        if best is None or item["price"] < best["price"]:
            best = item
    return best
"""
EDIT = [
    {
        "role": "user",
        "content": "Rename the function total_price to order_total. Reply with the whole file only.\n\n"
        + SOURCE,
    }
]


def _answer(client: openai.OpenAI, **extra: object) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(model=MODEL, messages=EDIT, temperature=0, max_tokens=200, **extra)


def _edited(text: str) -> str:
    """The text with its middle line replaced."""
    lines = text.split("\n")
    lines[len(lines) // 2] = "    return something_else  # edited"
    return "\n".join(lines)


def test_a_prediction_with_an_edit_gives_the_same_text_from_accepted_tokens(
    sync_client: openai.OpenAI,
) -> None:
    plain = _answer(sync_client)
    text = plain.choices[0].message.content
    assert text.count("\n") >= 6
    predicted = _answer(sync_client, prediction={"type": "content", "content": _edited(text)})
    assert predicted.choices[0].message.content == text
    assert predicted.choices[0].finish_reason == plain.choices[0].finish_reason
    details = predicted.usage.completion_tokens_details
    generated = plain.usage.completion_tokens
    assert details.accepted_prediction_tokens > generated // 2
    assert details.rejected_prediction_tokens >= 1
    assert predicted.usage.completion_tokens == generated + details.rejected_prediction_tokens
    assert plain.usage.completion_tokens_details.accepted_prediction_tokens == 0


def test_a_streamed_prediction_in_parts_gives_the_same_text(sync_client: openai.OpenAI) -> None:
    text = _answer(sync_client).choices[0].message.content
    half = len(text) // 2
    parts = [{"type": "text", "text": text[:half]}, {"type": "text", "text": text[half:]}]
    stream = sync_client.chat.completions.create(
        model=MODEL,
        messages=EDIT,
        temperature=0,
        max_tokens=200,
        prediction={"type": "content", "content": parts},
        stream=True,
        stream_options={"include_usage": True},
    )
    streamed, usage = "", None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            streamed += choice.delta.content or ""
    assert streamed == text
    assert usage is not None and usage.completion_tokens_details.accepted_prediction_tokens > 0
