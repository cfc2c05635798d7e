"""Every generation knob, declared once: name, type, default, range, help, command-line flag and UI control.

The Python defaults (:class:`GenerationSettings`), the CLI options (``instantid generate`` / ``batch``), the
HTTP schema (``POST /v1/generate``, OpenAPI) and the web UI controls are all derived from the fields below, so
adding a knob here makes it appear on every surface and ranges cannot drift apart.

Field metadata (``json_schema_extra``) read by the surfaces:

* ``flag``: the command-line spelling (default ``--field-name``); errors on the CLI name the flag;
* ``short``: an optional one-letter CLI alias;
* ``ui``: ``slider`` / ``number`` / ``text`` / ``checkbox`` / ``dropdown`` / ``hidden`` and ``step`` for sliders;
* ``advanced``: shown in the UI's "Advanced" section.

Importing this module is cheap (no torch), so ``instantid --help`` stays fast.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from instantid.api.styles import STYLES, get_style
from instantid.api.validation import validated
from instantid.core.style_blocks import STYLE_BLOCKS
from instantid.errors import InvalidInputError
from instantid.pipelines.schedulers import SCHEDULERS

MAX_SEED = 2**32 - 1
RANDOM_SEED = -1  # "random", as A1111, ComfyUI and Replicate clients send it: taken as no seed
MAX_IMAGES = 16
# People in one picture (InstantID.generate_group), the same on every surface: one person is a plain generation;
# past four, a face in a 1024-1280 px picture gets under the face models' ~112 px working size.
MIN_PEOPLE, MAX_PEOPLE = 2, 4

CONTROL_KINDS = ("pose", "canny", "depth")  # the extra ControlNets; their strengths are `<kind>_strength`
_ONE_PERSON_ONLY = {name: "the extra ControlNets and image-to-image are for one-person pictures"
                    for name in ("pose_strength", "canny_strength", "depth_strength", "denoising_strength")}
# Settings a task cannot honour, and why: every surface leaves them out (CLI, web UI) or refuses a value away from
# the default (HTTP) rather than ignoring it silently.
_NO_STYLE = "style images are for generate and group pictures"
UNUSED_SETTINGS: dict[str, dict[str, str]] = {
    "generate": {},
    "swap": {**_ONE_PERSON_ONLY, "style_strength": _NO_STYLE, "style_blocks": _NO_STYLE,
             "width": "the output has the scene's size", "height": "the output has the scene's size",
             "face_detail": "the swapped face is already drawn at the model's resolution",
             "face_detail_strength": "the swapped face is already drawn at the model's resolution"},
    "group": {**_ONE_PERSON_ONLY,
              "face_detail": "the face-detail pass is not available for group pictures",
              "face_detail_strength": "the face-detail pass is not available for group pictures"},
    "detail": {**_ONE_PERSON_ONLY, "width": "the output has the picture's size",
               "height": "the output has the picture's size", "num_images": "one picture in, one picture out",
               "style_strength": _NO_STYLE, "style_blocks": _NO_STYLE,
               "face_detail": "this is the face-detail pass", "face_detail_strength": "use strength"},
}


def check_used(settings: GenerationSettings, task: str, where: str, name: Callable[[str], str] = lambda n: n
               ) -> None:
    """Refuse a value away from the default for a setting ``task`` cannot use (:data:`UNUSED_SETTINGS`): the one
    check behind every surface that takes such a setting at all; ``where`` names the call (``/v1/swap``)."""
    for field, why in UNUSED_SETTINGS[task].items():
        if getattr(settings, field) != GenerationSettings.model_fields[field].default:
            raise InvalidInputError(f"{name(field)} is not used by {where}: {why}")


def check_people(count: int, how: str = "") -> None:
    """The one rule on the number of people in a group picture; ``how`` says how the calling surface takes
    people (e.g. "one --person per person")."""
    if not MIN_PEOPLE <= count <= MAX_PEOPLE:
        alone = "; for one person, make a plain portrait" if count == 1 else ""
        raise InvalidInputError(f"a picture of several people takes {MIN_PEOPLE} to {MAX_PEOPLE} people"
                                f"{f' ({how})' if how else ''}, got {count}{alone}")

SchedulerName = Literal[tuple(SCHEDULERS)]  # type: ignore[valid-type]
StyleName = Literal[tuple(STYLES)]  # type: ignore[valid-type]
StyleBlocks = Literal[tuple(STYLE_BLOCKS)]  # type: ignore[valid-type]
FUSIONS = ("auto", "mean", "weighted", "robust")
Fusion = Literal[FUSIONS]  # type: ignore[valid-type]


def knob(default: Any, help: str, *, flag: str | None = None, short: str | None = None, ui: str = "number",
         step: float | None = None, advanced: bool = False, **limits: Any) -> Any:
    """A settings field with the metadata every surface reads (see the module docstring)."""
    extra: dict[str, Any] = {"ui": ui, "advanced": advanced}
    if flag:
        extra["flag"] = flag
    if short:
        extra["short"] = short
    if step is not None:
        extra["step"] = step
    return Field(default, description=help, json_schema_extra=extra, **limits)


def face_detail_strength_knob(**shown: Any) -> Any:
    """The face-detail pass's denoising strength, declared once: the ``face_detail_strength`` setting and
    :class:`~instantid.api.face_detail.FaceDetailOptions`' ``strength`` (0.4: ADetailer's default, enough to
    redraw a small face's features, little enough to keep its colours, lighting and place in the picture)."""
    return knob(0.4, "How much each face is re-denoised by the face-detail pass (1 = redrawn from scratch).",
                ui="slider", step=0.05, ge=0.05, le=1, **shown)


