"""Encoders by name: `auto`'s choice, loading, and keeping loaded encoders for the next job."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from ..errors import InputError, one_line
from ..options import check_encoder_name, named_weights
from .base import Encoder
from .clip import load_clip
from .devices import resolve_device
from .lite0 import Lite0Encoder
from .weights import clip_weights_status, resolve_clip_weights

_LOADED: dict[tuple[str, str, str | None], Encoder] = {}


def load_encoder(
    name: str = "auto",
    device: str = "auto",
    weights: str | None = None,
    preferred: str = "clip:RN101",
    on_download: Callable[[str], None] | None = None,
    download: bool = True,
) -> tuple[Encoder, str]:
    """The encoder for `name` on `device`, and one line saying which was used and why.

    Loaded encoders are kept, so a long-running service pays for loading once. `auto` takes the CLIP
    model in the weights file the user named, whichever release it holds (a bad file is their error to
    see); else the `preferred` CLIP model when its weights are on disk or can be downloaded, else the
    built-in lite0, also when that download fails or the cached file is corrupt.
    A download is told to `on_download` first.
    Without `download` (a service's preload: its queue would wait) nothing is downloaded: `auto` takes lite0
    unless the CLIP weights are at hand, and a CLIP model without them raises WeightsUnavailable.
    """
    check_encoder_name(name)
    dev = resolve_device(device)
    if name != "auto":
        return _loaded(name, dev, weights, on_download, download), f"encoder {name} (as asked)"
    if named_weights(weights):  # the user's own file: whichever CLIP it holds (an OpenAI ViT-B-32.pt, say)
        encoder = _loaded_from_file(dev, weights)
        arch = encoder.name.split(":", 1)[1]
        return encoder, f"encoder {encoder.name} ({clip_weights_status(arch, weights)[1]})"
    ok, why = clip_weights_status(preferred.split(":", 1)[1], weights, download=download)
    if ok:
        try:
            return _loaded(preferred, dev, weights, on_download, download), f"encoder {preferred} ({why})"
        except InputError as exc:
            why = one_line(exc)
    return _loaded("lite0", dev, weights), f"encoder lite0, the built-in offline encoder ({why})"


def _loaded_from_file(dev: torch.device, weights: str | None) -> Encoder:
    """The CLIP model in the user's weights file (`weights`, else $CLIPASSO_CLIP_WEIGHTS), whichever release it
    holds, loaded once per process (and then also found under its name)."""
    key = ("auto", str(dev), weights)
    if key not in _LOADED:
        path = Path(named_weights(weights)).expanduser()
        encoder = load_clip(None, dev, path).place(dev)
        _LOADED[key] = _LOADED.setdefault((encoder.name, str(dev), weights), encoder)
    return _LOADED[key]


def _loaded(name: str, dev: torch.device, weights: str | None, on_download: Callable[[str], None] | None = None,
            download: bool = True) -> Encoder:
    """Encoder `name` on `dev`, loaded once per process."""
    key = (name, str(dev), weights if name != "lite0" else None)
    if key not in _LOADED:
        arch = name.split(":", 1)[1] if name != "lite0" else None
        path = resolve_clip_weights(arch, weights, download, on_download) if arch else None
        enc: Encoder = Lite0Encoder() if arch is None else load_clip(arch, dev, path)
        _LOADED[key] = enc.place(dev)
    return _LOADED[key]
