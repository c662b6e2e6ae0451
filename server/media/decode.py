"""Bytes in, pixels / samples / text out: each decoder refuses what it cannot read with a reason.

Pillow reads images (png, jpeg, webp, gif: the first frame), soundfile (libsndfile) reads wav and
mp3, soxr resamples, pypdfium2 (PDFium, the engine of Chromium's viewer) gives a PDF's text and
renders its pages.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
import pypdfium2
import soundfile
import soxr
from PIL import Image

IMAGE_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "GIF"})
LOW_DETAIL_SIDE = 512  # `detail: low`: the longest side at most this (as OpenAI's low-resolution mode)
PDF_PAGE_DPI = 96  # page images of a PDF given to a vision model


class DecodeError(Exception):
    """Unreadable media (the message completes "this part ...")."""


def image(data: bytes, max_pixels: int, detail: str = "auto") -> Image.Image:
    """An RGB image; `detail` "low" scales it down to LOW_DETAIL_SIDE."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data))
            if opened.format not in IMAGE_FORMATS:
                raise DecodeError(
                    f"is a {opened.format or 'unknown'} image; png, jpeg, webp and gif are read"
                )
            width, height = opened.size
            if width * height > max_pixels:
                raise DecodeError(
                    f"is {width}x{height} pixels, more than server.limits.max_image_pixels ({max_pixels})"
                )
            opened.seek(0)  # a GIF's first frame
            picture = opened.convert("RGB")
    except DecodeError:
        raise
    except (
        OSError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as exc:
        raise DecodeError(f"is not a readable image ({exc})") from exc
    if detail == "low" and max(picture.size) > LOW_DETAIL_SIDE:
        picture.thumbnail((LOW_DETAIL_SIDE, LOW_DETAIL_SIDE))
    return picture


def audio(data: bytes, audio_format: str, rate: int, max_seconds: float) -> np.ndarray:
    """Mono float32 samples at `rate` Hz."""
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as f:
            kind = f.format.lower()
            if kind != audio_format:
                raise DecodeError(f"holds {kind} audio, but its format says {audio_format}")
            seconds = f.frames / f.samplerate if f.samplerate else 0.0
            if seconds > max_seconds:
                raise DecodeError(
                    f"is {seconds:.1f} s long, more than server.limits.max_audio_seconds ({max_seconds:g})"
                )
            samples = f.read(dtype="float32", always_2d=True)
            source_rate = f.samplerate
    except DecodeError:
        raise
    except (soundfile.LibsndfileError, RuntimeError, ValueError, TypeError) as exc:
        raise DecodeError(f"is not readable {audio_format} audio ({exc})") from exc
    if samples.size == 0:
        raise DecodeError("holds no audio samples")
    mono = samples.mean(axis=1)
    if source_rate != rate:
        mono = soxr.resample(mono, source_rate, rate)
    return np.ascontiguousarray(mono, dtype=np.float32)


@dataclass(slots=True, frozen=True)
class Document:
    text: str
    pages: tuple[Image.Image, ...]  # rendered pages (when asked for)


def pdf(data: bytes, max_pages: int, render: bool, max_pixels: int = 40_000_000) -> Document:
    """A PDF's text, page by page; with `render`, an image of each page (scaled down to
    `max_pixels` where a page is that large)."""
    try:
        document = pypdfium2.PdfDocument(data)
    except pypdfium2.PdfiumError as exc:
        raise DecodeError(f"is not a readable PDF ({exc})") from exc
    try:
        count = len(document)
        if count > max_pages:
            raise DecodeError(f"has {count} pages, more than server.limits.max_pdf_pages ({max_pages})")
        texts: list[str] = []
        pages: list[Image.Image] = []
        for index in range(count):
            page = document[index]
            text_page = page.get_textpage()
            texts.append(text_page.get_text_range().replace("\r\n", "\n").strip())
            text_page.close()
            if render:
                width, height = page.get_size()  # in points (1/72 inch)
                scale = min(PDF_PAGE_DPI / 72, (max_pixels / max(1.0, width * height)) ** 0.5)
                pages.append(page.render(scale=scale).to_pil().convert("RGB"))
            page.close()
    except pypdfium2.PdfiumError as exc:
        raise DecodeError(f"is not a readable PDF ({exc})") from exc
    finally:
        document.close()
    return Document("\n\n".join(t for t in texts if t), tuple(pages))


def text_file(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError("is neither a PDF nor UTF-8 text") from exc
