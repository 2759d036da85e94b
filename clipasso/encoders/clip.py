"""CLIP's image tower as an `Encoder`: the paper's RN101 (and RN50, ViT-B/32), built from OpenAI's files.

The model classes are the `clip` package's own (`clip.model.build_model`), so a real OpenAI checkpoint
loads exactly as OpenAI's code loads it. Only the visual tower is kept. Its forward pass is spelled out
here because the package's forward returns the embedding only, and the sketch loss also needs the
intermediate maps (and, for saliency, the attention weights).
"""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors
from torch import Tensor, nn

from ..errors import InputError, one_line
from ..options import CLIP_ARCHS
from .base import Encoder, unit_map

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: The visual tower each supported OpenAI release holds, as `_shape` describes a built model.
ARCH_SHAPES: dict[str, tuple] = {
    "RN50": ("ResNet", (3, 4, 6, 3), 64, 224),
    "RN101": ("ResNet", (3, 4, 23, 3), 64, 224),
    "ViT-B/32": ("ViT", 12, 768, 32, 224),
}


def _clip_model() -> ModuleType:
    """The `clip` package's model classes, imported when a CLIP model is first built, not with this module:
    the package imports torchvision and with it torch._dynamo, 200 MB and 2 s that a server or a sketch
    running only lite0 never needs."""
    with warnings.catch_warnings():  # clip-anytorch imports the deprecated pkg_resources
        warnings.simplefilter("ignore")
        import clip.model

    return clip.model


