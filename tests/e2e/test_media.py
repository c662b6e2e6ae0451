"""Media through the official SDK against live servers: the default (text-only) model reads a PDF's
text and refuses an image naming it; a server process of a tiny LLaVA checkpoint answers an image
sent inline, by URL from an allowlisted loopback server, and streamed."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests import image_origin, media_checkpoints
from tests.conftest import tiny_config_yaml
from tests.e2e.conftest import MODEL, serving
from tests.image_origin import PNG
from tests.media_samples import pdf

INLINE = "data:image/png;base64," + base64.b64encode(PNG).decode()


def test_the_default_model_reads_a_pdfs_text(sync_client: openai.OpenAI) -> None:
    document = base64.b64encode(pdf(["The secret word is pelican and nothing else"])).decode()
    question = {"type": "text", "text": "What is the secret word in the file?"}
    with_file = sync_client.chat.completions.create(
        model=MODEL,
        messages=[
            {
                "role": "user",
                "content": [
                    question,
                    {"type": "file", "file": {"filename": "note.pdf", "file_data": document}},
                ],
            }
        ],
        max_tokens=12,
        temperature=0,
    )
    without = sync_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": [question]}], max_tokens=1
    )
    assert with_file.usage is not None and without.usage is not None
    assert with_file.usage.prompt_tokens >= without.usage.prompt_tokens + 8  # the file's name and text
    assert "pelican" in (with_file.choices[0].message.content or "").lower()


def test_the_default_model_refuses_an_image_naming_the_part(sync_client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sync_client.chat.completions.create(
            model=MODEL,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "hi"},
                        {"type": "image_url", "image_url": {"url": INLINE}},
                    ],
                }
            ],
        )
    assert info.value.body["param"] == "messages[0].content[1]"  # type: ignore[index]


@pytest.fixture(scope="module")
def llava_client(
    default_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[openai.OpenAI, str]]:
    folder = tmp_path_factory.mktemp("llava-server")
    directory = media_checkpoints.llava(default_checkpoint, folder / "model")
    config = tiny_config_yaml(directory, folder)
    config.write_text(config.read_text() + "  media:\n    allowed_hosts: ['127.0.0.1']\n")
    with image_origin.serving() as origin, serving(config, folder / "server.log") as (base, _):
        yield openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120), origin


def test_a_vision_model_answers_an_image_inline_by_url_and_streamed(
    llava_client: tuple[openai.OpenAI, str],
) -> None:
    client, origin = llava_client
    assert (client.models.list().data[0].model_extra or {})["input_modalities"] == ["text", "image"]

    def ask(url: str) -> list:
        return [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What?"},
                    {"type": "image_url", "image_url": {"url": url}},
                ],
            }
        ]

    inline = client.chat.completions.create(model="tiny", messages=ask(INLINE), max_tokens=8, temperature=0)
    by_url = client.chat.completions.create(
        model="tiny", messages=ask(f"{origin}/cat.png"), max_tokens=8, temperature=0
    )
    assert (
        inline.choices[0].message.content
        and by_url.choices[0].message.content == inline.choices[0].message.content
    )
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=ask(INLINE),
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == inline.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == inline.usage.prompt_tokens  # type: ignore[union-attr]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny", messages=ask("http://169.254.169.254/latest/meta-data/"))
    assert info.value.code == "invalid_image_url"
