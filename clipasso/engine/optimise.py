"""`sketch()` and `sketch_batch()`: the CLIPasso optimisation, the one entry point for the CLI, the service,
tests and benchmarks.

The method in a screenful: prepare the photo's side once (`prepare_target`), then for each seed start
strokes on salient contours and move their control points with Adam until the encoder sees the photo in
them, keeping the best strokes by the plain-view loss; the best seed is the result.

Runs (a sketch's seeds, and the sketches of several requests) are stepped together: one render per
stroke count, one encoder pass and one Adam update serve them all. On a GPU a batch costs about what one
run costs; on a CPU what its runs cost one after another. Nothing in a step waits for the device: the
stop rules and the best strokes so far live on it, and the host reads them back only every few steps, to
report progress and to let finished runs go.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .. import options as contract
from ..encoders import Encoder, load_encoder, resolve_device
from ..images import Photo
from ..options import CANVAS, ProgressCallback, Renderer, SketchOptions, SketchResult, image_stroke_width
from .adam import BatchAdam
from .graphs import LossPass, StepGraph, available
from .init import STARTS
from .ladder import build_ladder
from .losses import SketchLoss
from .relay import relay_iterations, replace_weak_strokes
from .render import check_backend, raster_for, render_batch
from .stopping import STOP_RULES
from .target import AUGMENTATION_BANK, Target, clamp, prepare_target

log = logging.getLogger("clipasso.engine")

#: Adam's step on control points in canvas pixels (the reference's): about a pixel per step at first.
LEARNING_RATE = 1.0
#: Seed k of a run is seed + k * SEED_STRIDE, as the reference's 0, 1000, 2000.
SEED_STRIDE = 1000
#: Raced start j (j > 0) of a seed draws from seed + j * START_STRIDE: far from any seed a user picks next.
START_STRIDE = 1_000_003
#: Augmented views per step while starts race: none, the plain view alone. The race ranks starts by their
#: plain-view loss and brings their strokes onto contours; it is three starts' work, and without the
#: augmented views a default sketch took 0.91x the time on 2 cores, the loss +0.041 +- 0.028 over
#: 12 photos x 3 seeds, paired (README, Quality).
RACE_AUGMENTATIONS = 0
#: Progress is reported at most this often (seconds): a report waits for the device and copies strokes back.
PROGRESS_INTERVAL = 0.2
#: How often (in steps) the host looks for ended runs: each look waits for the device, which costs nothing
#: on a CPU. A run stepped past its end keeps the result it had: its best strokes stop changing when it ends.
CHECK_EVERY = {"cpu": 1}
CHECK_EVERY_DEFAULT = 8
#: Devices where ended runs leave the batch at once; elsewhere they stay until at most SHRINK_SHARE of
#: their cohort is still running (stepping them costs little there, and each new batch shape costs a new
#: CUDA graph).
LEAVE_AT_ONCE = {"cpu"}
SHRINK_SHARE = 0.5
#: Threads that prepare photos and lay strokes side by side off the CPU (numpy and torch let go of the
#: GIL): a GPU's batch of jobs would otherwise wait for one CPU core to prepare them one after another. On a
#: CPU the work is done inline: a second thread's compute team slowed the optimisation's steps by 15 %.
PREPARE_THREADS = min(16, os.cpu_count() or 1)

Each = Callable[..., Iterator]
#: Images per encoder pass when judging strokes for re-laying: bounds memory on a CPU (16 at once took 1.7 s
#: and 353 MB there, one at a time 1.2 s and 81 MB), launches elsewhere.
RELAY_CHUNK = {"cpu": 1}
RELAY_CHUNK_DEFAULT = 128

Outcome = SketchResult | Exception


@dataclass
class SketchRequest:
    """One sketch to make, with the caller's hooks; each hook hears only of its own request."""

    image: Image.Image | Photo
    options: SketchOptions = SketchOptions()
    on_progress: ProgressCallback | None = None
    should_stop: Callable[[], bool] | None = None
    #: on_encoder(name, reason): which encoder runs (what `auto` chose), as soon as it is loaded.
    on_encoder: Callable[[str, str], None] | None = None
    #: on_finish(outcome): the request's result or exception, as soon as its runs have ended.
    on_finish: Callable[[Outcome], None] | None = None
    #: on_activity(text): work outside the steps that takes long, as it starts: a weights download before
    #: the first step, each level of the abstraction ladder after the last.
    on_activity: Callable[[str], None] | None = None


