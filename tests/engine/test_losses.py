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


def test_the_photo_itself_has_no_loss_and_a_blank_page_has_some(loss_fn, photo):
    views = torch.tensor([-1, 0, 2])
    same_total, same_plain = loss_fn(photo, views)
    blank_total, blank_plain = loss_fn(torch.ones_like(photo), views)
    assert same_total.item() == pytest.approx(0.0, abs=1e-4) and same_plain.item() == pytest.approx(0.0, abs=1e-4)
    assert blank_plain.item() > 1.0 and blank_total.item() > blank_plain.item()


def test_gradient_reaches_the_sketch(loss_fn, photo):
    sketch = torch.ones_like(photo).requires_grad_(True)
    total, _ = loss_fn(sketch, torch.tensor([-1, 1]))
    total.backward()
    assert sketch.grad is not None and sketch.grad.abs().sum() > 0


def test_stroke_worth_uses_the_plain_view_formula(loss_fn, photo):
    """stroke_drop_losses is the plain view's loss of each render: the same number the loop reports."""
    renders = torch.stack([photo[0].mean(0), torch.ones(224, 224), torch.full((224, 224), 0.5)])
    drops = loss_fn.stroke_drop_losses(renders)
    for render, drop in zip(renders, drops):
        _, plain = loss_fn(render[None, None].expand(1, 3, -1, -1), torch.tensor([-1]))
        assert drop.item() == pytest.approx(plain.item(), rel=1e-5)


def test_focus_weights_only_the_subject(photo):
    encoder, _ = load_encoder("lite0", "cpu")
    grids = augmentation_bank(2, torch.Generator().manual_seed(0), 224)
    focus = torch.zeros(224, 224)
    focus[:, :112] = 1.0  # only the left half counts
    loss_fn = SketchLoss(encoder, photo, grids, focus)
    error = loss_fn.error_map(torch.ones(224, 224)).numpy()
    assert error.shape == (224, 224) and np.isfinite(error).all()
    assert error[:, :100].sum() > 20 * error[:, 124:].sum()
