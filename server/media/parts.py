"""A request's image, audio and file parts, read into what a processor takes, each checked
against the limits; every refusal is a 400 naming `messages[i].content[j]`."""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from PIL import Image

from server.config import RequestLimits
from server.media import decode
from server.media.fetch import FetchRefused, SafeFetcher
from server.protocol.errors import InvalidRequest, UnsupportedParameter
from server.protocol.request import AudioPart, FilePart, ImagePart, Message, UserMessage

Modality = Literal["text", "image", "audio"]


@dataclass(slots=True, frozen=True)
class MediaItem:
    kind: Literal["image", "audio"]
    value: Image.Image | np.ndarray
    digest: bytes  # of what the model sees: equal items give equal prompts (the prefix cache)


# What one content part became, in order: text, or an image / audio item.
Piece = str | MediaItem


@dataclass(slots=True)
class RequestMedia:
    """For each user message's content part that is not plain text: what it became."""

    parts: dict[tuple[int, int], list[Piece]] = field(default_factory=dict)

    @property
    def items(self) -> list[MediaItem]:
        return [p for key in sorted(self.parts) for p in self.parts[key] if isinstance(p, MediaItem)]


@dataclass(slots=True, frozen=True)
class MediaTarget:
    """What the served model takes."""

    model: str
    modalities: frozenset[Modality]
    sampling_rate: int = 16000  # its audio encoder's


class _Counts:
    def __init__(self, limits: RequestLimits) -> None:
        self.limits = limits
        self.images = self.audios = self.files = 0

    def add(self, kind: str, where: str, amount: int = 1) -> None:
        limit = {
            "image": self.limits.max_images,
            "audio": self.limits.max_audios,
            "file": self.limits.max_files,
        }
        total = getattr(self, kind + "s") + amount
        if total > limit[kind]:
            raise InvalidRequest(
                f"'{where}': more than {limit[kind]} {kind}s in one request (server.limits.max_{kind}s).",
                param=where,
                code="too_many_media",
            )
        setattr(self, kind + "s", total)


def read_media(
    messages: list[Message], target: MediaTarget, limits: RequestLimits, fetcher: SafeFetcher
) -> RequestMedia:
    """Blocking (fetches and decodes): call it off the event loop."""
    out = RequestMedia()
    counts = _Counts(limits)
    for index, message in enumerate(messages):
        if not isinstance(message, UserMessage) or isinstance(message.content, str):
            continue
        for part_index, part in enumerate(message.content):
            where = f"messages[{index}].content[{part_index}]"
            if isinstance(part, ImagePart):
                out.parts[(index, part_index)] = [_image(part, where, target, limits, fetcher, counts)]
            elif isinstance(part, AudioPart):
                out.parts[(index, part_index)] = [_audio(part, where, target, limits, counts)]
            elif isinstance(part, FilePart):
                out.parts[(index, part_index)] = _file(part, where, target, limits, counts)
    return out


def _refuse_modality(kind: str, part_type: str, where: str, target: MediaTarget) -> None:
    if kind not in target.modalities:
        takes = " and ".join(sorted(target.modalities))
        raise UnsupportedParameter(
            where, f"is an '{part_type}' content part; model '{target.model}' takes {takes} input only"
        )


def _invalid(where: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"'{where}' {why}.", param=where, code="invalid_media")


def _image(
    part: ImagePart,
    where: str,
    target: MediaTarget,
    limits: RequestLimits,
    fetcher: SafeFetcher,
    counts: _Counts,
) -> MediaItem:
    _refuse_modality("image", "image_url", where, target)
    counts.add("image", where)
    url = part.image_url.url
    if url.startswith("data:"):
        media_type, data = _data_uri(url, where)
        if not media_type.startswith("image/"):
            raise _invalid(where, f"is a data URI of type {media_type!r}, not an image")
    else:
        try:
            data = fetcher.fetch(url).body
        except FetchRefused as exc:
            raise InvalidRequest(
                f"'{where}': the image URL {exc}.", param=where, code="invalid_image_url"
            ) from exc
    detail = part.image_url.detail
    try:
        picture = decode.image(data, limits.max_image_pixels, detail)
    except decode.DecodeError as exc:
        raise _invalid(where, str(exc)) from exc
    return MediaItem("image", picture, _digest("image", picture.tobytes(), picture.size))


def _audio(
    part: AudioPart, where: str, target: MediaTarget, limits: RequestLimits, counts: _Counts
) -> MediaItem:
    _refuse_modality("audio", "input_audio", where, target)
    counts.add("audio", where)
    data = _base64(part.input_audio.data, where)
    try:
        samples = decode.audio(data, part.input_audio.format, target.sampling_rate, limits.max_audio_seconds)
    except decode.DecodeError as exc:
        raise _invalid(where, str(exc)) from exc
    return MediaItem("audio", samples, _digest("audio", samples.tobytes(), (target.sampling_rate,)))


def _file(
    part: FilePart, where: str, target: MediaTarget, limits: RequestLimits, counts: _Counts
) -> list[Piece]:
    if part.file.file_id is not None:
        raise UnsupportedParameter(
            f"{where}.file.file_id",
            "is not supported: this server has no Files API; send the file as file_data",
        )
    if not part.file.file_data:
        raise _invalid(f"{where}.file", "has neither file_data nor file_id")
    counts.add("file", where)
    raw = part.file.file_data
    data = _data_uri(raw, where)[1] if raw.startswith("data:") else _base64(raw, where)
    name = part.file.filename or "file"
    try:
        if data.startswith(b"%PDF-"):
            render = "image" in target.modalities
            document = decode.pdf(data, limits.max_pdf_pages, render, limits.max_image_pixels)
            text, pages = document.text, document.pages
        else:
            text, pages = decode.text_file(data), ()
    except decode.DecodeError as exc:
        raise _invalid(where, str(exc)) from exc
    pieces: list[Piece] = [f"[{name}]\n{text}" if text else f"[{name}]"]
    if pages:
        counts.add("image", where, len(pages))
        pieces.extend(MediaItem("image", page, _digest("image", page.tobytes(), page.size)) for page in pages)
    return pieces


def _data_uri(url: str, where: str) -> tuple[str, bytes]:
    header, comma, payload = url.partition(",")
    if not comma or not header.endswith(";base64"):
        raise _invalid(where, "is a data URI that is not base64 (data:<type>;base64,<data>)")
    return header[len("data:") : -len(";base64")].lower(), _base64(payload, where)


def _base64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _invalid(where, "holds invalid base64 data") from exc


def _digest(kind: str, content: bytes, shape: tuple[int, ...]) -> bytes:
    return hashlib.sha256(f"{kind}|{shape}|".encode() + content).digest()
