"""The stroke rasterizer: parity with diffvg, exact gradients, no NaN, determinism."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from render_parity import parity

from clipasso.engine.render import render, render_batch
from clipasso.errors import InputError

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "diffvg"
FIXTURE_FILES = sorted(FIXTURES.glob("*.pt"))
assert FIXTURE_FILES, f"the diffvg parity fixtures are missing from {FIXTURES}"


def _fixture(path: Path) -> dict:
    return torch.load(path, map_location="cpu")


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.stem)
def test_matches_diffvg_image_and_gradient(path: Path) -> None:
    """Same picture and the same gradient direction and size as diffvg (2x2 supersampled), within
    render_parity's limits; tests/engine/test_diffvg.py compares with a live diffvg too."""
    fx = _fixture(path)
    size = int(fx["size"])
    points = fx["points"].clone().float().requires_grad_()
    image = render(points, size, size, float(fx["stroke_width_px"]))
    loss = (image * fx["weights"]).mean()
    loss.backward()
    parity(image, points.grad, loss.item(), fx["image"], fx["grad"], float(fx["loss"])).check()


def test_matches_a_brute_force_supersampled_reference() -> None:
    """Independent of diffvg: 6x6 point samples per pixel, each inked when within w/2 of the curve
    (the curve densely sampled); checks flattening, round caps and coverage together."""
    size, sub, width = 48, 6, 3.0
    points = torch.rand(4, 4, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * size
    t = torch.linspace(0, 1, 600, dtype=torch.float64)[:, None, None]
    curves = ((1 - t) ** 3 * points[:, 0] + 3 * (1 - t) ** 2 * t * points[:, 1]
              + 3 * (1 - t) * t**2 * points[:, 2] + t**3 * points[:, 3]).reshape(-1, 2)
    centres = (torch.arange(size * sub, dtype=torch.float64) + 0.5) / sub
    ys, xs = torch.meshgrid(centres, centres, indexing="ij")
    samples = torch.stack([xs.flatten(), ys.flatten()], dim=1)
    inked = torch.cat([torch.cdist(chunk, curves).amin(dim=1) for chunk in samples.split(8192)]) <= width / 2
    reference = 1 - inked.to(torch.float64).reshape(size, sub, size, sub).mean(dim=(1, 3))

    image = render(points, size, size, width)
    assert (image - reference).abs().mean().item() <= 0.006
    assert (1 - image).sum().item() == pytest.approx((1 - reference).sum().item(), rel=0.02)


def _strokes() -> torch.Tensor:
    """Three strokes on a 24x20 canvas: a curve, one crossing the right border, one degenerate dot."""
    return torch.tensor(
        [
            [[3.2, 4.1], [9.7, 1.3], [12.4, 15.2], [17.1, 12.6]],
            [[14.3, 6.2], [19.8, 9.1], [23.6, 3.4], [27.9, 11.3]],  # leaves the canvas (width 24)
            [[6.3, 14.7], [6.3, 14.7], [6.3, 14.7], [6.3, 14.7]],  # all four points equal
        ],
        dtype=torch.float64,
    )


def test_gradients_match_finite_differences() -> None:
    """Analytic gradients of points, widths and opacities agree with central differences (float64)."""
    weights = torch.rand(20, 24, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    moving = _strokes()[:2].clone().requires_grad_()
    dot = _strokes()[2:]
    widths = torch.tensor([2.6, 0.7, 4.1], dtype=torch.float64, requires_grad=True)  # one under 1 px
    opacity = torch.tensor([0.9, 0.6, 0.8], dtype=torch.float64, requires_grad=True)
    shift = torch.tensor([0.31, -0.27], dtype=torch.float64, requires_grad=True)

    def loss(moving: torch.Tensor, shift: torch.Tensor, widths: torch.Tensor, opacity: torch.Tensor):
        # The dot is moved as a whole: a curve collapsed to a point has no derivative per control point.
        points = torch.cat([moving, dot + shift])
        return (render(points, 20, 24, widths, opacity) * weights).sum()

    assert torch.autograd.gradcheck(loss, (moving, shift, widths, opacity), eps=1e-6, atol=1e-5, rtol=1e-3)


def test_opacity_gradients_at_both_ends_of_the_range() -> None:
    """Zero opacity: paper stays white, points get no gradient, opacity does. Opacity 1 over fully
    inked pixels: the gradient matches a one-sided difference (the product divides out an exact 0)."""
    points = _strokes().clone().requires_grad_()
    opacity = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    image = render(points, 20, 24, 3.0, opacity)
    assert torch.equal(image, torch.ones_like(image))
    image.sum().backward()
    assert torch.equal(points.grad, torch.zeros_like(points))
    assert (opacity.grad < 0).all(), "raising the opacity of a visible stroke must darken the image"

    def dark(opacity: torch.Tensor) -> torch.Tensor:
        return render(_strokes(), 20, 24, 3.0, opacity).sum()

    assert torch.autograd.gradcheck(dark, (torch.zeros(3, dtype=torch.float64, requires_grad=True),))

    ones = torch.ones(3, dtype=torch.float64, requires_grad=True)
    dark(ones).backward()
    for i in range(3):
        lighter = ones.detach().clone()
        lighter[i] -= 1e-7
        slope = (dark(ones.detach()) - dark(lighter)) / 1e-7
        assert ones.grad[i].item() == pytest.approx(slope.item(), rel=1e-4)
        assert slope < -1, "each stroke has fully inked pixels that opacity lightens"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_degenerate_and_overlapping_strokes_have_finite_gradients(dtype: torch.dtype) -> None:
    points = torch.cat([_strokes(), _strokes(), torch.full((1, 4, 2), 10.5, dtype=torch.float64)]).to(dtype)
    points.requires_grad_()
    widths = torch.full((7,), 3.0, dtype=dtype, requires_grad=True)
    image = render(points, 20, 24, widths)
    (image * torch.linspace(0, 1, 24, dtype=dtype)).sum().backward()
    assert torch.isfinite(image).all() and image.min() >= 0 and image.max() <= 1
    assert image.min() < 1e-3, "a 3 px stroke covers some pixels fully"
    assert torch.isfinite(points.grad).all() and torch.isfinite(widths.grad).all()
    assert points.grad[0].abs().sum() > 0


def test_dot_and_line_have_the_expected_ink() -> None:
    """A straight line inks about length x width pixels plus its round caps; a dot about pi r^2."""
    line = torch.tensor([[[10.0, 20.0], [20.0, 20.0], [30.0, 20.0], [40.0, 20.0]]])
    ink = (1 - render(line, 40, 50, 3.0)).sum().item()
    assert ink == pytest.approx(30 * 3 + torch.pi * 1.5**2, rel=0.02)
    dot = torch.full((1, 4, 2), 20.0)
    ink = (1 - render(dot, 40, 40, 6.0)).sum().item()
    assert ink == pytest.approx(torch.pi * 9, rel=0.03)
    # Thinner than a pixel: the ink still follows the width.
    ink = (1 - render(line, 40, 50, 0.5)).sum().item()
    assert ink == pytest.approx(30 * 0.5, rel=0.05)
    # Outside the canvas nothing is drawn, and the image is the right size.
    far = torch.full((1, 4, 2), -50.0)
    assert torch.equal(render(far, 13, 17), torch.ones(13, 17))


def test_is_deterministic() -> None:
    points = torch.rand(32, 4, 2, generator=torch.Generator().manual_seed(1)) * 224
    first = render(points, 224, 224)
    assert (render(points, 224, 224) - first).abs().max().item() <= 1e-4


def test_batch_matches_single_renders() -> None:
    gen = torch.Generator().manual_seed(2)
    points = torch.rand(3, 5, 4, 2, generator=gen) * 64
    widths = torch.rand(3, 5, generator=gen) * 3 + 1
    batch = render_batch(points, 64, 48, widths)
    assert batch.shape == (3, 64, 48)
    for i in range(3):
        assert torch.allclose(batch[i], render(points[i], 64, 48, widths[i]), atol=1e-5)


def test_rejects_bad_shapes_and_backends() -> None:
    with pytest.raises(ValueError, match="points"):
        render(torch.zeros(4, 2), 8, 8)
    with pytest.raises(ValueError, match="backend"):
        render(torch.zeros(1, 4, 2), 8, 8, backend="cairo")
    with pytest.raises(ValueError, match="per-stroke"):
        render(torch.zeros(2, 4, 2), 8, 8, stroke_width=torch.ones(3))


def test_diffvg_backend_without_pydiffvg_says_how_to_get_it(without_pydiffvg) -> None:
    with pytest.raises(InputError, match="needs pydiffvg.*build it from https://github.com/BachiLi/diffvg"):
        render(torch.zeros(1, 4, 2), 8, 8, backend="diffvg")


def test_width_and_opacity_accept_numbers_scalars_and_per_stroke_tensors() -> None:
    points = torch.rand(4, 4, 2, generator=torch.Generator().manual_seed(4)) * 32
    reference = render(points, 32, 32, 2.5, torch.full((4,), 0.7))
    assert torch.equal(render(points, 32, 32, torch.tensor(2.5), torch.full((4,), 0.7)), reference)
    assert torch.equal(render(points, 32, 32, torch.full((4,), 2.5), torch.tensor(0.7)), reference)


def test_no_strokes_empty_batch_and_nan_points_give_white_paper() -> None:
    assert torch.equal(render(torch.zeros(0, 4, 2), 10, 12), torch.ones(10, 12))
    assert render_batch(torch.zeros(0, 3, 4, 2), 10, 12).shape == (0, 10, 12)
    assert torch.equal(render(torch.full((2, 4, 2), float("nan")), 10, 12), torch.ones(10, 12))
