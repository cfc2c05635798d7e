"""The web UI's face-swap tab, pose layouts and identity mixing on the demo model (handlers, no browser)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _demo import FACES, NO_FACE
from PIL import Image

from instantid.api.settings import GenerationSettings
from instantid.errors import InvalidInputError, NoFaceError
from instantid.io.outputs import read_metadata
from instantid.webui import UIContext
from instantid.webui.portrait import PortraitTab
from instantid.webui.swap_tab import SwapTab
from instantid.webui.who import WhoPanel

GROUP = FACES / "group_two_people.jpg"
FAST = {"steps": 2}



def panels(model: Any, out: Path) -> tuple[WhoPanel, PortraitTab, SwapTab]:
    ctx = UIContext(get_model=lambda: model, out_dir=out)  # jobs run on the model here (the standalone UI)
    who = WhoPanel(ctx)
    return who, PortraitTab(ctx, who), SwapTab(ctx, who)


def test_scene_faces_are_numbered_once_and_the_chosen_one_is_swapped(
    model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    who, _, swap = panels(model, tmp_path)
    photos, *_ = who.upload([str(FACES / "obama_1.jpg")], (), None, "", "auto")
    calls: list[str] = []
    original = model.analyzer.analyze
    monkeypatch.setattr(model.analyzer, "analyze", lambda image, name=None: calls.append(name) or original(image, name))
    scene, drawn, text = swap.set_scene(str(GROUP))
    assert text.startswith("**2 faces** in group_two_people.jpg") and drawn is not None
    gallery, info = swap.swap(photos, None, scene, {**FAST, "target_index": 1, "seed": "3"})
    assert calls == ["group_two_people.jpg"], "the picture was analysed again for the swap"
    saved = Path(gallery[0][0])
    assert saved.parent == tmp_path and saved.name == "swap_group-two-people_s3.png"
    with Image.open(saved) as out, Image.open(GROUP) as original_scene:
        assert out.size == original_scene.size  # the picture's own size, not a model size
    metadata = read_metadata(saved)
    target = swap.faces(scene)[1]
    assert metadata["task"] == "swap" and metadata["references"] == ["obama_1.jpg"]
    assert metadata["swap"]["target_index"] == 1
    assert metadata["swap"]["target_face"]["bbox"] == [float(v) for v in target.bbox]
    assert "Seed 3" in info


def test_swap_refuses_a_missing_target_and_a_faceless_picture(model: Any, tmp_path: Path) -> None:
    who, _, swap = panels(model, tmp_path)
    photos, *_ = who.upload([str(FACES / "obama_1.jpg")], (), None, "", "auto")
    scene, _, _ = swap.set_scene(str(GROUP))
    with pytest.raises(InvalidInputError, match=r"^group_two_people.jpg has 2 face\(s\): choose a Target index "
                                                r"from 0 to 1$"):
        swap.swap(photos, None, scene, {**FAST, "target_index": 2})
    with pytest.raises(InvalidInputError, match="^upload the picture"):
        swap.swap(photos, None, None, FAST)
    with pytest.raises(NoFaceError, match=NO_FACE.name):
        swap.set_scene(str(NO_FACE))
    with pytest.raises(InvalidInputError, match="^Strength"):
        swap.swap(photos, None, scene, {**FAST, "strength": 0.0})


def test_bundled_layout_poses_the_portrait(model: Any, tmp_path: Path) -> None:
    who, portrait, _ = panels(model, tmp_path)
    photos, items, _, _ = who.upload([str(FACES / "obama_1.jpg")], (), None, "", "auto", "frontal")
    assert [caption for _, caption in items] == ["1. obama_1.jpg", "pose: layout frontal"]
    gallery, _ = portrait.generate(photos, None, {**FAST, "width": "64", "height": "64"}, layout="three-quarter-left")
    metadata = read_metadata(Path(gallery[0][0]))
    assert metadata["pose_from"] == "layout:three-quarter-left" and (metadata["width"], metadata["height"]) == (64, 64)
    gallery, _ = portrait.generate(photos, None, {**FAST, "width": "64", "height": "64"})
    assert read_metadata(Path(gallery[0][0]))["pose_from"] == "obama_1.jpg"


def test_mix_with_another_person_reaches_generation(model: Any, tmp_path: Path) -> None:
    import numpy as np

    who, portrait, _ = panels(model, tmp_path)
    photos, *_ = who.upload([str(FACES / "obama_1.jpg")], (), None, "", "auto")
    mix, items, count, _ = who.set_mix(str(FACES / "lecun_1.jpg"), photos, None, "", "auto", None, 0.25)
    assert [caption for _, caption in items] == ["1. obama_1.jpg", "mixed in at 0.25: lecun_1.jpg"]
    assert "Mixed with lecun_1.jpg at 0.25" in count
    seen = []
    portrait.ctx.submit = lambda job, settings, progress: seen.append(job.identity) or job.run(
        model, settings, progress)
    gallery, _ = portrait.generate(photos, None, {**FAST, "width": "64", "height": "64"}, mix=mix, mix_weight=0.25)
    ours, theirs = who.ctx.identities.get(photos), who.ctx.identities.get([mix])
    assert np.allclose(seen[0].embedding, 0.75 * ours.embedding + 0.25 * theirs.embedding)
    assert read_metadata(Path(gallery[0][0]))["mixed_with"] == [{"name": "lecun_1.jpg", "weight": 0.25}]


def test_outputs_record_the_face_chosen_in_the_who_panel(model: Any, tmp_path: Path) -> None:
    """Portrait, swap and detail: the Who panel's face choice and fusion are validated into the job's settings, so
    the metadata names the face that was used (issue 18 item 2) and remaking from it gives the same picture."""
    from instantid.api.face_side import prepare_identity
    from instantid.webui.detail_tab import DetailTab

    who, portrait, swap = panels(model, tmp_path)
    detail = DetailTab(portrait.ctx, who)
    photos, *_ = who.upload([str(GROUP)], (), None, "1", "mean")
    scene, _, _ = swap.set_scene(str(GROUP))
    detail.set_picture(str(GROUP))
    chosen = {**FAST, "seed": "4", "face_index": "1", "fusion": "mean"}
    made = {
        "portrait": portrait.generate(photos, None, {**chosen, "width": "64", "height": "64"})[0],
        "swap": swap.swap(photos, None, scene, {**chosen, "resolution": 64})[0],
        "detail": detail.detail(photos, None, scene, {**chosen, "resolution": 64})[0],
    }
    for task, gallery in made.items():
        metadata = read_metadata(Path(gallery[0][0]))
        assert metadata["settings"]["face_index"] == 1 and metadata["settings"]["fusion"] == "mean", task
    # Remade from its metadata through the Python API: the same pixels.
    portrait_png = Path(made["portrait"][0][0])
    stored = read_metadata(portrait_png)["settings"]
    again = model.generate(prepare_identity(model.analyzer, GROUP, face_index=stored["face_index"]),
                           GenerationSettings(**stored))
    with Image.open(portrait_png) as png:
        assert (np.asarray(png.convert("RGB")) == np.asarray(again.images[0])).all()


def test_faces_found_preview_numbers_faces_only(model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The previews write each face's number and nothing else (keypoint numbers beside them read as other faces'
    numbers, issue 18 item 14); the Who preview labels the face used with its own index."""
    import cv2

    written: list[str] = []
    put_text = cv2.putText
    monkeypatch.setattr(cv2, "putText", lambda canvas, text, *rest, **kw: written.append(text) or
                        put_text(canvas, text, *rest, **kw))
    who, _, swap = panels(model, tmp_path)
    swap.set_scene(str(GROUP))
    assert written == ["0", "1"]
    written.clear()
    who.upload([str(GROUP)], (), None, "1", "auto")
    assert written == ["1"]
    written.clear()
    who.upload([str(FACES / "obama_1.jpg")], (), None, "", "auto")
    assert written == []  # one face in the photo: no number to tell apart
