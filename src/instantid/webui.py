"""Web UI (gradio): face photo(s) in, images out. Built by :func:`create_ui`; loads nothing at import.

Generation goes through :meth:`InstantID.generate`; results are written by :mod:`instantid.outputs`, so a
downloaded PNG carries its settings like a CLI output does.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from instantid.errors import InstantIDError
from instantid.outputs import write_image
from instantid.styles import DEFAULT_STYLE, STYLES

if TYPE_CHECKING:
    from instantid.generator import InstantID

SIZES = {
    "auto (from the photo)": None, "1024x1024": (1024, 1024), "896x1152 (portrait)": (896, 1152),
    "1152x896 (landscape)": (1152, 896), "768x1344 (tall)": (768, 1344), "512x512 (fast preview)": (512, 512),
}
DEMO_NOTICE = (
    "**Demo mode:** tiny random weights, no download. The pipeline runs for real, but the images are noise. "
    "Start with real weights (`instantid ui` without `--demo`) for actual portraits."
)


def create_ui(app_or_loader: InstantID | Callable[[], InstantID], out_dir: str | Path | None = None) -> gr.Blocks:
    """The gradio app for an already loaded :class:`InstantID`, or a callable that returns one (called at
    the first page load or generation, e.g. the server's model once its startup has loaded it)."""
    get_model = app_or_loader if callable(app_or_loader) else lambda: app_or_loader
    folder = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="instantid-ui-"))

    def notice() -> str:
        return DEMO_NOTICE if get_model().demo else ""

    def run(
        faces: list[str] | None, pose: str | None, prompt: str, style: str, identitynet: float, adapter: float,
        negative: str, steps: float, guidance: float, size: str, num_images: float, enhance: bool,
        seed: float | None, randomize: bool, progress: gr.Progress = gr.Progress(),
    ) -> tuple[list[tuple[str, str]], int, str]:
        if not faces:
            raise gr.Error("upload at least one face photo")
        width, height = SIZES.get(size) or (None, None)
        model = get_model()
        try:
            check_photos(model, faces, pose)
            result = model.generate(
                faces, pose_image=pose, prompt=prompt or "", style=style, identitynet_strength=identitynet,
                adapter_strength=adapter, negative_prompt=negative or "", steps=int(steps), guidance_scale=guidance,
                width=width, height=height, num_images=int(num_images), enhance_face_region=enhance,
                seed=None if randomize or seed is None else int(seed),
                progress=lambda step, total: progress((step, total), desc="denoising"),
            )
        except InstantIDError as exc:
            raise gr.Error(str(exc)) from None
        gallery = []
        for i, image in enumerate(result.images):
            metadata = result.image_metadata(i)
            path = write_image(image, metadata, folder, f"instantid-{metadata['seed']}")
            gallery.append((str(path), f"seed {metadata['seed']}"))
        info = f"Seed {result.settings.seed}, {result.metadata['width']}x{result.metadata['height']}, " \
               f"{result.settings.steps} steps. Prompt used: {result.metadata['prompt']}"
        return gallery, result.settings.seed, info + ("\n\n" + DEMO_NOTICE if model.demo else "")

    with gr.Blocks(title="InstantID") as ui:
        gr.Markdown("# InstantID\nOne face photo in, the same person in any style out (arXiv 2401.07519).")
        banner = gr.Markdown(elem_id="notice")
        with gr.Row():
            with gr.Column():
                faces = gr.File(label="Face photo(s) of one person (several are averaged)", file_count="multiple",
                                file_types=["image"], type="filepath", elem_id="faces")
                pose = gr.Image(label="Pose photo (optional: keypoints and size from here)", type="filepath",
                                sources=["upload"], height=200, elem_id="pose")
                prompt = gr.Textbox(label="Prompt", placeholder="a woman in a red coat, city at night", lines=2)
                style = gr.Dropdown(list(STYLES), value=DEFAULT_STYLE, label="Style")
                identitynet = gr.Slider(0, 1.5, 0.8, step=0.05, label="IdentityNet strength (likeness, pose)")
                adapter = gr.Slider(0, 1.5, 0.8, step=0.05, label="Image adapter strength (identity detail)")
                with gr.Accordion("Advanced", open=False):
                    negative = gr.Textbox(label="Negative prompt", lines=2)
                    steps = gr.Slider(1, 100, 30, step=1, label="Steps")
                    guidance = gr.Slider(0, 15, 5, step=0.1, label="Guidance scale")
                    size = gr.Dropdown(list(SIZES), value=next(iter(SIZES)), label="Size")
                    num_images = gr.Slider(1, 4, 1, step=1, label="Images")
                    enhance = gr.Checkbox(True, label="Enhance face region (IdentityNet only on the face)")
                    with gr.Row():
                        seed = gr.Number(0, precision=0, minimum=0, label="Seed")
                        randomize = gr.Checkbox(True, label="Random seed")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                gallery = gr.Gallery(label="Result", format="png", buttons=["download", "fullscreen"], columns=2,
                                     elem_id="gallery")
                info = gr.Markdown(elem_id="info")
        button.click(
            run, [faces, pose, prompt, style, identitynet, adapter, negative, steps, guidance, size, num_images,
                  enhance, seed, randomize], [gallery, seed, info],
        )
        ui.load(notice, outputs=banner)
    ui.queue(default_concurrency_limit=1)
    return ui


def check_photos(model: Any, faces: list[str], pose: str | None) -> None:
    """Name the upload by its file name in errors, not gradio's temporary path."""

    for path in [*faces, *([pose] if pose else [])]:
        name = Path(path).name
        model.find_face(path, name)
