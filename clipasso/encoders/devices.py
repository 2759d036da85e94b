"""Which torch device runs the engine: `auto` picks the fastest present, an explicit one must exist."""

from __future__ import annotations

import torch

from ..errors import InputError
from ..options import check_device


def default_device() -> str:
    """The fastest device here: CUDA, then Apple MPS, then the CPU."""
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` or an explicit device; an unknown one, or one that is not present, is a user error."""
    check_device(name)
    if name == "auto":
        return torch.device(default_device())
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for, but PyTorch sees no CUDA GPU here; use --device cpu")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise InputError(f"--device {name}: PyTorch sees {torch.cuda.device_count()} CUDA GPUs here, numbered from 0")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("--device mps was asked for, but Apple MPS is not available here; use --device cpu")
    return torch.device(name)
