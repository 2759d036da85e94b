"""The diffvg renderer against a real diffvg build: it reproduces the fixtures diffvg made, ours agrees
with it within render_parity's limits, it is right for any dtype and device state, and the engine and
`clipasso sketch --renderer diffvg` use it. Each test skips where pydiffvg is absent (not under CI after
.ci/run built it: see the `pydiffvg` fixture)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from render_parity import parity
from skimage import data

from clipasso.engine import preview_image, sketch
from clipasso.engine.init import edge_tangents, init_distribution, traced_length, traced_strokes, xdog_edges
from clipasso.engine.render import check_backend, diffvg_has_cuda, render
from clipasso.errors import InputError
from clipasso.images import Letterbox
from clipasso.options import CANVAS, SketchOptions

FIXTURE_FILES = sorted((Path(__file__).resolve().parents[1] / "data" / "diffvg").glob("*.pt"))


def loss_and_grad(points: torch.Tensor, size: int, width: float, weights: torch.Tensor, backend: str):
    """Image, d loss / d points and loss of (image * weights).mean(), as the fixtures were made."""
    points = points.detach().clone().requires_grad_()
    image = render(points, size, size, width, backend=backend)
    loss = (image * weights).mean()
    loss.backward()
    return image.detach(), points.grad, loss.item()


def traced_start(photo: np.ndarray, n: int = 16, seed: int = 0) -> torch.Tensor:
    """CLIPasso-like strokes: the engine's traced start on a photo's salient edges, canvas pixels."""
    image = Image.fromarray(photo)
    box = Letterbox(image.width, image.height, CANVAS)
    placed = box.place(image)
    (ox, oy), (pw, ph) = box.offset, box.placed
    mask = np.zeros((CANVAS, CANVAS), dtype=np.float32)
    mask[oy : oy + ph, ox : ox + pw] = 1
    prob = init_distribution(np.ones_like(mask), xdog_edges(placed, (ox, oy, pw, ph)), mask)
    return traced_strokes(prob, edge_tangents(placed), n, traced_length(n), torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.stem)
def test_reproduces_the_fixtures_diffvg_made(pydiffvg, path: Path) -> None:
    fx = torch.load(path, map_location="cpu")
    image, grad, loss = loss_and_grad(fx["points"], int(fx["size"]), float(fx["stroke_width_px"]), fx["weights"], "diffvg")
    same = parity(image, grad, loss, fx["image"], fx["grad"], float(fx["loss"]))
    assert same.mae <= 1e-6 and same.cosine >= 0.9999 and abs(same.norm_ratio - 1) <= 1e-3, same


@pytest.mark.parametrize("case", ["chelsea", "astronaut", "random"])
def test_ours_agrees_with_diffvg(pydiffvg, case: str) -> None:
    """On 16 strokes of the engine's start on real photos, and (images only) on 8 dense random strokes."""
    if case == "random":
        points, size = torch.rand(8, 4, 2, generator=torch.Generator().manual_seed(3)) * 96, 96
    else:
        points, size = traced_start(getattr(data, case)()), CANVAS
    weights = torch.rand(size, size, generator=torch.Generator().manual_seed(10))
    ours = loss_and_grad(points, size, 3.0, weights, "torch")
    theirs = loss_and_grad(points, size, 3.0, weights, "diffvg")
    (parity(*ours, *theirs).check_image if case == "random" else parity(*ours, *theirs).check)()


def test_float64_points_render_as_float32_ones(pydiffvg) -> None:
    """pydiffvg reads its buffers as float32: float64 points must be converted, not reinterpreted."""
    points = traced_start(data.chelsea(), n=8)
    weights = torch.rand(CANVAS, CANVAS, generator=torch.Generator().manual_seed(1))
    image32, grad32, _ = loss_and_grad(points.float(), CANVAS, 3.0, weights.float(), "diffvg")
    image64, grad64, _ = loss_and_grad(points.double(), CANVAS, 3.0, weights.double(), "diffvg")
    assert image64.dtype == grad64.dtype == torch.float64
    assert (image64 - image32.double()).abs().max().item() <= 1e-6
    assert torch.allclose(grad64, grad32.double(), rtol=1e-4, atol=1e-9)