def sketch(
    image: Image.Image | Photo,
    options: SketchOptions = SketchOptions(),
    on_progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_encoder: Callable[[str, str], None] | None = None,
    batch: int | None = None,
    on_activity: Callable[[str], None] | None = None,
) -> SketchResult:
    """Optimise `options.strokes` Bezier strokes so the encoder sees the photo in them.

    `image` is a photo from images.load_photo (or a PIL image, taken at its size). Runs `seeds`
    optimisations, `batch` at a time (None: all together), and keeps the one with the lowest loss on the
    plain (un-augmented) view. Cancelling through `should_stop` returns the best strokes so far with
    `cancelled=True` (with `levels`: the levels made so far). `on_encoder(name, reason)` hears which encoder
    runs as soon as it is loaded, `on_activity(text)` of long work outside the steps (SketchRequest).
    """
    request = SketchRequest(image, options, on_progress, should_stop, on_encoder, on_activity=on_activity)
    outcome = sketch_batch([request], batch)[0]
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def sketch_batch(requests: list[SketchRequest | Prepared], batch: int | None = None) -> list[Outcome]:
    """Make several sketches, stepping up to `batch` seeds together (None: all of them); a seed's raced
    starts count as one, as they end in one race (the service's `--batch` counts single-seed jobs).

    Requests for the same encoder share one; each keeps its own options, hooks and result. A request
    that fails (bad options, its photo, its own hooks) gets its exception as its outcome and the others
    go on; a failure of a shared step is every unfinished request's outcome. Items from `prepare()` are
    stepped as they are (their hooks, set since, hear what they missed: the encoder, or their failure).
    """
    for item in requests:
        if isinstance(item, Prepared):
            item.adopted()
    sketches = prepare(requests)
    groups: dict[int, list[Prepared]] = {}
    for s in sketches:
        if s.outcome is None:
            groups.setdefault(id(s.target.encoder), []).append(s)
    for group in groups.values():
        _step_group(group, batch)
    return [s.outcome for s in sketches]


def prepare(requests: list[SketchRequest | Prepared]) -> list[Prepared]:
    """Everything of these sketches before their first step (the photos placed, the subject found, the
    starts laid, the loss's photo side computed), for `sketch_batch` to step later: the service prepares
    the next batch while a GPU steps the current one. Items prepared already are passed through; a request
    that fails here keeps its exception as its outcome. Hooks may be set on the requests afterwards."""
    sketches = [item if isinstance(item, Prepared) else Prepared(i, item) for i, item in enumerate(requests)]
    _prepare([s for s, item in zip(sketches, requests) if s is not item])
    return sketches


def _prepare(sketches: list[Prepared]) -> None:
    """Validate each sketch's options, then prepare the sketches of each encoder together."""
    groups: dict[tuple, list[Prepared]] = {}
    for s in sketches:
        try:
            s.opts = s.request.options.validated()
            check_backend(Renderer(s.opts.renderer).backend, resolve_device(s.opts.device))  # before the slow part
        except Exception as exc:
            s.finish(exc)
            continue
        groups.setdefault(s.opts.encoder_choice, []).append(s)
    for group in groups.values():
        _prepare_group(group)


@contextmanager
def _side_by_side(device: torch.device) -> Iterator[Each]:
    """`map`, or off the CPU a thread pool's map (see PREPARE_THREADS)."""
    if device.type == "cpu":
        yield map
    else:
        with ThreadPoolExecutor(PREPARE_THREADS, thread_name_prefix="clipasso-prepare") as pool:
            yield pool.map


