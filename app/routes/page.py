"""GET /: a page to try the service (drop or record a clip, see what it found and where). Plain HTML and JS that
call the public API from the browser; no build step. Off with COVERID_DEMO_PAGE=false."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

PAGE = Path(__file__).resolve().parent.parent / "static" / "index.html"

router = APIRouter()


@lru_cache(maxsize=1)
def _page() -> str:
    return PAGE.read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def try_it() -> HTMLResponse:
    return HTMLResponse(_page())