class GenerationSettings(BaseModel):
    """Everything one generation needs besides the identity. Defaults are the published demo's."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    prompt: str = knob("", "What to make; empty = from the face alone (image-only generation).", short="-p",
                       ui="text", max_length=4000)
    negative_prompt: str = knob("", "What to avoid.", ui="text", advanced=True, max_length=4000)
    comma_padding: int = knob(
        0, "Long prompts (over 75 tokens): move the words after a 75-token chunk's last comma, if at most N tokens "
        "back, to the next chunk, as A1111's 'pad prompt to the last comma' (A1111 uses 20; 0 = off).",
        ui="slider", step=1, advanced=True, ge=0, le=74)
    style: StyleName | None = knob(None, "Style preset (a template around the prompt).", ui="dropdown")
    num_images: int = knob(1, "Images per call (consecutive seeds).", ui="slider", step=1, advanced=True,
                           ge=1, le=MAX_IMAGES)
    seed: Annotated[int | None, AfterValidator(lambda seed: None if seed == RANDOM_SEED else seed)] = knob(
        None, "Seed; empty or -1 = random (the seed used is recorded in the output).", ge=RANDOM_SEED, le=MAX_SEED)
    steps: int = knob(30, "Denoising steps.", ui="slider", step=1, advanced=True, ge=1, le=200)
    guidance_scale: float = knob(5.0, "Classifier-free guidance scale (text adherence).", flag="--guidance",
                                 ui="slider", step=0.1, advanced=True, ge=0, le=30)
    identitynet_strength: float = knob(0.8, "IdentityNet (ControlNet) strength: likeness and pose.", ui="slider",
                                       step=0.05, ge=0, le=2)
    adapter_strength: float = knob(0.8, "Image adapter strength: identity detail.", ui="slider", step=0.05,
                                   ge=0, le=2)
    style_strength: float = knob(1.0, "How much of the style image(s) the picture takes (InstantStyle; with a style "
                                 "image only); 0 = none.", ui="slider", step=0.05, ge=0, le=2)
    style_blocks: StyleBlocks = knob("style", "Where the style image acts: style (InstantStyle's style block: "
                                     "colours, textures) or style+layout (its composition too).", ui="dropdown",
                                     advanced=True)
    width: int | None = knob(None, "Output width, multiple of 8 (default: from the face or pose photo).",
                             advanced=True, ge=64, le=2048, multiple_of=8)
    height: int | None = knob(None, "Output height, multiple of 8.", advanced=True, ge=64, le=2048, multiple_of=8)
    enhance_face_region: bool = knob(True, "IdentityNet and the adapter act on the face region only.",
                                     ui="checkbox", advanced=True)
    control_guidance_start: float = knob(0.0, "Fraction of the steps after which IdentityNet starts.",
                                         ui="slider", step=0.05, advanced=True, ge=0, le=1)
    control_guidance_end: float = knob(1.0, "Fraction of the steps after which IdentityNet stops.",
                                       ui="slider", step=0.05, advanced=True, ge=0, le=1)
    identitynet_cache_interval: int = knob(
        1, "Lossy speed lever: run IdentityNet every N-th step and reuse its output in between (1 = every step, "
        "exact; 2 = about half its cost; pictures change slightly).", ui="slider", step=1, advanced=True, ge=1, le=8)
    scheduler: SchedulerName | None = knob(None, "Sampler for this generation (default: the model's).",
                                           ui="dropdown", advanced=True)
    face_index: int | None = knob(None, "Which face in the photos, 0 = largest (default: the largest).",
                                  advanced=True, ge=0, le=63)
    fusion: Fusion = knob("auto", "How several reference photos become one identity: mean, weighted (by "
                          "photo quality), robust (drops outliers); auto = robust for 3+ photos, else mean.",
                          ui="dropdown", advanced=True)

    # The published demo's extra ControlNets (OpenPose, Canny, depth: instantid.core.control_maps), each fed a map
    # made from the pose photo, else the face photo, beside IdentityNet; 0 = that net is not loaded or run.
    pose_strength: float = knob(0.0, "Extra OpenPose ControlNet: body pose from the pose photo (else the face "
                                "photo); 0 = off (the published demo uses 0.4).", ui="slider", step=0.05,
                                advanced=True, ge=0, le=1.5)
    canny_strength: float = knob(0.0, "Extra Canny ControlNet: edges of the pose photo (else the face photo); "
                                 "0 = off (the published demo uses 0.4).", ui="slider", step=0.05, advanced=True,
                                 ge=0, le=1.5)
    depth_strength: float = knob(0.0, "Extra depth ControlNet: depth of the pose photo (else the face photo); "
                                 "0 = off (the published demo uses 0.4).", ui="slider", step=0.05, advanced=True,
                                 ge=0, le=1.5)
    denoising_strength: float = knob(0.8, "Image-to-image (with an init image): how much of it is redrawn, 1 = "
                                     "all of it.", ui="slider", step=0.05, advanced=True, ge=0.05, le=1)

    face_detail: bool = knob(False, "Second pass: find each face in the result and redraw it at the model's full "
                             "resolution (small faces, full-body pictures).", ui="checkbox", advanced=True)
    face_detail_strength: float = face_detail_strength_knob(advanced=True)

    def updated(self, **changes: Any) -> GenerationSettings:
        """A validated copy with ``changes`` applied (``None`` values are real values, e.g. a random seed).

        The copy remembers which fields were chosen (pydantic's ``model_fields_set``: these and ``changes``), so a
        field left at its default still takes a loaded few-step preset's value (:meth:`InstantID.call_settings`).
        """
        return make_settings({**self.model_dump(exclude_unset=True), **changes})

    def control_strengths(self) -> dict[str, float]:
        """The extra ControlNets this call runs (strength above 0), by kind, in :data:`CONTROL_KINDS` order."""
        return {kind: getattr(self, f"{kind}_strength") for kind in CONTROL_KINDS
                if getattr(self, f"{kind}_strength") > 0}

    def check_init_image(self, given: bool, name: str = "an init image") -> None:
        """The one rule for image-to-image: a denoising strength away from its default needs an init image
        (``name``: how the calling surface takes it), rather than being ignored; with one, chosen steps must run
        at least one (the default 30 always do; a few-step preset's are known once it is loaded)."""
        if not given and self.denoising_strength != GenerationSettings.model_fields["denoising_strength"].default:
            raise InvalidInputError(f"denoising_strength is for image-to-image: give {name} too")
        if given and "steps" in self.model_fields_set:
            self.check_init_steps()

    def check_init_steps(self) -> None:
        """Image-to-image runs int(steps x denoising strength) steps (diffusers' img2img rule): refuse zero, a
        picture returned unchanged, before the model load rather than after it."""
        if int(self.steps * self.denoising_strength) < 1:
            raise InvalidInputError(f"denoising strength {self.denoising_strength} of {self.steps} steps "
                                    "runs no step; raise the strength or the steps")

    def record(self) -> dict[str, Any]:
        """JSON for a job record: every value, plus which ones were chosen (see :func:`settings_from_record`)."""
        return {**self.model_dump(), CHOSEN_KEY: sorted(self.model_fields_set)}


CHOSEN_KEY = "_chosen"  # in a recorded settings dict: the fields the caller chose (the rest took defaults)


def settings_from_record(values: dict[str, Any]) -> GenerationSettings:
    """Settings again from :meth:`GenerationSettings.record` (or a plain dump, whose fields all count as chosen)."""
    values = dict(values)
    chosen = values.pop(CHOSEN_KEY, None)
    if chosen is not None:
        values = {k: v for k, v in values.items() if k in chosen}
    return GenerationSettings.model_validate(values)


def field_label(name: str) -> str:
    """The CLI flag of a field (``--guidance`` for ``guidance_scale``)."""
    info = GenerationSettings.model_fields.get(name)
    extra = (info.json_schema_extra if info is not None else None) or {}
    return str(extra.get("flag") or "--" + name.replace("_", "-"))


def make_settings(values: dict[str, Any], name: Callable[[str], str] = lambda n: n) -> GenerationSettings:
    """Validate ``values`` into settings; errors are one :class:`InvalidInputError` line that names the field as
    the user typed it (``name`` maps a field to its spelling on the calling surface, e.g. :func:`field_label`)."""
    settings = validated(GenerationSettings, normalize(values), name)  # style names resolved first (friendly)
    if (settings.width is None) != (settings.height is None):
        raise InvalidInputError(f"give both {name('width')} and {name('height')}, or neither")
    if not settings.control_guidance_start < settings.control_guidance_end:
        raise InvalidInputError(
            f"{name('control_guidance_start')} must be below {name('control_guidance_end')}, got "
            f"{settings.control_guidance_start} and {settings.control_guidance_end}"
        )
    return settings


def with_overrides(settings: GenerationSettings | Mapping[str, Any] | None,
                    overrides: dict[str, Any]) -> GenerationSettings:
    """``settings`` (default: the defaults; a dict of its fields is validated as the JSON API validates one) with
    keyword overrides applied and validated."""
    if isinstance(settings, Mapping):
        settings = make_settings(dict(settings))
    elif settings is not None and not isinstance(settings, GenerationSettings):
        raise InvalidInputError(f"settings must be GenerationSettings or a dict of its fields, got "
                                f"{type(settings).__name__}")
    settings = settings or GenerationSettings()
    return settings.updated(**overrides) if overrides else settings


def resolve_style(name: str | None) -> str | None:
    """A style's canonical name from any spelling the user typed ("watercolor" -> "Watercolor")."""
    style = get_style(name)
    return None if style.name == "(No style)" else style.name


def normalize(values: dict[str, Any]) -> dict[str, Any]:
    """Friendly spellings before validation: style names case-insensitively, ``none`` style = no style."""
    if values.get("style") is not None:
        values = {**values, "style": resolve_style(values["style"])}
    return values
