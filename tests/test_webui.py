"""The web UI in real headless chromium (Debian's, driven by playwright) against the demo model."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from _demo import CHROMIUM, CHROMIUM_ARGS, FACES, demo_model

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium "
                       "(apt-get install -y chromium; scripts/setup.sh does it)"),
]
SCREENSHOT = "/tmp/instantid_webui.png"


@pytest.fixture(scope="module")
def ui_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from instantid.webui import create_ui

    ui = create_ui(demo_model(tmp_path_factory.getbasetemp() / "demo"), out_dir=tmp_path_factory.mktemp("ui"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ui.launch(server_name="127.0.0.1", server_port=port, share=False, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    ui.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def open_page(browser: object, url: str) -> object:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(url)
    page.wait_for_selector("#generate")
    return page


def test_upload_and_generate_shows_image(browser: object, ui_url: str) -> None:
    page = open_page(browser, ui_url)
    page.locator("#notice").get_by_text("images are noise").wait_for(timeout=20_000)  # demo banner
    page.locator("#faces input[type=file]").set_input_files(str(FACES / "obama_1.jpg"))
    page.get_by_label("Prompt").fill("a portrait in the snow")
    page.locator("#generate").click()
    image = page.locator("#gallery img").first
    image.wait_for(timeout=60_000)
    assert page.locator("#info").get_by_text("Seed ").count() == 1
    page.screenshot(path=SCREENSHOT, full_page=True)
    assert image.evaluate("img => img.naturalWidth") > 0
    page.close()


def test_no_face_shows_readable_error(browser: object, ui_url: str) -> None:
    page = open_page(browser, ui_url)
    page.locator("#faces input[type=file]").set_input_files(str(FACES / "edge_no_face_noise.png"))
    page.locator("#generate").click()
    page.get_by_text("no face found in edge_no_face_noise.png").first.wait_for(timeout=30_000)
    assert page.locator("#gallery img").count() == 0
    page.close()
