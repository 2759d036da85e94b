"""ClipEncoder and load_clip on tiny random-weight CLIPs that go through the same loader as OpenAI's files.

Random weights: these check shapes, ranges, gradients and error handling, never sketch quality.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from tiny_clip import save_tiny_clip, tiny_clip

from clipasso.encoders.clip import ARCH_SHAPES, ClipEncoder, _describe, _shape, load_clip
from clipasso.errors import InputError

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import clip.model as clip_model

ARCH = {"RN": "RN101", "ViT": "ViT-B/32"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, bool], Path]:
    folder = tmp_path_factory.mktemp("tiny-clip")
    return {
        (kind, ts): save_tiny_clip(folder / f"{kind}-{'jit' if ts else 'state'}.pt", kind, torchscript=ts)
        for kind in ("RN", "ViT")
        for ts in (False, True)
    }


@pytest.fixture(scope="module")
def encoders(checkpoints: dict) -> dict[str, ClipEncoder]:
    return {kind: load_clip(ARCH[kind], "cpu", checkpoints[kind, False], check_arch=False) for kind in ARCH}


@pytest.mark.parametrize("torchscript", [False, True], ids=["state-dict", "torchscript"])
@pytest.mark.parametrize("kind", ["RN", "ViT"])
def test_loads_both_file_formats_into_a_frozen_float32_visual_tower(checkpoints, kind, torchscript):
    enc = load_clip(ARCH[kind], "cpu", checkpoints[kind, torchscript], check_arch=False)
    assert enc.name == f"clip:{ARCH[kind]}"
    assert enc.input_size == 224
    assert not enc.training
    params = list(enc.parameters())
    assert params and all(p.dtype == torch.float32 and not p.requires_grad for p in params)
    # Only the visual tower is kept: the text tower's parameters are gone.
    assert sum(p.numel() for p in params) == sum(p.numel() for p in tiny_clip(kind).visual.parameters())


@pytest.mark.parametrize("kind", ["RN", "ViT"])
def test_the_tower_holds_exactly_the_checkpoints_tensors(encoders, kind):
    saved = tiny_clip(kind).visual.state_dict()  # same seed as the saved checkpoint
    loaded = encoders[kind].visual.state_dict()
    assert loaded.keys() == saved.keys()
    for name, tensor in saved.items():
        assert loaded[name].device.type == "cpu"
        torch.testing.assert_close(loaded[name], tensor.to(loaded[name].dtype), msg=name)


def test_both_file_formats_give_the_same_model(checkpoints):
    x = torch.rand(1, 3, 224, 224)
    plain = load_clip("RN101", "cpu", checkpoints["RN", False], check_arch=False)
    traced = load_clip("RN101", "cpu", checkpoints["RN", True], check_arch=False)
    torch.testing.assert_close(plain.features(x)[1], traced.features(x)[1])


@pytest.mark.parametrize(
    "kind, map_shapes",
    [
        ("RN", [(2, 64, 28, 28), (2, 128, 14, 14)]),  # layer2 and layer3 of a width-8 ModifiedResNet
        ("ViT", [(2, 128, 7, 7), (2, 128, 7, 7)]),  # patch tokens after blocks 1 and 2 of 4
    ],
)
def test_features_shapes_match_the_package_forward_and_pass_gradients(encoders, kind, map_shapes):
    enc = encoders[kind]
    x = torch.rand(2, 3, 224, 224, requires_grad=True)
    maps, embedding = enc.features(x)
    assert [tuple(m.shape) for m in maps] == map_shapes
    assert embedding.shape == (2, 32)
    assert all(torch.isfinite(t).all() for t in [*maps, embedding])
    # The spelled-out forward must agree with the package's own, which sees CLIP-normalised input.
    with torch.no_grad():
        reference = enc.visual((x - enc.mean) / enc.std)
    torch.testing.assert_close(embedding, reference)
    loss = sum(m.square().mean() for m in maps) + (1 - torch.cosine_similarity(embedding, reference)).sum()
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["RN", "ViT"])
def test_other_input_sizes_are_resized_to_the_towers_resolution(encoders, kind):
    maps_224, _ = encoders[kind].features(torch.rand(1, 3, 224, 224))
    maps_300, _ = encoders[kind].features(torch.rand(1, 3, 300, 300))
    assert [m.shape for m in maps_300] == [m.shape for m in maps_224]


@pytest.mark.parametrize("size", [224, 160])
@pytest.mark.parametrize("kind", ["RN", "ViT"])
def test_saliency_is_a_finite_map_in_0_1_of_the_input_size(encoders, kind, size):
    x = torch.rand(1, 3, size, size)
    heat = encoders[kind].saliency(x)
    assert heat.shape == (size, size)
    assert torch.isfinite(heat).all()
    assert heat.min() == 0 and heat.max() == 1
    assert heat.std() > 0.01  # a real map, not the flat "no preference" fallback
    assert not heat.requires_grad


def test_saliency_takes_one_image_only(encoders):
    with pytest.raises(ValueError, match="one image"):
        encoders["ViT"].saliency(torch.rand(2, 3, 224, 224))


@pytest.mark.parametrize(
    "visual, arch",
    [
        (lambda: clip_model.ModifiedResNet((3, 4, 6, 3), 1024, 32, 224, 64), "RN50"),
        (lambda: clip_model.ModifiedResNet((3, 4, 23, 3), 512, 32, 224, 64), "RN101"),
        (lambda: clip_model.VisionTransformer(224, 32, 768, 12, 12, 512), "ViT-B/32"),
    ],
)
def test_openai_architectures_are_recognised(visual, arch):
    with torch.device("meta"):  # structure only: no memory, no time
        shape = _shape(visual())
    assert shape == ARCH_SHAPES[arch]
    assert _describe(shape) == f"CLIP {arch} weights"


def test_a_file_for_another_architecture_is_refused(checkpoints):
    resnet = r"holds a CLIP ResNet with blocks 1-1-1-1, width 8, 224 px, not CLIP RN101's; pass the RN101 weights"
    with pytest.raises(InputError, match=resnet):
        load_clip("RN101", "cpu", checkpoints["RN", False])
    with pytest.raises(InputError, match=r"holds a CLIP ViT with 4 blocks.*not CLIP ViT-B/32"):
        load_clip("ViT-B/32", "cpu", checkpoints["ViT", True])
    # Without the exact check, the family must still match.
    with pytest.raises(InputError, match="not CLIP RN50"):
        load_clip("RN50", "cpu", checkpoints["ViT", False], check_arch=False)
    # Taking whichever release the file holds: these are none.
    with pytest.raises(InputError, match=r"width 8, 224 px, none of the CLIP releases this tool knows \(RN101, RN50"):
        load_clip(None, "cpu", checkpoints["RN", False])


def _one_line_input_error(call) -> str:
    with pytest.raises(InputError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_bad_files_give_one_line_errors(tmp_path, checkpoints):
    text = tmp_path / "notes.txt"
    text.write_text("not weights\n")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(checkpoints["RN", True].read_bytes()[:50_000])
    foreign = tmp_path / "foreign.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, foreign)
    a_list = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], a_list)

    assert "no such file" in _one_line_input_error(lambda: load_clip("RN101", "cpu", tmp_path / "missing.pt"))
    assert "not a file" in _one_line_input_error(lambda: load_clip("RN101", "cpu", tmp_path))
    assert "not a CLIP checkpoint (a pickle of more than tensors, or not a PyTorch file at all)" in _one_line_input_error(
        lambda: load_clip("RN101", "cpu", text))
    assert "not a CLIP checkpoint PyTorch can read" in _one_line_input_error(lambda: load_clip("RN101", "cpu", truncated))
    assert "has no 'visual.layer1.0.conv1.weight' entry" in _one_line_input_error(
        lambda: load_clip("RN101", "cpu", foreign)
    )
    assert "no state dict" in _one_line_input_error(lambda: load_clip("RN101", "cpu", a_list))
    assert "unknown CLIP architecture" in _one_line_input_error(
        lambda: load_clip("RN50x4", "cpu", checkpoints["RN", False])
    )


def test_the_clip_package_is_imported_only_for_a_clip_model():
    """Importing the engine and the server does not import `clip` (and torchvision with it: 200 MB)."""
    code = "import sys, clipasso.engine, clipasso.server.app; print(sorted({'clip', 'torchvision'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