def _prepare_group(sketches: list[Prepared]) -> None:
    """Sketches that share an encoder: load it, then prepare the photos side by side."""
    t = time.perf_counter()
    try:
        first = sketches[0].opts
        encoder, reason = load_encoder(first.encoder, first.device, first.weights, preferred=first.recipe.encoder,
                                       on_download=lambda text: [s.busy(text) for s in sketches])
    except Exception as exc:
        for s in sketches:
            s.finish(exc)
        return
    load = time.perf_counter() - t
    with _side_by_side(next(encoder.parameters()).device) as each:
        t = time.perf_counter()
        for s in sketches:
            s.timings["load"] = load
            _guarded(s, lambda s: s.choose(encoder, reason))
        # First the photos and the first strokes, reported at once (iteration 0); then the loss's photo
        # side, the slow part of the preparation.
        _each(each, sketches, lambda s: s.place(encoder))
        seeds = [(s, s.opts.seed + SEED_STRIDE * k, j) for s in sketches if s.outcome is None
                 for k in range(s.opts.seeds) for j in range(s.opts.starts)]
        made = each(lambda job: _guarded(job[0], lambda s: _Run(s, job[1], job[2])), seeds)
        for (s, _, _), run in zip(seeds, made):
            s.runs.append(run)
        for s in sketches:
            _guarded(s, lambda s: s.report(0, float("nan"), s.runs[0].start))
        _each(each, sketches, lambda s: s.target.loss)
        for s in sketches:
            s.timings["init"] = time.perf_counter() - t


def _step_group(sketches: list[Prepared], batch: int | None) -> None:
    """Prepared sketches that share an encoder: step their runs in batches."""
    with _side_by_side(sketches[0].target.device) as each:
        runs = [r for s in sketches if s.outcome is None for r in s.runs]
        for chunk in _chunks(runs, batch or len(runs) or 1):
            chunk = [r for r in chunk if r.sketch.outcome is None]
            if chunk:
                _Batch(chunk, each).run()


def _chunks(runs: list[_Run], size: int) -> Iterator[list[_Run]]:
    """The runs in batches of `size` seeds, a seed with all its raced starts (they end in one race)."""
    seeds: dict[object, list[_Run]] = {}
    for r in runs:
        seeds.setdefault(r.race or id(r), []).append(r)
    units = list(seeds.values())
    for i in range(0, len(units), size):
        yield [r for unit in units[i : i + size] for r in unit]


def _guarded(sketch: Prepared, work: Callable[[Prepared], object]) -> object:
    """`work(sketch)` unless the sketch has failed; a sketch whose work raises fails with that."""
    if sketch.outcome is not None:
        return None
    try:
        return work(sketch)
    except Exception as exc:
        sketch.finish(exc)
        return None


def _each(each: Each, sketches: list[Prepared], work: Callable[[Prepared], object]) -> None:
    """`work` on every sketch still going, side by side where `each` is a thread pool's map."""
    list(each(lambda s: _guarded(s, work), sketches))


