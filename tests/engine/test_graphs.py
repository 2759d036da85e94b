"""The step that engine/graphs.py captures as one CUDA graph, checked where CUDA cannot be: a replay reads
and writes the memory the capture saw, so the step must change the batch's state in place, ask the host
nothing (an operation that waits for the device's answer cannot be captured), and give the sketch the step
gives as it is."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from operations import Operations
from PIL import Image
from skimage import data
from torch import Tensor

from clipasso.engine import SketchRequest, optimise, sketch_batch
from clipasso.engine.stopping import STOP_RULES
from clipasso.options import SketchOptions


class InPlaceGraph:
    """Stands in for StepGraph on a CPU: runs the step, and checks that every tensor of the batch's state is
    still the one it was (a rebound tensor is one a replay would never see again), that the state is made
    of the same tensors for as long as the batch names the same layout (a replay reads those the capture
    saw), and that no operation waited for the device."""

    steps = 0
    layouts: list = []

    def __init__(self, body) -> None:
        self.body = body
        self.layout, self.captured = None, {}

    def __call__(self, layout) -> bool:
        batch = self.body.__self__
        before = state(batch)
        if layout != self.layout:
            self.layout, self.captured = layout, before
            InPlaceGraph.layouts.append(layout)
        stale = [name for name in before.keys() | self.captured.keys() if before.get(name) is not self.captured.get(name)]
        assert not stale, f"the layout is the same, but not {stale}"
        with Operations() as ops:
            self.body()
        after = state(batch)
        rebound = [name for name in before if after[name] is not before[name]]
        assert not rebound, f"the step rebinds {rebound}"
        assert not ops.host_waits() and len(ops.names) > 100, ops.host_waits()
        InPlaceGraph.steps += 1
        return True


@pytest.fixture(scope="module")
def cat() -> Image.Image:
    return Image.fromarray(data.chelsea()).resize((150, 100))


def state(batch: optimise._Batch) -> dict[str, Tensor]:
    tensors = {"clock": batch.clock, "picks": batch.picks, "owners": batch.owners}
    for k, c in enumerate(batch.cohorts):
        for part, obj in (("cohort", c), ("adam", c.adam), ("stop", c.stop)):
            tensors |= {f"{k}.{part}.{name}": v for name, v in vars(obj).items() if isinstance(v, Tensor)}
    return tensors


def test_the_captured_step_changes_state_in_place_and_gives_the_same_sketches(cat, monkeypatch):
    """Two sketches of 4 and 8 iterations, stepped as on a GPU: the first ends after iteration 3 and leaves
    the batch (a new layout). Steps 1, 2 and 4 re-lay strokes (4 iterations: at 1 and 2; 8: at 2 and 4) and
    run as they are; 0 and 3 are captured in the first layout, 5 to 7 in the second."""
    monkeypatch.setattr(optimise, "CHECK_EVERY", {"cpu": 2})
    monkeypatch.setattr(optimise, "LEAVE_AT_ONCE", set())
    eager, graphed = stepped_both_ways(cat, monkeypatch, InPlaceGraph)
    assert InPlaceGraph.steps == 5 and len(InPlaceGraph.layouts) == 2
    assert_same_sketches(graphed, eager)


def stepped_both_ways(cat, monkeypatch, graph: type) -> tuple[list, list]:
    """Two sketches of 4 and 8 iterations drawn by the fixed rasterizer, stepped as they are and then as on a
    GPU with `graph` standing in for StepGraph (its counts reset first); a failed check inside the stand-in
    fails the graphed sketches, which is asserted here."""
    monkeypatch.setattr(optimise, "raster_for", lambda *args: "fixed")
    requests = [SketchRequest(cat, SketchOptions(strokes=4, iterations=n, encoder="lite0", device="cpu"))
                for n in (4, 8)]
    eager = sketch_batch(requests)
    monkeypatch.setattr(optimise, "available", lambda device: True)
    monkeypatch.setattr(optimise, "StepGraph", graph)
    InPlaceGraph.steps, InPlaceGraph.layouts, FailsOnce.failed, NeverCaptures.calls = 0, [], 0, 0
    graphed = sketch_batch(requests)
    assert not [o for o in graphed if isinstance(o, Exception)]
    return eager, graphed


def assert_same_sketches(graphed: list, eager: list) -> None:
    """As close as two runs as they are (a first run's arithmetic can differ)."""
    for g, e in zip(graphed, eager):
        assert g.loss == pytest.approx(e.loss, rel=1e-3) and g.iterations == e.iterations
        assert np.abs(g.strokes - e.strokes).max() < 0.5


@pytest.mark.parametrize("rule", STOP_RULES.values(), ids=lambda rule: rule.__name__)
def test_stop_rules_change_state_in_place_and_read_the_iteration_from_the_device(rule):
    losses = torch.linspace(5, 4, 30)[:, None] * torch.tensor([1.0, 1.0 + 1e-9])  # the second run settles
    on_host, on_device = rule(2, torch.device("cpu")), rule(2, torch.device("cpu"))
    kept = dict(vars(on_device))
    for i, loss in enumerate(losses):
        assert torch.equal(on_host.done(i, loss), on_device.done(torch.tensor(i), loss))
    assert all(vars(on_device)[name] is value for name, value in kept.items() if isinstance(value, Tensor))


def test_a_failed_capture_costs_a_step_and_is_tried_again(monkeypatch):
    """StepGraph: a capture that fails (on an H200 one was invalidated while the service prepared the next
    batch) leaves that step to run as it is, warms up again and captures anew; after CAPTURE_TRIES failures
    it gives up, and the batch steps without graphs."""
    from contextlib import contextmanager

    from clipasso.engine import graphs

    events: list[str] = []
    failing = iter([True, False, True, True])

    class Graph:  # stands in for torch.cuda.CUDAGraph
        def replay(self) -> None:
            events.append("replay")

    @contextmanager
    def capture(graph, capture_error_mode):
        events.append("capture")
        yield
        if next(failing):
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")

    monkeypatch.setattr(graphs.torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(graphs.torch.cuda, "graph", capture)
    monkeypatch.setattr(graphs.StepGraph, "_on_side_stream", lambda self: (events.append("warm"), self.body()))
    step = graphs.StepGraph(lambda: events.append("body"))
    assert [step("a") for _ in range(7)] == [True, True, False, True, True, True, True]
    assert events == (["warm", "body"] * 2 + ["capture", "body"]  # recorded, not run: the caller runs it
                      + ["warm", "body"] * 2 + ["capture", "body", "replay", "replay"])
    assert not step.given_up
    events.clear()
    # A new layout whose captures keep failing: two tries, then it gives up.
    assert [step("b") for _ in range(6)] == [True, True, False, True, True, False]
    assert step.given_up and events.count("capture") == 2


class FailsOnce(InPlaceGraph):
    """A StepGraph whose first capture fails: the step it was asked for is not run (a capture records, it
    does not run), and the caller runs it as it is."""

    failed = 0
    given_up = False

    def __call__(self, layout) -> bool:
        if not FailsOnce.failed and InPlaceGraph.steps == 2:
            FailsOnce.failed += 1
            return False
        return super().__call__(layout)


class NeverCaptures(InPlaceGraph):
    given_up = False
    calls = 0

    def __call__(self, layout) -> bool:
        NeverCaptures.calls += 1
        self.given_up = NeverCaptures.calls >= 2
        return False


@pytest.mark.parametrize("graph", [FailsOnce, NeverCaptures], ids=["fails once", "never captures"])
def test_a_failed_capture_leaves_the_sketches_as_they_are(cat, monkeypatch, graph):
    """The batch goes on with the graph after a failed capture (until it gives up), and each step runs once."""
    eager, graphed = stepped_both_ways(cat, monkeypatch, graph)
    if graph is FailsOnce:
        assert FailsOnce.failed == 1 and InPlaceGraph.steps == 4  # 5 steps without re-laying, one run as it is
    else:
        assert NeverCaptures.calls == 2  # then the batch stepped without it
    assert_same_sketches(graphed, eager)
