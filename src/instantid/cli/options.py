"""Command-line options derived from the settings declarations (:mod:`instantid.api.settings`,
:mod:`instantid.api.model_settings`), so a knob added there appears here with the same default, range and help.

``with_generation_options`` / ``with_model_options`` give a typer command the options of every field; the command
receives them as one validated settings object (``settings`` / ``model``). Errors name the flag the user typed
(``naming`` puts the flag in front of a library error). Also the checks every command makes of option values before
anything loads: the photos exist (``check_photos``), a server's port is free (``check_port``).
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from pydantic import BaseModel, ValidationError

from instantid.api.identity import MIX_WEIGHT_DEFAULT, MIX_WEIGHT_HELP, MIX_WEIGHT_RANGE, check_mix_weight
from instantid.api.model_settings import ModelSettings
from instantid.api.settings import GenerationSettings, field_label, make_settings
from instantid.api.validation import one_line
from instantid.errors import InstantIDError, InvalidInputError


def _flag(name: str, extra: dict[str, Any]) -> str:
    flag = extra.get("flag")
    return flag if flag and flag != "hidden" else "--" + name.replace("_", "-")


def _cli_type(annotation: Any) -> Any:
    """typer understands str/int/float/bool/Path (optional); Literal choices are checked by the settings model."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = _cli_type(args[0])
        return inner | None
    if origin is typing.Literal:
        return str
    return annotation


def _help(info: Any, annotation: Any) -> str:
    text = info.description or ""
    choices = [a for a in typing.get_args(annotation) if a is not type(None)]
    for choice in choices:
        if typing.get_origin(choice) is typing.Literal:
            text += f" One of: {', '.join(map(str, typing.get_args(choice)))}."
    if typing.get_origin(annotation) is typing.Literal:
        text += f" One of: {', '.join(map(str, typing.get_args(annotation)))}."
    return text


def option_parameters(model: type[BaseModel], names: Iterable[str], defaults: dict[str, Any] | None = None
                      ) -> list[inspect.Parameter]:
    """typer parameters for the named fields of a settings model (``defaults`` override the model's)."""
    params = []
    for name in names:
        info = model.model_fields[name]
        extra = info.json_schema_extra or {}
        annotation = _cli_type(info.annotation)
        default = (defaults or {}).get(name, info.default)
        spellings = [_flag(name, extra)]
        if annotation is bool:
            spellings = [f"{spellings[0]}/--no-{spellings[0][2:]}"]
        if extra.get("short"):
            spellings.append(extra["short"])
        # A repeatable flag takes one value per use: show that value's type, not the list's.
        repeated = typing.get_args(annotation) if typing.get_origin(annotation) is list else ()
        option = typer.Option(
            default, *spellings, help=_help(info, info.annotation), envvar=extra.get("env"),
            hidden=extra.get("flag") == "hidden", show_default=default is not None,
            metavar=f"<{repeated[0].__name__}>" if repeated else None,
        )
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation))
    return params


def model_option(name: str, model: type[BaseModel] = ModelSettings) -> Any:
    """The typer option of one field of ``model``, for commands that take only a few of them."""
    return option_parameters(model, [name])[0].default


def _attach(command: Callable[..., Any], extra: list[inspect.Parameter],
            build: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[..., Any]:
    injected = {"model", "settings", "settings_given", *(q.name for q in extra)}
    own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name not in injected]

    def wrapper(**kwargs: Any) -> Any:
        return command(**build(kwargs))

    wrapper.__name__, wrapper.__doc__ = command.__name__, command.__doc__
    wrapper.__signature__ = inspect.Signature([*own, *extra])  # type: ignore[attr-defined]
    return wrapper


Command = Callable[..., Any]


def with_settings_options(model: type[BaseModel], receive_as: str) -> Callable[[Command], Command]:
    """Give a command one option per field of the settings ``model`` (:class:`ModelSettings`,
    :class:`~instantid.service.core.ServerSettings`); it receives them validated, as one object named
    ``receive_as``. A bad value is one line naming the flag."""
    names = list(model.model_fields)

    def flag_of(loc: tuple[int | str, ...]) -> str:
        field = str(loc[0]) if loc else ""
        return _flag(field, model.model_fields[field].json_schema_extra or {}) if field in names else "options"

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        def build(kwargs: dict[str, Any]) -> dict[str, Any]:
            values = {name: kwargs.pop(name) for name in names}
            try:
                built = model(**values)
            except ValidationError as exc:
                raise InvalidInputError(one_line(exc, model, flag_of, what="option")) from None
            return {**kwargs, receive_as: built}

        return _attach(command, option_parameters(model, names), build)

    return decorate


