"""HTTP API: submit a generation job, poll it, fetch its PNGs. Built by :func:`create_app`; loads nothing at import.

    POST /v1/generate            multipart (face files, optional pose, form fields) or JSON (base64) -> 202 {job_id}
    GET  /v1/jobs/{id}           queued | running | done | failed, progress, error, image URLs
    GET  /v1/jobs/{id}/images/{n}  PNG with its settings in the ``instantid`` text chunk
    GET  /v1/models, /health, /docs, /openapi.json; the web UI at /ui

Bad input is refused at submit, before it waits in the queue: 413 too large, 422 unreadable image, no face or
out-of-range setting (the message names it), 429 queue full. One worker runs the jobs one at a time.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from instantid.errors import InstantIDError, InvalidInputError
from instantid.outputs import png_bytes

if TYPE_CHECKING:
    from instantid.generator import GenerationSettings, InstantID

log = logging.getLogger(__name__)
MAX_FACES = 8


class ModelSettings(BaseModel):
    """Which model to load and how; shared by the CLI commands, the web UI and the server."""

    model_config = ConfigDict(extra="forbid")

    base: str | None = None  # None = the published defaults (see instantid.models)
    identitynet: str | None = None
    adapter: str | None = None
    face_backend: Literal["auto", "dlib", "antelopev2"] = "auto"
    antelopev2_root: Path | None = None
    device: str | None = None  # None = cuda, else mps, else cpu
    dtype: Literal["fp16", "bf16", "fp32"] | None = None
    cpu_offload: bool = False
    scheduler: str | None = None
    lora: str | None = None
    lora_scale: float = 1.0
    demo: bool = False  # tiny random weights, offline: images are noise
    demo_cache_dir: Path | None = None

    def load(self) -> InstantID:
        from instantid.generator import InstantID

        options = {"device": self.device, "scheduler": self.scheduler, "lora": self.lora}
        options = {k: v for k, v in options.items() if v is not None}
        if self.demo:
            given = [name for name in ("base", "identitynet", "adapter") if getattr(self, name)]
            if given:
                raise InvalidInputError(f"--demo uses its own tiny weights; drop --{', --'.join(given)}")
            return InstantID.demo(self.demo_cache_dir, lora_scale=self.lora_scale, **options)
        return InstantID.from_pretrained(
            self.base, self.identitynet, self.adapter, face_backend=self.face_backend,
            antelopev2_root=self.antelopev2_root, dtype=self.dtype, cpu_offload=self.cpu_offload,
            lora_scale=self.lora_scale, **options,
        )


class ServerSettings(ModelSettings):
    max_upload_bytes: int = Field(20 * 2**20, gt=0)  # whole request body
    max_queued_jobs: int = Field(16, gt=0)  # waiting jobs beyond this get 429
    max_kept_jobs: int = Field(100, gt=0)  # finished jobs (and their PNGs) kept in memory
    mount_ui: bool = True  # the gradio UI at /ui


class GenerateParams(BaseModel):
    """Form fields (multipart) or JSON fields of ``POST /v1/generate``; ranges are checked by
    :meth:`GenerationSettings.validate`, which names the offending field."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = ""
    negative_prompt: str = ""
    style: str | None = None
    num_images: int = 1
    seed: int | None = None
    steps: int = 30
    guidance_scale: float = 5.0
    identitynet_strength: float = 0.8
    adapter_strength: float = 0.8
    width: int | None = None
    height: int | None = None
    enhance_face_region: bool = True
    face_index: int | None = None


class GenerateJSON(GenerateParams):
    faces: list[str] = Field(..., min_length=1, max_length=MAX_FACES, description="base64-encoded photos")
    pose: str | None = Field(None, description="base64-encoded pose photo")


class JobCreated(BaseModel):
    job_id: str
    status_url: str


class JobStatus(BaseModel):
    job_id: str
    status: Literal["queued", "running", "done", "failed"]
    step: int
    total: int
    error: str | None
    images: list[str]  # URLs
    seeds: list[int]
    metadata: dict[str, Any] | None


@dataclass
class Job:
    id: str
    faces: list[bytes]
    pose: bytes | None
    settings: GenerationSettings
    status: str = "queued"
    step: int = 0
    total: int = 0
    error: str | None = None
    images: list[bytes] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    metadata: dict[str, Any] | None = None


