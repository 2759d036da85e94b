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

from clipasso.engine import optimise, sketch
from clipasso.engine.stopping import STOP_RULES
from clipasso.options import SketchOptions


class InPlaceGraph:
    """Stands in for StepGraph on a CPU: runs the step, and checks that every tensor of the batch's state is
    still the one it was (a rebound tensor is one a replay would never see again) and that no operation
    waited for the device."""

    steps = 0

    def __init__(self, body) -> None:
        self.body = body

    def __call__(self, layout) -> bool:
        batch = self.body.__self__
        before = state(batch)
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


def test_the_captured_step_changes_state_in_place_and_gives_the_same_sketch(cat, monkeypatch):
    """The default preset re-lays strokes at iterations 1 and 2 of 4: those steps run as they are."""
    options = SketchOptions(strokes=4, iterations=4, encoder="lite0", device="cpu")
    monkeypatch.setattr(optimise, "raster_for", lambda backend, device: "fixed")  # as off the CPU
    eager = sketch(cat, options)
    monkeypatch.setattr(optimise, "available", lambda device: True)
    monkeypatch.setattr(optimise, "StepGraph", InPlaceGraph)
    InPlaceGraph.steps = 0
    graphed = sketch(cat, options)
    assert InPlaceGraph.steps == 2
    # As close as two runs as they are (a first run's CPU arithmetic can differ in the last bits).
    assert graphed.loss == pytest.approx(eager.loss, rel=1e-3) and graphed.iterations == eager.iterations == 4
    assert np.abs(graphed.strokes - eager.strokes).max() < 0.5


@pytest.mark.parametrize("rule", STOP_RULES.values(), ids=lambda rule: rule.__name__)
def test_stop_rules_change_state_in_place_and_read_the_iteration_from_the_device(rule):
    losses = torch.linspace(5, 4, 30)[:, None] * torch.tensor([1.0, 1.0 + 1e-9])  # the second run settles
    on_host, on_device = rule(2, torch.device("cpu")), rule(2, torch.device("cpu"))
    kept = dict(vars(on_device))
    for i, loss in enumerate(losses):
        assert torch.equal(on_host.done(i, loss), on_device.done(torch.tensor(i), loss))
    assert all(vars(on_device)[name] is value for name, value in kept.items() if isinstance(value, Tensor))
