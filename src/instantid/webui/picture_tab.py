"""What the "Face swap" and "Face detail" tabs share: a picture the user already has, analysed on upload (its
faces drawn and numbered largest first and kept for the job, so it is not analysed again), the tab's own options
and the generation settings it uses (both derived from their declarations), and a click that hands the job to
the UI's ``submit`` hook (under ``instantid serve``: the server's job queue)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import gradio as gr
from pydantic import BaseModel

from instantid.errors import InvalidInputError
from instantid.webui.controls import Control, controls, labels
from instantid.webui.layout import build_controls, result_column, who_and_values
from instantid.webui.references import Photo, PictureFaces
from instantid.webui.who import ANALYSIS_CONCURRENCY, DEFAULT_MIX, IDENTITY_FIELDS, WhoPanel, clear_error_mark

if TYPE_CHECKING:
    from instantid.api.identity import Identity
    from instantid.api.settings import GenerationSettings
    from instantid.faces import Face
    from instantid.webui.context import UIContext

PICTURES_KEPT = 16  # analysed pictures remembered per tab


class PictureTab:
    """Handlers plus layout of a tab that works on an uploaded picture; a subclass names its options, the
    settings it cannot use, its words, and :meth:`run` (the job made from the identity and the picture)."""

    prefix: str  # element ids start with it
    options_model: type[BaseModel]
    unused_settings: tuple[str, ...] = ()
    heading: str  # "### 2. ..." above the picture
    picture_label: str
    picture_slot: str  # element id of the picture box after the prefix
    button_label: str
    faces_hint: str  # after "N faces in NAME, numbered largest first; "
    no_picture: str  # the error when Run is clicked without a picture

    def __init__(self, ctx: UIContext, who: WhoPanel) -> None:
        self.ctx = ctx
        self.who = who
        self.options: list[Control] = controls(self.options_model)
        self.settings = [c for c in controls() if c.name not in (*IDENTITY_FIELDS, *self.unused_settings)]
        self.by_name = {c.name: c for c in [*self.options, *self.settings]}
        names = labels([*self.options, *self.settings])
        self.label = lambda field: names.get(field, field)
        self.faces = PictureFaces(lambda data, name: ctx.get_model().analyze(data, name), PICTURES_KEPT,
                                  left_to_right=False)

    # ---- handlers -------------------------------------------------------------------------------
    def set_picture(self, file: str | None) -> tuple[Photo | None, Any, str]:
        """The picture's state, its faces drawn with their numbers, and a line on what the numbers are for."""
        if not file:
            return None, None, ""
        picture = Photo.from_upload(file)
        found, drawn = self.faces.drawn(picture)
        text = (f"**{len(found)} face{'s' if len(found) != 1 else ''}** in {picture.name}, numbered largest first; "
                f"{self.faces_hint}")
        return picture, drawn, text

    def make(self, photos: Sequence[Photo], pose: Photo | None, picture: Photo | None, values: dict[str, Any],
             progress: Any = None, mix: Photo | None = None, mix_weight: float = DEFAULT_MIX
             ) -> tuple[list[Any], str]:
        """The tab's result into the outputs folder; gallery items and the info text. ``values`` are raw control
        values by field name (Who's face choice and fusion included)."""
        if picture is None:
            raise InvalidInputError(self.no_picture)
        settings = self.who.settings(values, self.settings, self.label)
        identity = self.who.identity_for(photos, pose, settings, mix, mix_weight)
        raw = {c.name: c.value(values.get(c.name)) for c in self.options}
        return self.run(identity, picture, self.faces.largest_first(picture), raw, settings, progress)

    def run(self, identity: Identity, picture: Photo, faces: Sequence[Face], raw: dict[str, Any],
            settings: GenerationSettings, progress: Any) -> tuple[list[Any], str]:
        """The tab's job from the identity, the picture, its faces (largest first), the raw values of the tab's
        options and the job's settings (the Who panel's face choice included)."""
        raise NotImplementedError(f"{type(self).__name__} must define run")

    # ---- layout ----------------------------------------------------------------------------------
    def build(self) -> None:
        self.picture_state = gr.State(None)
        with gr.Row(equal_height=False):
            with gr.Column(scale=4):
                gr.Markdown(self.heading)
                self.picture = gr.Image(label=self.picture_label, type="filepath", sources=["upload"], height=200,
                                        elem_id=f"{self.prefix}{self.picture_slot}")
                self.picture_faces = gr.Image(label="Faces found (numbered)", interactive=False, height=200,
                                              elem_id=f"{self.prefix}faces")
                self.picture_text = gr.Markdown(elem_id=f"{self.prefix}count")
                self.widgets = build_controls([*self.options, *self.settings], self.prefix)
                self.button = gr.Button(self.button_label, variant="primary", elem_id=f"{self.prefix}run")
            self.gallery, self.info = result_column(self.prefix)
        self._wire()

    def _wire(self) -> None:
        ctx, who = self.ctx, self.who
        shown = [self.picture_state, self.picture_faces, self.picture_text]
        uploaded = self.picture.upload(ctx.guard(self.set_picture), self.picture, shown,
                                       concurrency_limit=ANALYSIS_CONCURRENCY, concurrency_id="analysis")
        uploaded.failure(lambda: None, None, self.picture, queue=False)
        clear_error_mark(uploaded, self.picture_faces, self.picture_text)
        self.picture.clear(lambda: (None, None, ""), None, shown, queue=False)

        def click(data: dict[Any, Any], progress: gr.Progress = gr.Progress()) -> tuple[list[Any], str]:
            photos, values = who_and_values(who, self.widgets, data)
            return self.make(photos, data[who.pose_state], data[self.picture_state], values,
                             lambda step, total: progress((step, total), desc="denoising"), data[who.mix_state],
                             data[who.mix_weight])

        clear_error_mark(self.button.click(ctx.guard(click, job=True),
                                           {*who.inputs, *who.mix_inputs, self.picture_state, *self.widgets.values()},
                                           [self.gallery, self.info], concurrency_limit=ctx.generation_concurrency,
                                           concurrency_id="generation"), self.gallery, self.info)
