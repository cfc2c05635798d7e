"""The A1111 / Forge web UI API, as far as InstantID clients use it, on the same job service as ``/v1``.

    POST /sdapi/v1/txt2img        A1111's payload with sd-webui-controlnet's InstantID units -> A1111's answer
    POST /sdapi/v1/img2img        the same plus init_images and denoising_strength (image-to-image)
    GET  /sdapi/v1/samplers, /sdapi/v1/schedulers, /sdapi/v1/sd-models
    GET  /controlnet/version, /controlnet/module_list, /controlnet/model_list

(Options, progress, interrupt / skip and the scripts list: :mod:`instantid.service.a1111_control`.)

A request becomes our ``/v1/generate`` JSON body (:mod:`instantid.service.a1111_payload`), checked by the
same :func:`~instantid.service.requests.job_request`, admitted by the same API keys, rate and job limits
(``admit``, from :func:`instantid.service.server.create_app`) and queued like any job: it shows up in
``/v1/jobs``. A1111
answers when the picture is done, so these routes wait (up to the server's ``wait_timeout_s``; then 202 with the
job's status URL to poll).
"""

from __future__ import annotations

import base64
import json
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from instantid.api.settings import GenerationSettings
from instantid.service.a1111_options import encode_image, model_title
from instantid.service.a1111_payload import (
    ALIASES,
    EMBEDDING,
    EXTRA_MODULES,
    KEYPOINTS,
    SAMPLERS,
    SCHEDULES,
    STYLE_MODULES,
    UNIT_MODELS,
    translate,
)
from instantid.service.http_errors import JOB_RESPONSES, READ_RESPONSES, failed_job_response
from instantid.service.jobs import FINISHED
from instantid.service.requests import job_request
from instantid.service.responses import JobCreated
from instantid.service.routes.deps import principal, service_of, settings_of
from instantid.service.routes.submit import admit, json_object, read_body

CONTROLNET_API_VERSION = 2  # sd-webui-controlnet's /controlnet/version for the unit shapes taken here


class Txt2ImgRequest(BaseModel):
    """A1111's txt2img payload: the fields used here; hires fix, face restoration, tiling and variation seeds
    are refused when turned on, other A1111 fields and unknown ones are ignored (listed in ``info.ignored``)."""

    model_config = ConfigDict(extra="allow")
    prompt: str = ""
    negative_prompt: str = ""
    steps: int | None = Field(None, description="Default: the model's (30, or the preset's).")
    cfg_scale: float | None = Field(None, description="Guidance scale.")
    sampler_name: str | None = Field(None, description="One of GET /sdapi/v1/samplers.")
    scheduler: str | None = Field(None, description="automatic, uniform or karras.")
    width: int | None = Field(None, description="Rounded down to a multiple of 8.")
    height: int | None = Field(None, description="Rounded down to a multiple of 8.")
    seed: int = Field(-1, description="-1 = random; the seeds used are in info.all_seeds.")
    batch_size: int = 1
    n_iter: int = 1
    styles: list[str] = Field(default_factory=list, description="At most one of our styles (GET /v1/models).")
    override_settings: dict[str, Any] = Field(default_factory=dict,
                                              description="sd_model_checkpoint must name this server's model.")
    alwayson_scripts: dict[str, Any] = Field(description=(
        f"controlnet: {{args: [units]}}: an {EMBEDDING} unit (model {UNIT_MODELS[EMBEDDING]}; image = base64 face "
        f"photo, or a list; weight = adapter strength) and an optional {KEYPOINTS} unit (model "
        f"{UNIT_MODELS[KEYPOINTS]}; image = pose photo, none = the face's pose; weight = IdentityNet strength; "
        "guidance_start, guidance_end). See the README."))


