"""GET /: the chat page, and /ui/*: its assets, all shipped in the package (no CDN)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

PAGE = Path(__file__).resolve().parents[1] / "static" / "chat"

router = APIRouter()
assets = StaticFiles(directory=PAGE)


@router.get("/", include_in_schema=False)
async def chat_page() -> FileResponse:
    return FileResponse(PAGE / "index.html", headers={"Cache-Control": "no-cache"})