class JobQueue:
    """Bounded FIFO of jobs and one worker; finished jobs are kept (newest ``max_kept``) for polling."""

    def __init__(self, max_queued: int, max_kept: int) -> None:
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self.max_kept = max_kept
        self._queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=max_queued)

    def submit(self, job: Job) -> None:
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise HTTPException(429, f"the queue is full ({self._queue.maxsize} jobs waiting); retry later") from None
        self.jobs[job.id] = job
        finished = [j.id for j in self.jobs.values() if j.status in ("done", "failed")]
        for job_id in finished[: max(0, len(finished) - self.max_kept)]:
            del self.jobs[job_id]

    async def work(self, model: InstantID) -> None:
        while True:
            job = await self._queue.get()
            await run_in_threadpool(run_job, model, job)
            self._queue.task_done()


def run_job(model: InstantID, job: Job) -> None:
    def progress(step: int, total: int) -> None:
        job.step, job.total = step, total

    job.status = "running"
    try:
        result = model.generate(job.faces, job.settings, pose_image=job.pose, progress=progress)
    except InstantIDError as exc:
        job.status, job.error = "failed", str(exc)
        return
    except Exception as exc:  # the worker must survive any one job
        log.exception("job %s failed", job.id)
        job.status, job.error = "failed", f"internal error: {type(exc).__name__}: {exc}"
        return
    job.images = [png_bytes(image, result.image_metadata(i)) for i, image in enumerate(result.images)]
    job.seeds, job.metadata = result.seeds, result.metadata
    job.status = "done"


