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
from PIL import Image
from pywt import data as pywt_data
from skimage import data as skimage_data
from sklearn.datasets import load_sample_image

DATA = Path(__file__).resolve().parent / "data"
#: Animals, objects, people, vehicles and places; several with cluttered backgrounds.
PHOTOS = ("chelsea", "ticotico", "coffee", "coins", "astronaut", "camera", "grace_hopper", "ascent",
          "motorcycle", "rocket", "china", "flower")
CELL = 224


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


def fit(im: Image.Image, cell: int = CELL) -> Image.Image:
    """The image scaled into a cell x cell white square, centred."""
    s = cell / max(im.size)
    small = im.convert("RGB").resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.LANCZOS)
    square = Image.new("RGB", (cell, cell), "white")
    square.paste(small, ((cell - small.width) // 2, (cell - small.height) // 2))
    return square
