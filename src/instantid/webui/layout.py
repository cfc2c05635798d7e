"""Layout pieces every tab of the web UI repeats: its controls (the advanced ones folded away), its result
column, and the click that collects the Who panel and the tab's controls for a job."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import gradio as gr

from instantid.webui.controls import Control
from instantid.webui.who import IDENTITY_FIELDS

if TYPE_CHECKING:
    from instantid.webui.who import WhoPanel

# gradio floats a component's label over its top-left corner and sizes thumbnails and drop zones for bigger boxes;
# in this page's small boxes that hid or cut what the user needs to see. Each rule says what it fixes.
CSS = """
/* A lone picture in a gallery is a full-width square thumbnail, taller than the gallery: the result and the
   previews were cut at the bottom (a preview of one face showed only hair). A thumbnail is at most the gallery's
   visible height, and the pictures start below the label. */
.block .gallery-container .grid-wrap { container-type: size; padding-top: 30px; }
.block .grid-wrap .thumbnail-item { max-height: 100cqh; }
/* A shown picture starts below its label (the label hid the top of the picture, a numbered face included). */
.block .image-container .image-frame { padding-top: 28px; box-sizing: border-box; height: 100%; }
.block .image-container .image-frame img { max-height: 100%; object-fit: contain; }
/* An empty drop zone's text starts below the label (its icon sat under the label; in a small box its last line
   was cut off). */
.block .upload-container .wrap { min-height: 0; padding-top: 26px; }
/* On a phone (360 px and up) the four tabs fit in one row: with gradio's spacing two of them hid in a "more" menu. */
@media (max-width: 480px) { .tab-wrapper .tab-container button { padding: 0 6px; font-size: 13px; } }
"""


class Page(gr.Blocks):
    """The UI's gr.Blocks: since gradio 6 a page's CSS is given to ``launch`` (or ``gr.mount_gradio_app``), not to
    the constructor; this one brings :data:`CSS` to every ``launch``. A mount passes ``css=CSS`` itself."""

    def launch(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("css", CSS)
        return super().launch(*args, **kwargs)


def build_controls(items: Iterable[Control], prefix: str = "") -> dict[str, Any]:
    """Each control's widget, the basic ones here and the advanced ones under an "Advanced" accordion."""
    items = list(items)
    widgets = {c.name: c.build(prefix) for c in items if not c.advanced}
    with gr.Accordion("Advanced", open=False):
        widgets.update({c.name: c.build(prefix) for c in items if c.advanced})
    return widgets


def result_column(prefix: str = "") -> tuple[Any, Any]:
    """The "3. Result" column's gallery and info text (elements ``{prefix}gallery`` and ``{prefix}info``)."""
    with gr.Column(scale=5):
        gr.Markdown("### 3. Result")
        # "contain": a result is shown whole (gradio's default "cover" cut a wide swap result to the tile's shape).
        gallery = gr.Gallery(label="Result", format="png", buttons=["download", "fullscreen"], columns=2,
                             elem_id=f"{prefix}gallery", height=420, object_fit="contain")
        info = gr.Markdown(elem_id=f"{prefix}info")
    return gallery, info


def who_and_values(who: WhoPanel, widgets: dict[str, Any], data: dict[Any, Any]) -> tuple[Any, dict[str, Any]]:
    """From a click's ``data``: the Who panel's photos (refused when there are none) and the raw values of its
    face choice and fusion and of the tab's ``widgets``, by field name."""
    photos = data[who.photos_state]
    if not photos:
        raise gr.Error("upload at least one face photo first", print_exception=False)
    named = {**dict(zip(IDENTITY_FIELDS, who.options, strict=True)), **widgets}
    return photos, {name: data[widget] for name, widget in named.items()}


def style_image_box(elem_id: str) -> Any:
    """The optional style reference picture (InstantStyle) of a tab that makes new pictures."""
    # A short label: a long one ran under the picture's buttons (Style strength's note says what it does).
    return gr.Image(label="Style image (optional)", type="filepath", sources=["upload"], height=160, elem_id=elem_id)


def style_of(file: str | None) -> Any:
    """The uploaded style picture as the API takes it (None without one)."""
    from instantid.api.style_images import load_style_images

    return load_style_images([file]) if file else None