@dataclass
class Prepared:
    """One request as the engine works on it: its photo's target, its runs and what it reports; `prepare()`
    hands it out ready to step."""

    index: int
    request: SketchRequest
    opts: SketchOptions | None = None
    target: Target | None = None
    encoder: str = ""
    encoder_reason: str = ""
    runs: list[_Run] = field(default_factory=list)
    outcome: Outcome | None = None
    timings: dict[str, float] = field(default_factory=lambda: {"init": 0.0, "render": 0.0, "forward": 0.0,
                                                                 "backward": 0.0})
    started: float = field(default_factory=time.perf_counter)
    told: set[str] = field(default_factory=set)  #: what the hooks have heard: "encoder", "outcome"

    def choose(self, encoder: Encoder, reason: str) -> None:
        """The encoder that runs, told to the caller as soon as it is known."""
        self.encoder, self.encoder_reason = encoder.name, reason
        if self.request.on_encoder is not None:
            self.told.add("encoder")
            self.request.on_encoder(encoder.name, reason)

    def busy(self, text: str) -> None:
        """Tell the caller of long work outside the steps (see SketchRequest.on_activity)."""
        if self.request.on_activity is not None:
            try:
                self.request.on_activity(text)
            except Exception:  # the caller's hook; the work goes on
                log.exception("on_activity of sketch %d failed", self.index)

    def adopted(self) -> None:
        """Stepped after `prepare()`, whose caller may have set the hooks since: tell them what they have not
        heard (the encoder, or the failure), and count the time from the preparation's end as stepping."""
        if self.outcome is not None:
            if "outcome" not in self.told:
                self.finish(self.outcome)
            return
        if "encoder" not in self.told:
            self.choose(self.target.encoder, self.encoder_reason)
        self.started = time.perf_counter() - self.timings["init"] - self.timings.get("load", 0.0)

    def place(self, encoder: Encoder) -> None:
        """The photo on the canvas and where strokes start (not yet the loss's photo side)."""
        image = self.request.image
        self.target = prepare_target(image if isinstance(image, Photo) else Photo.of(image), encoder, self.opts)

    def report(self, done: int, loss: float, points: Tensor) -> None:
        """Tell the caller of `done` iterations, with the given strokes (canvas pixels) in the photo's pixels."""
        if self.request.on_progress is not None:
            strokes = self.target.box.to_image(points.detach().cpu().numpy())
            self.request.on_progress(done, self.opts.planned_iterations, loss, strokes)

    def finish(self, outcome: Outcome) -> None:
        self.outcome = outcome
        if self.request.on_finish is not None:
            self.told.add("outcome")
            try:
                self.request.on_finish(outcome)
            except Exception:  # the caller's hook; the other sketches of the batch go on
                log.exception("on_finish of sketch %d failed", self.index)

    def result(self) -> SketchResult:
        """The best run's strokes, once every run has ended, and the abstraction ladder made from them."""
        best = min(self.runs, key=lambda run: run.loss)
        photo = self.target.box
        levels = None
        cancelled = any(run.cancelled for run in self.runs)
        if self.opts.levels:  # engine/ladder.py: coarser levels made from the best run
            t = time.perf_counter()
            asked = self.opts.levels
            stop = self.request.should_stop
            ladder = build_ladder(self.target, best.points.to(self.target.device), asked,
                                  on_level=lambda i, n: self.busy(f"making the abstraction ladder: {n} stroke"
                                                                  f"{'' if n == 1 else 's'} (level {i + 1} of {len(asked)})"),
                                  should_stop=lambda: cancelled or (stop is not None and stop()))
            cancelled = cancelled or len(ladder) < len(asked)  # stopped: the levels made so far
            levels = {n: photo.to_image(p.cpu().numpy().astype(np.float64)) for n, p in ladder.items()}
            self.timings["ladder"] = time.perf_counter() - t
        self.timings["total"] = time.perf_counter() - self.started
        return SketchResult(
            strokes=photo.to_image(best.points.numpy().astype(np.float64)),
            width=photo.width,
            height=photo.height,
            stroke_width=image_stroke_width(self.opts, photo.width, photo.height),
            loss=best.loss,
            encoder=self.encoder,
            encoder_reason=self.encoder_reason,
            options=self.opts,
            iterations=sum(run.steps for run in self.runs),
            best_seed=best.seed,
            cancelled=cancelled,
            timings=dict(self.timings),
            levels=levels,
            best_iterations=best.steps,
        )


