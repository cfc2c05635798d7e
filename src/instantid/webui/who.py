"""The "Who" panel every tab shares: reference photos of one person, an optional pose (photo or bundled layout),
face choice and fusion. Photos are analysed when they arrive; the preview shows the face found in each (box and
five keypoints) and the Identity is cached for the tabs to reuse (:mod:`instantid.webui.references`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import gradio as gr
from PIL import Image

from instantid.api.identity import MIX_WEIGHT_DEFAULT, MIX_WEIGHT_HELP, MIX_WEIGHT_RANGE
from instantid.api.settings import make_settings
from instantid.apps.layouts import DEFAULT_LAYOUT_SIZE, get_layout, layout_names, with_layout
from instantid.faces.drawing import draw_faces
from instantid.webui.controls import Control, controls, labels
from instantid.webui.references import Photo, merge, photos_from_uploads, preview, summary, warnings_text

if TYPE_CHECKING:
    from instantid.api.identity import Identity
    from instantid.api.settings import GenerationSettings
    from instantid.webui.context import UIContext

# Settings that decide which face is used and how photos are fused: they sit beside the photos and a change
# re-analyses (through the cache); the tabs leave them out of their own controls.
IDENTITY_FIELDS = ("face_index", "fusion")
FROM_PHOTOS = "(from the photos)"
ANALYSIS_CONCURRENCY = 4  # face analysis must not queue behind a long generation
LAYOUT_PREVIEW = 256
DEFAULT_MIX = MIX_WEIGHT_DEFAULT  # the name the tabs use


def clear_error_mark(event: Any, *components: Any) -> Any:
    """After a failed ``event``, take gradio's red "Error" mark off ``components`` (where the event showed its
    progress): it would stay until the next event and cover their text. The error itself is said in the toast,
    which closes by itself."""
    skips = tuple(gr.skip() for _ in components)
    return event.failure(lambda: skips if len(skips) > 1 else skips[0], None, list(components), queue=False,
                         show_progress="hidden")


def posed(identity: Identity, layout: str | None, width: int | None = None, height: int | None = None) -> Identity:
    """``identity`` posed by a bundled layout at the output size (the layouts' default size if not given)."""
    if not layout or layout == FROM_PHOTOS:
        return identity
    return with_layout(identity, layout, width or DEFAULT_LAYOUT_SIZE, height or DEFAULT_LAYOUT_SIZE)


class WhoPanel:
    """Handlers (state travels in gr.State, so tests call them directly) and the column's layout."""

    def __init__(self, ctx: UIContext) -> None:
        self.ctx = ctx
        self.by_name = {c.name: c for c in controls() if c.name in IDENTITY_FIELDS}
        names = labels(list(self.by_name.values()))
        self.label = lambda field: names.get(field, field)

    # ---- handlers -------------------------------------------------------------------------------
    def settings(self, values: dict[str, Any], tab_controls: Sequence[Control], label: Callable[[str], str]
                 ) -> GenerationSettings:
        """A job's settings: a tab's controls and this panel's face choice and fusion (raw ``values`` by field
        name), validated into one object. The job is made with it and its metadata records it, so an output
        names the face it used (``face_index``) and can be made again. Errors name the control the user sees."""
        raw = {c.name: c.value(values.get(c.name)) for c in tab_controls if c.name not in IDENTITY_FIELDS}
        raw.update({name: self.by_name[name].value(values.get(name)) for name in IDENTITY_FIELDS})
        return make_settings(raw, name=lambda field: self.label(field) if field in IDENTITY_FIELDS else label(field))

    def identity_for(self, photos: Sequence[Photo], pose: Photo | None, settings: GenerationSettings,
                     mix: Photo | None = None, mix_weight: float = DEFAULT_MIX) -> Identity:
        """The cached Identity for these photos and the face choice and fusion of ``settings`` (analysed on a
        miss), mixed towards ``mix``'s person by ``mix_weight`` when a mix photo is given."""
        identity = self.ctx.identities.get(photos, pose, settings.face_index, settings.fusion)
        if mix is None:
            return identity
        return identity.mix(self.ctx.identities.get([mix]), float(mix_weight), mix.name)

    def identity(self, photos: Sequence[Photo], pose: Photo | None, face_index: Any, fusion: Any,
                 mix: Photo | None = None, mix_weight: float = DEFAULT_MIX) -> Identity:
        """:meth:`identity_for` from the raw values of the face choice and fusion controls."""
        settings = self.settings({"face_index": face_index, "fusion": fusion}, (), self.label)
        return self.identity_for(photos, pose, settings, mix, mix_weight)

    def analyse(self, photos: Sequence[Photo], pose: Photo | None, face_index: Any, fusion: Any,
                layout: str | None = None, mix: Photo | None = None, mix_weight: float = DEFAULT_MIX
                ) -> tuple[list[tuple[Any, str]], str, str]:
        """Preview items, count line and warnings for the current set."""
        if not photos:
            return [], summary(None), ""
        identity = self.identity(photos, pose, face_index, fusion)
        items = preview(identity, photos, pose)
        count = summary(identity)
        if mix is not None:
            other = self.ctx.identities.get([mix])
            items += [(image, f"mixed in at {float(mix_weight):.2f}: {mix.name}")
                      for image, _ in preview(other, [mix], None)]
            count = count.rstrip(".") + f". Mixed with {mix.name} at {float(mix_weight):.2f}."
        if layout and layout != FROM_PHOTOS:
            face = posed(identity, layout, LAYOUT_PREVIEW, LAYOUT_PREVIEW).pose_face
            items.append((draw_faces(Image.new("RGB", (LAYOUT_PREVIEW,) * 2), [face], [None],
                                      keypoint_numbers=False), f"pose: layout {layout}"))
            count = count.rstrip(".") + f". Pose from the {layout} layout."
        return items, count, warnings_text(identity)

    def upload(self, files: Any, current: Sequence[Photo], pose: Photo | None, face_index: Any, fusion: Any,
               layout: str | None = None, mix: Photo | None = None, mix_weight: float = DEFAULT_MIX,
               add: bool = False) -> tuple[tuple[Photo, ...], Any, str, str]:
        """New photos replace the set, or join it with ``add``; the set only changes if analysis succeeds."""
        new = photos_from_uploads(files)
        if not new:  # the box was emptied while an upload was on its way: nothing to change
            return tuple(current), gr.skip(), gr.skip(), gr.skip()
        photos = merge(current, new, add)
        return (photos, *self.analyse(photos, pose, face_index, fusion, layout, mix, mix_weight))

    def load_example(self, file: str | None, current: Sequence[Photo], *rest: Any) -> tuple[Any, ...]:
        """An example click: the photo replaces the set (the reset to empty afterwards changes nothing)."""
        if not file:
            return current, gr.skip(), gr.skip(), gr.skip()
        return self.upload(file, current, *rest)

    def set_pose(self, file: str | None, photos: Sequence[Photo], face_index: Any, fusion: Any,
                 layout: str | None = None, mix: Photo | None = None, mix_weight: float = DEFAULT_MIX
                 ) -> tuple[Photo | None, Any, str, str]:
        pose = Photo.from_upload(file) if file else None
        return (pose, *self.analyse(photos, pose, face_index, fusion, layout, mix, mix_weight))

    def set_mix(self, file: str | None, photos: Sequence[Photo], pose: Photo | None, face_index: Any, fusion: Any,
                layout: str | None = None, mix_weight: float = DEFAULT_MIX) -> tuple[Photo | None, Any, str, str]:
        mix = Photo.from_upload(file) if file else None
        return (mix, *self.analyse(photos, pose, face_index, fusion, layout, mix, mix_weight))

    # ---- layout ----------------------------------------------------------------------------------
    def build(self) -> None:
        gr.Markdown("### 1. Who")
        # A short label (a long one wrapped over the drop zone on a phone); the count line says that a new upload
        # replaces the set.
        self.upload_box = gr.File(label="Face photo(s) of one person", file_count="multiple", file_types=["image"],
                                  type="filepath", elem_id="faces", height=150)
        with gr.Row():
            self.add_button = gr.UploadButton("+ Add another photo of the same person", file_count="multiple",
                                              file_types=["image"], elem_id="add-photo", size="sm")
            self.clear_button = gr.Button("Clear photos", size="sm", elem_id="clear-photos")
        self.references = gr.Gallery(label="References: the face used, with its box and five keypoints",
                                     columns=3, height=260, object_fit="contain", elem_id="references",
                                     interactive=False, buttons=["fullscreen"])
        self.count = gr.Markdown(summary(None), elem_id="reference-count")
        self.warnings = gr.Markdown(elem_id="reference-warnings")
        self.photos_state = gr.State(())
        self.pending = gr.State(None)  # files just dropped into the box, on their way to analysis
        self.pose_state = gr.State(None)
        with gr.Accordion("Pose and face choice", open=False):
            # A short label: a long one ran under the picture's buttons on a phone.
            self.pose = gr.Image(label="Pose photo (optional)", type="filepath", sources=["upload"], height=180,
                                 elem_id="pose")
            gr.Markdown("The keypoints and the output size are taken from the pose photo.", elem_id="pose-note")
            self.layout = gr.Dropdown(
                [FROM_PHOTOS, *layout_names()], value=FROM_PHOTOS, elem_id="layout",
                label="Or a bundled pose layout", info="; ".join(f"{n}: {get_layout(n).description}"
                                                                  for n in layout_names()))
            self.options = [self.by_name[name].build() for name in IDENTITY_FIELDS]
        with gr.Accordion("Mix with another person", open=False):
            self.mix = gr.Image(label="Photo of the other person (optional)", type="filepath", sources=["upload"],
                                height=160, elem_id="mix")
            self.mix_weight = gr.Slider(*MIX_WEIGHT_RANGE, MIX_WEIGHT_DEFAULT, step=0.05, elem_id="mix-weight",
                                        label="Mix weight", info=MIX_WEIGHT_HELP)
        self.mix_state = gr.State(None)
        # What a tab needs for the Identity, in WhoPanel.identity's order after the photos and pose.
        self.inputs = [self.photos_state, self.pose_state, *self.options]
        self.mix_inputs = [self.mix_state, self.mix_weight]
        self._wire()

    def _wire(self) -> None:
        guard = self.ctx.guard
        state = [*self.inputs, self.layout, *self.mix_inputs]
        self.shown = [self.references, self.count, self.warnings]
        out = [self.photos_state, *self.shown]
        # The spinner, or the error mark, sits on the count line: the thumbnails stay visible.
        events = {"concurrency_limit": ANALYSIS_CONCURRENCY, "concurrency_id": "analysis",
                  "show_progress_on": self.count}
        # The box hands its files over and is emptied at once, before the analysis (which may fail): the next
        # upload is a fresh set (gradio's File would append to what it shows) and a refused photo does not stay.
        clear_error_mark(self.upload_box.upload(lambda files: (files, None), self.upload_box,
                                                [self.pending, self.upload_box], queue=False, show_progress="hidden"
                                                ).then(guard(self.upload), [self.pending, *state], out, **events),
                         self.count)
        clear_error_mark(self.add_button.upload(guard(functools.partial(self.upload, add=True)),
                                                [self.add_button, *state], out, **events), self.count)
        self.clear_button.click(lambda: ((), [], summary(None), ""), None, out, queue=False)
        pose_inputs = [self.pose, self.photos_state, *self.options, self.layout, *self.mix_inputs]
        # A pose photo without a face is refused (the error says so) and taken off the screen, so what is shown
        # is what generation uses.
        pose_upload = self.pose.upload(guard(self.set_pose), pose_inputs, [self.pose_state, *self.shown], **events)
        pose_upload.failure(lambda: None, None, self.pose, queue=False)
        clear_error_mark(pose_upload, self.count)
        clear_error_mark(self.pose.clear(guard(self.set_pose), pose_inputs, [self.pose_state, *self.shown],
                                         **events), self.count)
        mix_inputs = [self.mix, *self.inputs, self.layout, self.mix_weight]
        mix_upload = self.mix.upload(guard(self.set_mix), mix_inputs, [self.mix_state, *self.shown], **events)
        mix_upload.failure(lambda: None, None, self.mix, queue=False)
        clear_error_mark(mix_upload, self.count)
        clear_error_mark(self.mix.clear(guard(self.set_mix), mix_inputs, [self.mix_state, *self.shown], **events),
                         self.count)
        for widget in [*self.options, self.layout]:
            clear_error_mark(widget.change(guard(self.analyse), state, self.shown, **events), self.count)
        clear_error_mark(self.mix_weight.release(guard(self.analyse), state, self.shown, **events), self.count)

    def wire_example(self, example: Any) -> None:
        """A hidden image an example click fills: its photo becomes the reference set."""
        self.example = example
        loaded = example.change(self.ctx.guard(self.load_example),
                                [example, *self.inputs, self.layout, *self.mix_inputs],
                                [self.photos_state, *self.shown], concurrency_limit=ANALYSIS_CONCURRENCY,
                                concurrency_id="analysis", show_progress_on=self.count)
        clear_error_mark(loaded, self.count)
        loaded.then(lambda: None, None, example, queue=False)
