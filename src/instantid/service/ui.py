"""The web UI mounted on the server at /ui: every tab's job goes through the server's job service, in both
setups, under the same limits as the HTTP API.

* Queue: the job is stored, queued and run like an HTTP job (:meth:`JobService.run_prepared`): by this process's
  worker, or, with ``--queue redis://...``, by any ``instantid worker``; the UI waits for it and shows it. A
  server with a queue loads no diffusion model, so the UI analyses photos with the server's face analyzer
  (:class:`FaceOnlyModel`), like the HTTP API checks uploads.
* API keys (``--api-key-file``): gradio's login page; user name = the key's name, password = the key. The
  signed-in key owns the UI's jobs (``GET /v1/jobs`` with that key lists them) and its rate and concurrent-job
  limits count them. Without a valid key the UI shows nothing but the login.
* Without keys, UI jobs are owned by ``ui`` and the rate limit (if any) counts per browser address, sharing the
  bucket of that address's HTTP requests.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from instantid.api.face_side import FaceSide
from instantid.errors import InvalidInputError
from instantid.service.core import QueueFullError

if TYPE_CHECKING:
    from fastapi import FastAPI

    from instantid.api.generator import GenerationResult
    from instantid.api.settings import GenerationSettings
    from instantid.apps.tasks import Prepared
    from instantid.service.auth import KeyRing, RateLimiter
    from instantid.service.core import ServerSettings

UI_OWNER = "ui"  # owner of UI jobs on a server without API keys
UI_RESULTS = "ui-results"  # folder under the server's out_dir for the web UI's result files
LOGIN_MESSAGE = "Sign in with an API key: user name = the key's name, password = the key."


class FaceOnlyModel(FaceSide):
    """What the web UI asks of a model (face analysis, the banner's facts), from a face analyzer alone: the
    server of the many-machine setup holds no diffusion model; its workers do."""

    def __init__(self, faces: FaceSide, settings: ServerSettings) -> None:
        from instantid.speed.presets import get_preset

        # One analysis at a time: the lock is the one the server's HTTP submits take.
        super().__init__(faces.analyzer, faces.lock)
        self.demo = settings.demo
        self.lora = settings.lora
        self.preset = get_preset(settings.preset) if settings.preset else None

    def preset_defaults(self) -> dict[str, Any]:
        if self.preset is None:
            return {}
        return {"steps": self.preset.steps, "guidance_scale": self.preset.guidance_scale}


def mount_ui(app: FastAPI, settings: ServerSettings, keys: KeyRing | None, limiter: RateLimiter) -> None:
    """Mount the web UI at /ui of ``app`` (whose ``state.service`` is set at startup)."""
    import gradio as gr

    from instantid.webui import create_ui, current_caller
    from instantid.webui.layout import CSS

    face_only: list[FaceOnlyModel] = []

    def get_model() -> Any:
        service = app.state.service
        if service.model is not None:
            return service.model
        if not face_only:  # built once, on the first page load after startup
            face_only.append(FaceOnlyModel(service.faces, settings))
        return face_only[0]

    def submit(job: Prepared, generation: GenerationSettings, progress: Any) -> GenerationResult:
        caller = current_caller()
        client = caller.client if caller is not None else "unknown"
        if keys is None:
            owner, bucket, rate, max_jobs = UI_OWNER, client, settings.rate_limit, None
        else:
            key = keys.named(caller.user) if caller is not None and caller.user else None
            if key is None:  # gradio's login stands in front; this is a handler called without it
                raise InvalidInputError("sign in with an API key to generate")
            owner, bucket = key.name, key.name
            rate, max_jobs = key.rate_per_minute or settings.rate_limit, key.max_jobs or settings.max_jobs_per_key
        if rate is not None:
            retry = limiter.take(bucket, rate)
            if retry is not None:
                raise QueueFullError(f"rate limit of {rate:g} submissions per minute reached; retry in "
                                     f"{retry:.0f} s", retry)
        return app.state.service.run_prepared(job, generation, progress, owner=owner, max_jobs=max_jobs)

    # Results go beside the jobs, not into a temporary folder, and expire with them (the server's cleanup runs
    # UIContext.prune; gradio's cached copies go by delete_cache).
    results = Path(settings.out_dir) / UI_RESULTS
    app.state.ui = create_ui(get_model, results, submit=submit, keep_hours=settings.keep_hours)  # tests reach it here
    auth = None if keys is None else keys.sign_in
    gr.mount_gradio_app(app, app.state.ui, path="/ui", css=CSS, auth=auth, auth_message=LOGIN_MESSAGE if auth else None,
                        allowed_paths=[str(app.state.ui.instantid.out_dir)])


__all__ = ["FaceOnlyModel", "LOGIN_MESSAGE", "UI_OWNER", "mount_ui"]
