"""Web UI controls derived from the settings declaration (:class:`~instantid.api.settings.GenerationSettings`).

Each field's ``json_schema_extra`` names its control (``ui``: slider / number / text / checkbox / dropdown /
hidden), slider ``step`` and whether it sits under "Advanced"; ``ge``/``le`` give the range, the default the
initial value and the description the info text. A knob added to the settings appears here with no UI edit,
and a range cannot drift from what validation accepts (tests/test_webui_controls.py checks it).
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from instantid.api.settings import GenerationSettings, normalize
from instantid.errors import InstantIDError, InvalidInputError

# Dropdowns hold strings; a field whose default is None gets this choice for "not set".
UNSET = "(default)"
# Label words that a plain capitalisation spells wrong.
_WORDS = {"identitynet": "IdentityNet", "num": "number of", "kps": "keypoints"}


@dataclass(frozen=True)
class Control:
    """One generation knob as the UI shows it."""

    name: str  # the settings field
    kind: str  # slider / number / text / checkbox / dropdown
    label: str
    info: str
    default: Any
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    integer: bool = False
    optional: bool = False  # None is a valid value (empty number, UNSET choice)
    choices: tuple[str, ...] = ()
    none_choice: str | None = None  # the dropdown choice that stands for None
    advanced: bool = False

    def build(self, elem_prefix: str = "") -> Any:
        """The gradio component (created inside the current Blocks context)."""
        import gradio as gr

        common = {"label": self.label, "info": self.info, "elem_id": f"{elem_prefix}{self.name}"}
        if self.kind == "slider":
            return gr.Slider(self.minimum, self.maximum, self.default, step=self.step, **common)
        if self.kind == "checkbox":
            return gr.Checkbox(bool(self.default), **common)
        if self.kind == "dropdown":
            value = self.none_choice if self.default is None else str(self.default)
            return gr.Dropdown(list(self.choices), value=value, **common)
        if self.kind == "text":
            return gr.Textbox(self.default or "", lines=2, **common)
        if self.minimum is not None and self.maximum is not None:
            common["info"] = f"{self.info} Range {self.minimum} to {self.maximum}.".strip()
        if self.optional:
            # gr.Number shows None as 0 (and sends 0 back), which would pin "random seed" to seed 0: a textbox
            # keeps "empty" expressible.
            return gr.Textbox("" if self.default is None else str(self.default), placeholder="empty", **common)
        # No gradio-side bounds: its range error prints a traceback; the settings name the field in one line.
        return gr.Number(self.default, precision=0 if self.integer else None, step=self.step or 1, **common)

    def shown(self, value: Any) -> Any:
        """A settings value as this control shows it (the inverse of :meth:`value`)."""
        if value is None:
            return self.none_choice if self.kind == "dropdown" else ""
        return value

    def value(self, raw: Any) -> Any:
        """A component's value as the settings field expects it (validation itself is the settings')."""
        if raw is None:  # not given (a handler called without this control): the declared default
            return None if self.optional else self.default
        if self.kind == "dropdown" and raw == "":
            return None if self.optional else self.default
        if self.kind == "dropdown" and raw == self.none_choice:
            return None
        if self.kind not in ("number", "slider"):
            return raw
        if isinstance(raw, str):
            raw = raw.strip()
            if raw:
                try:
                    raw = float(raw)
                except ValueError:
                    raise InvalidInputError(f"{self.label} must be a number, got {raw!r}") from None
        if raw is None or raw == "":
            return None if self.optional else self.default
        if self.integer and float(raw).is_integer():
            return int(raw)
        return raw


def _label(name: str) -> str:
    words = [_WORDS.get(word, word) for word in name.split("_")]
    text = " ".join(words)
    return text[0].upper() + text[1:]


def _choices(annotation: Any) -> tuple[tuple[str, ...], bool]:
    """Literal choices of a field (possibly Optional) and whether None is allowed."""
    args = typing.get_args(annotation)
    optional = type(None) in args
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        literals = [a for a in args if typing.get_origin(a) is typing.Literal]
        values = typing.get_args(literals[0]) if literals else ()
    elif typing.get_origin(annotation) is typing.Literal:
        values = args
    else:
        values = ()
    return tuple(str(v) for v in values), optional


def _none_choice(model: type[BaseModel], name: str, choices: tuple[str, ...]) -> str | None:
    """A choice the settings themselves read as None (the "(No style)" style), so no second one is added."""
    for choice in choices:
        try:
            if getattr(model.model_validate(normalize({name: choice})), name) is None:
                return choice
        except (InstantIDError, ValidationError):
            continue
    return None


def _is_integer(annotation: Any) -> bool:
    return annotation is int or int in typing.get_args(annotation)


def controls(model: type[BaseModel] = GenerationSettings) -> list[Control]:
    """Every visible field of a settings model as a :class:`Control`, in declaration order."""
    result = []
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        kind = str(extra.get("ui", "number"))
        if kind == "hidden":
            continue
        low = high = multiple = None
        for item in info.metadata:
            low = getattr(item, "ge", low)
            high = getattr(item, "le", high)
            multiple = getattr(item, "multiple_of", multiple)
        if kind == "slider" and (low is None or high is None):
            kind = "number"  # a slider needs both ends; the settings declare no range for this field
        choices, optional = _choices(info.annotation)
        none_choice = _none_choice(model, name, choices) if kind == "dropdown" and optional else None
        if kind == "dropdown" and optional and none_choice is None:
            none_choice, choices = UNSET, (UNSET, *choices)
        integer = _is_integer(info.annotation)
        step = extra.get("step", multiple)
        result.append(Control(
            name=name, kind=kind, label=info.title or _label(name), info=info.description or "",
            default=info.default, minimum=low, maximum=high,
            step=float(step) if step is not None else (1.0 if integer else None), integer=integer,
            optional=optional or info.default is None, choices=choices, none_choice=none_choice,
            advanced=bool(extra.get("advanced")),
        ))
    return result


def labels(items: list[Control]) -> dict[str, str]:
    """Field name -> UI label, so validation errors name what the user sees."""
    return {c.name: c.label for c in items}
