"""The chat page and /docs in headless Chromium against a live server (tiny models): a message is
answered as a stream, a stream is stopped, another model is picked, a stored completion is opened
and deleted, and /docs renders offline. Screenshots go to test-artifacts/browser/."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import REPO, serving

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = REPO / "test-artifacts" / "browser"

if CHROMIUM is None and not os.environ.get("CI"):
    pytest.skip(
        "headless Chromium is not installed (Debian: apt-get install chromium)", allow_module_level=True
    )

from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402


@pytest.fixture(scope="module")
def base_url(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("browser")
    config = folder / "models.yaml"
    entries = "".join(
        f"  - id: {name}\n    source: {{path: {tiny_model_dir}}}\n    dtype: float32\n    device: cpu\n"
        for name in ("tiny", "tiny-b")
    )
    config.write_text(
        f"models:\n{entries}server:\n  store_url: sqlite:///{folder / 'c.sqlite3'}\n", encoding="utf-8"
    )
    with serving(config, folder / "server.log") as (base, _):
        yield base


@pytest.fixture
def page(base_url: str) -> Iterator[Page]:
    assert CHROMIUM is not None, "CI must have headless Chromium (see .ci/run)"
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(base_url + "/")
        expect(page.locator("#model option")).to_have_count(2)
        yield page
        browser.close()


def ask(page: Page, text: str, max_tokens: int = 40) -> None:
    page.fill("#max-tokens", str(max_tokens))
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def test_a_message_is_answered_as_a_stream_with_its_usage(page: Page) -> None:
    expect(page.locator("#model-state")).to_have_text("ready")
    # Count how often the answer's text changes before it is done: a stream, not one block.
    page.evaluate(
        """() => { window.updates = 0; new MutationObserver((records) => {
             for (const r of records) if (r.target.closest && r.target.closest('.content')) window.updates++;
           }).observe(document.getElementById('messages'), {subtree: true, childList: true}); }"""
    )
    ask(page, "Write a short poem about the sea.", max_tokens=60)
    answer = page.locator(".message.assistant").last
    expect(answer).to_have_attribute("data-done", "length", timeout=60_000)
    assert answer.locator(".content").inner_text().strip()
    assert page.evaluate("window.updates") > 5
    expect(answer.locator(".stats")).to_contain_text("completion tokens")
    expect(answer.locator(".stats")).to_contain_text("tokens/s")
    page.screenshot(path=SHOTS / "chat-answered.png")


def test_a_stream_is_stopped(page: Page, base_url: str) -> None:
    ask(page, "Tell me everything you know.", max_tokens=450)
    answer = page.locator(".message.assistant").last
    expect(answer.locator(".content")).not_to_be_empty(timeout=60_000)
    page.click("#stop")
    expect(answer).to_have_attribute("data-done", "stopped")
    expect(page.locator("#send")).to_be_enabled()
    page.screenshot(path=SHOTS / "chat-stopped.png")


def test_another_model_is_picked_and_loads_on_demand(page: Page, base_url: str) -> None:
    page.select_option("#model", "tiny-b")
    ask(page, "Hello there")
    answer = page.locator(".message.assistant").last
    expect(answer).to_have_attribute("data-done", "length", timeout=120_000)
    model = httpx.get(f"{base_url}/v1/models/tiny-b").json()
    assert model["state"] == "ready"
    expect(page.locator("#model-state")).to_have_text("ready", timeout=15_000)
    page.screenshot(path=SHOTS / "chat-model-picked.png")


def test_a_stored_completion_is_opened_and_deleted(page: Page, base_url: str) -> None:
    page.fill("#metadata", "source=browser-test")
    ask(page, "Remember this one.")
    expect(page.locator(".message.assistant").last).to_have_attribute("data-done", "length", timeout=60_000)
    page.click("#tab-stored")
    page.fill("#filter-metadata", "source=browser-test")
    page.click("#stored-filter button")
    items = page.locator("#stored-list button.open")
    expect(items).to_have_count(1)
    completion_id = items.first.get_attribute("data-id")
    items.first.click()
    detail = page.locator("#stored-detail")
    expect(detail.locator("h3")).to_have_text(str(completion_id))
    expect(detail).to_contain_text("user: Remember this one.")
    page.screenshot(path=SHOTS / "stored-completion.png")
    detail.locator("button.delete").click()
    expect(page.locator("#stored-list button.open")).to_have_count(0)
    assert httpx.get(f"{base_url}/v1/chat/completions/{completion_id}").status_code == 404


def test_tool_calls_show_as_cards(page: Page) -> None:
    city = {"enum": ["Paris", "Oslo"]}
    parameters = {
        "type": "object",
        "properties": {"city": city},
        "required": ["city"],
        "additionalProperties": False,
    }
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": parameters}}
    page.fill("#tools", json.dumps([tool]))
    page.select_option("#tool-choice", "required")  # the grammar makes even a random model call it
    page.uncheck("#parallel")  # (and only once: a random model would go on calling)
    ask(page, "What is the weather in Paris?", max_tokens=60)
    answer = page.locator(".message.assistant").last
    expect(answer).to_have_attribute("data-done", "tool_calls", timeout=60_000)
    card = answer.locator(".tool-call")
    expect(card).to_have_count(1)
    expect(card.locator("strong")).to_contain_text("get_weather")
    expect(card.locator("pre")).to_contain_text('"city"')
    page.screenshot(path=SHOTS / "chat-tool-call.png")


def test_docs_render_offline(page: Page, base_url: str) -> None:
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.goto(base_url + "/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("openweights-server", timeout=30_000)
    expect(page.locator(".opblock-summary-path").first).to_be_visible()
    assert requested and all(url.startswith(base_url) for url in requested), requested
    page.screenshot(path=SHOTS / "docs.png", full_page=False)