def test_renders_on_the_points_device_whatever_pydiffvg_was_told_before(pydiffvg) -> None:
    """pydiffvg keeps one device for all calls, picked at its import; each render names its own."""
    points = traced_start(data.chelsea(), n=8)
    expected = render(points, 64, 64, 3.0, backend="diffvg")
    pydiffvg.set_use_gpu(True)
    pydiffvg.set_device(torch.device("cuda"))  # as on a machine where CUDA was seen at import
    try:
        assert torch.equal(render(points, 64, 64, 3.0, backend="diffvg"), expected)
    finally:
        pydiffvg.set_device(torch.device("cpu"))


def test_devices_it_cannot_render_on_are_one_line_errors(pydiffvg) -> None:
    with pytest.raises(InputError, match="runs on the CPU or CUDA, not on meta"):
        check_backend("diffvg", torch.device("meta"))
    if diffvg_has_cuda():
        pytest.skip("this pydiffvg was built with CUDA")
    with pytest.raises(InputError, match="built without CUDA: rebuild it with DIFFVG_CUDA=1"):
        check_backend("diffvg", torch.device("cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_cuda_render_matches_the_cpu_one(pydiffvg) -> None:
    if not diffvg_has_cuda():
        pytest.skip("this pydiffvg was built without CUDA")
    points = traced_start(data.chelsea())
    weights = torch.rand(CANVAS, CANVAS, generator=torch.Generator().manual_seed(2))
    cpu = loss_and_grad(points, CANVAS, 3.0, weights, "diffvg")
    gpu = loss_and_grad(points.cuda(), CANVAS, 3.0, weights.cuda(), "diffvg")
    assert gpu[0].device.type == "cuda" and gpu[1].device.type == "cuda"
    same = parity(gpu[0].cpu(), gpu[1].cpu(), gpu[2], *cpu)
    assert same.mae <= 0.01 * same.ink and same.cosine >= 0.99, same


def test_the_engine_draws_with_the_chosen_renderer(pydiffvg) -> None:
    """Same seed, other renderer: other strokes (the optimisation and the re-laying saw diffvg's
    images), and the preview is drawn with diffvg too."""
    cat = Image.fromarray(data.chelsea())
    opts = {"strokes": 4, "iterations": 4, "encoder": "lite0", "device": "cpu"}  # re-lays at iterations 1, 2
    ours = sketch(cat, SketchOptions(**opts))
    theirs = sketch(cat, SketchOptions(**opts, renderer="diffvg"))
    assert theirs.options.renderer == "diffvg" and np.isfinite(theirs.loss)
    assert not np.array_equal(ours.strokes, theirs.strokes)
    drawn = np.asarray(preview_image(theirs), dtype=np.float64)
    expected = render(torch.tensor(theirs.strokes, dtype=torch.float32), cat.height, cat.width,
                      theirs.stroke_width, backend="diffvg").numpy() * 255
    assert np.abs(drawn - expected).max() <= 0.5 and drawn.min() < 128


def test_sketch_command_with_diffvg(pydiffvg, tmp_path: Path) -> None:
    photo, svg, png = tmp_path / "coffee.jpg", tmp_path / "out.svg", tmp_path / "out.png"
    Image.fromarray(data.coffee()).save(photo, quality=90)
    run = subprocess.run(
        [sys.executable, "-m", "clipasso", "sketch", str(photo), "-o", str(svg), "--preview", str(png),
         "--strokes", "4", "--iterations", "2", "--encoder", "lite0", "--renderer", "diffvg", "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["options"]["renderer"] == "diffvg" and summary["iterations"] == 2
    assert svg.read_text().count("<path") == 4
    with Image.open(png) as im:
        assert im.size == (600, 400) and im.getextrema()[0] < 128