class ClipEncoder(Encoder):
    """A frozen CLIP visual tower (ModifiedResNet or VisionTransformer from the `clip` package).

    ResNet maps: layer2 and layer3 outputs (the paper's geometric layers). ViT maps: the patch tokens
    after blocks n/4 and n/2 (3 and 6 of ViT-B/32's 12), as (B, C, grid, grid). Embedding: the tower's
    output (attention pool or projected CLS token), before CLIP's L2 normalisation.
    """

    def __init__(self, visual: nn.Module, arch: str):
        super().__init__()
        self.visual = visual
        self.name = f"clip:{arch}"
        self.input_size = int(visual.input_resolution)
        self.is_vit = isinstance(visual, _clip_model().VisionTransformer)
        if self.is_vit:
            n = len(visual.transformer.resblocks)
            self.map_blocks = sorted({max(1, n // 4), max(1, n // 2)})
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    def features(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """Intermediate maps and the embedding of RGB images in [0, 1]; differentiable w.r.t. x."""
        x = self._prepare(x)
        if self.is_vit:
            maps, embedding, _ = self._vit(x, with_attention=False)
            return maps, embedding
        layer2, layer3, layer4 = self._resnet_stages(x)
        return [layer2, layer3], self.visual.attnpool(layer4)

    @torch.no_grad()
    def saliency(self, x: Tensor) -> Tensor:
        """ViT: CLS-to-patch attention averaged over heads and blocks. ResNet: the attention pool's
        query-to-position attention averaged over heads. Upsampled bicubically to (S, S), min-max."""
        if x.dim() != 4 or x.shape[0] != 1:
            raise ValueError(f"saliency takes one image (1, 3, S, S), got {tuple(x.shape)}")
        size = x.shape[-2:]
        x = self._prepare(x)
        if self.is_vit:
            _, _, attention = self._vit(x, with_attention=True)
            cls_row = torch.stack([a[0, 0, 1:] for a in attention]).clamp(min=0).mean(0)
        else:
            cls_row = self._attnpool_attention(self._resnet_stages(x)[2])
        grid = round(cls_row.numel() ** 0.5)
        return unit_map(cls_row.view(grid, grid), size[-1])

    def _prepare(self, x: Tensor) -> Tensor:
        """Resize to the tower's resolution where needed, then CLIP's normalisation."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, S, S), got {tuple(x.shape)}")
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size,) * 2, mode="bilinear", align_corners=False, antialias=True)
        return ((x.float() - self.mean) / self.std).contiguous(memory_format=self.memory_format)

    def _resnet_stages(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        v = self.visual
        x = v.relu1(v.bn1(v.conv1(x)))
        x = v.relu2(v.bn2(v.conv2(x)))
        x = v.avgpool(v.relu3(v.bn3(v.conv3(x))))
        layer2 = v.layer2(v.layer1(x))
        layer3 = v.layer3(layer2)
        return layer2, layer3, v.layer4(layer3)

    def _attnpool_attention(self, layer4: Tensor) -> Tensor:
        """Attention of the pool's query (the mean token) over the grid positions, averaged over heads."""
        pool = self.visual.attnpool
        tokens = layer4[0].flatten(1).T  # (HW, C)
        tokens = torch.cat([tokens.mean(0, keepdim=True), tokens]) + pool.positional_embedding
        heads = pool.num_heads
        q = pool.q_proj(tokens[:1]).view(heads, -1)  # (heads, d)
        k = pool.k_proj(tokens).view(len(tokens), heads, -1)  # (HW+1, heads, d)
        logits = torch.einsum("hd,lhd->hl", q, k) / q.shape[-1] ** 0.5
        return logits.softmax(-1).mean(0)[1:]

    def _vit(self, x: Tensor, with_attention: bool) -> tuple[list[Tensor], Tensor, list[Tensor]]:
        v = self.visual
        x = v.conv1(x)
        b, c, grid, _ = x.shape
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([v.class_embedding.expand(b, 1, c), x], dim=1) + v.positional_embedding
        x = v.ln_pre(x).permute(1, 0, 2)  # (tokens, B, C), as the package's transformer takes them
        maps, attention = [], []
        for i, block in enumerate(v.transformer.resblocks, start=1):
            y = block.ln_1(x)
            out, weights = block.attn(y, y, y, need_weights=with_attention, average_attn_weights=True)
            x = x + out
            x = x + block.mlp(block.ln_2(x))
            if with_attention:
                attention.append(weights)  # (B, tokens, tokens), averaged over heads
            if i in self.map_blocks:
                maps.append(x[1:].permute(1, 2, 0).reshape(b, c, grid, grid))
        embedding = v.ln_post(x[0]) @ v.proj
        return maps, embedding, attention


def load_clip(
    arch: str | None, device: str | torch.device, weights: str | os.PathLike, *, check_arch: bool = True
) -> ClipEncoder:
    """Build a frozen float32 `ClipEncoder` from a CLIP checkpoint in OpenAI's format.

    Takes OpenAI's TorchScript archives, plain `torch.save` state dicts and open_clip's `.safetensors` (as
    the Hugging Face Hub serves OpenAI's weights: the same tensor names) alike. With `check_arch`,
    the file must hold the named release's architecture; without it (tests with tiny models), only the
    family (ResNet or ViT) must match. `arch` None takes whichever release the file holds. Raises
    InputError, one line, for anything else.
    """
    if arch is not None and arch not in CLIP_ARCHS:
        raise InputError(f"unknown CLIP architecture {arch!r}; choose one of: {', '.join(CLIP_ARCHS)}")
    path = Path(weights)
    state_dict = _read_state_dict(path)
    try:
        visual = _build_visual(state_dict)
    except KeyError as exc:
        raise InputError(f"{path}: not a CLIP checkpoint (it has no {exc} entry)") from None
    except (RuntimeError, AssertionError, ValueError, IndexError) as exc:
        raise InputError(f"{path}: not a CLIP checkpoint ({one_line(exc)})") from None
    del state_dict  # with it goes the text tower, which is not needed
    shape = _shape(visual)
    held = next((known for known, known_shape in ARCH_SHAPES.items() if known_shape == shape), None)
    if arch is None:
        if held is None:
            raise InputError(f"{path} holds {_describe(shape)}, none of the CLIP releases this tool knows "
                             f"({', '.join(CLIP_ARCHS)})")
        arch = held
    expected = ARCH_SHAPES[arch]
    if shape != expected and (check_arch or shape[0] != expected[0]):
        other = f"choose the encoder clip:{held} for it, or " if held is not None else ""
        raise InputError(f"{path} holds {_describe(shape)}, not CLIP {arch}'s; {other}pass the {arch} weights file")
    encoder = ClipEncoder(visual.float(), arch)
    return encoder.to(device).freeze()


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    if _is_safetensors(path):
        try:
            state_dict = load_safetensors(str(path), device="cpu")
        except SafetensorError as exc:
            raise InputError(f"{path}: not a complete safetensors file ({one_line(exc)})") from None
    else:
        try:
            if _is_torchscript(path):
                with warnings.catch_warnings():  # torch.jit is deprecated, but it is the format OpenAI ships
                    warnings.simplefilter("ignore", FutureWarning)
                    state_dict = torch.jit.load(str(path), map_location="cpu").state_dict()
            else:
                with warnings.catch_warnings():  # e.g. about a foreign pickle's protocol: the error says enough
                    warnings.simplefilter("ignore")
                    state_dict = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch's readers raise many unrelated types on a corrupt or foreign file
            if isinstance(exc, pickle.UnpicklingError):  # its text advises loading unsafely: no use here
                raise InputError(f"{path}: not a CLIP checkpoint (a pickle of more than tensors, or not a "
                                 "PyTorch file at all)") from None
            raise InputError(f"{path}: not a CLIP checkpoint PyTorch can read ({one_line(exc)})") from None
    if not isinstance(state_dict, dict) or not all(isinstance(v, Tensor) for v in state_dict.values()):
        raise InputError(f"{path}: not a CLIP checkpoint (no state dict of tensors in it)")
    return dict(state_dict)


def _build_visual(state_dict: dict[str, Tensor]) -> nn.Module:
    """`build_model`'s architecture inference and classes without its random initialisation, which
    costs seconds and a second copy of the weights: the model is laid out on the meta device, then
    takes the checkpoint's tensors as they are."""
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # loading into meta parameters is a no-op there
        model = _clip_model().build_model(state_dict)
    model.load_state_dict(state_dict, assign=True)
    return model.visual


def _is_safetensors(path: Path) -> bool:
    """A safetensors file starts with the length of its JSON header (8 bytes, little-endian), then `{`."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") < 100_000_000


def _is_torchscript(path: Path) -> bool:
    """OpenAI distributes TorchScript archives: zip files with compiled code next to the weights."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") or "/code/" in name for name in archive.namelist())


def _shape(visual: nn.Module) -> tuple:
    """The architecture of a built visual tower, comparable with ARCH_SHAPES."""
    if isinstance(visual, _clip_model().VisionTransformer):
        conv = visual.conv1
        return ("ViT", len(visual.transformer.resblocks), conv.out_channels, conv.kernel_size[0],
                int(visual.input_resolution))
    blocks = tuple(len(getattr(visual, f"layer{i}")) for i in range(1, 5))
    return ("ResNet", blocks, visual.layer1[0].conv1.out_channels, int(visual.input_resolution))


def _describe(shape: tuple) -> str:
    for arch, known in ARCH_SHAPES.items():
        if shape == known:
            return f"CLIP {arch} weights"
    if shape[0] == "ViT":
        _, blocks, width, patch, size = shape
        return f"a CLIP ViT with {blocks} blocks, width {width}, patch {patch}, {size} px"
    _, blocks, width, size = shape
    return f"a CLIP ResNet with blocks {'-'.join(map(str, blocks))}, width {width}, {size} px"
