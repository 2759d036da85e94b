"""How close our rasterizer must come to diffvg (2x2 supersampled), for every parity test.

Measured on the two diffvg fixtures, on 16 strokes of the engine's traced start on two photos and on 8
dense random strokes: image MAE 0.063-0.089 of the ink, loss within 0.03 %; gradients (fixtures and
traced strokes) cosine 0.83-0.94, norm ratio 1.02-1.10. The image difference is mostly diffvg's own: its
2x2 jittered samples are 0.014 MAE from the exact area coverage on the dense random strokes, ours 0.003.
Gradients of wildly curved random strokes differ more (cosine 0.82): those are compared as images only.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

#: Image MAE as a share of the mean ink (1 - image) of the reference: stroke edges carry the difference.
IMAGE_MAE_PER_INK = 0.11
GRADIENT_COSINE = 0.8
GRADIENT_NORM_RATIO = (0.85, 1.2)
LOSS_RELATIVE = 1e-3


class Parity(NamedTuple):
    mae: float
    ink: float  #: mean ink of the reference image
    cosine: float
    norm_ratio: float
    loss_ratio: float

    def check_image(self) -> None:
        assert self.mae <= IMAGE_MAE_PER_INK * self.ink, f"image MAE {self.mae:.5f}, ink {self.ink:.4f}"
        assert abs(self.loss_ratio - 1) <= LOSS_RELATIVE, f"loss ratio {self.loss_ratio:.5f}"

    def check(self) -> None:
        """Image, loss and gradient."""
        self.check_image()
        assert self.cosine >= GRADIENT_COSINE, f"gradient cosine {self.cosine:.4f}"
        low, high = GRADIENT_NORM_RATIO
        assert low <= self.norm_ratio <= high, f"gradient norm ratio {self.norm_ratio:.4f}"


def parity(image: torch.Tensor, grad: torch.Tensor, loss: float, ref_image: torch.Tensor, ref_grad: torch.Tensor,
           ref_loss: float) -> Parity:
    """Our image, gradient and loss against a reference's."""
    image, ref_image = image.detach().double(), ref_image.detach().double()
    grad, ref_grad = grad.flatten().double(), ref_grad.flatten().double()
    return Parity(
        mae=(image - ref_image).abs().mean().item(),
        ink=(1 - ref_image).mean().item(),
        cosine=torch.nn.functional.cosine_similarity(grad, ref_grad, dim=0).item(),
        norm_ratio=(grad.norm() / ref_grad.norm()).item(),
        loss_ratio=loss / ref_loss,
    )