class _Run:
    """One seed of one sketch: its random stream, its start, and once ended its best strokes and loss."""

    def __init__(self, sketch: Prepared, seed: int, start: int = 0) -> None:
        opts, target = sketch.opts, sketch.target
        self.sketch, self.seed = sketch, seed
        self.generator = torch.Generator().manual_seed(seed + start * START_STRIDE)
        #: The runs of one seed's raced starts share a race; after the race only the best goes on.
        self.race = (id(sketch), seed) if sketch.opts.starts > 1 else None
        fresh = opts.new_strokes(0 if target.refine is None else len(target.refine))
        start = target.start_strokes(STARTS[opts.recipe.init], fresh, self.generator)  # with those to refine
        self.start = target.clamp(start.to(target.device))
        self.last = opts.iterations - 1  # the last iteration it may run
        self.relay_at = relay_iterations(opts.recipe.relay, opts.iterations, len(self.start))
        self.picks: list[Tensor] = []  # the augmentations of each iteration, drawn ahead (see draw_until)
        self.steps = 0
        self.loss = float("inf")
        self.points = self.start.cpu()
        self.cancelled = False
        self.ended = False

    def draw_until(self, iteration: int) -> None:
        """Draw the augmented views of each iteration up to `iteration`, from the run's own stream.

        Views are drawn one iteration at a time and re-laying draws from the same stream, so drawing ahead
        only as far as the next re-laying gives the numbers a step-by-step loop would.
        """
        while len(self.picks) <= iteration:
            racing = self.race is not None and len(self.picks) < contract.RACE_ITERATIONS
            count = RACE_AUGMENTATIONS if racing else self.sketch.opts.recipe.augmentations
            self.picks.append(torch.randint(0, AUGMENTATION_BANK, (count,), generator=self.generator))

    def horizon(self, iteration: int) -> int:
        """How far ahead of `iteration` views can be drawn: up to its next re-laying, or its last iteration."""
        return min([i for i in self.relay_at if i >= iteration] + [self.last])


class _Cohort:
    """Runs that share a stroke count, a rasterizer and a stop rule, stacked: one tensor of strokes, one
    Adam, one stop rule, and each run's best strokes so far, all on the device."""

    def __init__(self, runs: list[_Run], views: list[int]) -> None:
        self.runs = runs
        targets = [r.sketch.target for r in runs]
        device = targets[0].device
        self.points = torch.stack([r.start for r in runs])  # each step differentiates a fresh leaf of it (_descend)
        n = self.points.shape[1]
        self.widths = torch.tensor([t.stroke_width for t in targets], device=device)[:, None].expand(-1, n)
        self.widest = max(t.stroke_width for t in targets)  # known here: the fixed rasterizer need not ask the device
        self.raster = raster_for(targets[0].backend, device, self.widest)
        kept = [t.kept for t in targets]  # the artist's kept paths each run's strokes are drawn over
        self.kept = None if all(k is None for k in kept) else torch.stack(
            [torch.ones(CANVAS, CANVAS, device=device) if k is None else k for k in kept])
        self.low = torch.stack([t.low for t in targets])[:, None, None]
        self.high = torch.stack([t.high for t in targets])[:, None, None]
        self.views = torch.tensor(views, device=device)
        self.last = torch.tensor([r.last for r in runs], device=device)
        self.adam = BatchAdam(self.points, LEARNING_RATE)
        self.stop = STOP_RULES[runs[0].sketch.opts.recipe.stop](len(runs), device)
        self.best_points = self.points.detach().clone()
        self.best_loss = torch.full((len(runs),), float("inf"), device=device)
        self.loss = self.best_loss.clone()  # the last step's plain-view losses, for progress reports
        self.active = torch.ones(len(runs), dtype=torch.bool, device=device)
        self.steps = torch.zeros(len(runs), dtype=torch.long, device=device)

    def render(self, points: Tensor) -> Tensor:
        """The runs' strokes `points` (this cohort's, as a leaf to differentiate) drawn over their kept paths."""
        ink = render_batch(points, CANVAS, CANVAS, self.widths, backend=self.raster, widest=self.widest)
        return ink if self.kept is None else ink * self.kept

    # update and settle change the state in place: a step captured as a CUDA graph replays them.
    def update(self, loss: Tensor, grad: Tensor) -> None:
        """After the backward pass: keep the best strokes (the loss is the points' before this step), step."""
        loss = loss.detach()
        better = self.active & (loss < self.best_loss)
        self.best_loss.copy_(torch.where(better, loss, self.best_loss))
        self.best_points.copy_(torch.where(better[:, None, None, None], self.points, self.best_points))
        self.loss.copy_(loss)
        self.adam.step(self.points, grad)

    def settle(self, iteration: Tensor) -> None:
        """After re-laying: keep strokes on the photo, count the step, and end runs whose rule says so.
        `iteration` is a tensor on the device (the step's clock)."""
        self.points.copy_(clamp(self.points, self.low, self.high))  # on the photo, not the letterbox's paper
        self.steps += self.active
        done = self.stop.done(iteration, self.loss)
        self.active &= ~done & (iteration < self.last)

    def end(self, row: int, cancelled: bool = False) -> None:
        """Run `row` ends now (its result is what it has)."""
        self.active[row] = False
        self.runs[row].cancelled = cancelled

    def keep(self, rows: list[int]) -> None:
        """Keep only these runs: the others have ended and taken their results."""
        idx = torch.tensor(rows, dtype=torch.long, device=self.points.device)
        self.runs = [self.runs[i] for i in rows]
        self.points = self.points[idx]
        for name in ("widths", "low", "high", "views", "last", "best_points", "best_loss", "loss", "active", "steps"):
            setattr(self, name, getattr(self, name)[idx])
        if self.kept is not None:
            self.kept = self.kept[idx]
        self.adam.keep(idx)
        self.stop.keep(idx)


