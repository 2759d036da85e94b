"""The worker: one thread per device that runs the store's jobs through the engine, several at once where
the device gains from it (`clipasso serve --batch`), preparing the next ones while a GPU steps a batch."""

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
from ..engine import Prepared, SketchRequest, prepare, sketch_batch
from ..errors import InputError, one_line
from ..options import SketchResult
from .jobs import Job, JobStore

log = logging.getLogger("clipasso.jobs")

#: Nice value of the worker thread: the engine yields the CPU to the HTTP side when both want it.
WORKER_NICENESS = 10

#: sketch_batch's signature: requests (or prepared sketches) and the most runs stepped together -> each
#: request's outcome.
Engine = Callable[[list[SketchRequest | Prepared], int], list[SketchResult | Exception]]


class Worker:
    """One thread per device that runs the store's jobs in order, so jobs never compete for it.

    It takes up to `batch` queued jobs that use the same encoder and runs them as one batch: each keeps its
    own options, progress, cancel and result, and a job that fails fails alone.

    With `prefetch` (default: on CUDA, with the real engine) it prepares the jobs next in the queue while
    a batch steps, leaving them queued: preparing (decoding, finding the subject, laying the starts, the
    loss's photo side) is CPU and launch work that would otherwise leave a GPU idle between batches. A job
    cancelled meanwhile is never run; one that is not prepared ahead, or whose preparation ahead failed
    (out of memory beside the running batch, say), is prepared when taken. On a CPU the preparation would
    take cores from the step; Apple's MPS is not known to take work from two threads at once.
    """

    def __init__(self, store: JobStore, engine: Engine = sketch_batch, preload: str | None = None,
                 batch: int = 1, prefetch: bool | None = None) -> None:
        self.store = store
        self.engine = engine
        self.preload = preload
        self.batch = batch
        if prefetch is None:
            prefetch = engine is sketch_batch and store.device.startswith("cuda")
        self.prefetch = prefetch
        self._thread = threading.Thread(target=self._loop, name="clipasso-worker", daemon=True)
        self._ahead: dict[str, Prepared] = {}  # job id -> that queued job, prepared
        self._preparing: threading.Thread | None = None

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
                else:
                    self._prepared_ahead()  # nothing queued: let go of jobs prepared and cancelled since
            except Exception:  # the worker outlives any one failure; /health tells what it cannot write
                log.exception("worker: unexpected error, carrying on")
                time.sleep(1.0)  # not a hot loop when the same failure repeats

    def _warm_up(self, name: str) -> None:
        """Load the encoder before the first job, so that job does not pay for it. Never a download: the
        queue would wait minutes for it with no word, where the first job that needs the weights downloads
        them and says so (its `activity`)."""
        t = time.perf_counter()
        try:
            _, reason = load_encoder(name, self.store.device, self.store.weights, download=False)
        except Exception as exc:  # a missing model must not stop the server: jobs report it themselves
            log.warning("could not preload encoder %s: %s", name, one_line(exc))
            return
        log.info("preloaded %s on %s in %.1f s", reason, self.store.device, time.perf_counter() - t)

    def run_jobs(self, jobs: list[Job]) -> None:
        """Run jobs together; any failure marks only its own job failed, with the reason in one line."""
        store = self.store
        ahead = self._prepared_ahead()
        items: list[SketchRequest | Prepared] = []
        pending: dict[str, Job] = {}
        for job in jobs:
            log.info("job %s running", job.id)
            hooks = {
                "on_progress": lambda i, n, loss, strokes, job=job: store.progress(job, i, loss, strokes),
                "should_stop": partial(store.should_stop, job),
                "on_encoder": partial(store.encoder_chosen, job),
                "on_activity": partial(store.activity, job),
                "on_finish": partial(self._finish, pending, job),
            }
            ready = ahead.pop(job.id, None)
            if ready is None:
                try:
                    ready = SketchRequest(store.photo(job), job.options)
                except InputError as exc:
                    store.finish(job, error=f"the stored photo could not be read ({exc})")
                    continue
            for name, hook in hooks.items():
                setattr(ready.request if isinstance(ready, Prepared) else ready, name, hook)
            pending[job.id] = job
            items.append(ready)
        ahead.clear()  # prepared for jobs cancelled since: their memory goes now
        if not items:
            return
        try:
            if self.prefetch:  # this batch's own preparation first, then the next batch's beside its steps
                items = prepare(items)
                self._prepare_ahead()
            self.engine(items, self.batch)
        except Exception as exc:  # the engine itself broke: whatever it did not finish fails with it
            log.exception("batch of %d jobs failed", len(items))
            for job in list(pending.values()):
                self._finish(pending, job, exc)

    def _prepare_ahead(self) -> None:
        """Start preparing the jobs that the next batch will take, in a thread of their own. Optional work:
        if it cannot start, the jobs are prepared when taken."""
        try:
            jobs = self.store.peek_jobs(self.batch)
            if jobs:
                self._preparing = threading.Thread(target=self._prepare, args=(jobs,),
                                                   name="clipasso-prepare-ahead", daemon=True)
                self._preparing.start()
        except Exception:
            self._preparing = None
            log.exception("could not start preparing the next jobs ahead")

    def _prepare(self, jobs: list[Job]) -> None:
        _lower_thread_priority()
        requests, ids = [], []
        for job in jobs:
            try:
                requests.append(SketchRequest(self.store.photo(job), job.options))
                ids.append(job.id)
            except InputError:
                continue  # said when the job is taken
        try:  # those that failed are prepared again when taken, beside less than a running batch
            self._ahead = {i: p for i, p in zip(ids, prepare(requests)) if p.outcome is None}
        except Exception:
            log.exception("preparing %d queued jobs ahead failed", len(requests))

    def _prepared_ahead(self) -> dict[str, Prepared]:
        """The jobs prepared while the last batch ran (waiting for that preparation to end)."""
        if self._preparing is not None:
            self._preparing.join()
            self._preparing = None
        ahead, self._ahead = self._ahead, {}
        return ahead

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
