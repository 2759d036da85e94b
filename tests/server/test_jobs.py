"""The job store and its worker in-process: states, files on disk, restarts, and failures kept to one job."""

from __future__ import annotations

import io
import json
import threading
from dataclasses import replace

import numpy as np
import pytest
from extension_support import import_extension
from PIL import Image

from clipasso.engine import sketch
from clipasso.images import load_photo
from clipasso.options import SketchOptions, SketchResult
from clipasso.server import jobs
from clipasso.server.jobs import (
    ATTACH_GRACE_SECONDS,
    Job,
    JobStateError,
    JobStore,
    QueueFull,
    ShuttingDown,
    UnknownJob,
)
from clipasso.server.schemas import FINAL_STATES, JobState
from clipasso.server.worker import Worker

QUICK = SketchOptions(encoder="lite0", strokes=4, iterations=2)


@pytest.fixture()
def store(tmp_path, monkeypatch) -> JobStore:
    monkeypatch.setenv("CLIPASSO_OFFLINE", "1")
    monkeypatch.setenv("CLIPASSO_CACHE", str(tmp_path / "no-weights"))
    s = JobStore(tmp_path / "data", device="cpu", max_queued=3)
    s.load()
    return s


def paths(svg: str) -> list[str]:
    return [line.strip() for line in svg.splitlines() if "<path" in line]


def record(store: JobStore, job_id: str) -> dict:
    return json.loads((store.job_dir(job_id) / "job.json").read_text())


def test_a_job_runs_with_the_real_engine(store, server_photo_png):
    view = store.submit(server_photo_png, QUICK)
    assert view["state"] == "queued" and view["iterations"] == 2
    [job] = store.next_jobs(1, timeout=0)
    assert job.state == JobState.RUNNING and record(store, job.id)["state"] == "running"
    Worker(store).run_jobs([job])
    _, done = store.snapshot(job.id)
    assert done["state"] == "succeeded" and done["progress"] == 1.0 and done["encoder"] == "lite0"
    assert record(store, job.id)["state"] == "succeeded"
    svg = store.result_svg(job.id)
    assert svg.count("<path") == 4
    assert paths(store.preview_svg(job.id)) == paths(svg)  # the preview shows the final strokes


def test_a_cut_out_keeps_its_transparency_in_the_store(store, server_photo_png):
    """Subject focus reads a photo's alpha: the store keeps it beside the photo, and gives it back."""
    rgba = Image.open(io.BytesIO(server_photo_png)).convert("RGBA")
    alpha = Image.new("L", rgba.size, 0)
    alpha.paste(255, (10, 10, rgba.width - 10, rgba.height - 10))
    rgba.putalpha(alpha)
    buffer = io.BytesIO()
    rgba.save(buffer, format="PNG")
    cut_out = store.submit(buffer.getvalue(), QUICK)
    plain = store.submit(server_photo_png, QUICK)
    photo = store.photo(store.get(cut_out["id"]))
    assert np.array_equal(np.asarray(photo.alpha), np.asarray(alpha))
    assert (store.job_dir(cut_out["id"]) / "alpha.png").exists()
    assert store.photo(store.get(plain["id"])).alpha is None
    assert not (store.job_dir(plain["id"]) / "alpha.png").exists()


def test_a_failing_job_fails_alone_with_its_reason(store, server_photo_png):
    """CLIP weights are not to be had offline: that job fails with the reason, the next one runs."""
    bad = store.submit(server_photo_png, SketchOptions(encoder="clip:RN50", strokes=4, iterations=2))
    good = store.submit(server_photo_png, QUICK)
    worker = Worker(store)
    for _ in range(2):
        worker.run_jobs(store.next_jobs(1, timeout=0))
    failed = store.snapshot(bad["id"])[1]
    assert failed["state"] == "failed" and "CLIPASSO_OFFLINE=1" in failed["error"]
    assert store.snapshot(good["id"])[1]["state"] == "succeeded"
    with pytest.raises(JobStateError, match="without a result"):
        store.result_svg(bad["id"])


