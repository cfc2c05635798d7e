"""The "Face detail" tab: the faces of an existing picture redrawn as the person from the Who panel (the pass of
``instantid detail``, :mod:`instantid.service.detail`), for a picture made earlier, elsewhere, or without the
face-detail knob.

The picture is analysed when it is uploaded (its faces drawn and numbered largest first; the pass redraws up to
``max_faces`` of them) and the job goes to the UI's ``submit`` hook like every tab's (under ``instantid serve``:
the server's job queue). Controls: :class:`~instantid.face_detail.FaceDetailOptions` and the generation settings
the pass uses, both derived from their declarations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import gradio as gr

from instantid.errors import InvalidInputError
from instantid.faces import load_image
from instantid.service.detail import DetailOptions, make_detail_options
from instantid.service.tasks import UNUSED_SETTINGS, Prepared
from instantid.settings import make_settings
from instantid.webui.controls import controls, labels
from instantid.webui.portrait import save_results
from instantid.webui.references import Photo, PictureFaces
from instantid.webui.who import ANALYSIS_CONCURRENCY, DEFAULT_MIX, IDENTITY_FIELDS, WhoPanel

if TYPE_CHECKING:
    from instantid.webui import UIContext

PREFIX = "detail-"
PICTURES_KEPT = 16


class DetailTab:
    """Handlers plus layout; tests call :meth:`set_picture` and :meth:`detail` directly."""

    def __init__(self, ctx: UIContext, who: WhoPanel) -> None:
        self.ctx = ctx
        self.who = who
        self.options = controls(DetailOptions)
        # The settings the pass cannot honour are the ones /v1/detail refuses: one list for both surfaces.
        unused = (*IDENTITY_FIELDS, *UNUSED_SETTINGS["detail"])
        self.settings = [c for c in controls() if c.name not in unused]
        self.by_name = {c.name: c for c in [*self.options, *self.settings]}
        names = labels([*self.options, *self.settings])
        self.label = lambda field: names.get(field, field)
        self.faces = PictureFaces(lambda data, name: ctx.get_model().analyze(data, name), PICTURES_KEPT)

    # ---- handlers -------------------------------------------------------------------------------
    def set_picture(self, file: str | None) -> tuple[Photo | None, Any, str]:
        """The picture's state, its faces drawn with their numbers, and a line saying how many are redrawn."""
        if not file:
            return None, None, ""
        picture = Photo.from_upload(file)
        found, drawn = self.faces.drawn(picture)
        text = (f"**{len(found)} face{'s' if len(found) != 1 else ''}** in {picture.name}, numbered largest first; "
                f"the largest ones are redrawn, up to '{self.label('max_faces')}'.")
        return picture, drawn, text

    def detail(self, photos: Sequence[Photo], pose: Photo | None, picture: Photo | None, values: dict[str, Any],
               progress: Any = None, mix: Photo | None = None, mix_weight: float = DEFAULT_MIX
               ) -> tuple[list[Any], str]:
        """The picture with its faces redrawn, into the outputs folder; gallery items and the info text."""
        if picture is None:
            raise InvalidInputError("upload the picture whose faces are redrawn")
        identity = self.who.identity(photos, pose, values.get("face_index"), values.get("fusion"), mix, mix_weight)
        raw = {name: control.value(values.get(name)) for name, control in self.by_name.items()}
        options = make_detail_options({c.name: raw[c.name] for c in self.options}, name=self.label)
        settings = make_settings({c.name: raw[c.name] for c in self.settings}, name=self.label)
        found = self.faces.largest_first(picture)  # found at upload: no new analysis, here or in the job
        job = Prepared("detail", identity=identity, scene=load_image(picture.read(), picture.name),
                       scene_name=picture.name, detail=options, picture_faces=tuple(found))
        return save_results(self.ctx, self.ctx.submit(job, settings, progress), stem="detail")

    # ---- layout ----------------------------------------------------------------------------------
    def build(self) -> None:
        self.widgets: dict[str, Any] = {}
        self.picture_state = gr.State(None)
        with gr.Row(equal_height=False):
            with gr.Column(scale=4):
                gr.Markdown("### 2. Which picture")
                self.picture = gr.Image(label="Picture whose faces are redrawn", type="filepath", sources=["upload"],
                                        height=200, elem_id=f"{PREFIX}picture")
                self.picture_faces = gr.Image(label="Faces found (numbered)", interactive=False, height=200,
                                              elem_id=f"{PREFIX}faces")
                self.picture_text = gr.Markdown(elem_id=f"{PREFIX}count")
                for control in [*self.options, *self.settings]:
                    if not control.advanced:
                        self.widgets[control.name] = control.build(PREFIX)
                with gr.Accordion("Advanced", open=False):
                    for control in [*self.options, *self.settings]:
                        if control.advanced:
                            self.widgets[control.name] = control.build(PREFIX)
                self.button = gr.Button("Redraw the faces", variant="primary", elem_id=f"{PREFIX}run")
            with gr.Column(scale=5):
                gr.Markdown("### 3. Result")
                self.gallery = gr.Gallery(label="Result", format="png", buttons=["download", "fullscreen"],
                                          columns=2, elem_id=f"{PREFIX}gallery", height=420)
                self.info = gr.Markdown(elem_id=f"{PREFIX}info")
        self._wire()

    def _wire(self) -> None:
        ctx, who, widgets = self.ctx, self.who, self.widgets
        shown = [self.picture_state, self.picture_faces, self.picture_text]
        self.picture.upload(ctx.guard(self.set_picture), self.picture, shown, concurrency_limit=ANALYSIS_CONCURRENCY,
                            concurrency_id="analysis").failure(lambda: None, None, self.picture, queue=False)
        self.picture.clear(lambda: (None, None, ""), None, shown, queue=False)
        option_widgets = dict(zip(IDENTITY_FIELDS, who.options, strict=True))

        def run(data: dict[Any, Any], progress: gr.Progress = gr.Progress()) -> tuple[list[Any], str]:
            photos = data[who.photos_state]
            if not photos:
                raise gr.Error("upload at least one face photo first", print_exception=False)
            values = {name: data[widget] for name, widget in {**option_widgets, **widgets}.items()}
            return self.detail(photos, data[who.pose_state], data[self.picture_state], values,
                               lambda step, total: progress((step, total), desc="denoising"), data[who.mix_state],
                               data[who.mix_weight])

        self.button.click(ctx.guard(run, job=True),
                          {*who.inputs, *who.mix_inputs, self.picture_state, *widgets.values()},
                          [self.gallery, self.info], concurrency_limit=ctx.generation_concurrency,
                          concurrency_id="generation")
