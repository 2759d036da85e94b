"""The service's public shapes: job states and the JSON bodies, as the OpenAPI schema shows them."""

from __future__ import annotations

import enum
from typing import Any

from pydantic import BaseModel


class JobState(str, enum.Enum):
    """A job's life: queued -> running -> succeeded, failed or cancelled (queued ones may be cancelled)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value

    @property
    def final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


class ErrorBody(BaseModel):
    error: str


class JobView(BaseModel):
    id: str
    state: JobState
    progress: float
    iteration: int  # 0 until the first step; with `drawn`, the starting strokes are there
    iterations: int
    drawn: bool = False  # while it runs: whether strokes are laid (preview.svg shows them from the start)
    loss: float | None
    error: str | None
    encoder: str
    created: str
    finished: str | None
    attached: bool  # cancelled once no event stream of it is open (submitted with attach=true)
    queue_position: int | None  # while queued: how many jobs wait ahead of it
    warnings: list[str] = []  # what of the submission is ignored or will disappoint (paths off the photo, a thin photo)
    activity: str | None = None  # while it runs: long work outside the steps (a weights download, the ladder's levels)
    width: int  # the photo's size in pixels, as displayed: the result's coordinates are these pixels
    height: int
    elapsed: float | None = None  # seconds it has run (or ran), by the server's clock; None while queued
    result: bool = False  # whether result.svg is there (it may be for a cancelled job: its best strokes)


class JobList(BaseModel):
    jobs: list[JobView]


class EncoderState(BaseModel):
    name: str
    state: str  #: "built in", "cached", "downloadable" (fetched on first use) or "unavailable"
    ready: bool
    detail: str
    size: int | None = None


class Health(BaseModel):
    status: str  #: "ok" or "degraded"
    problem: str | None = None
    version: str
    device: str
    encoders: list[str]
    models: list[EncoderState]
    renderers: list[str]  #: the renderers this server can use (diffvg only where pydiffvg is installed)
    queue: int
    max_upload_bytes: int


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for error statuses, each with the one-line ErrorBody."""
    return {code: {"model": ErrorBody} for code in codes}
