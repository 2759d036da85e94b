"""Encoders computing in a lower dtype (encoders.base.AUTOCAST): the loss still reads float32 features."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from clipasso.encoders import base, load_encoder
from clipasso.engine import SketchRequest, prepare
from clipasso.options import SketchOptions


@pytest.fixture
def bf16_on_cpu():
    base.set_autocast("cpu", "bf16")
    yield
    base.set_autocast("cpu", "off")


def test_features_in_bfloat16_come_back_as_float32_and_near(bf16_on_cpu):
    encoder = load_encoder("lite0", "cpu")[0]
    x = torch.rand(2, 3, 192, 192, generator=torch.Generator().manual_seed(0))
    maps, emb = encoder.encode(x)
    base.set_autocast("cpu", "off")
    want, want_emb = encoder.encode(x)
    assert all(m.dtype == torch.float32 for m in maps) and emb.dtype == torch.float32
    # bfloat16 keeps 8 bits of mantissa: the pooled embedding within a few per cent, not bit for bit.
    assert not torch.equal(emb, want_emb)
    assert torch.nn.functional.cosine_similarity(emb, want_emb).min() > 0.99
    for m, w in zip(maps, want):
        assert torch.nn.functional.cosine_similarity(m.flatten(1), w.flatten(1)).min() > 0.98


def test_float32_is_the_default_everywhere():
    assert base.AUTOCAST == {}
    encoder = load_encoder("lite0", "cpu")[0]
    x = torch.rand(1, 3, 192, 192)
    assert torch.equal(encoder.encode(x)[1], encoder.features(x)[1])


def test_the_photo_side_is_not_shared_between_dtypes():
    """The photo's features are kept between sketches of the same photo: not across a change of dtype."""
    photo = Image.new("RGB", (96, 64), "white")
    photo.paste((20, 20, 20), (30, 20, 60, 44))
    options = SketchOptions(strokes=4, iterations=2, device="cpu")
    first = prepare([SketchRequest(photo, options)])[0].target.loss
    assert prepare([SketchRequest(photo, options)])[0].target.loss is first
    base.set_autocast("cpu", "bf16")
    try:
        other = prepare([SketchRequest(photo, options)])[0].target.loss
    finally:
        base.set_autocast("cpu", "off")
    assert other is not first and not torch.equal(other.photo_emb, first.photo_emb)
