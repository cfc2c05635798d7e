"""The web UI's "Face detail" tab on the demo model: handlers without a browser (the standalone UI runs the pass
of ``instantid detail`` on the model; one-line errors naming the control), then one run in headless chromium on
the UI mounted by ``instantid serve``, where the click becomes a detail job of the server's queue."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pytest
from _demo import CHROMIUM, CHROMIUM_ARGS, FACE, FACES, NO_FACE, layout_defects
from _service import serving, until
from PIL import Image

from instantid.api.settings import GenerationSettings
from instantid.errors import InvalidInputError, NoFaceError
from instantid.io.outputs import read_metadata
from instantid.webui import UIContext
from instantid.webui.detail_tab import DetailTab
from instantid.webui.who import WhoPanel

OTHER = FACES / "obama_1.jpg"
FAST = {"steps": 2, "seed": "3", "resolution": "64"}
WAIT = 90_000  # ms: analysis and a 2-step demo pass on a shared CPU



def make_tab(model: Any, out: Path) -> DetailTab:
    ctx = UIContext(get_model=lambda: model, out_dir=out)  # the standalone UI: jobs run on the model here
    return DetailTab(ctx, WhoPanel(ctx))


def test_the_picture_faces_are_redrawn_as_the_person_into_the_folder(model: Any, tmp_path: Path) -> None:
    from instantid.api.face_detail import FaceDetailOptions, refine_faces
    from instantid.faces import load_image

    tab = make_tab(model, tmp_path)
    photos, *_ = tab.who.upload([str(FACE)], (), None, "", "auto")
    picture, drawn, text = tab.set_picture(str(OTHER))
    assert drawn is not None and text.startswith(f"**1 face** in {OTHER.name}, numbered largest first")
    gallery, info = tab.detail(photos, None, picture, {**FAST, "strength": 0.5, "margin": 0.3})
    saved = Path(gallery[0][0])
    assert saved.parent == tmp_path and saved.name == "detail_obama-1_s3.png" and "Seed 3" in info
    metadata = read_metadata(saved)
    assert metadata["task"] == "face_detail" and metadata["source"] == OTHER.name
    assert metadata["references"] == [FACE.name] and metadata["face_detail"]["margin"] == 0.3
    original = load_image(OTHER.read_bytes(), OTHER.name)
    with Image.open(saved) as png:
        made = np.asarray(png.convert("RGB"))
    identity = tab.ctx.identities.get(photos)
    refined, _ = refine_faces(model, identity, [original], GenerationSettings(steps=2, seed=3), [3],
                              FaceDetailOptions(strength=0.5, margin=0.3, resolution=64))
    assert np.array_equal(made, np.asarray(refined[0]))  # the pass `instantid detail` runs, same options
    assert not np.array_equal(made, np.asarray(original))


def test_controls_come_from_the_detail_options_and_the_settings_the_pass_uses(model: Any, tmp_path: Path) -> None:
    from instantid.apps.detail import DetailOptions
    from instantid.apps.tasks import UNUSED_SETTINGS

    tab = make_tab(model, tmp_path)
    hidden = {name for name, info in GenerationSettings.model_fields.items()
              if isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("ui") == "hidden"}
    settings = set(GenerationSettings.model_fields) - {"face_index", "fusion", *UNUSED_SETTINGS["detail"], *hidden}
    assert {c.name for c in tab.options} == set(DetailOptions.model_fields)
    assert {c.name for c in tab.settings} == settings


def test_detail_errors_are_one_readable_line(model: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tab = make_tab(model, tmp_path)
    photos, *_ = tab.who.upload([str(FACE)], (), None, "", "auto")
    picture, *_ = tab.set_picture(str(OTHER))
    detail = tab.ctx.guard(tab.detail)
    cases = [
        ((photos, None, None, FAST), "upload the picture whose faces are redrawn"),
        ((photos, None, picture, {**FAST, "strength": 0.0}), "Strength must be between 0.05 and 1, got 0.0"),
        ((photos, None, picture, {**FAST, "steps": 0}), "Steps must be between 1 and 200, got 0"),
    ]
    with caplog.at_level(logging.INFO, logger="instantid.webui"):
        for arguments, message in cases:
            with pytest.raises(gr.Error) as raised:
                detail(*arguments)
            assert raised.value.message == message and raised.value.print_exception is False
        with pytest.raises(gr.Error) as raised:
            tab.ctx.guard(tab.set_picture)(str(NO_FACE))
        assert raised.value.message == f"no face found in {NO_FACE.name}"
    records = [r for r in caplog.records if r.name == "instantid.webui"]
    assert len(records) == 4 and all(r.exc_info is None and "\n" not in r.getMessage() for r in records)
    assert not list(tmp_path.iterdir())  # nothing written by a refused run
    with pytest.raises(NoFaceError):
        tab.set_picture(str(NO_FACE))
    with pytest.raises(InvalidInputError, match="^upload at least one face photo"):
        tab.detail((), None, picture, FAST)


# ---- the browser, on the UI that `instantid serve` mounts ------------------------------------------------
@pytest.fixture(scope="module")
def served_ui(model: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str]]:
    from instantid.service.server import ServerSettings, create_app

    app = create_app(ServerSettings(out_dir=tmp_path_factory.mktemp("jobs")), model=model)
    with serving(app) as http:
        yield app, f"{http.base_url}/ui/"


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium "
                    "(apt-get install -y chromium; scripts/setup.sh does it)")
def test_browser_face_detail_on_serve_becomes_a_job(served_ui: tuple[Any, str]) -> None:
    from playwright.sync_api import sync_playwright

    app, url = served_ui
    store = app.state.service.store
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.locator("#faces input[type=file]").set_input_files(str(FACE))
        page.locator("#reference-count").get_by_text("1 reference photo").wait_for(timeout=WAIT)
        page.get_by_role("tab", name="Face detail").click()
        page.locator("#detail-picture input[type=file]").set_input_files(str(OTHER))
        page.locator("#detail-count").get_by_text("1 face").wait_for(timeout=WAIT)
        assert layout_defects(page) == []  # the UI's CSS reaches the mounted page too
        page.locator("#tab-detail").get_by_text("Advanced").click()
        page.locator("#detail-steps input[type=number]").fill("2")
        page.locator("#detail-resolution textarea, #detail-resolution input").first.fill("64")
        page.locator("#detail-run").click()
        page.locator("#detail-gallery img").first.wait_for(timeout=WAIT)
        assert page.locator("#detail-info").get_by_text("Saved as detail_obama-1_s").count() == 1
        browser.close()
    jobs = until(lambda: store.list(owner="ui")[0], 10, "the UI's job")
    assert [(r.request["task"], r.state) for r in jobs] == [("detail", "done")]
    assert read_metadata(app.state.service.files.image_path(jobs[0].id, 0))["source"] == OTHER.name
