"""A pydantic validation error as the one line every surface shows (CLI exit 2, HTTP 422, ``gr.Error``).

One phrasing for every declared model (generation settings, model settings, swap and face-detail options, HTTP
request bodies): a range is stated from the field's own declaration (``steps must be between 1 and 200, got 0``),
choices are listed, an unknown name lists the known ones. ``name`` turns pydantic's location of the bad value into
the spelling the user typed (a CLI flag, a JSON path such as ``mix[0].weight``, a UI label).
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from instantid.errors import InvalidInputError

Location = tuple[int | str, ...]
_RANGE_ERRORS = ("greater_than_equal", "less_than_equal", "greater_than", "less_than", "multiple_of")


def json_path(loc: Location) -> str:
    """``("mix", 0, "weight")`` -> ``mix[0].weight``: a value's place in a JSON body as a client writes it."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "request"


def field_at(model: type[BaseModel], loc: Location) -> FieldInfo | None:
    """The declaration of the value at ``loc`` (through nested models and lists), if there is one."""
    info: FieldInfo | None = None
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            return None
        info = current.model_fields[part]
        current = _inner_model(info.annotation)
    return info


def _inner_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def rule(info: FieldInfo) -> str:
    """What a number field accepts, from its declaration: ``a multiple of 8 between 64 and 2048``."""
    low = high = multiple = None
    above = below = False  # gt / lt: the bound itself is refused, and the line must not offer it
    for item in info.metadata:
        if getattr(item, "ge", None) is not None or getattr(item, "gt", None) is not None:
            above = getattr(item, "gt", None) is not None
            low = item.gt if above else item.ge
        if getattr(item, "le", None) is not None or getattr(item, "lt", None) is not None:
            below = getattr(item, "lt", None) is not None
            high = item.lt if below else item.le
        multiple = getattr(item, "multiple_of", multiple)
    low, high = _plain(low), _plain(high)
    parts = [f"a multiple of {multiple}"] if multiple else []
    if low is not None and high is not None:
        parts.append(f"between {low} and {high}" if not (above or below) else
                     f"{'above' if above else 'at least'} {low} and {'below' if below else 'at most'} {high}")
    elif low is not None:
        parts.append(f"{'>' if above else '>='} {low}")
    elif high is not None:
        parts.append(f"{'<' if below else '<='} {high}")
    return " ".join(parts)


def _plain(bound: Any) -> Any:
    return int(bound) if isinstance(bound, float) and bound.is_integer() else bound  # 1.0 reads as 1


def one_line(exc: ValidationError, model: type[BaseModel], name: Callable[[Location], str] = json_path,
             what: str = "setting", known: Sequence[str] | None = None) -> str:
    """The first error of ``exc`` (raised validating ``model``) as one line naming the field as ``name`` spells
    it; ``what`` / ``known``: how an unknown field is called and the names offered instead."""
    first = exc.errors()[0]
    loc: Location = tuple(first["loc"])
    label = name(loc)
    shown = repr(first.get("input"))
    given = f", got {shown}" if "input" in first and len(shown) <= 200 else ""  # never a whole upload
    kind = first["type"]
    info = field_at(model, loc)
    if kind == "extra_forbidden":
        return f"unknown {what} {label!r}; known: {', '.join(known if known is not None else model.model_fields)}"
    if kind == "missing":
        return f"{label} is required"
    if kind in _RANGE_ERRORS and info is not None and rule(info):
        return f"{label} must be {rule(info)}{given}"
    if kind == "literal_error":
        choices = [str(c) for c in typing.get_args(_literal(info.annotation))] if info is not None else []
        if choices:
            return f"{label} must be one of {', '.join(choices)}{given}"
    if kind == "model_type":  # pydantic's "a valid dictionary or instance of <our class name>"
        return f"{label} must be a JSON object{given}"
    if kind == "value_error":  # a validator's own words; a whole line when it raised one of ours
        error = first["ctx"]["error"]
        return str(error) if isinstance(error, InvalidInputError) else f"{label} {error}"
    message = first["msg"][0].lower() + first["msg"][1:]
    return f"{label} {message}{given}"


def _literal(annotation: Any) -> Any:
    if typing.get_origin(annotation) is typing.Literal:
        return annotation
    for arg in typing.get_args(annotation):
        found = _literal(arg)
        if found is not None:
            return found
    return None


class CheckedError(InvalidInputError):
    """A bad value given to a :class:`Checked` model, with pydantic's errors kept so :func:`validated` can name
    the field the calling surface's way."""

    def __init__(self, message: str, validation: ValidationError) -> None:
        super().__init__(message)
        self.validation = validation


class Checked(BaseModel):
    """A model whose bad values are one :class:`InvalidInputError` line also when Python code builds it
    directly (``FaceDetailOptions(strength=0)``); ``what`` is how an unknown field is called."""

    what: ClassVar[str] = "option"

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise CheckedError(one_line(exc, type(self), what=self.what), exc) from None


Model = TypeVar("Model", bound=BaseModel)


def validated(model: type[Model], values: dict[str, Any], name: Callable[[str], str] = str,
              what: str | None = None) -> Model:
    """``values`` validated into ``model``; errors are one :class:`InvalidInputError` line naming the field as
    the calling surface spells it (``name``: a CLI flag, a UI label)."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        error = exc
    # pydantic runs a Checked model's __init__ when validating it, and wraps its CheckedError (a ValueError)
    cause = error.errors()[0].get("ctx", {}).get("error")
    if isinstance(cause, CheckedError):
        error = cause.validation
    kind = what or getattr(model, "what", "setting")
    raise InvalidInputError(one_line(error, model, lambda loc: name(str(loc[0])) if loc else kind, what=kind))


__all__ = ["Checked", "CheckedError", "field_at", "json_path", "one_line", "rule", "validated"]
