"""Frozen image encoders that the sketch loss compares photo and sketch with: the built-in lite0 and
CLIP's image towers, loaded by name (`load_encoder`)."""

from .base import Encoder, unit_map
from .devices import default_device, resolve_device
from .registry import load_encoder

__all__ = ["Encoder", "default_device", "load_encoder", "resolve_device", "unit_map"]
