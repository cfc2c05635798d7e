"""A stand-in for the parts of `cog <https://github.com/replicate/cog>`_ that ``predict.py`` uses, for machines
without cog (it installs only inside cog's own build; ``pip install cog`` pulls its server too).

Same semantics as cog's own, so the predictor runs unchanged under either:

* :class:`BasePredictor`: ``setup()`` once, then ``predict(**inputs)`` per request;
* :func:`Input`: a pydantic ``Field`` carrying the default, ``description``, ``ge`` / ``le`` and ``choices``
  (cog's ``Input`` is a thin wrapper of ``Field`` with the same keywords);
* :class:`Path`: a ``pathlib.Path`` (cog's is one too), for file inputs and outputs.

:func:`run_predict` does what cog's runner does before calling ``predict``: it reads the signature, fills every
input the request left out with its default, checks types, ranges and choices, and names the first bad input in
one line (:class:`~instantid.errors.InvalidInputError`). Tests and ``python predict.py`` call predictors through it.
"""

from __future__ import annotations

import inspect
import pathlib
from typing import Any

from pydantic import ConfigDict, Field, ValidationError, create_model

from instantid.errors import InvalidInputError


class BasePredictor:
    """cog's predictor interface: load in :meth:`setup`, answer in :meth:`predict`."""

    def setup(self) -> None:
        """Load the model (once per container)."""

    def predict(self, **inputs: Any) -> Any:
        raise NotImplementedError


class Path(pathlib.PosixPath):
    """A file path input or output, as cog's ``cog.Path``."""


def Input(default: Any = ..., *, description: str | None = None, ge: float | None = None,  # noqa: N802 (cog's name)
          le: float | None = None, choices: list[Any] | None = None, min_length: int | None = None,
          max_length: int | None = None, regex: str | None = None) -> Any:
    """One predictor input, as cog declares it: ``choices`` become a JSON-schema ``enum``, checked on each call."""
    extra = {"enum": list(choices)} if choices is not None else None
    return Field(default, description=description, ge=ge, le=le, min_length=min_length, max_length=max_length,
                 pattern=regex, json_schema_extra=extra)


def _inputs_model(predict: Any) -> Any:
    fields: dict[str, Any] = {}
    for name, parameter in inspect.signature(predict, eval_str=True).parameters.items():
        if name == "self":
            continue
        default = parameter.default if parameter.default is not inspect.Parameter.empty else ...
        # A file input arrives as a path string (cog: an uploaded file or URL, saved locally) and becomes a Path.
        annotation = pathlib.Path if parameter.annotation is Path else parameter.annotation
        fields[name] = (annotation, default)
    return create_model("PredictorInputs", __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True),
                        **fields)


def run_predict(predictor: BasePredictor, **inputs: Any) -> Any:
    """``predictor.predict`` with ``inputs`` checked and completed as cog's runner does."""
    model = _inputs_model(predictor.predict)
    try:
        values = model.model_validate(inputs)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "input"
        message = "is not an input of this predictor" if first["type"] == "extra_forbidden" else first["msg"]
        raise InvalidInputError(f"{name}: {message[0].lower() + message[1:]}, got {first.get('input')!r}") from None
    for name, info in model.model_fields.items():
        choices = (info.json_schema_extra or {}).get("enum") if isinstance(info.json_schema_extra, dict) else None
        value = getattr(values, name)
        if choices is not None and value is not None and value not in choices:
            raise InvalidInputError(f"{name}: must be one of {', '.join(map(str, choices))}, got {value!r}")
    given = {name: getattr(values, name) for name in model.model_fields}
    return predictor.predict(**{name: Path(value) if isinstance(value, pathlib.Path) else value
                                for name, value in given.items()})
