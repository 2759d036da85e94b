"""Frozen image encoders that the sketch loss compares photo and sketch with.

Every encoder takes (B, 3, S, S) RGB in [0, 1], un-normalised (each applies its own normalisation), and
gives intermediate feature maps for the geometric loss plus one embedding for the semantic loss.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .errors import InputError

CLIP_ARCHS = ("RN101", "RN50", "ViT-B/32")
ENCODER_NAMES = ("auto", "lite0") + tuple(f"clip:{a}" for a in CLIP_ARCHS)


class Encoder(nn.Module):
    """A frozen feature extractor. Subclasses set `name` and implement `features` and `saliency`."""

    name: str = "encoder"
    input_size: int = 224

    def features(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """Intermediate maps (B, C_i, H_i, W_i) for the geometric loss and the embedding (B, D)."""
        raise NotImplementedError

    def saliency(self, x: Tensor) -> Tensor:
        """Where the encoder looks in one image (1, 3, S, S): an (S, S) map in [0, 1]."""
        raise NotImplementedError

    def freeze(self) -> "Encoder":
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self


def check_encoder_name(name: str) -> None:
    """Raise InputError for a name `load_encoder` does not know."""
    if name not in ENCODER_NAMES:
        raise InputError(f"unknown encoder {name!r}; choose one of: {', '.join(ENCODER_NAMES)}")
