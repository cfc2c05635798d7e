"""The web UI's controls come from the settings declaration: same ranges, defaults and choices, new knobs appear."""

from __future__ import annotations

import _demo  # noqa: F401  (quiet offline environment before gradio is imported)
import gradio as gr
import pytest
from annotated_types import Ge, Le

from instantid.api.settings import SCHEDULERS, GenerationSettings, knob, make_settings
from instantid.errors import InvalidInputError
from instantid.webui import create_ui
from instantid.webui.controls import UNSET, controls


def _unloaded() -> object:
    raise AssertionError("building the UI must not load the model")


@pytest.fixture(scope="module")
def components() -> dict[str, object]:
    ui = create_ui(_unloaded)
    return {block.elem_id: block for block in ui.blocks.values() if getattr(block, "elem_id", None)}


def _bounds(name: str) -> tuple[float | None, float | None]:
    low = high = None
    for item in GenerationSettings.model_fields[name].metadata:
        low = item.ge if isinstance(item, Ge) else low
        high = item.le if isinstance(item, Le) else high
    return low, high


def test_every_slider_spans_exactly_what_validation_accepts(components: dict[str, object]) -> None:
    sliders = 0
    for name, info in GenerationSettings.model_fields.items():
        extra = info.json_schema_extra or {}
        if extra.get("ui") != "slider":
            continue
        sliders += 1
        slider = components[name]
        assert isinstance(slider, gr.Slider), name
        assert (slider.minimum, slider.maximum) == _bounds(name), name
        assert slider.step == extra["step"], name
        assert slider.value == info.default, name
        assert slider.info == info.description, name
    assert sliders >= 6  # strengths, steps, guidance, images, control start/end


def test_every_visible_knob_has_a_control_with_its_default(components: dict[str, object]) -> None:
    for name, info in GenerationSettings.model_fields.items():
        if (info.json_schema_extra or {}).get("ui") == "hidden":
            continue
        assert name in components, f"{name} has no UI control"
    # Reading every control at its initial value gives the declared defaults back.
    values = {c.name: c.value(components[c.name].value) for c in controls()}
    assert make_settings(values) == GenerationSettings()


def test_a_knob_added_to_the_settings_appears_with_its_range() -> None:
    class Extended(GenerationSettings):
        sharpness: float = knob(0.5, "How sharp.", ui="slider", step=0.25, advanced=True, ge=0.25, le=3)
        label_text: str = knob("", "Hidden from the UI.", ui="hidden")

    found = {c.name: c for c in controls(Extended)}
    assert "label_text" not in found
    control = found["sharpness"]
    assert (control.kind, control.minimum, control.maximum, control.step, control.default, control.advanced) == (
        "slider", 0.25, 3, 0.25, 0.5, True)
    with gr.Blocks():
        slider = control.build()
    assert (slider.minimum, slider.maximum, slider.value, slider.info) == (0.25, 3, 0.5, "How sharp.")


def test_dropdowns_offer_the_declared_choices_and_one_way_to_say_none() -> None:
    found = {c.name: c for c in controls()}
    style, scheduler = found["style"], found["scheduler"]
    assert UNSET not in style.choices  # "(No style)" already means no style
    assert style.value("(No style)") is None and make_settings({"style": style.value("Watercolor")}).style
    assert scheduler.choices[0] == UNSET and scheduler.value(UNSET) is None
    assert scheduler.choices[1:] == tuple(SCHEDULERS)


def test_optional_numbers_are_text_so_empty_means_default(components: dict[str, object]) -> None:
    # gr.Number shows None as 0 and sends 0 back: "random seed" would silently become seed 0.
    for name in ("seed", "width", "height", "face_index"):
        assert isinstance(components[name], gr.Textbox) and components[name].value == "", name
    found = {c.name: c for c in controls()}
    seed, width, steps = found["seed"], found["width"], found["steps"]
    assert seed.value("") is None and seed.value(" 42 ") == 42 and width.value("512") == 512
    assert steps.value(None) == GenerationSettings().steps
    with pytest.raises(InvalidInputError, match="Seed must be a number, got 'abc'"):
        seed.value("abc")
    with pytest.raises(InvalidInputError, match="^Width must be a multiple of 8"):
        make_settings({"width": width.value("100"), "height": 64}, name=lambda n: n.capitalize())
