"""Image, audio and file parts read into the model's media: every limit and every corrupt input a
400 naming its part."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import pytest
import soundfile
from PIL import Image

from server.config import MediaSettings, RequestLimits
from server.media.fetch import SafeFetcher
from server.media.parts import MediaItem, MediaTarget, read_media
from server.protocol.errors import InvalidRequest, UnsupportedParameter
from server.protocol.request import ChatCompletionRequest
from tests.media_samples import pdf

VISION_AND_AUDIO = MediaTarget("m", frozenset({"text", "image", "audio"}), 16000)
TEXT_ONLY = MediaTarget("m", frozenset({"text"}))
FETCHER = SafeFetcher(MediaSettings())


def encoded(image: Image.Image, kind: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=kind)
    return f"data:image/{kind.lower()};base64," + base64.b64encode(buffer.getvalue()).decode()


def image_part(size: tuple[int, int] = (20, 10), kind: str = "PNG", detail: str = "auto") -> dict[str, Any]:
    return {
        "type": "image_url",
        "image_url": {"url": encoded(Image.new("RGB", size, (1, 2, 3)), kind), "detail": detail},
    }


def wav(seconds: float, rate: int = 8000) -> str:
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(int(seconds * rate), dtype=np.float32), rate, format="WAV")
    return base64.b64encode(buffer.getvalue()).decode()


def audio_part(data: str, audio_format: str = "wav") -> dict[str, Any]:
    return {"type": "input_audio", "input_audio": {"data": data, "format": audio_format}}


def file_part(data: bytes, name: str = "doc.pdf") -> dict[str, Any]:
    return {"type": "file", "file": {"filename": name, "file_data": base64.b64encode(data).decode()}}


def read(parts: list[dict[str, Any]], target: MediaTarget = VISION_AND_AUDIO, **limits: Any) -> Any:
    request = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": parts}]}
    )
    return read_media(request.messages, target, RequestLimits(**limits), FETCHER)


def refusal(
    parts: list[dict[str, Any]], target: MediaTarget = VISION_AND_AUDIO, **limits: Any
) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        read(parts, target, **limits)
    return info.value


@pytest.mark.parametrize("kind", ["PNG", "JPEG", "WEBP", "GIF"])
def test_images_of_each_format_are_read(kind: str) -> None:
    items = read([{"type": "text", "text": "look"}, image_part(kind=kind)]).items
    assert len(items) == 1 and items[0].kind == "image" and items[0].value.size == (20, 10)


def test_detail_low_scales_a_large_image_down() -> None:
    [item] = read([image_part((2048, 1024), detail="low")]).items
    assert max(item.value.size) == 512
    [item] = read([image_part((2048, 1024), detail="high")]).items
    assert item.value.size == (2048, 1024)


def test_equal_images_have_equal_digests_and_others_do_not() -> None:
    first, second = read([image_part(), image_part()]).items
    [third] = read([image_part((21, 10))]).items
    assert first.digest == second.digest != third.digest


def test_audio_is_resampled_to_the_models_rate() -> None:
    [item] = read([audio_part(wav(0.5, rate=8000))]).items
    assert isinstance(item, MediaItem) and item.value.shape == (8000,)


def test_a_pdf_gives_its_text_to_every_model_and_its_pages_to_vision_models() -> None:
    document = pdf(["First page here", "Second page here"])
    pieces = read([file_part(document)], TEXT_ONLY).parts[(1, 0)]
    assert pieces == ["[doc.pdf]\nFirst page here\n\nSecond page here"]
    pieces = read([file_part(document)]).parts[(1, 0)]
    assert len(pieces) == 3 and all(isinstance(p, MediaItem) and p.kind == "image" for p in pieces[1:])


def test_a_text_file_is_inlined() -> None:
    assert read([file_part(b"a,b\n1,2\n", "t.csv")], TEXT_ONLY).parts[(1, 0)] == ["[t.csv]\na,b\n1,2\n"]


@pytest.mark.parametrize(
    ("parts", "limits", "param", "why"),
    [
        ([image_part(), image_part()], {"max_images": 1}, "messages[1].content[1]", "max_images"),
        ([image_part((100, 100))], {"max_image_pixels": 9999}, "messages[1].content[0]", "max_image_pixels"),
        (
            [audio_part(wav(0.1)), audio_part(wav(0.1))],
            {"max_audios": 1},
            "messages[1].content[1]",
            "max_audios",
        ),
        ([audio_part(wav(3.0))], {"max_audio_seconds": 2.0}, "messages[1].content[0]", "max_audio_seconds"),
        ([file_part(b"a"), file_part(b"b")], {"max_files": 1}, "messages[1].content[1]", "max_files"),
        ([file_part(pdf(["a", "b", "c"]))], {"max_pdf_pages": 2}, "messages[1].content[0]", "max_pdf_pages"),
        ([file_part(pdf(["a", "b"]))], {"max_images": 1}, "messages[1].content[0]", "max_images"),
    ],
)
def test_each_limit_is_a_400_naming_the_part(
    parts: list[dict[str, Any]], limits: dict[str, Any], param: str, why: str
) -> None:
    error = refusal(parts, **limits)
    assert error.param == param and why in error.message


@pytest.mark.parametrize(
    "part",
    [
        {
            "type": "image_url",
            "image_url": {"url": "data:image/png;base64,iVBORw0KGgoAAAAN"},
        },  # truncated PNG
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}},  # not base64
        {"type": "image_url", "image_url": {"url": "data:text/plain;base64,aGk="}},
        {"type": "image_url", "image_url": {"url": "data:image/png,rawtext"}},
        image_part(kind="BMP"),
        audio_part(base64.b64encode(b"RIFF\0\0\0\0WAVEjunk").decode()),
        audio_part(wav(0.1), "mp3"),  # says mp3, holds wav
        audio_part(""),
        file_part(b"%PDF-1.4 broken"),
        file_part(b"\xff\xfe\x00binary"),
    ],
)
def test_corrupt_media_is_a_400_naming_the_part(part: dict[str, Any]) -> None:
    error = refusal([{"type": "text", "text": "x"}, part])
    assert error.param == "messages[1].content[1]" and error.code == "invalid_media"


def test_file_id_is_refused_naming_it() -> None:
    with pytest.raises(UnsupportedParameter) as info:
        read([{"type": "file", "file": {"file_id": "file-abc"}}])
    assert info.value.param == "messages[1].content[0].file.file_id"


@pytest.mark.parametrize("part", [image_part(), audio_part(wav(0.1))])
def test_a_text_only_model_refuses_images_and_audio(part: dict[str, Any]) -> None:
    with pytest.raises(UnsupportedParameter) as info:
        read([part], TEXT_ONLY)
    assert info.value.param == "messages[1].content[0]"


def test_a_refused_url_is_a_400_naming_the_part() -> None:
    part = {"type": "image_url", "image_url": {"url": "http://169.254.169.254/latest/meta-data/"}}
    error = refusal([part])
    assert error.param == "messages[1].content[0]" and error.code == "invalid_image_url"
