"""Bundled keypoint layouts: geometry of the data, placement on any output size, posing an Identity."""

from __future__ import annotations

import numpy as np
import pytest

from instantid.api.identity import Identity
from instantid.apps.layouts import get_layout, layout_names, layout_pose, with_layout
from instantid.errors import InvalidInputError
from instantid.faces import SPACE_DLIB, Face

EXPECTED = ("frontal", "three-quarter-left", "three-quarter-right", "profile-left", "profile-right")


def _mirrored(kps: np.ndarray) -> np.ndarray:
    """Keypoints of the mirror image, in detector order (image-left eye and mouth corner first again)."""
    flipped = np.column_stack([1 - kps[:, 0], kps[:, 1]])
    return flipped[[1, 0, 2, 4, 3]]


def test_bundled_layouts_are_the_promised_views() -> None:
    assert layout_names() == EXPECTED
    for name in EXPECTED:
        layout = get_layout(name)
        kps = layout.kps
        assert kps.shape == (5, 2) and ((kps > 0) & (kps < 1)).all()
        # Upright face: eyes above the nose tip above the mouth; image-left points first.
        assert kps[:2, 1].max() < kps[2, 1] < kps[3:, 1].min()
        assert kps[0, 0] < kps[1, 0] and kps[3, 0] < kps[4, 0]
        x1, y1, x2, y2 = layout.bbox
        assert x1 <= kps[:, 0].min() and kps[:, 0].max() <= x2 and y1 < kps[:, 1].min() and kps[:, 1].max() < y2


def test_views_turn_the_way_their_names_say() -> None:
    frontal = get_layout("frontal").kps
    assert np.allclose(_mirrored(frontal), frontal, atol=1e-4)  # symmetric
    for side in ("three-quarter", "profile"):
        left, right = get_layout(f"{side}-left").kps, get_layout(f"{side}-right").kps
        assert np.allclose(_mirrored(left), right, atol=1e-4)
        # The nose tip points to the named side of the eyes' midpoint.
        assert left[2, 0] < left[:2, 0].mean() and right[2, 0] > right[:2, 0].mean()
    # The further the turn, the closer the eyes (foreshortening), and the nose moves further out.
    eye_gap = {n: np.ptp(get_layout(n).kps[:2, 0]) for n in ("frontal", "three-quarter-left", "profile-left")}
    assert eye_gap["frontal"] > eye_gap["three-quarter-left"] > eye_gap["profile-left"]
    nose_offset = {n: get_layout(n).kps[:2, 0].mean() - get_layout(n).kps[2, 0] for n in ("three-quarter-left",
                                                                                          "profile-left")}
    assert 0 < nose_offset["three-quarter-left"] < nose_offset["profile-left"]


def test_layout_pose_keeps_the_face_undistorted_on_wide_and_tall_outputs() -> None:
    square = layout_pose("frontal", 768, 768)
    wide = layout_pose("frontal", 1024, 768)
    tall = layout_pose("frontal", 768, 1024)
    assert square.size == (768, 768) and wide.size == (1024, 768) and tall.size == (768, 1024)
    # Same face, shifted to the centre of the longer side (not stretched along it).
    assert np.allclose(wide.kps - square.kps, [128, 0], atol=1e-3)
    assert np.allclose(tall.kps - square.kps, [0, 128], atol=1e-3)
    assert np.allclose(np.array(wide.bbox) - np.array(square.bbox), [128, 0, 128, 0], atol=1e-3)
    assert np.allclose(square.kps, get_layout("frontal").kps * 768, atol=1e-3)


def test_unknown_layout_and_bad_size_are_one_line_errors() -> None:
    with pytest.raises(InvalidInputError, match="unknown layout 'sideways'; choose one of frontal, three-quarter-left"):
        layout_pose("sideways")
    with pytest.raises(InvalidInputError, match="positive"):
        layout_pose("frontal", 0, 512)
    assert get_layout("Three_Quarter Left").name == "three-quarter-left"


def test_with_layout_replaces_only_the_pose_of_an_identity() -> None:
    embedding = np.linspace(-1, 1, 128, dtype=np.float32)
    photo_face = Face(bbox=(10, 10, 60, 60), score=1.0, kps=np.zeros((5, 2), np.float32), embedding=embedding,
                      space=SPACE_DLIB)
    person = Identity(embedding=embedding, space=SPACE_DLIB, pose_face=photo_face, pose_size=(80, 80),
                      references=(), fusion="mean", pose_name="me.jpg")
    posed = with_layout(person, "profile-right", 640, 480)
    pose = layout_pose("profile-right", 640, 480)
    assert posed.pose_size == (640, 480) and posed.pose_name == "layout:profile-right"
    assert np.array_equal(posed.pose_face.kps, pose.kps) and posed.pose_face.bbox == pose.bbox
    assert np.array_equal(posed.embedding, person.embedding) and posed.fusion == "mean"
    assert posed.metadata()["pose_from"] == "layout:profile-right"


def test_layouts_command_lists_and_draws_them(tmp_path, capsys) -> None:
    from PIL import Image

    from instantid.cli import main

    assert main(["layouts", "--draw", str(tmp_path), "--size", "128"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(EXPECTED)
    picture = np.asarray(Image.open(tmp_path / "three-quarter-left.png"))
    x, y = layout_pose("three-quarter-left", 128, 128).kps[2]
    assert tuple(picture[int(y), int(x)]) == (0, 0, 255)  # the nose point (blue) where the layout puts it


def test_mix_specs_parse_and_bad_ones_are_one_line_errors() -> None:
    from pathlib import Path

    from instantid.cli.apps import parse_mix

    assert parse_mix("b.jpg:0.3") == (Path("b.jpg"), 0.3)
    assert parse_mix("C:/photos/b.jpg:1") == (Path("C:/photos/b.jpg"), 1.0)
    for spec, message in (("b.jpg", "takes PHOTO:WEIGHT"), ("b.jpg:x", "takes PHOTO:WEIGHT"),
                          (":0.3", "takes PHOTO:WEIGHT"), ("b.jpg:-0.1", "between 0 and 1")):
        with pytest.raises(InvalidInputError, match=message):
            parse_mix(spec)
