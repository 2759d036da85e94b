"""The fixed-shape rasterizer (accelerators) against the tiles (the CPU's): the same picture and gradients,
and shapes that do not follow the strokes.

Measured (224 px, 3 px strokes; random strokes, a 16-stroke sketch, the dense random fixture): against the
tiles, per-pixel max 0.072-0.085 and mean 4e-4-7e-4, gradient cosine 0.974-0.993 and relative error
0.12-0.23. The tiles' own flattening (0.1 px) is most of it: against the tiles flattened to 0.002 px (the
curve itself) the fixed renderer is within max 0.006-0.037, mean 1e-5-6e-4, cosine 0.997-0.999, relative
error 0.04-0.07.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
from operations import Operations

from clipasso.engine.render import fixed_window, raster_for, render_batch

raster = importlib.import_module("clipasso.engine.render")  # the module: the package exports a function of that name
FIXTURES = Path(__file__).resolve().parents[1] / "data" / "diffvg"
SIZE = 224


def _random_strokes() -> torch.Tensor:
    """16 strokes of legs up to 40 px scattered over the canvas, some crossing its border: (1, 16, 4, 2)."""
    g = torch.Generator().manual_seed(3)
    return torch.rand(1, 16, 1, 2, generator=g) * SIZE + (torch.rand(1, 16, 4, 2, generator=g) - 0.5) * 80


def _sketch_strokes() -> torch.Tensor:
    return torch.load(FIXTURES / "medium16_224.pt")["points"].float()[None]


def _image_and_grad(points: torch.Tensor, backend: str, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    points = points.clone().requires_grad_()
    image = render_batch(points, SIZE, SIZE, 3.0, backend=backend)
    (image * weights).sum().backward()
    return image.detach(), points.grad


def _compare(points: torch.Tensor) -> dict[str, float]:
    weights = torch.rand(1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    tiles, tiles_grad = _image_and_grad(points, "tiles", weights)
    fixed, fixed_grad = _image_and_grad(points, "fixed", weights)
    diff = (fixed - tiles).abs()
    return {"max": diff.max().item(), "mean": diff.mean().item(),
            "cosine": torch.nn.functional.cosine_similarity(fixed_grad.flatten(), tiles_grad.flatten(), dim=0).item(),
            "relative": ((fixed_grad - tiles_grad).norm() / tiles_grad.norm()).item()}


STROKES = pytest.mark.parametrize("strokes", [_random_strokes, _sketch_strokes], ids=["random", "sketch"])


@STROKES
def test_matches_the_tiles_image_and_gradient(strokes) -> None:
    """Within the tiles' own flattening error (0.1 px: up to 0.1 of a pixel's coverage on stroke edges)."""
    got = _compare(strokes())
    assert got["max"] <= 0.1 and got["mean"] <= 1e-3, got
    assert got["cosine"] >= 0.97 and got["relative"] <= 0.25, got


@STROKES
def test_matches_the_exact_curve(strokes, monkeypatch) -> None:
    """Against the tiles flattened 50 times finer (the curve itself, to 0.002 px)."""
    monkeypatch.setattr(raster, "FLATTEN_TOLERANCE", 0.002)
    monkeypatch.setattr(raster, "MAX_SEGMENTS", 4096)
    got = _compare(strokes())
    assert got["max"] <= 0.03 and got["mean"] <= 2e-4, got
    assert got["cosine"] >= 0.995 and got["relative"] <= 0.1, got


def test_width_and_opacity_gradients_match_the_tiles() -> None:
    g = torch.Generator().manual_seed(6)
    points = torch.rand(2, 5, 4, 2, generator=g, dtype=torch.float64) * 40
    weights = torch.rand(2, 40, 40, generator=g, dtype=torch.float64)
    grads = {}
    for backend in ("tiles", "fixed"):
        widths = torch.tensor([[0.7, 2.0, 3.0, 4.5, 6.0]] * 2, dtype=torch.float64, requires_grad=True)
        opacity = torch.full((2, 5), 0.8, dtype=torch.float64, requires_grad=True)
        (render_batch(points, 40, 40, widths, opacity, backend=backend) * weights).sum().backward()
        grads[backend] = torch.cat([widths.grad.flatten(), opacity.grad.flatten()])
    assert torch.allclose(grads["fixed"], grads["tiles"], rtol=0.05, atol=0.05)


def _saved_shapes(points: torch.Tensor, backend: str) -> list[tuple[int, ...]]:
    """The shape of every tensor the render saves for its backward pass, in order."""
    shapes = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(t.shape))
        return t

    points = points.clone().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        image = render_batch(points, 48, 40, 3.0, backend=backend, widest=3.0)
    image.sum().backward()
    assert torch.isfinite(image).all() and torch.isfinite(points.grad).all()
    return shapes


def test_shapes_do_not_depend_on_the_strokes() -> None:
    """Far outside the canvas, collapsed to a dot, longer than the canvas, NaN: the same work each time,
    and the expected ink (the tiles' work, by contrast, follows the strokes)."""
    inside = torch.tensor([[[[5.0, 5.0], [15.0, 30.0], [25.0, 10.0], [35.0, 40.0]]]])
    cases = {
        "inside": inside,
        "far": inside + 1000,
        "dot": torch.full((1, 1, 4, 2), 20.0),
        "long": torch.tensor([[[[-300.0, 20.0], [0.0, 21.0], [100.0, 22.0], [340.0, 24.0]]]]),
    }
    shapes = {name: _saved_shapes(points, "fixed") for name, points in cases.items()}
    assert all(s == shapes["inside"] for s in shapes.values())
    assert _saved_shapes(inside, "tiles") != _saved_shapes(cases["long"], "tiles")

    def ink(points: torch.Tensor, width: float = 3.0) -> float:
        return (1 - render_batch(points, 48, 40, width, backend="fixed")).sum().item()

    assert ink(cases["far"]) == 0
    assert ink(torch.full((1, 1, 4, 2), float("nan"))) == 0
    assert ink(cases["dot"], 6.0) == pytest.approx(torch.pi * 9, rel=0.03)
    # A horizontal line across the whole 40 px canvas, 3 px wide (from y = 20 to 24).
    assert ink(cases["long"]) == pytest.approx(40 * 3, rel=0.03)
    for name in ("inside", "long"):
        tiles = render_batch(cases[name], 48, 40, 3.0, backend="tiles")
        assert (render_batch(cases[name], 48, 40, 3.0, backend="fixed") - tiles).abs().max() <= 0.1


def test_asks_the_host_nothing() -> None:
    """Forward and backward without an operation that waits for the device (the tiles have several)."""
    points = torch.rand(2, 5, 4, 2, generator=torch.Generator().manual_seed(7)) * 40
    for backend, waits in (("fixed", False), ("tiles", True)):
        p, w = points.clone().requires_grad_(), torch.full((2, 5), 3.0, requires_grad=True)
        with Operations() as ops:
            image = render_batch(p, 40, 40, w, backend=backend, widest=3.0)
            torch.autograd.grad(image.square().sum(), (p, w))
        assert bool(ops.host_waits()) == waits, ops.host_waits()


def test_window_holds_the_widest_stroke_and_canvases_smaller_than_a_window() -> None:
    assert fixed_window(3.0) == 16 and fixed_window(20.0) == 34
    # Off the CPU the fixed one draws, up to a window of 48 px (strokes of 35 px); the CPU keeps the tiles.
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert [raster_for("torch", cuda, w) for w in (3.0, 35.0, 36.0)] == ["fixed", "fixed", "tiles"]
    assert raster_for("torch", cpu, 3.0) == "tiles" and raster_for("fixed", cpu) == "fixed"
    points = torch.tensor([[[[2.0, 3.0], [5.0, 8.0], [9.0, 2.0], [11.0, 9.0]]]])
    for width in (1.0, 12.0):
        fixed = render_batch(points, 10, 12, width, backend="fixed")
        assert fixed.shape == (1, 10, 12)
        assert (fixed - render_batch(points, 10, 12, width, backend="tiles")).abs().max() <= 0.1
    assert torch.equal(render_batch(torch.zeros(2, 0, 4, 2), 10, 12, backend="fixed"), torch.ones(2, 10, 12))
