"""Encoders by name: `auto`'s choice, loading, and keeping loaded encoders for the next job."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Callable

from ..options import check_encoder_name
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
    guard: Callable[[], AbstractContextManager] = nullcontext,
) -> tuple[Encoder, str]:
    """The encoder for `name` on `device`, and one line saying which was used and why.

    Loaded encoders are kept, so a long-running service pays for loading once. `auto` takes the
    `preferred` CLIP model when its weights are on disk or can be downloaded, else the built-in lite0.
    Building the model and moving it to the device run inside `guard()` (the engine's gate against CUDA
    graph captures); finding and downloading weights do not.
    """
    check_encoder_name(name)
    dev = resolve_device(device)
    if name == "auto":
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
        arch = name.split(":", 1)[1] if name != "lite0" else None
        path = resolve_clip_weights(arch, weights) if arch else None
        with guard():
            enc: Encoder = Lite0Encoder() if arch is None else load_clip(arch, dev, path)
            _LOADED[key] = enc.place(dev)
    return _LOADED[key], reason
