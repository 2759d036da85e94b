"""The worker: one thread per device that runs the store's jobs through the engine, several at once where
the device gains from it (`clipasso serve --batch`)."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from functools import partial
from typing import Callable

import torch

from ..encoders import load_encoder
from ..engine import SketchRequest, sketch_batch
from ..errors import InputError, one_line
from ..options import SketchResult
from .jobs import Job, JobStore

log = logging.getLogger("clipasso.jobs")

#: Nice value of the worker thread: the engine yields the CPU to the HTTP side when both want it.
WORKER_NICENESS = 10

#: sketch_batch's signature: requests and the most runs stepped together -> each request's outcome.
Engine = Callable[[list[SketchRequest], int], list[SketchResult | Exception]]


class Worker:
    """One thread per device that runs the store's jobs in order, so jobs never compete for it.

    It takes up to `batch` queued jobs that use the same encoder and runs them as one batch: each keeps its
    own options, progress, cancel and result, and a job that fails fails alone.
    """

    def __init__(self, store: JobStore, engine: Engine = sketch_batch, preload: str | None = None,
                 batch: int = 1) -> None:
        self.store = store
        self.engine = engine
        self.preload = preload
        self.batch = batch
        self._thread = threading.Thread(target=self._loop, name="clipasso-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float) -> bool:
        """Wait for the running job to stop; True if the worker has ended."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _loop(self) -> None:
        _lower_thread_priority()
        if self.preload:
            self._warm_up(self.preload)
        while not self.store.closed:
            try:
                self.store.retry_unsaved()
                jobs = self.store.next_jobs(self.batch, timeout=1.0)
                if jobs:
                    self.run_jobs(jobs)
            except Exception:  # the worker outlives any one failure; /health tells what it cannot write
                log.exception("worker: unexpected error, carrying on")
                time.sleep(1.0)  # not a hot loop when the same failure repeats

    def _warm_up(self, name: str) -> None:
        """Load the encoder before the first job, so that job does not pay for it."""
        t = time.perf_counter()
        try:
            _, reason = load_encoder(name, self.store.device, self.store.weights)
        except Exception as exc:  # a missing model must not stop the server: jobs report it themselves
            log.warning("could not preload encoder %s: %s", name, one_line(exc))
            return
        log.info("preloaded %s on %s in %.1f s", reason, self.store.device, time.perf_counter() - t)

    def run_jobs(self, jobs: list[Job]) -> None:
        """Run jobs together; any failure marks only its own job failed, with the reason in one line."""
        store = self.store
        requests, pending = [], {}
        for job in jobs:
            log.info("job %s running", job.id)
            try:
                photo = store.photo(job)
            except InputError as exc:
                store.finish(job, error=f"the stored photo could not be read ({exc})")
                continue
            pending[job.id] = job
            requests.append(SketchRequest(
                photo,
                job.options,
                on_progress=lambda i, n, loss, strokes, job=job: store.progress(job, i, loss, strokes),
                should_stop=partial(store.should_stop, job),
                on_encoder=partial(store.encoder_chosen, job),
                on_finish=partial(self._finish, pending, job),
            ))
        if not requests:
            return
        try:
            self.engine(requests, self.batch)
        except Exception as exc:  # the engine itself broke: whatever it did not finish fails with it
            log.exception("batch of %d jobs failed", len(requests))
            for job in list(pending.values()):
                self._finish(pending, job, exc)

    def _finish(self, pending: dict[str, Job], job: Job, outcome: SketchResult | Exception) -> None:
        """Store one job's outcome as soon as the engine has it (the others of its batch may still run)."""
        pending.pop(job.id, None)
        if isinstance(outcome, Exception):
            self.store.finish(job, error=self._error_message(job, outcome))
        else:
            self.store.finish(job, result=outcome)

    def _error_message(self, job: Job, exc: Exception) -> str:
        """A failure in one line that says what to do where there is something to do."""
        if isinstance(exc, InputError):
            return str(exc)
        if isinstance(exc, MemoryError):
            return "out of memory; try fewer strokes, a smaller image or another device"
        if "out of memory" in str(exc).lower():  # torch.cuda.OutOfMemoryError and the like
            _free_device_memory()
            return f"out of memory on {self.store.device}: {one_line(exc)}"
        log.error("job %s failed", job.id, exc_info=exc)
        return f"{type(exc).__name__}: {one_line(exc)}"


def _lower_thread_priority() -> None:
    """Give the calling thread (and the compute threads it starts) a lower CPU priority, on Linux.

    The HTTP side then answers at once even when the engine keeps every core busy; the engine loses
    nothing when the server is idle. Linux applies nice values per thread; elsewhere this does nothing.
    """
    if sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICENESS)
        except OSError as exc:
            log.info("could not lower the worker's priority: %s", exc)


def _free_device_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