class _Batch:
    """Runs stepped together until each has ended: the loop of the method."""

    def __init__(self, runs: list[_Run], each: Each) -> None:
        sketches = list({id(r.sketch): r.sketch for r in runs}.values())
        self.each = each
        self.sketches = sketches
        self.loss = SketchLoss.joined([s.target.loss for s in sketches])
        self.photo_of = {id(s): i for i, s in enumerate(sketches)}  # each sketch's photo in the joined loss
        cohorts: dict[tuple, list[_Run]] = {}
        for r in runs:
            recipe = r.sketch.opts.recipe
            cohorts.setdefault((r.start.shape[0], r.sketch.target.backend, recipe.stop), []).append(r)
        self.cohorts = [_Cohort(rs, [self.loss.plain_view(self.photo_of[id(r.sketch)]) for r in rs])
                        for rs in cohorts.values()]
        self.device = sketches[0].target.device
        # The whole step is one CUDA graph where every cohort's rasterizer has fixed shapes; otherwise the
        # encoder's pass alone is (see graphs.py).
        whole = available(self.device) and all(c.raster == "fixed" for c in self.cohorts)
        self.step_graph = StepGraph(self._graphed_step) if whole else None
        self.loss_pass = LossPass(self.loss, graphed=available(self.device) and not whole)
        # What a step reads besides the cohorts, in tensors that outlive it (a captured step reads them):
        # the iteration, and this step's augmentations and the run each warps (see _plan).
        self.clock = torch.zeros((), dtype=torch.long, device=self.device)
        self.picks: Tensor | None = None
        self.owners: Tensor | None = None
        self.chunk = RELAY_CHUNK.get(self.device.type, RELAY_CHUNK_DEFAULT)
        self.timings = {"render": 0.0, "forward": 0.0, "backward": 0.0}
        self.schedule: Tensor | None = None  # (iterations, M) augmentations drawn ahead, see _plan
        self.planned = (0, -1)  # first and last iteration of the schedule
        self.last_report = float("-inf")

    def run(self) -> None:
        try:
            iteration = 0
            while self.cohorts:
                self._cancel_asked()
                if not self.cohorts:
                    break
                self._step(iteration)
                if iteration == contract.RACE_ITERATIONS - 1:
                    self._race()
                check = (iteration + 1) % CHECK_EVERY.get(self.device.type, CHECK_EVERY_DEFAULT) == 0
                due = time.perf_counter() - self.last_report >= PROGRESS_INTERVAL or iteration == 0
                if due:
                    self._report()
                if check or any(iteration >= r.last and not r.ended for c in self.cohorts for r in c.runs):
                    self._collect()
                iteration += 1
        except Exception as exc:  # a shared step failed: every sketch still running fails with it
            for s in self.sketches:
                if s.outcome is None:
                    s.finish(exc)

    def _step(self, iteration: int) -> None:
        if iteration > self.planned[1]:
            self._plan(iteration)
        self.picks.copy_(self.schedule[iteration - self.planned[0]])
        self.clock.fill_(iteration)
        if self.step_graph is not None and not self._relay_due(iteration):
            t = time.perf_counter()
            if self.step_graph(self._layout()):
                self.timings["forward"] += time.perf_counter() - t  # the whole step, as the host sees it
                return
            if self.step_graph.given_up:  # it cannot be captured: the encoder's pass alone may be
                self.step_graph = None
                self.loss_pass = LossPass(self.loss, graphed=True)
        for name, seconds in zip(("render", "forward", "backward"), self._descend()):
            self.timings[name] += seconds
        self._relay(iteration)
        for c in self.cohorts:
            c.settle(self.clock)

    def _descend(self) -> tuple[float, float, float]:
        """Render, loss, gradients and each cohort's update; how long the host spent on the first three."""
        t = time.perf_counter()
        # A fresh leaf each step, made on the stream the step runs on: autograd keeps a leaf's gradient
        # node on the stream it was made on, and PyTorch warned on an H200, beside a failed capture, that
        # a node left from an eager step on the default stream can break one (with fresh leaves it did not).
        leaves = [c.points.detach().requires_grad_(True) for c in self.cohorts]
        renders = torch.cat([c.render(p) for c, p in zip(self.cohorts, leaves)])
        t1 = time.perf_counter()
        plain = torch.cat([c.views for c in self.cohorts])
        total, losses = self.loss_pass(renders, plain, self.picks, self.owners)
        t2 = time.perf_counter()
        grads = torch.autograd.grad(total, leaves)
        t3 = time.perf_counter()
        for c, loss, grad in zip(self.cohorts, losses.split([len(c.runs) for c in self.cohorts]), grads):
            c.update(loss, grad)
        return t1 - t, t2 - t1, t3 - t2

    def _graphed_step(self) -> None:
        """A step without re-laying (which the host does), as StepGraph captures and replays it."""
        self._descend()
        for c in self.cohorts:
            c.settle(self.clock)

    def _layout(self) -> tuple:
        """What a captured step depends on besides tensor values: the cohorts and their runs (a cohort that
        keeps fewer runs replaces its tensors) and the number of augmentations."""
        return tuple((id(c), len(c.runs)) for c in self.cohorts) + (len(self.picks),)

    def _relay_due(self, iteration: int) -> bool:
        return any(iteration in r.relay_at for c in self.cohorts for r in c.runs)

    def _plan(self, iteration: int) -> None:
        """Draw every run's augmented views ahead, as far as the nearest re-laying, end or the race's end (where
        raced runs' views per step change), and send them to the device at once: one copy for many steps,
        not one a step."""
        runs = [r for c in self.cohorts for r in c.runs]
        last = min(r.horizon(iteration) for r in runs if not r.ended)  # ended runs in the batch just follow
        if iteration < contract.RACE_ITERATIONS and any(r.race is not None for r in runs):
            # Raced runs, even ended ones, draw more views after the race.
            last = min(last, contract.RACE_ITERATIONS - 1)
        for r in runs:
            r.draw_until(last)
        offsets = [self.photo_of[id(r.sketch)] * self.loss.bank for r in runs]
        self.schedule = torch.stack([torch.cat([r.picks[i] + o for r, o in zip(runs, offsets)])
                                     for i in range(iteration, last + 1)]).to(self.device)
        owners = torch.cat([torch.full((len(r.picks[iteration]),), k) for k, r in enumerate(runs)]).to(self.device)
        if self.owners is None or self.owners.shape != owners.shape:
            self.owners, self.picks = owners, torch.empty_like(owners)  # a new layout (see _layout)
        else:
            self.owners.copy_(owners)
        self.planned = (iteration, last)

    def _relay(self, iteration: int) -> None:
        """Lay weak strokes again in the runs due at this iteration (and still running)."""
        for c in self.cohorts:
            due = [k for k, r in enumerate(c.runs) if iteration in r.relay_at]
            if not due:
                continue
            rows = [k for k, alive in zip(due, c.active[due].tolist()) if alive]
            if not rows:
                continue
            with torch.no_grad():
                points = c.points[rows]
                moved = replace_weak_strokes(points, c.widths[rows], None if c.kept is None else c.kept[rows],
                                             [c.runs[k].sketch.target for k in rows],
                                             c.views[rows], self.loss, [c.runs[k].generator for k in rows], self.chunk,
                                             self.each)
                c.points[rows] = points
            for k, count in zip(rows, moved):
                if count:
                    c.adam.reset(k)
                    c.stop.restart(k, iteration)

    def _race(self) -> None:
        """End every raced start but the one with the lowest loss so far, in each seed's race."""
        for c in self.cohorts:
            races: dict[tuple, list[int]] = {}
            for k, r in enumerate(c.runs):
                if r.race is not None:
                    races.setdefault(r.race, []).append(k)
            if not races:
                continue
            best, active = c.best_loss.tolist(), c.active.tolist()
            for rows in races.values():
                running = [k for k in rows if active[k]]
                if len(running) > 1:
                    winner = min(running, key=lambda k: best[k])
                    for k in running:
                        if k != winner:
                            c.end(k)
        # The losers (most of the runs) leave, whatever SHRINK_SHARE says; so do runs that ended otherwise by now.
        self._collect(compact=True)

    def _cancel_asked(self) -> None:
        """End the runs of sketches whose caller asked to stop (or whose hook failed)."""
        for s in self.sketches:
            if s.outcome is not None or s.request.should_stop is None:
                continue
            try:
                stop = s.request.should_stop()
            except Exception as exc:
                self._drop(s, exc)
                continue
            if stop:
                self._end(s, cancelled=True)

    def _report(self) -> None:
        """Report each running sketch's progress: its iterations so far, and its best-placed run's strokes."""
        self.last_report = time.perf_counter()
        current: dict[int, list[tuple[float, Tensor]]] = {}
        steps: dict[int, int] = {}
        for c in self.cohorts:
            losses, counts, points = c.loss.tolist(), c.steps.tolist(), c.points.cpu()
            for r, loss, count, p in zip(c.runs, losses, counts, points):
                if not r.ended:
                    current.setdefault(id(r.sketch), []).append((loss, p))
                    steps[id(r)] = count
        for s in self.sketches:
            if s.outcome is not None or id(s) not in current:
                continue
            done = sum(steps.get(id(r), r.steps) for r in s.runs)
            loss, points = min(current[id(s)], key=lambda lp: lp[0])
            try:
                s.report(done, loss, points)
            except Exception as exc:
                self._drop(s, exc)

    def _drop(self, sketch: Prepared, exc: Exception) -> None:
        """A sketch's own hook failed: it fails with that, the others go on."""
        sketch.finish(exc)
        self._end(sketch)

    def _end(self, sketch: Prepared, cancelled: bool = False) -> None:
        """End every run of `sketch` now and take what they have."""
        for c in self.cohorts:
            for k, r in enumerate(c.runs):
                if r.sketch is sketch:
                    c.end(k, cancelled)
        self._collect()

    def _collect(self, compact: bool = False) -> None:
        """Take the results of runs that have ended, finish sketches whose runs all have, and go on with
        the rest (see LEAVE_AT_ONCE; `compact`: the ended runs leave the batch now)."""
        for c in list(self.cohorts):
            active = c.active.tolist()
            ended = [k for k, alive in enumerate(active) if not alive and not c.runs[k].ended]
            if ended:
                losses, steps, points = c.best_loss[ended].tolist(), c.steps[ended].tolist(), c.best_points[ended].cpu()
                for k, loss, count, p in zip(ended, losses, steps, points):
                    run = c.runs[k]
                    run.loss, run.steps, run.points, run.ended = loss, count, p, True
            alive = [k for k, a in enumerate(active) if a]
            if not alive:
                self.cohorts.remove(c)
                self.planned = (0, -1)  # the runs changed: draw the schedule again from the next step
            elif len(alive) < len(active) and (compact or self.device.type in LEAVE_AT_ONCE
                                               or len(alive) <= SHRINK_SHARE * len(active)):
                c.keep(alive)
                self.planned = (0, -1)
        for s in self.sketches:
            if s.outcome is None and all(r.ended for r in s.runs):
                for name, seconds in self.timings.items():
                    s.timings[name] += seconds
                s.finish(s.result())
