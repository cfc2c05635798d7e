"""The web UI's "Several people" tab on the demo model: handlers without a browser (each person analysed once,
the group photo's faces numbered left to right, people handed to generate_group in slot order, one-line errors),
then one run in headless chromium."""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
from _demo import CHROMIUM, CHROMIUM_ARGS, FACES, NO_FACE, layout_defects
from PIL import Image

from instantid.api.settings import GenerationSettings
from instantid.errors import InvalidInputError
from instantid.io.outputs import PARAMETERS_KEY, read_metadata
from instantid.webui import UIContext
from instantid.webui.group_tab import GroupTab

GROUP = FACES / "group_two_people.jpg"
FAST = {"steps": 2, "seed": "5"}
WAIT = 90_000  # ms: analysis and a 2-step demo generation on a shared CPU



def make_tab(model: Any, out: Path) -> GroupTab:
    ctx = UIContext(get_model=lambda: model, out_dir=out)  # jobs run on the model here (the standalone UI)
    return GroupTab(ctx)


def test_people_are_analysed_once_and_generated_in_slot_order_at_the_group_faces(
    model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tab = make_tab(model, tmp_path)
    seen: list[str] = []
    analyze_first = model.analyzer.analyze
    monkeypatch.setattr(model.analyzer, "analyze",
                        lambda image, name=None: seen.append(name) or analyze_first(image, name))
    a, items, text = tab.set_person([str(FACES / "obama_1.jpg"), str(FACES / "obama_2.jpg")], 0)
    b, _, text_b = tab.set_person([str(FACES / "lecun_1.jpg")], 1)
    assert [caption for _, caption in items] == ["1. obama_1.jpg", "2. obama_2.jpg"]
    assert text.startswith("Person 0: **2 reference photos**") and text_b.startswith("Person 1: **1 reference")
    assert sorted(seen) == ["lecun_1.jpg", "obama_1.jpg", "obama_2.jpg"]
    picture, drawn, group_text = tab.set_group(str(GROUP))
    assert drawn is not None and group_text.startswith("**2 faces** in group_two_people.jpg, numbered left to right")
    assert "face 0 → person 0, face 1 → person 1." in group_text  # one numbering: person0, person1 in the API
    lefts = [face.bbox[0] for face in tab.faces(picture)]
    assert lefts == sorted(lefts)  # face i is the i-th from the left: the face person i takes
    calls: list[tuple[list[Any], Any]] = []
    generate_group = model.generate_group
    monkeypatch.setattr(model, "generate_group", lambda people, settings, **kw: calls.append((people, kw)) or
                        generate_group(people, settings, **kw))
    analysed: list[str] = []
    analyze = model.analyzer.analyze
    monkeypatch.setattr(model.analyzer, "analyze", lambda image, name=None: analysed.append(name) or
                        analyze(image, name))
    gallery, info = tab.generate([a, b, ()], picture, FAST)
    assert sorted(n for n in seen if n != GROUP.name) == ["lecun_1.jpg", "obama_1.jpg", "obama_2.jpg"], \
        "generation analysed a photo again"
    assert analysed == [], "generation analysed the group photo again"
    people, kw = calls[0]
    cached = [tab.ctx.identities.get(a), tab.ctx.identities.get(b)]  # the cached identities, in slot order
    assert len(people) == 2 and all(p is c for p, c in zip(people, cached, strict=True))
    faces, size = kw["pose_faces"]  # the faces found at upload, as group_poses places them
    assert kw.get("pose") is None and kw["pose_name"] == "group_two_people.jpg" and size == Image.open(GROUP).size
    assert [f.bbox for f in faces] == [f.bbox for f in model.group_poses(GROUP, 2, "g")[0]]
    saved = Path(gallery[0][0])
    assert saved.parent == tmp_path and saved.name.startswith("portrait_s5") and saved.name in info
    metadata = read_metadata(saved)
    assert metadata["task"] == "group" and metadata["pose_from"] == "group_two_people.jpg"
    assert [p["references"] for p in metadata["people"]] == [["obama_1.jpg", "obama_2.jpg"], ["lecun_1.jpg"]]
    # The top-level record counts everyone (issue 18 item 3), as the A1111 line does.
    assert metadata["references"] == ["obama_1.jpg", "obama_2.jpg", "lecun_1.jpg"]
    assert metadata["reference_faces"] == 3 and "Reference faces: 3," in Image.open(saved).text[PARAMETERS_KEY]
    # Without a group photo the people stand side by side.
    gallery, _ = tab.generate([b, a], None, {**FAST, "width": "64", "height": "64"})
    metadata = read_metadata(Path(gallery[0][0]))
    assert metadata["pose_from"] == "columns"
    assert [p["references"] for p in metadata["people"]] == [["lecun_1.jpg"], ["obama_1.jpg", "obama_2.jpg"]]


def test_controls_come_from_the_settings_without_face_detail(model: Any, tmp_path: Path) -> None:
    tab = make_tab(model, tmp_path)
    from instantid.api.settings import UNUSED_SETTINGS

    # face detail, the extra ControlNets and image-to-image are for one person: not offered here
    expected = set(GenerationSettings.model_fields) - {"face_index", "fusion"} - set(UNUSED_SETTINGS["group"])
    assert {"face_detail", "pose_strength", "denoising_strength"} <= set(UNUSED_SETTINGS["group"])
    hidden = {name for name, info in GenerationSettings.model_fields.items()
              if isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("ui") == "hidden"}
    assert set(tab.by_name) == expected - hidden
    with pytest.raises(InvalidInputError, match="^Steps"):
        tab.generate([("x",), ("y",)], None, {"steps": 0})


def test_group_errors_are_one_readable_line(model: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tab = make_tab(model, tmp_path)
    a, *_ = tab.set_person([str(FACES / "obama_1.jpg")], 0)
    b, *_ = tab.set_person([str(FACES / "lecun_1.jpg")], 1)
    one_face, *_ = tab.set_group(str(FACES / "obama_1.jpg"))
    generate = tab.ctx.guard(tab.generate)
    cases = [
        (([a], None), r"a picture of several people takes 2 to 4 people \(one slot per person\), got 1; for one "
                      "person, make a plain portrait"),
        (([a, (), b], None), "person 1 has no photo: fill the person slots in order"),
        (([a, b], one_face), "obama_1.jpg shows 1 face\\(s\\) but 2 people were given: use a group photo with a "
                             "face per person, or none"),
    ]
    for (people, group), message in cases:
        with caplog.at_level(logging.INFO, logger="instantid.webui"), pytest.raises(gr.Error) as raised:
            generate(people, group, FAST)
        assert raised.value.print_exception is False
        assert re.fullmatch(message, raised.value.message), raised.value.message
    set_person = tab.ctx.guard(tab.set_person)
    with pytest.raises(gr.Error) as raised:
        set_person([str(NO_FACE)], 1)
    assert raised.value.message == f"person 1: no face found in {NO_FACE.name}"
    with pytest.raises(gr.Error, match=f"no face found in {NO_FACE.name}"):
        tab.ctx.guard(tab.set_group)(str(NO_FACE))
    records = [r for r in caplog.records if r.name == "instantid.webui"]
    assert len(records) == 5 and all(r.exc_info is None and "\n" not in r.getMessage() for r in records)


# ---- the browser --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ui_url(tmp_path_factory: pytest.TempPathFactory, model: Any) -> Iterator[tuple[str, Path]]:
    from instantid.webui import create_ui

    out_dir = tmp_path_factory.mktemp("ui-group")
    ui = create_ui(model, out_dir=out_dir)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ui.launch(server_name="127.0.0.1", server_port=port, share=False, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/", out_dir
    ui.close()


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium "
                    "(apt-get install -y chromium; scripts/setup.sh does it)")
def test_browser_two_people_and_a_group_photo_give_a_picture(ui_url: tuple[str, Path]) -> None:
    from playwright.sync_api import sync_playwright

    url, out_dir = ui_url
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.locator("#who").wait_for(state="visible", timeout=WAIT)
        # The page's load event has filled the banner: the page is live (a tab clicked before that can be lost).
        page.locator("#notice").get_by_text("Demo mode").wait_for(timeout=WAIT)
        page.get_by_role("tab", name="Several people").click()
        page.locator("#who").wait_for(state="hidden", timeout=WAIT)  # each person has a slot here: no Who panel
        assert page.locator("#group-person-2").count() == 0  # two slots (person 0, person 1) until one is added
        assert layout_defects(page) == []  # each slot's drop zone: its text in the box, clear of the label
        page.locator("#group-add-person").click()
        page.locator("#group-person-2").wait_for(timeout=WAIT)
        for number, photo in ((0, "obama_1.jpg"), (1, "lecun_1.jpg")):
            page.locator(f"#group-person-{number} input[type=file]").set_input_files(str(FACES / photo))
            page.locator(f"#group-person-count-{number}").get_by_text("1 reference photo").wait_for(timeout=WAIT)
        assert layout_defects(page) == []  # each person's preview shows the whole photo, not a cut of it
        page.locator("#group-pose input[type=file]").set_input_files(str(GROUP))
        page.locator("#group-count").get_by_text("2 faces").wait_for(timeout=WAIT)
        page.set_viewport_size({"width": 390, "height": 844})  # a phone: the group photo's label clear of its buttons
        assert layout_defects(page) == []
        page.set_viewport_size({"width": 1400, "height": 1000})
        page.locator("#tab-group").get_by_text("Advanced").click()
        page.locator("#group-steps input[type=number]").fill("2")
        page.locator("#group-run").click()
        # The picture decoded in the page (not only an <img> placeholder; gradio loads it lazily, when in view).
        page.locator("#group-gallery img").first.wait_for(timeout=WAIT)
        page.locator("#group-gallery img").first.scroll_into_view_if_needed()
        page.wait_for_function("document.querySelector('#group-gallery img')?.naturalWidth > 0", timeout=WAIT)
        assert page.locator("#group-info").get_by_text("Saved as portrait_s").count() == 1
        page.screenshot(path="/tmp/instantid_webui_group.png", full_page=True)
        page.get_by_role("tab", name="Portrait").click()
        page.locator("#who").wait_for(state="visible", timeout=WAIT)
        browser.close()
    saved = sorted(out_dir.glob("portrait_s*.png"))
    assert saved and read_metadata(saved[0])["pose_from"] == "group_two_people.jpg"  # placed by the group photo
