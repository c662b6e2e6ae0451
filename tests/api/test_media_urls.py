"""Image URLs through the API: an allowlisted loopback server's image is answered about exactly as
the same image sent inline; private addresses and corrupt images are 400s naming the part, and
the server goes on serving."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests import image_origin, media_checkpoints
from tests.api.conftest import assert_error, in_process, running_app
from tests.conftest import tiny_config_yaml
from tests.image_origin import PNG


@pytest.fixture(scope="module")
async def llava_http(
    default_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[httpx.AsyncClient]:
    directory = media_checkpoints.llava(default_checkpoint, tmp_path_factory.mktemp("llava"))
    config = tiny_config_yaml(directory, tmp_path_factory.mktemp("cfg"))
    config.write_text(config.read_text() + "  media:\n    allowed_hosts: ['127.0.0.1']\n")
    async with running_app(config) as app, in_process(app) as client:
        yield client


@pytest.fixture(scope="module")
def origin() -> Iterator[str]:
    with image_origin.serving() as url:
        yield url


def ask(url: str) -> dict:
    return {
        "model": "tiny",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What?"},
                    {"type": "image_url", "image_url": {"url": url}},
                ],
            }
        ],
        "max_tokens": 6,
        "temperature": 0,
    }


async def test_an_allowlisted_url_is_answered_as_the_same_image_inline(
    llava_http: httpx.AsyncClient, origin: str
) -> None:
    fetched = await llava_http.post("/v1/chat/completions", json=ask(f"{origin}/cat.png"))
    assert fetched.status_code == 200, fetched.text
    inline = await llava_http.post(
        "/v1/chat/completions", json=ask("data:image/png;base64," + base64.b64encode(PNG).decode())
    )
    assert (
        fetched.json()["choices"][0]["message"]["content"]
        == inline.json()["choices"][0]["message"]["content"]
    )


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.7/a.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/a.png",
        "http://localhost/a.png",
    ],
)
async def test_private_addresses_are_400s_naming_the_part(llava_http: httpx.AsyncClient, url: str) -> None:
    r = await llava_http.post("/v1/chat/completions", json=ask(url))
    assert_error(r, 400, "messages[0].content[1]", "invalid_image_url")


async def test_a_redirect_to_a_private_address_is_a_400(llava_http: httpx.AsyncClient, origin: str) -> None:
    r = await llava_http.post("/v1/chat/completions", json=ask(f"{origin}/redirect?to=http://10.9.8.7/a.png"))
    assert_error(r, 400, "messages[0].content[1]", "invalid_image_url")


async def test_a_corrupt_image_is_a_400_and_the_server_serves_on(llava_http: httpx.AsyncClient) -> None:
    r = await llava_http.post(
        "/v1/chat/completions", json=ask("data:image/png;base64," + base64.b64encode(PNG[:40]).decode())
    )
    assert_error(r, 400, "messages[0].content[1]", "invalid_media")
    ok = await llava_http.post(
        "/v1/chat/completions", json={**ask("x"), "messages": [{"role": "user", "content": "hi"}]}
    )
    assert ok.status_code == 200
