"""Contact sheet for judging sketches by eye: photo | 4 | 8 | 16 | 32 strokes, one row per photo.

Photos are scikit-image's samples (benchmarks/photos.py gives each one's source and licence).
Prints one JSON line per sketch (time, loss) and writes the sheet as a PNG. A second sheet
(--mixing-output) shows the mixing modes on chelsea: a hand-drawn outline
(benchmarks/data/chelsea-outline.svg) kept and completed by 8 strokes, and an abstraction ladder
32/16/8/4 from one run, with what the ladder cost over its finest run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipasso.engine import preview_image, sketch  # noqa: E402
from clipasso.options import SketchOptions  # noqa: E402
from photos import CELL, fit, sample_photo  # noqa: E402  (benchmarks/photos.py, beside this file)

PHOTOS = ("chelsea", "coffee", "astronaut", "motorcycle", "camera", "rocket")
OUTLINE = Path(__file__).resolve().parent / "data" / "chelsea-outline.svg"
LADDER = (32, 16, 8, 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-o", "--output", default="out/gallery.png")
    ap.add_argument("--photos", default=",".join(PHOTOS))
    ap.add_argument("--strokes", default="4,8,16,32")
    ap.add_argument("--encoder", default="lite0")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--iterations", type=int)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mixing-output", default="out/mixing.png",
                    help="the sheet of the mixing modes (keep, ladder); empty: none")
    args = ap.parse_args()
    photos = [name for name in args.photos.split(",") if name]
    try:  # checked before the first sketch: one line, not a traceback minutes in
        for name in photos:
            sample_photo(name)
        counts = [int(c) for c in args.strokes.split(",")] if photos else []
        for n in counts:
            SketchOptions(strokes=n).validated()
    except (KeyError, ValueError) as exc:
        ap.error(str(exc).strip("'\""))
    torch.set_num_threads(args.threads)
    if args.mixing_output:
        Path(args.mixing_output).parent.mkdir(parents=True, exist_ok=True)  # out/ is not in a fresh clone
        mixing_sheet(args).save(args.mixing_output)
        print(json.dumps({"mixing": args.mixing_output}))
    if not photos:
        return
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


def mixing_sheet(args: argparse.Namespace) -> Image.Image:
    """Row 1: photo | the hand-drawn outline | kept and completed by 8 strokes. Row 2: photo | a ladder."""
    photo = sample_photo("chelsea")
    sheet = Image.new("RGB", (CELL * (1 + len(LADDER)), (CELL + 16) * 2), "white")
    draw = ImageDraw.Draw(sheet)
    keep = SketchOptions(strokes=8, encoder=args.encoder, preset=args.preset, iterations=args.iterations,
                         keep=OUTLINE.read_text())
    t = time.perf_counter()
    kept = sketch(photo, keep)
    print(json.dumps({"mode": "keep", "strokes": 8, "seconds": round(time.perf_counter() - t, 2),
                      "loss": round(kept.loss, 4)}), flush=True)
    outline_only = replace(kept, strokes=kept.strokes[:0])
    for c, (image, label) in enumerate([(photo, "chelsea"), (preview_image(outline_only), "drawn by hand (kept)"),
                                        (preview_image(kept), "kept + 8 AI strokes")]):
        sheet.paste(fit(image), (c * CELL, 16))
        draw.text((c * CELL + 4, 2), label, fill="black")
    ladder = SketchOptions(levels=LADDER, encoder=args.encoder, preset=args.preset, iterations=args.iterations)
    result = sketch(photo, ladder)
    total, extra = result.timings["total"], result.timings["ladder"]
    print(json.dumps({"mode": "ladder", "levels": list(LADDER), "seconds": round(total, 2),
                      "ladder_seconds": round(extra, 2), "iterations": result.iterations,
                      "cost_over_finest_run": round(total / (total - extra), 3)}), flush=True)
    y = CELL + 16
    sheet.paste(fit(photo), (0, y + 16))
    draw.text((4, y + 2), "ladder, one run", fill="black")
    for c, n in enumerate(LADDER):
        level = replace(result, strokes=result.levels[n], levels=None)
        sheet.paste(fit(preview_image(level, max_side=2 * CELL)), ((c + 1) * CELL, y + 16))
        draw.text(((c + 1) * CELL + 4, y + 2), f"level {n}", fill="black")
    return sheet


if __name__ == "__main__":
    main()
