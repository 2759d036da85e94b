"""The built-in encoder's folds (batch norms, paddings) must not change what it computes."""

from __future__ import annotations

import torch
from torch import nn

from clipasso.encoders.base import Encoder
from clipasso.encoders.lite0 import Lite0Encoder


def features_and_gradient(encoder: Lite0Encoder, image: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The encoder's maps and embedding, and the image's gradient of a fixed random projection of them."""
    x = image.clone().requires_grad_(True)
    maps, emb = encoder.features(x)
    g = torch.Generator().manual_seed(1)
    loss = sum((m * torch.randn(m.shape, generator=g)).sum() for m in [*maps, emb])
    (grad,) = torch.autograd.grad(loss, x)
    return [m.detach() for m in [*maps, emb]], grad


def test_cpu_placement_folds_every_padding_and_computes_the_same():
    image = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    # The reference: the same layout (channels-last) with the stride-2 convolutions' zero-padding modules.
    # Another layout or thread count sums in another order, which moves single gradients by 1 % (a ReLU6
    # that flips at its bound), so only the same layout can show that the fold reads the same pixels.
    padded = Encoder.place(Lite0Encoder(), torch.device("cpu"))  # the base class's placement: no fold
    assert any(isinstance(m, nn.ZeroPad2d) for m in padded.modules())
    folded = Lite0Encoder().place(torch.device("cpu"))
    assert not any(isinstance(m, nn.ZeroPad2d) for m in folded.modules())

    want, want_grad = features_and_gradient(padded, image)
    got, got_grad = features_and_gradient(folded, image)
    for w, g in zip(want, got):
        assert g.shape == w.shape
        assert (g - w).abs().max() <= 1e-6 * w.abs().max()
    assert (got_grad - want_grad).abs().max() <= 1e-5 * want_grad.abs().max()


def test_the_canvas_is_read_at_the_encoders_input_size_with_gradients_to_the_canvas():
    """lite0 reads a 224-px canvas at its 192-px input: the same maps as the canvas resized first, and the
    loss's gradient still reaches every part of the canvas."""
    encoder = Lite0Encoder().place(torch.device("cpu"))
    canvas = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    resized = nn.functional.interpolate(canvas, size=(192, 192), mode="bilinear", align_corners=False, antialias=True)
    (maps, emb), (want, want_emb) = encoder.features(canvas), encoder.features(resized)
    assert maps[0].shape[-2:] == (48, 48) and maps[-1].shape[-2:] == (6, 6)
    for m, w in zip([*maps, emb], [*want, want_emb]):
        assert torch.equal(m, w)
    _, grad = features_and_gradient(encoder, canvas)
    assert grad.shape == canvas.shape and (grad.abs().sum(dim=1) > 0).float().mean() > 0.99
