"""The knob declarations every surface derives from: field metadata, ranges, one-line errors in each surface's
spelling, validated copies (what tests/test_generator.py and the surfaces' tests do not pin field by field)."""

from __future__ import annotations

import pydantic
import pytest

from instantid.api.settings import (
    MAX_IMAGES,
    MAX_SEED,
    SCHEDULERS,
    GenerationSettings,
    field_label,
    make_settings,
    normalize,
    resolve_style,
)
from instantid.errors import InvalidInputError

FIELDS = GenerationSettings.model_fields


def _error(values: dict, name=lambda n: n) -> str:
    with pytest.raises(InvalidInputError) as caught:
        make_settings(values, name)
    return str(caught.value)


def test_knob_metadata_reaches_every_surface() -> None:
    assert FIELDS["prompt"].json_schema_extra == {"ui": "text", "advanced": False, "short": "-p"}
    assert FIELDS["guidance_scale"].json_schema_extra == {"ui": "slider", "advanced": True, "flag": "--guidance",
                                                          "step": 0.1}
    assert FIELDS["seed"].json_schema_extra == {"ui": "number", "advanced": False}
    assert FIELDS["identitynet_strength"].json_schema_extra == {"ui": "slider", "advanced": False, "step": 0.05}
    assert FIELDS["enhance_face_region"].json_schema_extra == {"ui": "checkbox", "advanced": True}
    assert FIELDS["steps"].description == "Denoising steps."


def test_flags_are_the_field_names_hyphenated_unless_declared() -> None:
    assert field_label("guidance_scale") == "--guidance"
    assert field_label("face_detail_strength") == "--face-detail-strength"
    assert field_label("steps") == "--steps" and field_label("not_a_field") == "--not-a-field"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"steps": 201}, "steps must be between 1 and 200, got 201"),
        ({"steps": 0}, "steps must be between 1 and 200, got 0"),
        ({"width": 72, "height": 60}, "height must be a multiple of 8 between 64 and 2048, got 60"),
        ({"width": 2056, "height": 64}, "width must be a multiple of 8 between 64 and 2048, got 2056"),
        ({"width": 100, "height": 64}, "width must be a multiple of 8 between 64 and 2048, got 100"),
        ({"seed": MAX_SEED + 1}, f"seed must be between -1 and {MAX_SEED}, got {MAX_SEED + 1}"),
        ({"seed": -2}, f"seed must be between -1 and {MAX_SEED}, got -2"),
        ({"num_images": MAX_IMAGES + 1}, f"num_images must be between 1 and {MAX_IMAGES}, got {MAX_IMAGES + 1}"),
        ({"comma_padding": 75}, "comma_padding must be between 0 and 74, got 75"),
        ({"face_detail_strength": 0.01}, "face_detail_strength must be between 0.05 and 1, got 0.01"),
        ({"steps": "many"}, "steps input should be a valid integer, unable to parse string as an integer, got 'many'"),
        ({"scheduler": "heun"}, f"scheduler must be one of {', '.join(SCHEDULERS)}, got 'heun'"),
        ({"fusion": "median"}, "fusion must be one of auto, mean, weighted, robust, got 'median'"),
        ({"width": 512}, "give both width and height, or neither"),
        ({"height": 512}, "give both width and height, or neither"),
        ({"control_guidance_start": 0.6, "control_guidance_end": 0.5},
         "control_guidance_start must be below control_guidance_end, got 0.6 and 0.5"),
    ],
)
def test_each_bad_value_is_one_line_naming_the_field(values: dict, message: str) -> None:
    assert _error(values) == message


def test_errors_use_the_surfaces_spelling() -> None:
    assert _error({"guidance_scale": -1}, field_label) == "--guidance must be between 0 and 30, got -1"
    assert _error({"width": 64}, field_label) == "give both --width and --height, or neither"
    unknown = _error({"cfg": 5}, field_label)
    assert unknown == f"unknown setting '--cfg'; known: {', '.join(FIELDS)}"
    assert _error({"style": "nope"}).startswith("unknown style 'nope'")


def test_updated_is_a_validated_copy_and_none_is_a_value() -> None:
    base = GenerationSettings(seed=5, steps=10)
    copy = base.updated(steps=12)
    assert (copy.steps, copy.seed, base.steps) == (12, 5, 10)
    assert base.updated(seed=None).seed is None
    assert base.updated(seed=-1).seed is None and make_settings({"seed": "-1"}).seed is None  # -1 = random
    with pytest.raises(InvalidInputError, match="steps must be between 1 and 200, got 0"):
        base.updated(steps=0)
    with pytest.raises(pydantic.ValidationError):
        base.steps = 3  # frozen: a settings object never changes under a running job


def test_style_spellings() -> None:
    assert normalize({"style": "film noir", "steps": 3}) == {"style": "Film Noir", "steps": 3}
    assert normalize({"style": None}) == {"style": None} and normalize({}) == {}
    assert resolve_style("(No style)") is None and resolve_style("WATERCOLOR") == "Watercolor"
    assert make_settings({"style": "(no style)"}).style is None


def test_scheduler_names_for_a1111_metadata() -> None:
    assert SCHEDULERS["dpm++_karras"] == ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True},
                                          "DPM++ 2M Karras")
    assert SCHEDULERS["euler_a"][2] == "Euler a" and SCHEDULERS["lcm"][0] == "LCMScheduler"