def with_model_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command every :class:`ModelSettings` option; it receives them as ``model``."""
    return with_settings_options(ModelSettings, "model")(command)


_CONTEXT = "_generation_options_context"  # typer passes its Context to a parameter annotated typer.Context


def _typed(context: Any, name: str) -> bool:
    source = context.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


def with_generation_options(exclude: Iterable[str] = (), defaults: dict[str, Any] | None = None
                            ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command every :class:`GenerationSettings` option but ``exclude``; it receives ``settings``
    (validated before anything slow runs) and, in ``settings_given``, the fields the user set explicitly."""
    skip = set(exclude)
    names = [n for n in GenerationSettings.model_fields if n not in skip]
    base = {n: GenerationSettings.model_fields[n].default for n in names}
    base.update(defaults or {})

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        wants_given = "settings_given" in inspect.signature(command).parameters

        def build(kwargs: dict[str, Any]) -> dict[str, Any]:
            context = kwargs.pop(_CONTEXT, None)
            values = {name: kwargs.pop(name) for name in names}
            # Typed, even when equal to the default (`--steps 30` must still beat a job file's steps).
            given = ({name for name in names if _typed(context, name)} if context is not None
                     else {name for name, value in values.items() if value != base[name]})
            # Only what the user chose counts as set: the rest may take a loaded preset's value (call_settings).
            declared = GenerationSettings.model_fields
            kwargs["settings"] = make_settings({n: v for n, v in values.items()
                                                if n in given or v != declared[n].default}, field_label)
            if wants_given:
                kwargs["settings_given"] = given
            return kwargs

        params = option_parameters(GenerationSettings, names, defaults)
        params.append(inspect.Parameter(_CONTEXT, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context))
        return _attach(command, params, build)

    return decorate


@contextmanager
def naming(flag: str, kind: type[InstantIDError] = InstantIDError) -> Iterator[None]:
    """An error of ``kind`` raised inside names the option it is about (``--pose: no face found in x.jpg``): the
    library speaks of faces and photos, the user typed a flag. The error keeps its type."""
    try:
        yield
    except kind as exc:
        exc.args = (f"{flag}: {exc}", *exc.args[1:])
        raise


# ---- photos -----------------------------------------------------------------------------------------------
# Values people type after an on/off option (`--overwrite true`), which click then reads as a photo.
_SWITCH_WORDS = ("true", "false", "yes", "no", "on", "off", "1", "0")


def check_photos(*photos: Any) -> None:
    """Every photo given exists (a typo is the first thing said, before even the face model loads)."""
    from instantid.errors import ImageReadError
    from instantid.faces.images import check_file

    for photo in photos:
        try:
            check_file(photo)
        except ImageReadError:
            if str(photo).lower() in _SWITCH_WORDS:
                raise InvalidInputError(f"{str(photo)!r} was read as a photo: on/off options take no value (write "
                                        "--overwrite, not --overwrite true; --no-face-detail to turn one off)"
                                        ) from None
            raise


# ---- servers ----------------------------------------------------------------------------------------------
def check_port(host: str, port: int) -> None:
    """``host:port`` can be listened on: a busy port is one line before minutes of model loading, not a library's
    traceback after them."""
    import errno
    import socket

    if not 0 <= port <= 65535:  # getaddrinfo would blame the host, or wrap the port round
        raise InvalidInputError(f"--port must be between 0 and 65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise InvalidInputError(f"--host {host}: not an address of this machine ({exc.strerror or exc})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn and gradio bind
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise InvalidInputError(f"--port {port}: {host}:{port} is in use (another server?); stop it or "
                                        "choose another --port") from None
            raise InvalidInputError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc})"
                                    ) from None


# ---- identity mixing on the command line -------------------------------------------------------------
MIX_HELP = (f"Mix in another person: PHOTO:WEIGHT, e.g. b.jpg:{MIX_WEIGHT_DEFAULT} (weight: "
            f"{MIX_WEIGHT_HELP[0].lower()}{MIX_WEIGHT_HELP[1:].rstrip('.')}); repeatable.")


def parse_mix(spec: str, flag: str = "--mix") -> tuple[Path, float]:
    """``"b.jpg:0.3"`` -> ``(Path("b.jpg"), 0.3)``; the weight is after the last colon, so paths may hold colons."""
    path, sep, weight = spec.rpartition(":")
    try:
        value = float(weight) if sep and path else None
    except ValueError:
        value = None
    low, high = MIX_WEIGHT_RANGE
    if value is None:
        raise InvalidInputError(f"{flag} takes PHOTO:WEIGHT with a weight between {low} and {high}, e.g. "
                                f"b.jpg:{MIX_WEIGHT_DEFAULT}; got {spec!r}")
    return Path(path), check_mix_weight(value, f"{flag} weight")


def apply_mixes(analyzer: Any, identity: Any, specs: Sequence[str], *, face_index: int | None = None,
                full_paths: bool = False, flag: str = "--mix") -> Any:
    """``identity`` mixed with each ``PHOTO:WEIGHT`` in turn (:meth:`Identity.mix`; the pose stays the identity's).

    Every spec is parsed before any photo is analysed, so a typo is reported at once."""
    from instantid.api.face_side import prepare_identity

    parsed = [parse_mix(spec, flag) for spec in specs]
    for path, weight in parsed:
        other = prepare_identity(analyzer, str(path), face_index=face_index, full_paths=full_paths)
        identity = identity.mix(other, weight, name=str(path.resolve()) if full_paths else path.name)
    return identity


__all__ = [
    "MIX_HELP", "apply_mixes", "check_photos", "check_port", "model_option", "naming", "option_parameters", "parse_mix",
    "with_generation_options", "with_model_options", "with_settings_options",
]
