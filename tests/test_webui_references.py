"""The web UI's handlers on the demo model (no browser): photos analysed once, replace vs add, warnings,
one-line errors, the outputs folder, the submit hook."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
from _demo import FACES, NO_FACE

from instantid.api.settings import SCHEDULERS, make_settings
from instantid.errors import InvalidInputError
from instantid.io.outputs import read_metadata
from instantid.webui import UIContext, prepare_out_dir
from instantid.webui.portrait import PortraitTab
from instantid.webui.who import WhoPanel

FAST = {"steps": 2, "width": "64", "height": "64"}



def make_tab(model: Any, out: Path, submit: Any = None) -> PortraitTab:
    ctx = UIContext(get_model=lambda: model, out_dir=out, submit=submit)  # None: run on the model here
    return PortraitTab(ctx, WhoPanel(ctx))


def count_analyses(model: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the photos the face model is asked about, in order."""
    seen: list[str] = []
    original = model.analyzer.analyze

    def spy(image: Any, name: Any = None) -> Any:
        seen.append(name)
        return original(image, name)

    monkeypatch.setattr(model.analyzer, "analyze", spy)
    return seen


def test_photo_is_analysed_once_and_generation_reuses_the_identity(
    model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = count_analyses(model, monkeypatch)
    tab = make_tab(model, tmp_path)
    photos, items, count, warnings = tab.who.upload([str(FACES / "obama_1.jpg")], (), None, "", "auto")
    assert seen == ["obama_1.jpg"]
    assert [caption for _, caption in items] == ["1. obama_1.jpg"] and "1 reference photo" in count
    assert warnings == ""
    gallery, info = tab.generate(photos, None, FAST)
    gallery2, _ = tab.generate(photos, None, {**FAST, "seed": "7"})
    assert seen == ["obama_1.jpg"], "generation analysed the photo again"
    saved = Path(gallery2[0][0])
    assert saved.parent == tmp_path and saved.with_suffix(".json").is_file()
    metadata = read_metadata(saved)
    assert metadata["seed"] == 7 and metadata["references"] == ["obama_1.jpg"]
    assert Path(gallery[0][0]).name in info and "Seed" in info
    # A change of face choice is a different identity: analysed (once) again.
    tab.who.analyse(photos, None, "0", "auto")
    assert seen == ["obama_1.jpg", "obama_1.jpg"]


def test_preview_draws_the_detected_face(model: Any, tmp_path: Path) -> None:
    tab = make_tab(model, tmp_path)
    photos, items, _, _ = tab.who.upload([str(FACES / "obama_1.jpg")], (), None, "", "auto")
    drawn = items[0][0].convert("RGB")
    identity = tab.ctx.identities.get(photos)
    scale = drawn.width / (identity.pose_size[0])
    x1, y1, _, _ = (int(v * scale) for v in identity.references[0].face.bbox)
    # draw_faces draws the box in pure green; the photo itself has none there.
    greens = [drawn.getpixel((x, y1 + 1)) for x in range(x1 + 2, x1 + 12)]
    assert sum(g[1] > 200 and g[0] < 80 and g[2] < 80 for g in greens) >= 5, greens


def test_new_upload_replaces_and_add_keeps_with_a_warning(model: Any, tmp_path: Path) -> None:
    tab = make_tab(model, tmp_path)
    photos, *_ = tab.who.upload([str(FACES / "obama_1.jpg")], (), None, "", "auto")
    photos, items, count, _ = tab.who.upload([str(FACES / "lecun_1.jpg")], photos, None, "", "auto")
    assert [p.name for p in photos] == ["lecun_1.jpg"] and len(items) == 1 and "1 reference photo" in count
    photos, items, count, warnings = tab.who.upload([str(FACES / "obama_1.jpg")], photos, None, "", "auto", add=True)
    assert [p.name for p in photos] == ["lecun_1.jpg", "obama_1.jpg"] and len(items) == 2
    assert "2 reference photos" in count
    assert "different people" in warnings and "lecun_1.jpg" in warnings and "obama_1.jpg" in warnings
    # The same bytes again add nothing.
    again, *_ = tab.who.upload([str(FACES / "obama_1.jpg")], photos, None, "", "auto", add=True)
    assert again == photos


def test_robust_fusion_names_the_photo_it_left_out(model: Any, tmp_path: Path) -> None:
    tab = make_tab(model, tmp_path)
    files = [str(FACES / name) for name in ("obama_1.jpg", "obama_2.jpg", "edge_obama_small.jpg", "biden_1.jpg")]
    _, items, count, warnings = tab.who.upload(files, (), None, "", "robust")
    captions = dict((caption.split(". ", 1)[1].split(" ")[0], caption) for _, caption in items)
    assert "left out" in captions["biden_1.jpg"]
    assert all("left out" not in captions[n] for n in ("obama_1.jpg", "obama_2.jpg", "edge_obama_small.jpg"))
    assert "1 left out: biden_1.jpg" in count and "biden_1.jpg was left out" in warnings


def test_user_error_is_one_line_and_leaves_the_set(model: Any, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    tab = make_tab(model, tmp_path)
    photos, *_ = tab.who.upload([str(FACES / "obama_1.jpg")], (), None, "", "auto")
    upload = tab.ctx.guard(tab.who.upload)
    with caplog.at_level(logging.INFO, logger="instantid.webui"), pytest.raises(gr.Error) as raised:
        upload([str(NO_FACE)], photos, None, "", "auto")
    assert raised.value.message == f"no face found in {NO_FACE.name}"
    assert raised.value.print_exception is False  # gradio would print a traceback otherwise
    records = [r for r in caplog.records if r.name == "instantid.webui"]
    assert len(records) == 1 and records[0].exc_info is None
    assert records[0].getMessage() == f"web UI: no face found in {NO_FACE.name}"


def test_unexpected_error_is_logged_under_an_id_and_the_ui_goes_on(
    model: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[tuple[Any, Any]] = []

    def broken(job: Any, settings: Any, progress: Any) -> Any:
        calls.append((job.identity, settings))
        raise RuntimeError("CUDA out of memory")

    tab = make_tab(model, tmp_path, submit=broken)
    photos, *_ = tab.who.upload([str(FACES / "obama_1.jpg")], (), None, "", "auto")
    generate = tab.ctx.guard(tab.generate)
    with caplog.at_level(logging.WARNING, logger="instantid.webui"), pytest.raises(gr.Error) as shown:
        generate(photos, None, FAST)
    records = [r for r in caplog.records if r.name == "instantid.webui"]
    assert len(records) == 1 and records[0].exc_info is not None  # the traceback is in the log, under the id
    error_id = re.fullmatch(r"internal error (\w+) in web UI generate: RuntimeError: CUDA out of memory",
                            records[0].getMessage()).group(1)
    assert f"internal error {error_id}" in str(shown.value.message)  # the user sees the id, not the exception
    identity, settings = calls[0]  # the hook got the cached Identity and validated settings
    assert identity is tab.ctx.identities.get(photos) and settings.steps == 2 and settings.width == 64


def test_bad_setting_names_the_control(model: Any, tmp_path: Path) -> None:
    tab = make_tab(model, tmp_path)
    photos, *_ = tab.who.upload([str(FACES / "obama_1.jpg")], (), None, "", "auto")
    with pytest.raises(InvalidInputError, match="^give both Width and Height, or neither$"):
        tab.generate(photos, None, {"width": "64"})


def test_few_step_toggle_follows_the_loaded_preset_else_lcm_lora() -> None:
    from types import SimpleNamespace

    from instantid.speed.presets import get_preset

    lcm = get_preset("lcm-lora")
    ctx = UIContext(get_model=lambda: SimpleNamespace(preset=None, lora=None, demo=False), out_dir=Path("."),
                    submit=lambda *a: None)
    on = make_settings(dict(zip(ctx.few_step_fields(), ctx.few_step_values(True), strict=True)))
    off = make_settings(dict(zip(ctx.few_step_fields(), ctx.few_step_values(False), strict=True)))
    assert (on.scheduler, on.steps, on.guidance_scale) == ("lcm", lcm.steps, lcm.guidance_scale)
    assert SCHEDULERS[on.scheduler][0] == lcm.scheduler
    assert (off.scheduler, off.steps, off.guidance_scale) == (None, 30, 5.0)
    assert not ctx.few_step_at_start()
    # A model loaded with --preset: its own (preset) sampler stays, steps and guidance are the preset's.
    lightning = get_preset("lightning-4step")
    loaded = SimpleNamespace(preset=lightning, lora=None, demo=False, preset_defaults=lambda: {
        "steps": lightning.steps, "guidance_scale": lightning.guidance_scale})
    ctx.get_model = lambda: loaded
    assert ctx.few_step_values(True) == [None, lightning.steps, lightning.guidance_scale]
    assert ctx.few_step_at_start() and "lightning-4step" in ctx.notice()
    loaded.preset = None
    loaded.lora = "latent-consistency/lcm-lora-sdxl"
    assert ctx.few_step_at_start()


def test_outputs_folder_problems_are_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InvalidInputError, match=r"^--out .*file: .*file is a file, not a folder"):
        prepare_out_dir(blocker, label="--out")
    with pytest.raises(InvalidInputError, match=r"^--out .*file/sub: .*file is a file, not a folder"):
        prepare_out_dir(blocker / "sub", label="--out")
    assert prepare_out_dir(tmp_path / "a" / "b").is_dir()


def test_ui_command_checks_the_folder_before_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from instantid.cli import main

    def no_load(self: Any) -> Any:
        raise AssertionError("loaded the model before checking --out")

    monkeypatch.setattr("instantid.api.loader.load_model", no_load)
    (tmp_path / "file").write_text("x")
    assert main(["ui", "--demo", "--out", str(tmp_path / "file" / "sub")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --out {tmp_path / 'file' / 'sub'}: {tmp_path / 'file'} is a file, not a folder; "
                   "give another folder"]


def test_a_photo_with_several_faces_says_which_face_was_used(model: Any, tmp_path: Path) -> None:
    """The Who panel's count line names the face used and how many the photo holds; the warning says the largest
    was taken when no face was chosen, and the output records it (issue 18 item 4)."""
    tab = make_tab(model, tmp_path)
    group = str(FACES / "group_two_people.jpg")
    photos, _, count, warnings = tab.who.upload([group], (), None, "", "auto")
    assert "Used face 0 of 2 in group_two_people.jpg" in count
    assert "2 faces found, used face 0 (the largest)" in warnings
    _, _, count, warnings = tab.who.upload([group], (), None, "1", "auto")
    assert "Used face 1 of 2 in group_two_people.jpg" in count and warnings == ""
    gallery, _ = tab.generate(photos, None, FAST)
    metadata = read_metadata(Path(gallery[0][0]))
    assert any("2 faces found, used face 0" in w for w in metadata["warnings"])
    assert metadata["reference_details"][0]["faces_found"] == 2
