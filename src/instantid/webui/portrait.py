"""The "Portrait" tab: the person from the Who panel and a prompt in, images out.

Generation settings are the schema-derived controls of :mod:`instantid.webui.controls`; the Identity comes from
the Who panel's cache (analysed when the photos were uploaded), posed by a bundled layout when one is chosen.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from instantid.apps.tasks import Prepared
from instantid.io.outputs import image_stem, write_image
from instantid.webui.controls import controls, labels
from instantid.webui.layout import result_column, style_image_box, style_of, who_and_values
from instantid.webui.who import DEFAULT_MIX, IDENTITY_FIELDS, WhoPanel, clear_error_mark, posed

if TYPE_CHECKING:
    from instantid.api.generator import GenerationResult
    from instantid.webui.context import UIContext
    from instantid.webui.references import Photo

SIZES = {
    "1024x1024": (1024, 1024), "896x1152 (portrait)": (896, 1152), "1152x896 (landscape)": (1152, 896),
    "768x1344 (tall)": (768, 1344), "512x512 (fast preview)": (512, 512),
}
EXAMPLE_PROMPTS = (
    ("a portrait in the snow, soft light", "Snow"),
    ("an astronaut on Mars, helmet under the arm", "Mars"),
    ("a watercolour portrait in a summer garden", "Watercolor"),
)


def save_results(ctx: UIContext, result: GenerationResult, picture: str | None = None, kind: str = ""
                 ) -> tuple[list[Any], str]:
    """Write every image (PNG + JSON) into the outputs folder, named as the CLI names them (after the prompt, or
    for an edit after ``kind`` and the ``picture``'s name); gallery items and the info text."""
    gallery = []
    for i, image in enumerate(result.images):
        metadata = result.image_metadata(i)
        stem = image_stem(metadata["seed"], prompt=result.settings.prompt, picture=picture, kind=kind)
        path = write_image(image, metadata, ctx.out_dir, stem)
        gallery.append((str(path), f"seed {metadata['seed']}"))
    names = ", ".join(Path(path).name for path, _ in gallery)
    info = (f"Seed {result.settings.seed}, {result.metadata['width']}x{result.metadata['height']}, "
            f"{result.settings.steps} steps, {result.metadata.get('sampler', '')}. Saved as {names}.\n\n"
            f"Prompt used: {result.metadata['prompt'] or '(none: from the face alone)'}")
    if ctx.demo():
        info += "\n\n" + ctx.demo_notice
    return gallery, info


class PortraitTab:
    """Handlers plus layout; tests call :meth:`generate` directly."""

    def __init__(self, ctx: UIContext, who: WhoPanel) -> None:
        self.ctx = ctx
        self.who = who
        self.controls = [c for c in controls() if c.name not in IDENTITY_FIELDS]
        self.by_name = {c.name: c for c in self.controls}
        names = labels(self.controls)
        self.label = lambda field: names.get(field, field)  # errors name the control the user sees

    def generate(self, photos: Sequence[Photo], pose: Photo | None, values: dict[str, Any],
                 progress: Any = None, layout: str | None = None, mix: Photo | None = None,
                 mix_weight: float = DEFAULT_MIX, init: Any = None, style_image: str | None = None
                 ) -> tuple[list[Any], str]:
        """Images into the outputs folder; ``values`` are raw control values (Who's face choice and fusion
        included); ``init``: a picture to start from (image-to-image); ``style_image``: the uploaded style
        reference's file, if any. Returns gallery items and the info text."""
        settings = self.who.settings(values, [self.by_name[name] for name in values if name in self.by_name],
                                     self.label)
        identity = posed(self.who.identity_for(photos, pose, settings, mix, mix_weight), layout, settings.width,
                         settings.height)
        job = Prepared("generate", identity=identity, init_image=None if init is None else init.convert("RGB"),
                       init_name="init image", style=style_of(style_image))
        return save_results(self.ctx, self.ctx.submit(job, settings, progress))

    def few_step(self, on: bool) -> list[Any]:
        """The Few-step toggle: its own info line, then the sampler, steps and guidance controls' values. Turned on
        without a few-step model loaded, the info line says so: such a model makes blurred pictures in 4 steps."""
        warning = self.ctx.few_step_warning(on)
        fields = [self.by_name[name] for name in self.ctx.few_step_fields()]
        values = [c.shown(v) for c, v in zip(fields, self.ctx.few_step_values(on), strict=True)]
        return [gr.update(info=warning or self.ctx.few_step_info()), *values]

    # ---- layout ----------------------------------------------------------------------------------
    def build(self) -> None:
        """Two columns (what, result), the examples under both, then the events."""
        self.widgets: dict[str, Any] = {}
        with gr.Row(equal_height=False):
            with gr.Column(scale=4):
                self._what()
            self.gallery, self.info = result_column()
        # Under the result, not under Generate: on a phone the columns stack, and the examples between Generate and
        # the result hid the result (and its progress) below the fold.
        self._examples()
        self._wire()

    def _what(self) -> None:
        gr.Markdown("### 2. What")
        for control in self.controls:
            if not control.advanced:
                self.widgets[control.name] = control.build()
        self.style_image = style_image_box("style-image")
        self.fast = gr.Checkbox(False, label="Few-step", info=self.ctx.few_step_info(), elem_id="few-step")
        with gr.Accordion("Advanced", open=False):
            self.size = gr.Dropdown(list(SIZES), value=None, label="Size preset (sets width and height)")
            for control in self.controls:
                if control.advanced:
                    self.widgets[control.name] = control.build()
            # A short label (a long one ran under the picture's buttons); Denoising strength's note says the rest.
            self.init_image = gr.Image(type="pil", label="Init image (optional, image-to-image)", elem_id="init-image")
        self.button = gr.Button("Generate", variant="primary", elem_id="generate")

    def _examples(self) -> None:
        """An example gallery from the bundled example photo (absent from an installed wheel: then none).

        A click fills a hidden image, the prompt and the style; the Who panel loads the hidden image as the
        reference set, like an upload.
        """
        photo = self.ctx.example_photo
        if photo is None or not photo.is_file():
            return
        image = gr.Image(type="filepath", visible=False, elem_id="example-photo")
        gr.Examples([[str(photo), text, name] for text, name in EXAMPLE_PROMPTS],
                    [image, self.widgets["prompt"], self.widgets["style"]], label="Examples (click one)",
                    elem_id="examples")
        self.who.wire_example(image)

    def _wire(self) -> None:
        ctx, widgets, who = self.ctx, self.widgets, self.who
        few_step = [widgets[name] for name in ctx.few_step_fields()]
        self.fast.change(ctx.guard(self.few_step), self.fast, [self.fast, *few_step], queue=False)
        self.size.change(lambda s: list(SIZES.get(s, ("", ""))), self.size, [widgets["width"], widgets["height"]],
                         queue=False)

        def run(data: dict[Any, Any], progress: gr.Progress = gr.Progress()) -> tuple[list[Any], str]:
            photos, values = who_and_values(who, widgets, data)
            return self.generate(photos, data[who.pose_state], values,
                                 lambda step, total: progress((step, total), desc="denoising"), data[who.layout],
                                 data[who.mix_state], data[who.mix_weight], data[self.init_image],
                                 data[self.style_image])

        clear_error_mark(self.button.click(ctx.guard(run, job=True),
                                           {*who.inputs, who.layout, *who.mix_inputs, self.init_image,
                                            *widgets.values(), self.style_image},
                                           [self.gallery, self.info], concurrency_limit=ctx.generation_concurrency,
                                           concurrency_id="generation"), self.gallery, self.info)
