"""The A1111 / Forge routes around a generation: options, progress, interrupt / skip, and the scripts list.

    GET  /sdapi/v1/options       the model, this key's options (:mod:`instantid.service.a1111_options`)
    POST /sdapi/v1/options       set this key's options; unknown ones ignored and named in ``ignored``
    GET  /sdapi/v1/progress      the caller's running job in A1111's shape (no preview images)
    POST /sdapi/v1/interrupt     stop the caller's running job(s) at the next denoising step: they end ``canceled``
    POST /sdapi/v1/skip          the same here: a job runs its whole batch at once, there is no image to skip to
    GET  /sdapi/v1/scripts       sd-webui-controlnet's ``controlnet``: the one (alwayson) script here

"The caller's" job: its API key's (a key sees and stops only its own jobs, as ``DELETE /v1/jobs/{id}``); on a
server without keys, any job, as A1111 has one shared state. A stopped txt2img / img2img call answers 409 with
the job's status, as ``/v1/generate?wait=true`` does for a canceled job (A1111 would return the images so far).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from instantid.service.a1111 import body_schema
from instantid.service.a1111_options import FIXED, A1111Options, OptionsUpdate, model_title
from instantid.service.a1111_payload import SCRIPT
from instantid.service.http_errors import READ_RESPONSES
from instantid.service.routes.deps import Principal, keys_of, principal, service_of, settings_of
from instantid.service.routes.submit import json_object, read_body

if TYPE_CHECKING:
    from instantid.service.jobs import JobRecord

OPTIONS_MAX_BYTES = 64 * 1024  # an options body is a few names and values
router = APIRouter(tags=["A1111 compatible"])
# Declared for every route here; the POSTs add the body answers.
BODY_RESPONSES: dict[int | str, dict[str, Any]] = {
    **READ_RESPONSES, 413: READ_RESPONSES[422] | {"description": "The body is over 64 KiB."},
    415: READ_RESPONSES[422] | {"description": "Not application/json."}}


class ProgressState(BaseModel):
    """A1111's ``shared.state``, as far as a job here has it."""

    skipped: bool = False
    interrupted: bool = Field(description="An interrupt or skip was asked; the job stops at its next step.")
    stopping_generation: bool = False
    job: str = Field(description="The running job's id; empty when idle.")
    job_count: int = Field(description="The caller's running and queued jobs.")
    job_timestamp: str = Field(description="When the job started, %Y%m%d%H%M%S (server time); 0 when idle.")
    job_no: int = 0
    sampling_step: int
    sampling_steps: int


class ProgressAnswer(BaseModel):
    progress: float = Field(ge=0, le=1, description="Steps done / steps; 0 when idle.")
    eta_relative: float = Field(description="Seconds left, from the time spent so far.")
    state: ProgressState
    current_image: str | None = Field(None, description="Always null: no live previews here.")
    textinfo: str | None = None


class OptionsAnswer(BaseModel):
    ignored: list[str] = Field(description="The options sent that this server does not have (A1111 answers null).")


class ScriptsList(BaseModel):
    txt2img: list[str]
    img2img: list[str]


def options_of(request: Request) -> A1111Options:
    return request.app.state.a1111_options


def owner_of(request: Request, who: Principal) -> str | None:
    """Whose jobs the caller sees and stops: its key's; any job's (None) on a server without keys."""
    return who.name if keys_of(request) is not None else None


@router.get("/sdapi/v1/options", responses=READ_RESPONSES)
async def get_options(request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    """The model and this key's options (what POST set, else the defaults)."""
    title, _, short_hash = model_title(service_of(request), settings_of(request))
    return {"sd_model_checkpoint": title, "sd_checkpoint_hash": short_hash, **options_of(request).values(who.name),
            **FIXED}


@router.post("/sdapi/v1/options", responses=BODY_RESPONSES, openapi_extra=body_schema(OptionsUpdate))
async def set_options(request: Request, who: Principal = Depends(principal)) -> OptionsAnswer:
    """Set this key's options: all or, when one is refused (422), none. Options this server does not have are
    ignored, as A1111 ignores them, and named in ``ignored`` (A1111 answers null)."""
    raw = await read_body(request, OPTIONS_MAX_BYTES)
    if not request.headers.get("content-type", "application/json").startswith("application/json"):
        raise HTTPException(415, "send the options as application/json")
    model = model_title(service_of(request), settings_of(request))
    return OptionsAnswer(ignored=options_of(request).update(who.name, json_object(raw), model))


@router.get("/sdapi/v1/progress", responses=READ_RESPONSES)
async def progress(request: Request, who: Principal = Depends(principal),
                   skip_current_image: bool = Query(False, description="Ignored (no preview images).")
                   ) -> ProgressAnswer:
    """The caller's running job (the newest, if several), as A1111 reports its current one."""
    store = service_of(request).store
    owner = owner_of(request, who)
    running, count = await run_in_threadpool(store.list, 0, 1, owner, "running")
    queued = (await run_in_threadpool(store.list, 0, 1, owner, "queued"))[1]
    job = running[0] if running else None
    step, total = (job.step, job.total) if job is not None else (0, 0)
    done = min(step / total, 1.0) if total else 0.0
    elapsed = time.time() - job.started if job is not None and job.started else 0.0
    started = time.strftime("%Y%m%d%H%M%S", time.localtime(job.started)) if job and job.started else "0"
    return ProgressAnswer(progress=done, eta_relative=elapsed / done - elapsed if done else 0.0, state=ProgressState(
        interrupted=bool(job and job.cancel_requested), job=job.id if job else "", job_count=count + queued,
        job_timestamp=started, sampling_step=step, sampling_steps=total))


async def stop_running(request: Request, who: Principal) -> list[JobRecord]:
    """Ask the caller's running jobs to stop (the runner sees it at its next step); the jobs asked."""
    service = service_of(request)
    running, _ = await run_in_threadpool(service.store.list, 0, 100, owner_of(request, who), "running")
    return [job for job in running if await run_in_threadpool(service.cancel, job.id) is not None]


@router.post("/sdapi/v1/interrupt", responses=READ_RESPONSES)
async def interrupt(request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    """Stop the caller's running job at its next denoising step (queued jobs stay queued, as in A1111); it ends
    ``canceled`` and its txt2img call answers 409."""
    await stop_running(request, who)
    return {}


@router.post("/sdapi/v1/skip", responses=READ_RESPONSES)
async def skip(request: Request, who: Principal = Depends(principal)) -> None:
    """As interrupt: a job renders its whole batch in one run, so there is no next image to skip to."""
    await stop_running(request, who)


@router.get("/sdapi/v1/scripts", responses=READ_RESPONSES)
async def scripts(who: Principal = Depends(principal)) -> ScriptsList:
    """The scripts txt2img and img2img take, by A1111's lower-case names: sd-webui-controlnet's alwayson one."""
    return ScriptsList(txt2img=[SCRIPT], img2img=[SCRIPT])


__all__ = ["OptionsAnswer", "ProgressAnswer", "ScriptsList", "owner_of", "router", "stop_running"]