def test_an_engine_crash_marks_only_that_job_failed(store, server_photo_png):
    def broken_engine(*args, **kwargs) -> list[SketchResult]:
        raise RuntimeError("the engine broke\nacross lines")

    job_id = store.submit(server_photo_png, QUICK)["id"]
    Worker(store, engine=broken_engine).run_jobs(store.next_jobs(1, timeout=0))
    view = store.snapshot(job_id)[1]
    assert view["state"] == "failed" and view["error"] == "RuntimeError: the engine broke across lines"


def test_jobs_run_together_and_fail_or_cancel_alone(store, server_photo_png, monkeypatch):
    """One batch of the real engine: a job whose photo was lost fails alone, one cancelled mid-run ends
    cancelled, and the others finish as they would alone. Jobs for another encoder wait for their own batch."""
    store.max_queued = 10
    alone = sketch(load_photo(io.BytesIO(server_photo_png)), replace(QUICK, iterations=6, device="cpu"))
    ids = [store.submit(server_photo_png, replace(QUICK, iterations=6))["id"] for _ in range(4)]
    other = store.submit(server_photo_png, SketchOptions(encoder="clip:RN50", strokes=4, iterations=2))["id"]
    late = store.submit(server_photo_png, replace(QUICK, iterations=6))["id"]
    (store.job_dir(ids[1]) / "photo.png").unlink()
    record_progress = store.progress

    def progress_then_cancel(job, iteration, loss, strokes) -> None:
        record_progress(job, iteration, loss, strokes)
        if job.id == ids[2] and iteration >= 1 and not job.cancel_requested:
            store.cancel(job.id)

    monkeypatch.setattr(store, "progress", progress_then_cancel)
    jobs = store.next_jobs(4, timeout=0)
    assert [j.id for j in jobs] == [ids[0], ids[1], ids[2], ids[3]]
    assert store.snapshot(other)[1]["queue_position"] == 0 and store.snapshot(late)[1]["queue_position"] == 1
    Worker(store, batch=4).run_jobs(jobs)
    views = [store.snapshot(i)[1] for i in ids]
    assert [v["state"] for v in views] == ["succeeded", "failed", "cancelled", "succeeded"]
    assert "stored photo could not be read" in views[1]["error"]
    for v in (views[0], views[3]):
        assert v["iteration"] == alone.iterations and v["loss"] == pytest.approx(alone.loss, rel=1e-3)
    assert [j.id for j in store.next_jobs(4, timeout=0)] == [other]  # the next batch: one encoder at a time


def test_the_next_batch_is_prepared_while_one_runs(store, server_photo_png, monkeypatch):
    """With prefetch (a GPU's default, forced here on the CPU), the jobs next in the queue are prepared while a
    batch steps but stay queued: one cancelled meanwhile never runs, and the others, taken with the next
    batch, finish as they would alone, from their preparation (one whose photo went since still runs)."""
    store.max_queued = 10
    options = replace(QUICK, iterations=6)
    alone = sketch(load_photo(io.BytesIO(server_photo_png)), replace(options, device="cpu"))
    ids = [store.submit(server_photo_png, options)["id"] for _ in range(5)]
    worker = Worker(store, batch=2, prefetch=True)
    record_progress, record_encoder = store.progress, store.encoder_chosen
    told = []
    monkeypatch.setattr(store, "encoder_chosen", lambda job, name, reason: told.append(job.id)
                        or record_encoder(job, name, reason))

    def progress_then_cancel(job, iteration, loss, strokes) -> None:
        record_progress(job, iteration, loss, strokes)
        if job.id == ids[0] and iteration >= 1 and store.snapshot(ids[2])[1]["state"] == "queued":
            store.cancel(ids[2])

    monkeypatch.setattr(store, "progress", progress_then_cancel)
    worker.run_jobs(store.next_jobs(2, timeout=0))
    worker._preparing.join()
    assert sorted(worker._ahead) == sorted(ids[2:4])  # prepared while the first batch ran
    view = store.snapshot(ids[3])[1]
    assert view["state"] == "queued" and view["queue_position"] == 0 and view["loss"] is None  # nothing reported
    (store.job_dir(ids[3]) / "photo.png").unlink()
    taken = store.next_jobs(2, timeout=0)
    assert [j.id for j in taken] == [ids[3], ids[4]]
    worker.run_jobs(taken)
    views = [store.snapshot(i)[1] for i in ids]
    assert [v["state"] for v in views] == ["succeeded", "succeeded", "cancelled", "succeeded", "succeeded"]
    assert views[2]["loss"] is None  # never run
    for v in views[:2] + views[3:]:
        assert v["iteration"] == alone.iterations and v["loss"] == pytest.approx(alone.loss, rel=1e-3)
    assert sorted(told) == sorted(ids[:2] + ids[3:])  # the encoder, told once to each job that ran


