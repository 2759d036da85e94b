"""What every encoder is: a frozen network that gives the sketch loss its feature maps and embedding.

Every encoder takes (B, 3, S, S) RGB in [0, 1], un-normalised (each applies its own normalisation), and
gives intermediate feature maps for the geometric loss plus one embedding for the semantic loss.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: The dtype the encoders compute in on each device type, under autocast (absent: float32). The loss reads
#: their features in float32 either way. Benchmarks and tests set it to measure what it gains and costs.
AUTOCAST: dict[str, torch.dtype] = {}
#: What a benchmark's `--autocast` may name.
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def set_autocast(device_type: str, name: str) -> None:
    """Compute the encoders on `device_type` in AUTOCAST_DTYPES[name] (`off`: float32)."""
    dtype = AUTOCAST_DTYPES[name]
    if dtype is None:
        AUTOCAST.pop(device_type, None)
    else:
        AUTOCAST[device_type] = dtype


class Encoder(nn.Module):
    """A frozen feature extractor. Subclasses set `name` and implement `features` and `saliency`."""

    name: str = "encoder"
    input_size: int = 224
    #: The layout images and weights take on this encoder's device (see `place`).
    memory_format: torch.memory_format = torch.contiguous_format

    def features(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """Intermediate maps (B, C_i, H_i, W_i) for the geometric loss and the embedding (B, D)."""
        raise NotImplementedError

    def encode(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """`features(x)` as the loss reads them: computed in the device's AUTOCAST dtype, in float32."""
        dtype = AUTOCAST.get(x.device.type)
        if dtype is None:
            return self.features(x)
        # No cast cache: a CUDA graph replays the casts of the weights it captured.
        with torch.autocast(x.device.type, dtype=dtype, cache_enabled=False):
            maps, embedding = self.features(x)
        return [m.float() for m in maps], embedding.float()

    def saliency(self, x: Tensor) -> Tensor:
        """Where the encoder looks in one image (1, 3, S, S): an (S, S) map in [0, 1]."""
        raise NotImplementedError

    def place(self, device: torch.device) -> "Encoder":
        """This encoder on `device`, in the layout its convolutions run fastest in there: channels-last on
        a CPU (oneDNN's own layout: a lite0 step took 2/3 of the CPU time), PyTorch's default elsewhere."""
        self.memory_format = torch.channels_last if torch.device(device).type == "cpu" else torch.contiguous_format
        return self.to(device=device, memory_format=self.memory_format)

    def freeze(self) -> "Encoder":
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self


def unit_map(m: Tensor, size: int) -> Tensor:
    """A coarse (..., h, w) map as (size, size): bicubic upsampling, then min-max to [0, 1].

    A flat map carries no preference, so it becomes all ones (every place equally likely).
    """
    m = m.reshape(1, 1, *m.shape[-2:]).float()
    up = torch.nn.functional.interpolate(m, size=(size, size), mode="bicubic", align_corners=False)[0, 0]
    up = up - up.min()
    top = up.max()
    return up / top if top > 0 else torch.ones_like(up)
