"""Web UI (gradio): face photo(s) in, images out. Built by :func:`create_ui`; loads nothing at import.

Layout: the "Who" panel (:mod:`instantid.webui.who`: reference photos, pose, face choice, mixing) beside one tab
per task (Portrait, Face swap, Several people, Face detail: each a class taking the shared :class:`UIContext` and
the Who panel, with a ``build()``). Every tab hands its job, analysed and ready
(:class:`~instantid.apps.tasks.Prepared`), to one hook, ``submit``: run on the model here, or, under
``instantid serve``, through the server's job queue and limits. Generation settings
are derived from :class:`~instantid.api.settings.GenerationSettings` (:mod:`instantid.webui.controls`); photos are
analysed once, on upload, and the Identity is reused (:mod:`instantid.webui.references`). Results are written
by :mod:`instantid.io.outputs` into an announced folder, so a downloaded PNG carries its settings like a CLI output.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from instantid.webui.context import (
    DEMO_NOTICE,
    TABS_WITHOUT_WHO,
    Caller,
    Submit,
    UIContext,
    calling_as,
    current_caller,
    prepare_out_dir,
)

if TYPE_CHECKING:
    import gradio as gr

    from instantid.api.generator import InstantID

def create_ui(
    app_or_loader: InstantID | Callable[[], InstantID], out_dir: str | Path | None = None, *,
    submit: Submit | None = None, keep_hours: float | None = None,
) -> gr.Blocks:
    """The gradio app for a loaded :class:`InstantID`, or a callable that returns one (called at the first page
    load or upload, e.g. the server's model once its startup has loaded it).

    ``out_dir``: where images are saved (created now; default a fresh temporary folder), shown in the UI.
    ``submit(job, settings, progress) -> GenerationResult`` runs one job of any tab (default: on the model here,
    under its lock, one at a time); a server passes one that goes through its own job queue, and the UI then
    leaves concurrency to it. ``keep_hours``: results (the outputs folder's and gradio's cached copies) are
    deleted after this long (:meth:`UIContext.prune`, run by the caller; gradio's ``delete_cache``).
    """
    import gradio as gr

    from instantid.webui.detail_tab import DetailTab
    from instantid.webui.group_tab import GroupTab
    from instantid.webui.layout import Page
    from instantid.webui.portrait import PortraitTab
    from instantid.webui.swap_tab import SwapTab
    from instantid.webui.who import WhoPanel

    get_model = app_or_loader if callable(app_or_loader) else lambda: app_or_loader
    keep_s = None if keep_hours is None else keep_hours * 3600
    ctx = UIContext(get_model=get_model, out_dir=prepare_out_dir(out_dir), submit=submit,
                    generation_concurrency=1 if submit is None else None, keep_s=keep_s)
    # One tab per task, each ``Tab(ctx, who)`` (``Tab(ctx)`` for a tab without the Who panel) with a ``build()``;
    # further tasks are added here the same way.
    tabs = (("Portrait", "portrait", PortraitTab), ("Face swap", "swap", SwapTab),
            ("Several people", "group", GroupTab), ("Face detail", "detail", DetailTab))
    # gradio keeps its own copy of every result shown: it expires with ours.
    delete_cache = None if keep_s is None else (int(min(3600, max(60, keep_s / 4))), int(keep_s))
    with Page(title="InstantID", delete_cache=delete_cache) as ui:
        gr.Markdown("# InstantID\nOne face photo in, the same person in any style out (arXiv 2401.07519). "
                    f"Images and their settings (PNG + JSON) are saved to `{ctx.out_dir}`.", elem_id="out-dir")
        banner = gr.Markdown(elem_id="notice")
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, elem_id="who") as who_column:
                who = WhoPanel(ctx)
                who.build()
            with gr.Column(scale=9), gr.Tabs():
                for title, key, tab_class in tabs:
                    with gr.Tab(title, id=key, elem_id=f"tab-{key}") as tab:
                        ctx.tabs[key] = tab_class(ctx) if key in TABS_WITHOUT_WHO else tab_class(ctx, who)
                        ctx.tabs[key].build()
                    # The Several people tab has a slot per person and does not use the Who panel: hide it there.
                    tab.select(lambda key=key: gr.update(visible=key not in TABS_WITHOUT_WHO), None, who_column,
                               queue=False, show_progress="hidden")
        ui.load(lambda: (ctx.notice(), ctx.few_step_at_start()), outputs=[banner, ctx.tabs["portrait"].fast])
    ui.queue(default_concurrency_limit=1)
    ui.instantid = ctx  # type: ignore[attr-defined]  # for tests and the server: the cache, folder and tabs
    return ui


__all__ = ["DEMO_NOTICE", "Caller", "Submit", "UIContext", "calling_as", "create_ui", "current_caller",
           "prepare_out_dir"]