class Img2ImgRequest(Txt2ImgRequest):
    """A1111's img2img payload: txt2img's fields plus the picture to start from; resize_mode 0 (just resize) only,
    no inpainting mask."""

    init_images: list[str] = Field(min_length=1, max_length=1, description="One base64 picture (data: URI or "
                                   "plain), resized to width x height.")
    denoising_strength: float = Field(0.75, gt=0, le=1, description="How much of the picture is redrawn: "
                                      "int(steps * denoising_strength) steps run.")


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """An OpenAPI request body of ``model`` (the routes read the raw JSON themselves: A1111 ignores unknown
    fields, and errors name A1111's fields)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


class A1111Answer(BaseModel):
    images: list[str] = Field(description="Plain base64 PNGs (settings inside), or JPEG / WebP as the key's "
                                    "samples_format option asks (settings in EXIF UserComment).")
    parameters: dict[str, Any] = Field(description="The request as sent, photos left out.")
    info: str = Field(description="JSON: A1111's keys (seed, all_seeds, prompt, infotexts, ...), job_id, ignored "
                                  "(fields not used), instantid (our metadata).")


def a1111_router() -> APIRouter:
    """The routes above, behind the server's own key check (``principal``) and submission limits (``admit``)."""
    router = APIRouter(tags=["A1111 compatible"])

    answers: dict[int | str, dict[str, Any]] = {
        202: {"model": JobCreated, "description": "Still running after the server's wait limit: poll status_url."},
        **JOB_RESPONSES}

    @router.post("/sdapi/v1/txt2img", response_model=A1111Answer, responses=answers, openapi_extra=body_schema(
        Txt2ImgRequest))
    async def txt2img(request: Request, who: Any = Depends(principal)) -> Response:
        """A1111's txt2img with sd-webui-controlnet's InstantID units: one person; waits for the pictures."""
        return await generate(request, who, image_to_image=False)

    @router.post("/sdapi/v1/img2img", response_model=A1111Answer, responses=answers, openapi_extra=body_schema(
        Img2ImgRequest))
    async def img2img(request: Request, who: Any = Depends(principal)) -> Response:
        """A1111's img2img: the init image redrawn to denoising_strength as the person of the InstantID units
        (a unit without an image takes the init image, as in sd-webui-controlnet); waits for the pictures."""
        return await generate(request, who, image_to_image=True)

    async def generate(request: Request, who: Any, image_to_image: bool) -> Response:
        service = service_of(request)
        key = admit(request, who)
        settings = settings_of(request)
        raw = await read_body(request, settings.max_upload_bytes)
        if not request.headers.get("content-type", "application/json").startswith("application/json"):
            raise HTTPException(415, "send the A1111 payload as application/json")
        payload = json_object(raw)
        translated = translate(payload, model_title(service, settings)[1], image_to_image)
        job = job_request("generate", translated.body)
        record, _ = await run_in_threadpool(service.submit_request, job, owner=who.name, key=key)
        finished = await service.wait(record.id, settings.wait_timeout_s) or record
        if finished.state not in FINISHED:
            url = str(request.url_for("job_status", job_id=record.id))
            return JSONResponse(JobCreated(job_id=record.id, status=finished.state, status_url=url).model_dump(),
                                status_code=202, headers={"Location": url})
        if (failed := failed_job_response(finished)) is not None:
            return failed
        options = request.app.state.a1111_options.values(who.name)
        images = await run_in_threadpool(lambda: [encode_image(service.files.image_path(record.id, n).read_bytes(),
                                                               options) for n in range(len(finished.outputs))])
        return JSONResponse(answer(payload, images, finished.seeds, finished.metadata or {}, translated.ignored,
                                   record.id))

    @router.get("/sdapi/v1/samplers", responses=READ_RESPONSES)
    async def samplers(who: Any = Depends(principal)) -> list[dict[str, Any]]:
        """The samplers txt2img takes, by A1111's names (each one of our schedulers)."""
        return [{"name": label, "aliases": [name, *ALIASES.get(label, ())], "options": {}}
                for label, name in SAMPLERS.items()]

    @router.get("/sdapi/v1/schedulers", responses=READ_RESPONSES)
    async def schedulers(who: Any = Depends(principal)) -> list[dict[str, Any]]:
        return [{"name": name, "label": name.capitalize(), "aliases": None, "default_rho": -1,
                 "need_inner_model": False} for name in SCHEDULES]

    @router.get("/sdapi/v1/sd-models", responses=READ_RESPONSES)
    async def sd_models(request: Request, who: Any = Depends(principal)) -> list[dict[str, Any]]:
        """The one model this server runs."""
        title, name, short_hash = model_title(service_of(request), settings_of(request))
        return [{"title": title, "model_name": name, "hash": short_hash, "sha256": None, "filename": name,
                 "config": None}]

    @router.get("/controlnet/version", responses=READ_RESPONSES)
    async def controlnet_version(who: Any = Depends(principal)) -> dict[str, int]:
        return {"version": CONTROLNET_API_VERSION}

    @router.get("/controlnet/module_list", responses=READ_RESPONSES)
    async def module_list(who: Any = Depends(principal), alias_names: bool = Query(False)) -> dict[str, Any]:
        """The two InstantID preprocessors (no sliders)."""
        modules = [*UNIT_MODELS, *EXTRA_MODULES, *STYLE_MODULES]
        return {"module_list": modules,
                "module_detail": {m: {"model_free": False, "sliders": []} for m in modules}}

    @router.get("/controlnet/model_list", responses=READ_RESPONSES)
    async def model_list(who: Any = Depends(principal), update: bool = Query(True)) -> dict[str, list[str]]:
        return {"model_list": list(UNIT_MODELS.values())}

    return router


