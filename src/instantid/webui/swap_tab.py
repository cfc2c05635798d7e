"""The "Face swap" tab: the person from the Who panel painted into an existing picture (:mod:`instantid.swap`).

The picture is analysed when it is uploaded (every face drawn with its number, so the user can pick the target)
and its faces are reused for the swap, which goes to the UI's ``submit`` hook like every tab's job (under
``instantid serve``: the server's job queue). Controls: :class:`~instantid.swap.SwapOptions` and the generation
settings, both derived from their declarations; width and height are left out (the output is the picture's size).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import gradio as gr

from instantid.errors import InvalidInputError
from instantid.faces import load_image
from instantid.service.tasks import Prepared
from instantid.settings import make_settings
from instantid.swap import SwapOptions, make_swap_options
from instantid.webui.controls import controls, labels
from instantid.webui.portrait import save_results
from instantid.webui.references import Photo, PictureFaces
from instantid.webui.who import ANALYSIS_CONCURRENCY, DEFAULT_MIX, IDENTITY_FIELDS, WhoPanel

if TYPE_CHECKING:
    from instantid.webui import UIContext

# swap_face ignores these: the output is the picture's own size, and it has no face-detail pass of its own.
NOT_FOR_SWAP = ("width", "height", "face_detail", "face_detail_strength")
PREFIX = "swap-"
SCENES_KEPT = 16


class SwapTab:
    """Handlers plus layout; tests call :meth:`set_scene` and :meth:`swap` directly."""

    def __init__(self, ctx: UIContext, who: WhoPanel) -> None:
        self.ctx = ctx
        self.who = who
        self.options = controls(SwapOptions)
        self.settings = [c for c in controls() if c.name not in (*IDENTITY_FIELDS, *NOT_FOR_SWAP)]
        self.by_name = {c.name: c for c in [*self.options, *self.settings]}
        names = labels([*self.options, *self.settings])
        self.label = lambda field: names.get(field, field)
        self.faces = PictureFaces(lambda data, name: ctx.get_model().analyze(data, name), SCENES_KEPT,
                                  left_to_right=False)

    # ---- handlers -------------------------------------------------------------------------------
    def set_scene(self, file: str | None) -> tuple[Photo | None, Any, str]:
        """The picture's state, its faces drawn with their numbers, and a line saying which number is which."""
        if not file:
            return None, None, ""
        scene = Photo.from_upload(file)
        found, drawn = self.faces.drawn(scene)
        text = (f"**{len(found)} face{'s' if len(found) != 1 else ''}** in {scene.name}, numbered largest first; "
                "the target face index picks one.")
        return scene, drawn, text

    def swap(self, photos: Sequence[Photo], pose: Photo | None, scene: Photo | None, values: dict[str, Any],
             progress: Any = None, mix: Photo | None = None, mix_weight: float = DEFAULT_MIX
             ) -> tuple[list[Any], str]:
        """The swapped picture(s) into the outputs folder; gallery items and the info text."""
        if scene is None:
            raise InvalidInputError("upload the picture to put the face into")
        identity = self.who.identity(photos, pose, values.get("face_index"), values.get("fusion"), mix, mix_weight)
        raw = {name: control.value(values.get(name)) for name, control in self.by_name.items()}
        options = make_swap_options({c.name: raw[c.name] for c in self.options}, name=self.label)
        settings = make_settings({c.name: raw[c.name] for c in self.settings}, name=self.label)
        found = self.faces(scene)
        if options.target_index >= len(found):
            raise InvalidInputError(f"{scene.name} has {len(found)} face(s): choose a {self.label('target_index')} "
                                    f"from 0 to {len(found) - 1}")
        job = Prepared("swap", identity=identity, scene=load_image(scene.read(), scene.name), scene_name=scene.name,
                       target=found[options.target_index], swap=options)
        return save_results(self.ctx, self.ctx.submit(job, settings, progress), stem="swap")

    # ---- layout ----------------------------------------------------------------------------------
    def build(self) -> None:
        self.widgets: dict[str, Any] = {}
        self.scene_state = gr.State(None)
        with gr.Row(equal_height=False):
            with gr.Column(scale=4):
                gr.Markdown("### 2. Into which picture")
                self.scene = gr.Image(label="Picture to put the face into", type="filepath", sources=["upload"],
                                      height=200, elem_id=f"{PREFIX}scene")
                self.scene_faces = gr.Image(label="Faces found (numbered)", interactive=False, height=200,
                                            elem_id=f"{PREFIX}faces")
                self.scene_text = gr.Markdown(elem_id=f"{PREFIX}count")
                for control in [*self.options, *self.settings]:
                    if not control.advanced:
                        self.widgets[control.name] = control.build(PREFIX)
                with gr.Accordion("Advanced", open=False):
                    for control in [*self.options, *self.settings]:
                        if control.advanced:
                            self.widgets[control.name] = control.build(PREFIX)
                self.button = gr.Button("Swap", variant="primary", elem_id=f"{PREFIX}run")
            with gr.Column(scale=5):
                gr.Markdown("### 3. Result")
                self.gallery = gr.Gallery(label="Result", format="png", buttons=["download", "fullscreen"],
                                          columns=2, elem_id=f"{PREFIX}gallery", height=420)
                self.info = gr.Markdown(elem_id=f"{PREFIX}info")
        self._wire()

    def _wire(self) -> None:
        ctx, who, widgets = self.ctx, self.who, self.widgets
        shown = [self.scene_state, self.scene_faces, self.scene_text]
        self.scene.upload(ctx.guard(self.set_scene), self.scene, shown, concurrency_limit=ANALYSIS_CONCURRENCY,
                          concurrency_id="analysis").failure(lambda: None, None, self.scene, queue=False)
        self.scene.clear(lambda: (None, None, ""), None, shown, queue=False)
        option_widgets = dict(zip(IDENTITY_FIELDS, who.options, strict=True))

        def run(data: dict[Any, Any], progress: gr.Progress = gr.Progress()) -> tuple[list[Any], str]:
            photos = data[who.photos_state]
            if not photos:
                raise gr.Error("upload at least one face photo first", print_exception=False)
            values = {name: data[widget] for name, widget in {**option_widgets, **widgets}.items()}
            return self.swap(photos, data[who.pose_state], data[self.scene_state], values,
                             lambda step, total: progress((step, total), desc="denoising"), data[who.mix_state],
                             data[who.mix_weight])

        self.button.click(ctx.guard(run, job=True), {*who.inputs, *who.mix_inputs, self.scene_state, *widgets.values()},
                          [self.gallery, self.info], concurrency_limit=ctx.generation_concurrency,
                          concurrency_id="generation")
