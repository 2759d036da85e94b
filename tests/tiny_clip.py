"""Tiny random-weight CLIP checkpoints built with the `clip` package's own classes.

Real OpenAI weights cannot be downloaded on the machines the tests run on, so these stand in for them:
same classes, same file formats, same loader, a few hundred kilobytes. Their output means nothing; they
test code paths only.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import clip.model as clip_model

TEXT = dict(context_length=8, vocab_size=64, transformer_width=64, transformer_heads=1, transformer_layers=1)


def tiny_clip(kind: str, seed: int = 0) -> clip_model.CLIP:
    """A CLIP whose shape `build_model` infers back from its state dict: "RN" or "ViT", 224 px input."""
    torch.manual_seed(seed)
    if kind == "RN":  # 4 attention-pool heads of 64 channels, one bottleneck per stage
        model = clip_model.CLIP(32, 224, (1, 1, 1, 1), 8, None, **TEXT)
    elif kind == "ViT":  # 2 heads of 64 channels, 4 blocks, 7x7 patches of 32 px
        model = clip_model.CLIP(32, 224, 4, 128, 32, **TEXT)
    else:
        raise ValueError(kind)
    with torch.no_grad():  # CLIP zero-initialises the last BN of each block; give the branches a say
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return model.eval()


def save_tiny_clip(path: Path, kind: str, torchscript: bool = False, seed: int = 0, safetensors: bool = False) -> Path:
    """Write a tiny checkpoint as a plain state dict, as a TorchScript archive like OpenAI's files, or as
    safetensors like the hub's."""
    model = tiny_clip(kind, seed)
    if safetensors:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    elif torchscript:
        image = torch.rand(1, 3, 224, 224)
        text = torch.zeros(1, TEXT["context_length"], dtype=torch.long)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings; torch.jit's deprecation
            torch.jit.save(torch.jit.trace(model, (image, text), check_trace=False), str(path))
    else:
        torch.save(model.state_dict(), path)
    return path
