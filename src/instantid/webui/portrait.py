"""The "Portrait" tab: reference photos of one person (+ optional pose photo) and a prompt in, images out.

Photos are analysed when they are uploaded (the preview shows the face that was found, with its box and five
keypoints) and the resulting Identity is reused for every generation from them. Generation settings are the
schema-derived controls of :mod:`instantid.webui.controls`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from instantid.outputs import write_image
from instantid.settings import make_settings
from instantid.webui.controls import controls, labels
from instantid.webui.references import Photo, merge, photos_from_uploads, preview, summary, warnings_text

if TYPE_CHECKING:
    from instantid.identity import Identity
    from instantid.webui import UIContext

# Settings that decide which face is used and how photos are fused: they live beside the photos and a change
# re-analyses (through the cache), the rest only matter at generation.
IDENTITY_FIELDS = ("face_index", "fusion")
SIZES = {
    "1024x1024": (1024, 1024), "896x1152 (portrait)": (896, 1152), "1152x896 (landscape)": (1152, 896),
    "768x1344 (tall)": (768, 1344), "512x512 (fast preview)": (512, 512),
}
EXAMPLE_PROMPTS = (
    ("a portrait in the snow, soft light", "Snow"),
    ("an astronaut on Mars, helmet under the arm", "Mars"),
    ("a watercolour portrait in a summer garden", "Watercolor"),
)
ANALYSIS_CONCURRENCY = 4  # face analysis must not queue behind a long generation


class PortraitTab:
    """State-free handlers (state travels in gr.State) plus the layout; tests call the handlers directly."""

    def __init__(self, ctx: UIContext) -> None:
        self.ctx = ctx
        self.controls = controls()
        self.by_name = {c.name: c for c in self.controls}
        names = labels(self.controls)
        self.label = lambda field: names.get(field, field)  # errors name the control the user sees

    # ---- handlers -------------------------------------------------------------------------------
    def identity_options(self, face_index: Any, fusion: Any) -> tuple[int | None, str]:
        values = {"face_index": self.by_name["face_index"].value(face_index),
                  "fusion": self.by_name["fusion"].value(fusion)}
        settings = make_settings(values, name=self.label)
        return settings.face_index, settings.fusion

    def analyse(self, photos: Sequence[Photo], pose: Photo | None, face_index: Any, fusion: Any
                ) -> tuple[Identity | None, list[tuple[Any, str]], str, str]:
        """Identity (analysed now, or from the cache), preview items, count line, warnings."""
        if not photos:
            return None, [], summary(None), ""
        identity = self.ctx.identities.get(photos, pose, *self.identity_options(face_index, fusion))
        return identity, preview(identity, photos, pose), summary(identity), warnings_text(identity)

    def upload(self, files: Any, current: Sequence[Photo], pose: Photo | None, face_index: Any, fusion: Any,
               add: bool = False) -> tuple[tuple[Photo, ...], list[tuple[Any, str]], str, str]:
        """New photos replace the set, or join it with ``add``; the set only changes if analysis succeeds."""
        photos = merge(current, photos_from_uploads(files), add)
        _, items, count, warnings = self.analyse(photos, pose, face_index, fusion)
        return photos, items, count, warnings

    def load_example(self, file: str | None, current: Sequence[Photo], pose: Photo | None, face_index: Any,
                     fusion: Any) -> tuple[Any, ...]:
        """An example click: the photo replaces the set (the reset to empty afterwards changes nothing)."""
        if not file:
            return current, gr.skip(), gr.skip(), gr.skip()
        return self.upload(file, current, pose, face_index, fusion)

    def set_pose(self, file: str | None, photos: Sequence[Photo], face_index: Any, fusion: Any
                 ) -> tuple[Photo | None, list[tuple[Any, str]], str, str]:
        pose = Photo.from_upload(file) if file else None
        _, items, count, warnings = self.analyse(photos, pose, face_index, fusion)
        return pose, items, count, warnings

    def generate(self, photos: Sequence[Photo], pose: Photo | None, values: dict[str, Any],
                 progress: Any = None) -> tuple[list[tuple[str, str]], str]:
        """Images into the outputs folder; returns gallery items and the info text."""
        settings = make_settings({name: self.by_name[name].value(raw) for name, raw in values.items()},
                                 name=self.label)
        identity = self.ctx.identities.get(photos, pose, settings.face_index, settings.fusion)
        result = self.ctx.submit(identity, settings, progress)
        gallery = []
        for i, image in enumerate(result.images):
            metadata = result.image_metadata(i)
            path = write_image(image, metadata, self.ctx.out_dir, f"instantid-{metadata['seed']}")
            gallery.append((str(path), f"seed {metadata['seed']}"))
        names = ", ".join(Path(path).name for path, _ in gallery)
        info = (f"Seed {result.settings.seed}, {result.metadata['width']}x{result.metadata['height']}, "
                f"{result.settings.steps} steps, {result.metadata.get('sampler', '')}. Saved as {names}.\n\n"
                f"Prompt used: {result.metadata['prompt'] or '(none: from the face alone)'}")
        if self.ctx.demo():
            info += "\n\n" + self.ctx.demo_notice
        return gallery, info

    # ---- layout ----------------------------------------------------------------------------------
    def build(self) -> None:
        """Three columns (who, what, result), then the events."""
        self.photos_state = gr.State(())
        self.pose_state = gr.State(None)
        self.widgets: dict[str, Any] = {}
        with gr.Row(equal_height=False):
            with gr.Column(scale=4):
                self._who()
            with gr.Column(scale=4):
                self._what()
            with gr.Column(scale=5):
                gr.Markdown("### 3. Result")
                self.gallery = gr.Gallery(label="Result", format="png", buttons=["download", "fullscreen"],
                                          columns=2, elem_id="gallery", height=420)
                self.info = gr.Markdown(elem_id="info")
                gr.Markdown(f"Images and their settings (PNG + JSON) are saved to `{self.ctx.out_dir}`.",
                            elem_id="out-dir")
        self._wire_photos()
        self._wire_generation()

    def _who(self) -> None:
        gr.Markdown("### 1. Who")
        self.upload_box = gr.File(label="Face photo(s) of one person: a new upload replaces the set",
                                  file_count="multiple", file_types=["image"], type="filepath", elem_id="faces",
                                  height=120)
        with gr.Row():
            self.add_button = gr.UploadButton("+ Add another photo of the same person", file_count="multiple",
                                              file_types=["image"], elem_id="add-photo", size="sm")
            self.clear_button = gr.Button("Clear photos", size="sm", elem_id="clear-photos")
        self.references = gr.Gallery(label="References: the face used, with its box and five keypoints",
                                     columns=3, height=260, object_fit="contain", elem_id="references",
                                     interactive=False, buttons=["fullscreen"])
        self.count = gr.Markdown(summary(None), elem_id="reference-count")
        self.warnings = gr.Markdown(elem_id="reference-warnings")
        with gr.Accordion("Pose photo and face choice", open=False):
            self.pose = gr.Image(label="Pose photo (optional): keypoints and size from here", type="filepath",
                                 sources=["upload"], height=180, elem_id="pose")
            for name in IDENTITY_FIELDS:
                self.widgets[name] = self.by_name[name].build()

    def _what(self) -> None:
        gr.Markdown("### 2. What")
        rest = [c for c in self.controls if c.name not in IDENTITY_FIELDS]
        for control in rest:
            if not control.advanced:
                self.widgets[control.name] = control.build()
        self.fast = gr.Checkbox(False, label="Few-step (LCM)", info=self.ctx.few_step_info(), elem_id="few-step")
        with gr.Accordion("Advanced", open=False):
            self.size = gr.Dropdown(list(SIZES), value=None, label="Size preset (sets width and height)")
            for control in rest:
                if control.advanced:
                    self.widgets[control.name] = control.build()
        self.button = gr.Button("Generate", variant="primary", elem_id="generate")
        self.example = self._examples(self.widgets["prompt"], self.widgets["style"])

    def _wire_photos(self) -> None:
        """Uploads, the add button, clearing, the pose photo, face choice and examples: each re-analyses."""
        guard = self.ctx.guard
        identity_inputs = [self.widgets[name] for name in IDENTITY_FIELDS]
        state = [self.photos_state, self.pose_state, *identity_inputs]
        shown = [self.references, self.count, self.warnings]
        events = {"concurrency_limit": ANALYSIS_CONCURRENCY, "concurrency_id": "analysis"}
        # The box is emptied after each upload, so the next one is a fresh set (gradio's File would append).
        self.upload_box.upload(guard(self.upload), [self.upload_box, *state], [self.photos_state, *shown],
                               **events).then(lambda: None, None, self.upload_box, queue=False)
        self.add_button.upload(guard(functools.partial(self.upload, add=True)), [self.add_button, *state],
                               [self.photos_state, *shown], **events)
        self.clear_button.click(lambda: ((), [], summary(None), ""), None, [self.photos_state, *shown],
                                queue=False)
        pose_inputs = [self.pose, self.photos_state, *identity_inputs]
        # A pose photo without a face is refused (the error says so) and taken off the screen, so what is shown
        # is what generation uses.
        self.pose.upload(guard(self.set_pose), pose_inputs, [self.pose_state, *shown], **events
                         ).failure(lambda: None, None, self.pose, queue=False)
        self.pose.clear(guard(self.set_pose), pose_inputs, [self.pose_state, *shown], **events)
        for widget in identity_inputs:
            widget.change(guard(lambda *a: self.analyse(*a)[1:]), state, shown, **events)
        if self.example is not None:
            self.example.change(guard(self.load_example), [self.example, *state], [self.photos_state, *shown],
                                **events).then(lambda: None, None, self.example, queue=False)

    def _wire_generation(self) -> None:
        ctx, widgets = self.ctx, self.widgets
        few_step = [widgets[name] for name in ctx.few_step_fields()]
        self.fast.change(lambda on: ctx.few_step_values(on), self.fast, few_step, queue=False)
        self.size.change(lambda s: list(SIZES.get(s, ("", ""))), self.size, [widgets["width"], widgets["height"]],
                         queue=False)

        def run(data: dict[Any, Any], progress: gr.Progress = gr.Progress()) -> tuple[list[tuple[str, str]], str]:
            photos = data[self.photos_state]
            if not photos:
                raise gr.Error("upload at least one face photo first", print_exception=False)
            values = {name: data[widget] for name, widget in widgets.items()}
            return self.generate(photos, data[self.pose_state], values,
                                 lambda step, total: progress((step, total), desc="denoising"))

        self.button.click(ctx.guard(run), {self.photos_state, self.pose_state, *widgets.values()},
                          [self.gallery, self.info], concurrency_limit=ctx.generation_concurrency,
                          concurrency_id="generation")

    def _examples(self, prompt: Any, style: Any) -> Any:
        """An example gallery from the bundled example photo (absent from an installed wheel: then none).

        A click fills a hidden image, the prompt and the style; the hidden image's change loads the photo as
        the reference set, like an upload.
        """
        photo = self.ctx.example_photo
        if photo is None or not photo.is_file():
            return None
        image = gr.Image(type="filepath", visible=False, elem_id="example-photo")
        gr.Examples([[str(photo), text, name] for text, name in EXAMPLE_PROMPTS], [image, prompt, style],
                    label="Examples (click one)", elem_id="examples")
        return image
