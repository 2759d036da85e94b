"""The benchmarks' photos, all available offline, and the cell they are shown in on contact sheets.

Each photo: its subject; where it comes from; its licence.
- chelsea: a cat; scikit-image `data.chelsea`; CC0 (Stefan van der Walt).
- ticotico: a sparrow among leaves; benchmarks/data/ticotico.jpg, from Inkscape's share/pixmaps; GPL, as
  Inkscape.
- coffee: a cup of coffee on a table; scikit-image `data.coffee`; CC0 (Rachel Michetti).
- coins: Greek coins on a board (grey); scikit-image `data.coins`; no known copyright restrictions
  (Brooklyn Museum).
- astronaut: Eileen Collins, a flag and a rocket behind her; scikit-image `data.astronaut`; public domain
  (NASA).
- camera: a man with a camera on a tripod (grey); scikit-image `data.camera`; CC0 (Lav Varshney).
- grace_hopper: Grace Hopper in uniform, a flag behind her; benchmarks/data/grace_hopper.jpg, from
  matplotlib's sample data; public domain (US Navy).
- ascent: people climbing an outdoor stair (grey); PyWavelets `pywt.data.ascent`; public domain (from
  public-domain-image.com).
- motorcycle: a motorcycle in a cluttered workshop; scikit-image `data.stereo_motorcycle`; Middlebury 2014
  stereo data (Scharstein et al.), as scikit-image ships it.
- rocket: a rocket on its pad, gantries around it; scikit-image `data.rocket`; public domain (SpaceX).
- china: a pagoda among trees above a lake; scikit-learn `load_sample_image`; CC BY 2.0 (danielbuechele
  on Flickr).
- flower: a dahlia before leaves; scikit-learn `load_sample_image`; CC BY 2.0 (vultilion on Flickr).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pywt import data as pywt_data
from skimage import data as skimage_data
from sklearn.datasets import load_sample_image

DATA = Path(__file__).resolve().parent / "data"
#: Animals, objects, people, vehicles and places; several with cluttered backgrounds.
PHOTOS = ("chelsea", "ticotico", "coffee", "coins", "astronaut", "camera", "grace_hopper", "ascent",
          "motorcycle", "rocket", "china", "flower")
CELL = 224
#: Where each photo's subject is, outlined by hand (by a person looking at the photo, not by any of the
#: engine's estimates): a polygon of (x, y) in percent of the photo's width and height, or None where the
#: subject fills the frame (a cat's face, a board of coins, a stair). The bird is without the leaves under
#: it, the astronaut with her helmet and without the flag and shuttle, the rocket without its gantries. The
#: quality benchmark measures the engine's subject mask (`--focus auto`) against it, and `--focus-oracle`
#: sketches with it instead.
SUBJECTS: dict[str, tuple[tuple[float, float], ...] | None] = {
    "chelsea": None,
    "ticotico": ((38, 8), (48, 4), (58, 6), (61, 12), (63, 22), (71, 40), (79, 56), (89, 77), (94, 94),
                 (88, 96), (79, 82), (66, 71), (61, 79), (54, 77), (52, 72), (45, 61), (40, 46), (39, 30),
                 (40, 22), (36, 15), (40, 12)),
    "coffee": ((12, 42), (18, 28), (29, 20), (30, 8), (40, 3), (55, 3), (68, 8), (69, 16), (73, 25), (79, 38),
               (81, 55), (76, 75), (66, 89), (50, 94), (34, 93), (21, 86), (13, 71), (11, 56)),
    "coins": None,
    "astronaut": ((37, 4), (46, 3), (56, 5), (60, 12), (59, 24), (56, 29), (61, 38), (61, 48), (69, 55),
                  (71, 66), (78, 66), (92, 70), (99, 84), (100, 100), (4, 100), (3, 80), (5, 60), (10, 49),
                  (22, 40), (24, 32), (34, 28), (30, 20), (29, 10)),
    "camera": ((0, 30), (12, 22), (27, 19), (33, 12), (42, 11), (50, 17), (50, 26), (64, 26), (65, 35),
               (61, 40), (59, 47), (58, 58), (65, 58), (70, 72), (80, 95), (80, 100), (0, 100)),
    "grace_hopper": ((32, 8), (45, 3), (60, 4), (70, 10), (72, 20), (70, 32), (68, 45), (63, 53), (76, 58),
                     (91, 62), (98, 75), (100, 100), (2, 100), (5, 72), (12, 62), (28, 55), (32, 45), (30, 30),
                     (31, 20)),
    "ascent": None,
    "motorcycle": ((12, 40), (16, 34), (21, 31), (47, 32), (52, 27), (60, 24), (66, 17), (71, 18), (76, 28),
                   (74, 38), (77, 50), (86, 55), (93, 63), (92, 77), (82, 83), (70, 79), (64, 71), (55, 73),
                   (46, 71), (47, 86), (43, 87), (35, 79), (24, 77), (17, 69), (15, 55), (13, 50)),
    "rocket": ((48, 29), (52, 29), (53, 45), (54, 85), (58, 94), (61, 100), (39, 100), (42, 94), (46, 85),
               (47, 45)),
    "china": ((30, 5), (34, 5), (36, 12), (45, 18), (50, 27), (45, 32), (48, 37), (45, 45), (50, 52), (55, 58),
              (52, 66), (57, 76), (58, 84), (52, 90), (50, 100), (30, 100), (29, 90), (18, 81), (11, 75),
              (10, 62), (15, 55), (14, 42), (13, 35), (16, 27), (14, 22), (22, 17), (29, 12)),
    "flower": ((70, 51), (67, 67), (59, 79), (48, 83), (37, 79), (29, 67), (26, 51), (29, 35), (37, 23),
               (48, 19), (59, 23), (67, 35)),
}


def sample_photo(name: str) -> Image.Image:
    """One of PHOTOS as an RGB image at its own size; KeyError for a name not among them."""
    if name not in PHOTOS:
        raise KeyError(f"unknown photo {name!r}; choose from: {', '.join(PHOTOS)}")
    if name in ("ticotico", "grace_hopper"):
        return Image.open(DATA / f"{name}.jpg").convert("RGB")
    if name == "ascent":
        return Image.fromarray(pywt_data.ascent().astype(np.uint8)).convert("RGB")
    if name in ("china", "flower"):
        return Image.fromarray(load_sample_image(f"{name}.jpg")).convert("RGB")
    arr = skimage_data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage_data, name)()
    return Image.fromarray(arr).convert("RGB")


def subject_mask(name: str, size: tuple[int, int]) -> np.ndarray:
    """Where the photo's subject lies (SUBJECTS) at `size` (width, height): a boolean (height, width) array."""
    polygon = SUBJECTS[name]
    if polygon is None:
        return np.ones(size[::-1], dtype=bool)
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).polygon([(x * size[0] / 100, y * size[1] / 100) for x, y in polygon], fill=1)
    return np.asarray(mask, dtype=bool)


def fit(im: Image.Image, cell: int = CELL) -> Image.Image:
    """The image scaled into a cell x cell white square, centred."""
    s = cell / max(im.size)
    small = im.convert("RGB").resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.LANCZOS)
    square = Image.new("RGB", (cell, cell), "white")
    square.paste(small, ((cell - small.width) // 2, (cell - small.height) // 2))
    return square
