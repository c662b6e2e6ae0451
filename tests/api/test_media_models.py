"""Vision and audio models through the API: tiny random-weight LLaVA, Gemma 3 and Audio Flamingo 3
checkpoints answer exactly what transformers' `generate()` gives on the same processed inputs,
alone, batched with text requests, with the prompt read in chunks cutting through an image, and
reusing the KV of an image in the next turn."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import soundfile
import torch
import transformers
from fastapi import FastAPI
from PIL import Image

from tests import media_checkpoints
from tests.api.conftest import assert_error, in_process, running_app, sdk
from tests.conftest import tiny_config_yaml

NEW = 10
SYSTEM = "You look closely at what you are shown and describe it in plain words, " * 4


def picture(seed: int, size: tuple[int, int] = (40, 30)) -> Image.Image:
    pixels = np.random.RandomState(seed).randint(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def png_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def clip(seed: int, seconds: float = 1.0, rate: int = 16000) -> np.ndarray:
    return (np.random.RandomState(seed).randn(int(seconds * rate)) * 0.1).astype(np.float32)


def wav_base64(samples: np.ndarray, rate: int = 16000) -> str:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype="FLOAT")
    return base64.b64encode(buffer.getvalue()).decode()


class Family:
    def __init__(self, name: str, directory: Path) -> None:
        self.name = name
        self.directory = directory
        self.processor = transformers.AutoProcessor.from_pretrained(directory)
        config = transformers.AutoConfig.from_pretrained(directory)
        model_class = getattr(transformers, config.architectures[0])
        self.model = model_class.from_pretrained(directory, dtype=torch.float32).eval()
        self.model.generation_config.eos_token_id = None
        self.kind = "audio" if name == "audio" else "image"

    def part(self, seed: int) -> dict[str, Any]:
        if self.kind == "audio":
            return {"type": "input_audio", "input_audio": {"data": wav_base64(clip(seed)), "format": "wav"}}
        return {"type": "image_url", "image_url": {"url": png_uri(picture(seed))}}

    def expected(self, question: str, seed: int, system: str = SYSTEM) -> list[int]:
        """Greedy tokens of transformers' generate() on the processor's inputs for the same turn."""
        inputs = self.inputs(question, seed, system)
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=NEW, do_sample=False)
        return out[0, inputs["input_ids"].shape[1] :].tolist()

    def media_positions(self, question: str, seed: int) -> list[int]:
        ids = self.inputs(question, seed, SYSTEM)["input_ids"][0].tolist()
        config = self.model.config
        placeholder = getattr(config, "image_token_id", None) or getattr(config, "audio_token_id", None)
        if placeholder is None:
            placeholder = config.image_token_index
        return [i for i, token in enumerate(ids) if token == placeholder]

    def inputs(self, question: str, seed: int, system: str) -> Any:
        messages = [
            {"role": "system", "content": system},
            {"role": "user", "content": [{"type": self.kind}, {"type": "text", "text": question}]},
        ]
        text = self.processor.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        media = {"audio": [clip(seed)]} if self.kind == "audio" else {"images": [picture(seed)]}
        return self.processor(text=text, return_tensors="pt", add_special_tokens=False, **media)

    def request(self, question: str, seed: int, system: str = SYSTEM) -> dict[str, Any]:
        return {
            "model": "tiny",
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": [self.part(seed), {"type": "text", "text": question}]},
            ],
            "max_tokens": NEW,
            "temperature": 0,
            "logprobs": True,
        }


BUILDERS = {
    "llava": media_checkpoints.llava,
    "gemma3": media_checkpoints.gemma3,
    "audio": media_checkpoints.audio,
}


@pytest.fixture(scope="session", params=sorted(BUILDERS))
def family(
    request: pytest.FixtureRequest, default_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Family:
    name = request.param
    return Family(name, BUILDERS[name](default_checkpoint, tmp_path_factory.mktemp(name)))


@pytest.fixture(scope="session")
async def media_app(family: Family, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[FastAPI]:
    # A small batch: long prompts are read in chunks of a few tokens, cutting through media.
    extra = "    engine: {max_batch_tokens: 16, max_running: 4}\n"
    async with running_app(tiny_config_yaml(family.directory, tmp_path_factory.mktemp("cfg"), extra)) as app:
        yield app


@pytest.fixture(scope="session")
async def media_http(media_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with in_process(media_app, timeout=120) as client:
        yield client


@pytest.fixture(scope="session")
def media_client(media_http: httpx.AsyncClient) -> openai.AsyncOpenAI:
    return sdk(media_http)


def answer_text(family: Family, ids: list[int]) -> str:
    return family.processor.tokenizer.decode(ids, skip_special_tokens=True)


async def test_models_list_says_what_each_model_takes(media_http: httpx.AsyncClient, family: Family) -> None:
    listed = (await media_http.get("/v1/models")).json()["data"][0]
    assert listed["input_modalities"] == ["text", family.kind]


async def test_greedy_answers_equal_transformers_alone_and_batched_with_text(
    media_client: openai.AsyncOpenAI, family: Family
) -> None:
    question = "What is in it? Say everything you notice."
    expected = answer_text(family, family.expected(question, seed=1))
    assert len(expected) > NEW
    media = family.media_positions(question, seed=1)
    # Prompt chunks end on multiples of 12 here (max_batch_tokens 16, less a row per slot): one
    # cuts through the media, except Gemma 3's images, whose rows see each other both ways and
    # are never cut (the chunk ends before them).
    assert (
        any(media[0] < bound <= media[-1] for bound in range(12, media[-1] + 1, 12))
        or family.name == "gemma3"
    )
    alone = await media_client.chat.completions.create(**family.request(question, seed=1))
    assert alone.choices[0].message.content == expected
    assert alone.usage is not None and alone.usage.prompt_tokens > 40
    if family.kind == "audio":
        details = alone.usage.prompt_tokens_details
        assert details is not None and details.audio_tokens and details.audio_tokens > 10

    text_only = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "Tell me a story."}],
        "max_tokens": NEW,
    }
    answers = await asyncio.gather(
        media_client.chat.completions.create(**family.request(question, seed=2)),
        *(media_client.chat.completions.create(**text_only) for _ in range(2)),
        media_client.chat.completions.create(**family.request(question, seed=1)),
    )
    assert answers[0].choices[0].message.content == answer_text(family, family.expected(question, seed=2))
    assert answers[-1].choices[0].message.content == expected


async def test_the_next_turn_about_the_same_media_reuses_its_kv(
    media_client: openai.AsyncOpenAI, family: Family
) -> None:
    first = family.request("Describe it.", seed=3)
    answer = await media_client.chat.completions.create(**first)
    follow_up = dict(first)
    follow_up["messages"] = [
        *first["messages"],
        {"role": "assistant", "content": answer.choices[0].message.content},
        {"role": "user", "content": "And what else?"},
    ]
    second = await media_client.chat.completions.create(**follow_up)
    assert second.usage is not None and second.usage.prompt_tokens_details is not None
    cached = second.usage.prompt_tokens_details.cached_tokens or 0
    assert cached >= answer.usage.prompt_tokens // 2  # the system prompt and the media at least
    other = await media_client.chat.completions.create(
        **{
            **follow_up,
            "messages": [
                first["messages"][0],
                {"role": "user", "content": [family.part(seed=4), {"type": "text", "text": "Describe it."}]},
            ],
        }
    )
    assert other.usage is not None and other.usage.prompt_tokens_details is not None
    # Another image or clip after the same system prompt: only the text before it is reused.
    assert (other.usage.prompt_tokens_details.cached_tokens or 0) < cached


async def test_a_modality_the_model_does_not_take_is_refused(
    media_http: httpx.AsyncClient, family: Family
) -> None:
    other = (
        {"type": "image_url", "image_url": {"url": png_uri(picture(0))}}
        if family.kind == "audio"
        else {"type": "input_audio", "input_audio": {"data": wav_base64(clip(0)), "format": "wav"}}
    )
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, other]}],
    }
    assert_error(await media_http.post("/v1/chat/completions", json=body), 400, "messages[0].content[1]")