def test_a_job_whose_preparation_ahead_failed_is_prepared_again(store, server_photo_png, monkeypatch):
    """Preparing ahead runs beside a batch (on a GPU: beside its memory); a job it failed for is prepared
    again when taken, and succeeds if it can."""
    from clipasso.engine import optimise

    store.max_queued = 10
    ids = [store.submit(server_photo_png, QUICK)["id"] for _ in range(2)]
    real = optimise.prepare_target

    def fails_ahead(*args, **kwargs):
        if threading.current_thread().name == "clipasso-prepare-ahead":
            raise RuntimeError("CUDA out of memory (as beside a running batch)")
        return real(*args, **kwargs)

    monkeypatch.setattr(optimise, "prepare_target", fails_ahead)
    worker = Worker(store, batch=1, prefetch=True)
    worker.run_jobs(store.next_jobs(1, timeout=0))
    worker._preparing.join()
    assert worker._ahead == {}  # the failed preparation is not kept
    worker.run_jobs(store.next_jobs(1, timeout=0))
    assert [store.snapshot(i)[1]["state"] for i in ids] == ["succeeded", "succeeded"]


def test_cancel_queued_and_finished(store, server_photo_png):
    job_id = store.submit(server_photo_png, QUICK)["id"]
    assert (store.job_dir(job_id) / "photo.png").exists()
    assert store.cancel(job_id)["state"] == "cancelled"
    assert record(store, job_id)["state"] == "cancelled" and store.queued_count() == 0
    # Its photo goes (submitting and cancelling in a loop filled 10 MB/s of disk); its record stays.
    assert sorted(p.name for p in store.job_dir(job_id).iterdir()) == ["job.json"]
    store.close()
    again = JobStore(store.root.parent, device="cpu")
    again.load()
    assert again.snapshot(job_id)[1]["state"] == "cancelled"
    with pytest.raises(JobStateError, match="already finished"):
        store.cancel(job_id)


def test_cancel_while_running_keeps_the_best_strokes(store, server_photo_png, monkeypatch):
    """Also: while it runs, an `auto` job shows the encoder that auto chose (lite0, offline)."""
    job_id = store.submit(server_photo_png, SketchOptions(encoder="auto", strokes=4, iterations=10_000))["id"]
    assert store.snapshot(job_id)[1]["encoder"] == "auto"
    record_progress = store.progress
    seen = []

    def progress_then_cancel(job, iteration, loss, strokes) -> None:
        record_progress(job, iteration, loss, strokes)
        seen.append((iteration, store.snapshot(job_id)[1]["encoder"]))
        if iteration >= 3 and not job.cancel_requested:
            store.cancel(job_id)  # as another client would, during the run

    monkeypatch.setattr(store, "progress", progress_then_cancel)
    Worker(store).run_jobs(store.next_jobs(1, timeout=0))
    view = store.snapshot(job_id)[1]
    assert seen[0] == (0, "lite0") and all(encoder == "lite0" for _, encoder in seen)
    # Cancelled at the first report from iteration 3 on: the run ends before its next step.
    cancelled_at = next(i for i, _ in seen if i >= 3)
    assert view["state"] == "cancelled" and view["iteration"] == cancelled_at
    assert store.result_svg(job_id).count("<path") == 4