def answer(payload: dict[str, Any], images: list[bytes], seeds: list[int], metadata: dict[str, Any],
           ignored: list[str], job_id: str) -> dict[str, Any]:
    """A1111's txt2img / img2img answer: the images in plain base64, the request as ``parameters`` (photos left out, as
    A1111 leaves out init images), and ``info`` as a JSON string with A1111's keys plus ours."""
    from instantid.io.outputs import parameters_text

    used = GenerationSettings.model_validate(
        {k: v for k, v in (metadata.get("settings") or {}).items() if k in GenerationSettings.model_fields})
    infotext = parameters_text(metadata)
    width, height = metadata.get("width"), metadata.get("height")
    prompt, negative = metadata.get("prompt", used.prompt), metadata.get("negative_prompt", used.negative_prompt)
    info = {
        "prompt": prompt, "all_prompts": [prompt] * len(seeds), "negative_prompt": negative,
        "all_negative_prompts": [negative] * len(seeds),
        "seed": seeds[0], "all_seeds": seeds, "subseed": seeds[0], "all_subseeds": seeds, "subseed_strength": 0,
        "width": width, "height": height, "sampler_name": metadata.get("sampler"), "cfg_scale": used.guidance_scale,
        "steps": used.steps, "batch_size": len(seeds), "restore_faces": False, "face_restoration_model": None,
        "sd_model_name": metadata.get("model_name"), "sd_model_hash": metadata.get("model_hash"),
        "seed_resize_from_w": -1, "seed_resize_from_h": -1,
        "denoising_strength": used.denoising_strength if metadata.get("init_image") else None,
        "extra_generation_params": {"IdentityNet strength": used.identitynet_strength,
                                    "Adapter strength": used.adapter_strength},
        "index_of_first_image": 0, "infotexts": [infotext.replace(f"Seed: {seeds[0]}", f"Seed: {s}", 1)
                                                 for s in seeds],
        "styles": [used.style] if used.style else [], "job_timestamp": None, "clip_skip": 1,
        "is_using_inpainting_conditioning": False, "version": (metadata.get("versions") or {}).get("instantid"),
        "job_id": job_id, "ignored": ignored, "instantid": metadata,
    }
    return {"images": [base64.b64encode(image).decode() for image in images], "parameters": without_photos(payload),
            "info": json.dumps(info)}


def without_photos(payload: dict[str, Any]) -> dict[str, Any]:
    """The request as sent, each base64 photo replaced by None (the client has them)."""
    def strip(node: Any, key: str = "") -> Any:
        if key in ("image", "images", "input_image", "init_images", "mask") and node:
            return None
        if isinstance(node, dict):
            return {k: strip(v, k) for k, v in node.items()}
        return [strip(v) for v in node] if isinstance(node, list) else node

    return strip(payload)


__all__ = ["A1111Answer", "Img2ImgRequest", "Txt2ImgRequest", "a1111_router", "answer", "body_schema"]


router = a1111_router()
