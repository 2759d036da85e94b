"""The worker: one thread per device that runs the store's jobs one at a time through `sketch()`."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Callable

import torch

from ..encoders import load_encoder
from ..engine import sketch
from ..errors import InputError, one_line
from ..options import SketchResult
from .jobs import Job, JobStore

log = logging.getLogger("clipasso.jobs")

#: Nice value of the worker thread: the engine yields the CPU to the HTTP side when both want it.
WORKER_NICENESS = 10

Engine = Callable[..., SketchResult]


class Worker:
    """One thread per device that runs the store's jobs in order, so jobs never compete for it."""

    def __init__(self, store: JobStore, engine: Engine = sketch, preload: str | None = None) -> None:
        self.store = store
        self.engine = engine
        self.preload = preload
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
                job = self.store.next_job(timeout=1.0)
                if job is not None:
                    self.run_job(job)
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

    def run_job(self, job: Job) -> None:
        """Run one job; any failure marks only this job failed, with the reason in one line."""
        store = self.store
        log.info("job %s running", job.id)
        try:
            photo = store.photo(job)
        except InputError as exc:
            store.finish(job, error=f"the stored photo could not be read ({exc})")
            return
        try:
            result = self.engine(
                photo,
                job.options,
                on_progress=lambda i, n, loss, strokes: store.progress(job, i, loss, strokes),
                should_stop=lambda: store.should_stop(job),
                on_encoder=lambda name, reason: store.encoder_chosen(job, name, reason),
            )
        except InputError as exc:
            store.finish(job, error=str(exc))
        except MemoryError:
            store.finish(job, error="out of memory; try fewer strokes, a smaller image or another device")
        except Exception as exc:
            if "out of memory" in str(exc).lower():  # torch.cuda.OutOfMemoryError and the like
                _free_device_memory()
                store.finish(job, error=f"out of memory on {store.device}: {one_line(exc)}")
            else:
                log.exception("job %s failed", job.id)
                store.finish(job, error=f"{type(exc).__name__}: {one_line(exc)}")
        else:
            store.finish(job, result=result)


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
