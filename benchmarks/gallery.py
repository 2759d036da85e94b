"""Contact sheet for judging sketches by eye: photo | 4 | 8 | 16 | 32 strokes, one row per photo.

Photos are scikit-image's samples (CC0 or public domain; see each loader's docstring). Prints one JSON
line per sketch (time, loss) and writes the sheet as a PNG.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipasso.engine import preview_image, sketch  # noqa: E402
from clipasso.options import SketchOptions  # noqa: E402

PHOTOS = ("chelsea", "coffee", "astronaut", "motorcycle", "camera", "rocket")
CELL = 224


def sample_photo(name: str) -> Image.Image:
    from skimage import data

    arr = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
    return Image.fromarray(arr).convert("RGB")


def fit(im: Image.Image) -> Image.Image:
    """The image scaled into a CELL x CELL white cell, centred."""
    s = CELL / max(im.size)
    small = im.convert("RGB").resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.LANCZOS)
    cell = Image.new("RGB", (CELL, CELL), "white")
    cell.paste(small, ((CELL - small.width) // 2, (CELL - small.height) // 2))
    return cell


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-o", "--output", default="out/gallery.png")
    ap.add_argument("--photos", default=",".join(PHOTOS))
    ap.add_argument("--strokes", default="4,8,16,32")
    ap.add_argument("--encoder", default="lite0")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--iterations", type=int)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    photos = args.photos.split(",")
    counts = [int(c) for c in args.strokes.split(",")]
    sheet = Image.new("RGB", (CELL * (1 + len(counts)), (CELL + 16) * len(photos)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, name in enumerate(photos):
        photo = sample_photo(name)
        y = r * (CELL + 16)
        sheet.paste(fit(photo), (0, y + 16))
        draw.text((4, y + 2), name, fill="black")
        for c, n in enumerate(counts):
            t = time.perf_counter()
            opts = SketchOptions(strokes=n, encoder=args.encoder, preset=args.preset, iterations=args.iterations)
            result = sketch(photo, opts)
            wall = time.perf_counter() - t
            print(json.dumps({"photo": name, "strokes": n, "seconds": round(wall, 2),
                              "iterations": result.iterations, "loss": round(result.loss, 4),
                              "encoder": result.encoder}), flush=True)
            sheet.paste(fit(preview_image(result, max_side=2 * CELL)), ((c + 1) * CELL, y + 16))
            draw.text(((c + 1) * CELL + 4, y + 2), f"{n} strokes, {wall:.0f} s", fill="black")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.output)
    print(json.dumps({"gallery": args.output}))


if __name__ == "__main__":
    main()
