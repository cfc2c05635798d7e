"""The HTTP answers' shapes (the request bodies are :mod:`instantid.service.requests`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from instantid.apps.tasks import TaskKind
from instantid.service.jobs import JobState


class JobCreated(BaseModel):
    job_id: str
    status: str
    status_url: str
    position: int | None = Field(None, description="Jobs ahead of this one in the queue.")


class JobStatus(BaseModel):
    job_id: str
    task: TaskKind = Field("generate", description="What the job makes: generate, swap, group or detail.")
    status: JobState
    position: int | None = Field(None, description="Jobs ahead of this one while queued.")
    step: int
    total: int
    attempts: int
    worker: str | None = Field(None, description="host:pid of the worker that runs (ran) the job.")
    error: str | None
    error_id: str | None = Field(None, description="An internal error (not the request's fault): the id to quote; "
                                                   "the server log has its traceback.")
    created: float
    started: float | None
    finished: float | None
    images: list[str] = Field(description="Absolute URLs of the PNGs (settings inside).")
    seeds: list[int]
    settings: dict[str, Any]
    metadata: dict[str, Any] | None


class JobList(BaseModel):
    jobs: list[JobStatus]
    total: int
    offset: int
    limit: int
    next: str | None = Field(None, description="URL of the next page, if any.")


class GenerationOutput(BaseModel):
    """``?wait=true``: the images themselves, as A1111's ``/sdapi/v1/txt2img`` returns them."""

    job_id: str
    status: str
    images: list[str] = Field(description="data:image/png;base64,... one per image.")
    image_urls: list[str]
    seeds: list[int]
    parameters: dict[str, Any] = Field(description="The settings used (seed resolved).")
    info: dict[str, Any] = Field(description="Everything recorded with the images.")


__all__ = ["GenerationOutput", "JobCreated", "JobList", "JobStatus"]
