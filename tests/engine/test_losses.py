"""The sketch loss with the real built-in encoder: zero for the photo itself, one formula for every use."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from clipasso.encoders import load_encoder
from clipasso.engine.losses import SketchLoss, augmentation_bank, warp
from clipasso.images import Letterbox


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    placed = Letterbox(451, 300, 224).place(Image.fromarray(data.chelsea()))
    return torch.from_numpy(placed).permute(2, 0, 1)[None]


@pytest.fixture(scope="module")
def loss_fn(photo) -> SketchLoss:
    encoder, _ = load_encoder("lite0", "cpu")
    grids = augmentation_bank(4, torch.Generator().manual_seed(0), 224)
    return SketchLoss(encoder, photo, grids)


def test_bank_is_reproducible_and_warps_stay_near_the_canvas():
    a = augmentation_bank(3, torch.Generator().manual_seed(7), 32)
    b = augmentation_bank(3, torch.Generator().manual_seed(7), 32)
    c = augmentation_bank(3, torch.Generator().manual_seed(8), 32)
    assert a.shape == (3, 32, 32, 2) and torch.equal(a, b) and not torch.equal(a, c)
    # A crop of 80-100 % of the area and an inward perspective: every sample lands on the canvas.
    assert a.abs().max() <= 1.0


def test_warp_with_the_identity_grid_keeps_the_image_and_pads_with_white():
    image = torch.rand(1, 3, 16, 16)
    t = (torch.arange(16, dtype=torch.float32) + 0.5) / 16 * 2 - 1
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    identity = torch.stack([xx, yy], dim=-1)[None]
    assert torch.allclose(warp(image, identity), image, atol=1e-5)
    outside = identity + 3.0  # every sample off the canvas
    assert torch.allclose(warp(image, outside), torch.ones_like(image))


def one_sketch(loss_fn: SketchLoss, sketch: torch.Tensor, picks: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss of one (1, 3, S, S) sketch: its plain view and the augmentations `picks`."""
    return loss_fn(sketch, torch.tensor([0]), torch.tensor(picks, dtype=torch.long), torch.zeros(len(picks), dtype=torch.long))


def test_the_photo_itself_has_no_loss_and_a_blank_page_has_some(loss_fn, photo):
    same_total, same_plain = one_sketch(loss_fn, photo, [0, 2])
    blank_total, blank_plain = one_sketch(loss_fn, torch.ones_like(photo), [0, 2])
    assert same_total.item() == pytest.approx(0.0, abs=1e-4) and same_plain.item() == pytest.approx(0.0, abs=1e-4)
    assert blank_plain.item() > 1.0 and blank_total.item() > blank_plain.item()


def test_gradient_reaches_the_sketch(loss_fn, photo):
    sketch = torch.ones_like(photo).requires_grad_(True)
    total, _ = one_sketch(loss_fn, sketch, [1])
    total.backward()
    assert sketch.grad is not None and sketch.grad.abs().sum() > 0


def test_stroke_worth_uses_the_plain_view_formula(loss_fn, photo):
    """stroke_drop_losses is the plain view's loss of each render: the same number the loop reports."""
    renders = torch.stack([photo[0].mean(0), torch.ones(224, 224), torch.full((224, 224), 0.5)])
    drops = loss_fn.stroke_drop_losses(renders, torch.zeros(3, dtype=torch.long), chunk=2)
    for render, drop in zip(renders, drops):
        _, plain = one_sketch(loss_fn, render[None, None].expand(1, 3, -1, -1), [])
        assert drop.item() == pytest.approx(plain.item(), rel=1e-5)


def test_a_joined_loss_gives_each_sketch_its_own_photos_loss(loss_fn, photo):
    """Two photos in one encoder pass: each sketch's losses are what its photo's own loss gives."""
    encoder = loss_fn.encoder
    other_photo = photo.flip(-1)
    other = SketchLoss(encoder, other_photo, augmentation_bank(4, torch.Generator().manual_seed(1), 224))
    joined = SketchLoss.joined([loss_fn, other])
    sketches = torch.cat([torch.ones_like(photo), photo.mean(1, keepdim=True).expand(1, 3, -1, -1)])
    # Sketch 0 against photo 0 with its augmentation 3; sketch 1 against photo 1 with its augmentations 0, 2.
    total, plain = joined(sketches, torch.tensor([joined.plain_view(0), joined.plain_view(1)]),
                          torch.tensor([3, 4 + 0, 4 + 2]), torch.tensor([0, 1, 1]))
    alone0, plain0 = one_sketch(loss_fn, sketches[:1], [3])
    alone1, plain1 = one_sketch(other, sketches[1:], [0, 2])
    assert plain.tolist() == pytest.approx([plain0.item(), plain1.item()], rel=1e-4)
    assert total.item() == pytest.approx(alone0.item() + alone1.item(), rel=1e-4)
    assert SketchLoss.joined([loss_fn]) is loss_fn


def test_focus_weights_only_the_subject(photo):
    encoder, _ = load_encoder("lite0", "cpu")
    grids = augmentation_bank(2, torch.Generator().manual_seed(0), 224)
    focus = torch.zeros(224, 224)
    focus[:, :112] = 1.0  # only the left half counts
    loss_fn = SketchLoss(encoder, photo, grids, focus)
    error = loss_fn.error_maps(torch.ones(1, 224, 224), torch.zeros(1, dtype=torch.long))[0].numpy()
    assert error.shape == (224, 224) and np.isfinite(error).all()
    assert error[:, :100].sum() > 20 * error[:, 124:].sum()


def test_the_contour_drawing_is_what_the_geometric_term_leans_to(photo):
    """With line_weight 1 the drawing itself matches every stage (only the semantic term, towards the photo,
    is left); with 0.5 it and the photo score alike; with 0 the drawing changes nothing."""
    encoder, _ = load_encoder("lite0", "cpu")
    grids = augmentation_bank(2, torch.Generator().manual_seed(0), 224)
    lines = torch.ones_like(photo)
    lines[:, :, 60:64, 30:190] = 0  # one bar: a drawing no photo looks like
    plain = SketchLoss(encoder, photo, grids)
    ignored = SketchLoss(encoder, photo, grids, lines=lines, line_weight=0.0)
    assert all(torch.equal(a, b) for a, b in zip(plain.photo_maps, ignored.photo_maps))

    def geometric(loss: SketchLoss, image: torch.Tensor) -> float:
        return sum(e.sum().item() for e in loss._geometric(image, torch.zeros(1, dtype=torch.long))[0])

    drawn = SketchLoss(encoder, photo, grids, lines=lines, line_weight=1.0)
    assert geometric(drawn, lines) == pytest.approx(0.0, abs=1e-4) and geometric(drawn, photo) > 0.5
    half = SketchLoss(encoder, photo, grids, lines=lines, line_weight=0.5)
    assert geometric(half, lines) == pytest.approx(geometric(half, photo), rel=0.05)
    assert geometric(half, lines) < geometric(plain, lines)