def test_event_streams_are_bounded(store, server_photo_png, monkeypatch):
    """2000 streams of one job slowed /health from 3 ms to over a second: past MAX_EVENT_STREAMS the next is
    refused (503) until one closes, of any job."""
    monkeypatch.setattr(jobs, "MAX_EVENT_STREAMS", 3)
    first, second = (store.submit(server_photo_png, QUICK)["id"] for _ in range(2))
    for job_id in (first, first, second):
        store.may_stream()
        store.watch(job_id)
    with pytest.raises(jobs.TooManyStreams, match=r"too many event streams open \(3\); poll GET /jobs/\{id\}"):
        store.may_stream()
    store.unwatch(second)
    store.may_stream()


def test_attached_jobs_are_abandoned_only_when_nobody_follows_them(store, server_photo_png):
    """The lease behind attach=true, with the clock moved by hand: streams keep the job, the grace counts from
    the last one closing (or from submitting), detaching ends the tie, and other jobs are never abandoned."""
    attached = store.submit(server_photo_png, QUICK, attached=True)["id"]
    free = store.submit(server_photo_png, QUICK)["id"]
    job = store.get(attached)
    assert store.snapshot(attached)[1]["attached"] and not store.snapshot(free)[1]["attached"]
    assert store.abandoned() == []  # within the grace after submitting
    job.unwatched_since -= ATTACH_GRACE_SECONDS
    store.get(free).unwatched_since -= ATTACH_GRACE_SECONDS
    assert store.abandoned() == [attached]
    store.watch(attached)
    store.watch(attached)
    store.unwatch(attached)
    job.unwatched_since -= ATTACH_GRACE_SECONDS
    assert store.abandoned() == []  # one stream is still open
    store.unwatch(attached)
    assert store.abandoned() == []  # the last one just closed
    job.unwatched_since -= ATTACH_GRACE_SECONDS
    assert store.abandoned() == [attached]
    view = store.detach(attached)
    assert not view["attached"] and not record(store, attached)["attached"] and store.abandoned() == []


def test_queue_position(store, server_photo_png):
    ids = [store.submit(server_photo_png, QUICK)["id"] for _ in range(3)]
    assert [store.snapshot(i)[1]["queue_position"] for i in ids] == [0, 1, 2]
    store.next_jobs(1, timeout=0)
    store.cancel(ids[1])
    assert [store.snapshot(i)[1]["queue_position"] for i in ids] == [None, None, 0]
    assert [j["queue_position"] for j in store.list()] == [0, None, None]


def test_queue_limit(store, server_photo_png):
    for _ in range(3):
        store.submit(server_photo_png, QUICK)
    with pytest.raises(QueueFull, match="too many queued jobs"):
        store.submit(server_photo_png, QUICK)


def test_a_closing_store_takes_no_job_and_says_it_is_stopping(store, server_photo_png):
    """Not "too many queued jobs" (429, retry soon): the server is going away (503)."""
    store.close()
    with pytest.raises(ShuttingDown, match="the server is shutting down"):
        store.submit(server_photo_png, QUICK)


def test_unknown_and_malformed_ids(store):
    for job_id in ("A" * 22, "../../etc/passwd", ""):
        with pytest.raises(UnknownJob):
            store.snapshot(job_id)


def test_restart_requeues_queued_jobs_and_fails_interrupted_ones(tmp_path, server_photo_png):
    first = JobStore(tmp_path / "data", device="cpu")
    first.load()
    running = first.submit(server_photo_png, QUICK)["id"]
    queued = first.submit(server_photo_png, QUICK)["id"]
    first.next_jobs(1, timeout=0)  # the first one is running when the process "dies"
    (tmp_path / "data" / "jobs" / ("B" * 22)).mkdir()  # a folder without a readable job.json

    second = JobStore(tmp_path / "data", device="cuda:1")
    second.load()
    interrupted = second.snapshot(running)[1]
    assert interrupted["state"] == "failed" and "the server stopped while this job was running" in interrupted["error"]
    assert second.queued_count() == 1 and second.get(queued).options.device == "cuda:1"
    assert [j["id"] for j in second.list()] == [queued, running]