def check_faces(model: InstantID, photos: list[tuple[str, bytes]], face_index: int | None) -> None:
    """Raise ImageReadError / NoFaceError / InvalidInputError naming the upload, before the job is queued."""

    for name, data in photos:
        model.find_face(data, name, face_index)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` (declared or actual length)."""
    too_large = HTTPException(413, f"request body over the {limit}-byte upload limit")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _upload_name(upload: UploadFile, fallback: str) -> str:
    # A label for messages only; never used as a path.
    return PurePath(upload.filename or fallback).name[:120] or fallback


async def parse_multipart(request: Request, body: bytes, limit: int) -> tuple[dict, list, tuple | None]:
    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    form = await Request(request.scope, replay).form(max_files=MAX_FACES + 1, max_fields=64, max_part_size=limit)
    fields_: dict[str, str] = {}
    faces: list[tuple[str, bytes]] = []
    pose = None
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            if key not in ("face", "faces", "pose"):
                raise InvalidInputError(f"unexpected file field {key!r}; send photos as 'face' and 'pose'")
            item = (_upload_name(value, key), await value.read())
            if key == "pose":
                pose = item
            else:
                faces.append(item)
        elif key in ("face", "faces", "pose"):
            raise InvalidInputError(f"field {key!r} must be a file upload")
        elif value != "":  # an empty form field means "default"
            fields_[key] = value
    if not faces:
        raise InvalidInputError("upload at least one face photo in the 'face' field")
    return fields_, faces, pose


def parse_json(body: bytes) -> tuple[dict, list, tuple | None]:
    try:
        request = GenerateJSON.model_validate_json(body)
    except ValidationError as exc:
        raise _validation_error(exc) from None
    params = request.model_dump(exclude={"faces", "pose"}, exclude_unset=True)
    faces = [(f"faces[{i}]", _b64(f"faces[{i}]", data)) for i, data in enumerate(request.faces)]
    pose = ("pose", _b64("pose", request.pose)) if request.pose else None
    return params, faces, pose


def _b64(name: str, data: str) -> bytes:
    try:
        return base64.b64decode(data.split(",", 1)[-1] if data.startswith("data:") else data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError(f"{name} is not valid base64") from None


def _validation_error(exc: ValidationError) -> InvalidInputError:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    return InvalidInputError(f"{where}: {first['msg']}")


def create_app(settings: ServerSettings | None = None, model: InstantID | None = None) -> FastAPI:
    """The FastAPI app. ``model`` is used as is; otherwise ``settings`` are loaded at startup."""
    settings = settings or ServerSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.model = model or await run_in_threadpool(settings.load)
        app.state.jobs = JobQueue(settings.max_queued_jobs, settings.max_kept_jobs)
        worker = asyncio.create_task(app.state.jobs.work(app.state.model))
        try:
            yield
        finally:
            worker.cancel()

    app = FastAPI(title="InstantID", version="0.1.0", lifespan=lifespan, summary=__doc__.splitlines()[0])

    @app.exception_handler(InstantIDError)
    async def instantid_error(request: Request, exc: InstantIDError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        return {"status": "ok", "demo": request.app.state.model.demo, "jobs": len(request.app.state.jobs.jobs)}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        from instantid.generator import SCHEDULERS
        from instantid.styles import STYLES

        model = request.app.state.model
        return {
            "models": asdict(model.refs), "embedding_space": model.embedding_space,
            "face_space": model.analyzer.space, "demo": model.demo, "lora": model.lora,
            "styles": list(STYLES), "schedulers": list(SCHEDULERS),
        }

    @app.post(
        "/v1/generate", status_code=202, response_model=JobCreated,
        openapi_extra={"requestBody": {"required": True, "content": {
            "multipart/form-data": {"schema": _multipart_schema()},
            "application/json": {"schema": GenerateJSON.model_json_schema()},
        }}},
    )
    async def generate(request: Request) -> JobCreated:
        """Queue a generation. Multipart: ``face`` file(s) (one person; several are averaged), optional
        ``pose`` file, and any of the form fields below. JSON: the same with base64 ``faces``/``pose``."""
        from instantid.generator import GenerationSettings

        body = await read_body(request, settings.max_upload_bytes)
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            params, faces, pose = await parse_multipart(request, body, settings.max_upload_bytes)
        elif content_type.startswith("application/json"):
            params, faces, pose = parse_json(body)
        else:
            raise HTTPException(415, "send multipart/form-data or application/json")
        try:
            generation = GenerationSettings(**GenerateParams.model_validate(params).model_dump()).validate()
        except ValidationError as exc:
            raise _validation_error(exc) from None
        model = request.app.state.model
        await run_in_threadpool(check_faces, model, faces, generation.face_index)
        if pose:  # the generator takes the pose photo's largest face, whatever face_index says
            await run_in_threadpool(check_faces, model, [pose], None)
        job = Job(uuid.uuid4().hex, [data for _, data in faces], pose[1] if pose else None, generation)
        request.app.state.jobs.submit(job)
        return JobCreated(job_id=job.id, status_url=f"/v1/jobs/{job.id}")

    def find(request: Request, job_id: str) -> Job:
        job = request.app.state.jobs.jobs.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id!r} (unknown or expired)")
        return job

    @app.get("/v1/jobs/{job_id}", response_model=JobStatus)
    async def job_status(request: Request, job_id: str) -> JobStatus:
        job = find(request, job_id)
        return JobStatus(
            job_id=job.id, status=job.status, step=job.step, total=job.total, error=job.error,
            images=[f"/v1/jobs/{job.id}/images/{n}" for n in range(len(job.images))], seeds=job.seeds,
            metadata=job.metadata,
        )

    @app.get("/v1/jobs/{job_id}/images/{n}", response_class=Response,
             responses={200: {"content": {"image/png": {}}}})
    async def job_image(request: Request, job_id: str, n: int) -> Response:
        job = find(request, job_id)
        if job.status != "done":
            raise HTTPException(409, f"job {job_id} is {job.status}, not done")
        if not 0 <= n < len(job.images):
            raise HTTPException(404, f"job {job_id} has images 0..{len(job.images) - 1}")
        headers = {"Content-Disposition": f'inline; filename="instantid-{job_id[:8]}-{n}.png"'}
        return Response(job.images[n], media_type="image/png", headers=headers)

    if settings.mount_ui:
        import gradio as gr

        from instantid.webui import create_ui

        gr.mount_gradio_app(app, create_ui(lambda: app.state.model), path="/ui")
    return app


def _multipart_schema() -> dict[str, Any]:
    schema = GenerateParams.model_json_schema()
    binary = {"type": "string", "format": "binary"}
    schema["properties"] = {
        "face": {"type": "array", "items": binary, "description": "face photo(s) of one person"},
        "pose": {**binary, "description": "optional pose photo"},
        **schema["properties"],
    }
    schema["required"] = ["face"]
    return schema
