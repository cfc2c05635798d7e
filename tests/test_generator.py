"""The high-level API: photos -> Identity (analysed once) -> generation with one settings declaration."""

from __future__ import annotations

import numpy as np
import pytest
from _demo import FACE, FACES, demo_model

from instantid.errors import InvalidInputError
from instantid.settings import GenerationSettings, field_label, make_settings


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return demo_model(tmp_path_factory.getbasetemp() / "demo-generator")


def test_identity_is_analysed_once_and_generation_reuses_it(app, monkeypatch):
    identity = app.prepare_identity([FACE, FACE])
    calls = []
    original = app.analyzer.analyze
    monkeypatch.setattr(app.analyzer, "analyze", lambda *a, **k: calls.append(1) or original(*a, **k))
    a = app.generate(identity, GenerationSettings(steps=2, seed=3))
    b = app.generate(identity, steps=2, seed=3, prompt="another prompt")
    assert calls == []  # generation never re-opens or re-analyses a photo
    assert a.metadata["references"] == ["face.jpg", "face.jpg"]  # file names, not the user's full paths
    assert not any("/" in name for name in a.metadata["references"])
    assert not np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))


def test_generate_from_identity_equals_generate_from_photos(app):
    identity = app.prepare_identity(FACE)
    from_identity = app.generate(identity, steps=2, seed=5)
    from_photos = app.generate(FACE, steps=2, seed=5)
    assert np.array_equal(np.asarray(from_identity.images[0]), np.asarray(from_photos.images[0]))


def test_identity_changes_the_picture_and_mixing_interpolates(app):
    obama = app.prepare_identity(FACES / "obama_1.jpg")
    lecun = app.prepare_identity(FACES / "lecun_1.jpg")
    pose = app.prepare_identity(FACES / "lecun_1.jpg", pose=FACES / "obama_1.jpg")
    assert pose.pose_size == obama.pose_size and np.allclose(pose.pose_face.kps, obama.pose_face.kps)
    mixed = obama.mix(lecun, 0.25, "lecun")
    assert np.allclose(mixed.embedding, 0.75 * obama.embedding + 0.25 * lecun.embedding, atol=1e-6)
    assert mixed.metadata()["mixed_with"] == [{"name": "lecun", "weight": 0.25}]
    images = [np.asarray(app.generate(i, steps=2, seed=1, enhance_face_region=False).images[0], dtype=float)
              for i in (obama, pose)]
    assert np.abs(images[0] - images[1]).mean() > 0.1  # another identity, same pose and size (tiny random stack)
    with pytest.raises(InvalidInputError, match="between 0 and 1"):
        obama.mix(lecun, 1.5)


def test_per_call_sampler_is_recorded_and_restored(app):
    default = type(app.pipe.scheduler).__name__
    result = app.generate(FACE, steps=2, seed=1, scheduler="dpm++_karras")
    assert result.metadata["sampler"] == "DPM++ 2M Karras" and result.metadata["scheduler"] == "dpm++_karras"
    assert type(app.pipe.scheduler).__name__ == default


def test_empty_prompt_stays_empty(app):
    result = app.generate(FACE, steps=1, seed=1, prompt="")
    assert result.metadata["prompt"] == ""
    styled = app.generate(FACE, steps=1, seed=1, prompt="", style="watercolor")
    assert styled.metadata["prompt"].startswith("watercolor painting of a person")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"guidance_scale": 31}, "--guidance must be between 0 and 30, got 31"),
        ({"steps": 0}, "--steps must be between 1 and 200, got 0"),
        ({"width": 100, "height": 64}, "--width must be a multiple of 8 between 64 and 2048"),
        ({"width": 512}, "give both --width and --height"),
        ({"control_guidance_start": 0.5, "control_guidance_end": 0.5}, "--control-guidance-start must be below"),
        ({"style": "nope"}, "unknown style 'nope'"),
        ({"scheduler": "nope"}, "--scheduler must be one of euler"),
        ({"bogus": 1}, "unknown setting '--bogus'"),
    ],
)
def test_settings_errors_name_what_the_user_typed(values, message):
    with pytest.raises(InvalidInputError) as err:
        make_settings(values, field_label)
    assert message in str(err.value)
    with pytest.raises(InvalidInputError):  # the same rule, named by field on other surfaces
        make_settings(values)


def test_style_names_are_normalised():
    assert make_settings({"style": "film noir"}).style == "Film Noir"
    assert make_settings({"style": "(No style)"}).style is None


def test_long_and_weighted_prompts_are_not_truncated(app):
    """A style template plus a long prompt passes CLIP's 77 tokens: the tail must still steer the picture."""
    identity = app.prepare_identity(FACE)
    head = "a portrait, " + ", ".join(f"detail number {i}" for i in range(40))
    images = [
        np.asarray(app.generate(identity, steps=2, seed=1, prompt=p, style="Watercolor").images[0], dtype=float)
        for p in (head, head + ", wearing a red hat", head + ", (wearing a red hat:1.5)")
    ]
    assert np.abs(images[0] - images[1]).mean() > 0  # text past token 77 changes the result
    assert np.abs(images[1] - images[2]).mean() > 0  # and so does its weight