def test_record_round_trip():
    job = Job(id="x" * 22, options=QUICK.validated(), width=30, height=20, created=1.5, state=JobState.FAILED,
              loss=float("nan"), error="why", timings={"total": 1.0}, strokes=np.zeros((1, 4, 2)), version=9)
    stored = json.loads(json.dumps(job.to_record()))
    assert stored["state"] == "failed" and stored["loss"] is None and "strokes" not in stored and "version" not in stored
    again = Job.from_record(stored)
    assert again.state is JobState.FAILED and again.options == job.options and again.timings == {"total": 1.0}
    assert again.view() == {**job.view(), "loss": None, "drawn": False}  # strokes live in memory only


def test_the_extension_knows_the_same_final_states():
    """The extension cannot import the backend; its copy of the final states must match."""
    import_extension(with_inkex=False)
    from clipasso_client import FINAL_STATES as EXTENSION_FINAL_STATES

    assert set(EXTENSION_FINAL_STATES) == {s.value for s in FINAL_STATES}


def test_old_and_excess_finished_jobs_are_removed_and_leftovers_cleared(tmp_path, server_photo_png):
    store = JobStore(tmp_path / "data", device="cpu", keep_days=7)
    store.load()
    ids = [store.submit(server_photo_png, QUICK)["id"] for _ in range(4)]
    for job_id in ids[:3]:
        store.cancel(job_id)
    day = 86400
    store.get(ids[0]).finished -= 8 * day  # finished 8 days ago
    assert store.prune() == [ids[0]] and not (store.root / ids[0]).exists()
    size = sum(f.stat().st_size for f in (store.root / ids[1]).iterdir())  # a job.json: cancelled while queued
    queued = sum(f.stat().st_size for f in (store.root / ids[3]).iterdir())
    store.max_bytes = queued + size + size // 2  # room for the queued job and one and a half: the oldest goes
    store.watch(ids[1])  # an event stream of it, open while it goes
    assert store.prune() == [ids[1]]
    store.unwatch(ids[1])  # the stream's end finds it gone: nothing to do, no error
    assert [j["id"] for j in store.list()] == [ids[3], ids[2]]  # the queued one is never removed
    store.max_bytes = 1  # the queued job alone is over it: every finished job would go, but the one just ended
    assert store.prune(spare=ids[2]) == [] and (store.root / ids[2] / "job.json").exists()

    # Leftovers of a submit killed half-way: a folder without job.json, a temporary file.
    (store.root / ("C" * 22)).mkdir()
    (store.root / ids[2] / ".job.json.0123456789ab.part").write_text("{")
    again = JobStore(tmp_path / "data", device="cpu")
    again.load()
    assert not (store.root / ("C" * 22)).exists()
    assert not list(store.root.rglob("*.part"))
    assert oct(store.root.stat().st_mode & 0o777) == "0o700"
    assert {oct(f.stat().st_mode & 0o777) for f in (store.root / ids[3]).iterdir()} == {"0o600"}


def test_an_idle_server_removes_old_jobs_now_and_then(tmp_path, server_photo_png, monkeypatch):
    """Old jobs went only when the server started or a job finished: an idle server kept them past
    --keep-days. The app's lifespan now prunes every PRUNE_SECONDS."""
    from starlette.testclient import TestClient

    from clipasso.server import app as service

    class Idle:  # no worker takes the job: it is cancelled while queued, and nothing else finishes
        def start(self) -> None:
            pass

        def join(self, timeout: float) -> bool:
            return True

    monkeypatch.setattr(service, "PRUNE_SECONDS", 0.05)
    store = JobStore(tmp_path / "data", device="cpu", keep_days=7)
    with TestClient(service.create_app(store, Idle())):  # the lifespan loads the store and runs the sweepers
        job_id = store.submit(server_photo_png, QUICK)["id"]
        store.cancel(job_id)
        store.get(job_id).finished -= 8 * 86400  # finished 8 days ago; no job finishes after it
        for _ in range(200):  # bounded: 10 s at most
            if not (store.root / job_id).exists():
                break
            threading.Event().wait(0.05)
        assert not (store.root / job_id).exists()
