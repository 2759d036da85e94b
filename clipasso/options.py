"""The request contract: what a caller may ask of a sketch and what comes back. No torch here.

The CLI, the HTTP service, the job store and the tests import this module without paying for PyTorch, and
every limit that the CLI, the server and the extension's .inx state is defined once, here.
"""

from __future__ import annotations

import enum
import importlib.util
import os
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import numpy as np

from .errors import InputError
from .images import Letterbox
from .paths import DrawnPath, drawing_notes, read_paths
from .svg import strokes_to_svg

MAX_STROKES = 512
#: Most paths a --keep, --refine or --subject file may hold.
MAX_DRAWN_PATHS = 512
#: Most text a --keep, --refine or --subject SVG may hold, in bytes (a hand-drawn outline is a few kB).
MAX_DRAWN_SVG_BYTES = 2_000_000
#: Most levels of an abstraction ladder (--levels).
MAX_LEVELS = 8
MAX_ITERATIONS = 10_000
MAX_SEEDS = 16
MAX_SEED = 2**31 - 1
#: Largest stroke width a caller may ask for, in the photo's pixels.
MAX_STROKE_WIDTH = 1000.0
#: The service's defaults for the largest upload and the most queued jobs (`clipasso serve` can change them).
DEFAULT_MAX_UPLOAD_MB = 50
DEFAULT_MAX_QUEUE = 100
#: The service removes finished jobs older than this (`clipasso serve --keep-days`).
DEFAULT_KEEP_DAYS = 7.0
#: How many iterations a seed's starts race before all but the best end (`Preset.starts`,
#: engine/optimise.py): enough for strokes to reach their contours, so that the loss tells good starts from
#: bad. Over 12 photos x 4 seeds on a GPU, racing 15 iterations (and running 130) ended at the same mean loss
#: as racing 30 (and 150): 7.531 against 7.517, the paired difference 0.014 +- 0.029, with 22 % fewer steps;
#: racing 10 did not (7.593).
RACE_ITERATIONS = 15
#: Photos longer than this many times their width (or wider than their height) get a warning: letterboxed
#: on the square canvas they are a thin band (a 6000x300 panorama: 11 canvas pixels tall).
MAX_ASPECT = 3.0
#: The square canvas the strokes are optimised on (the encoders' input size).
CANVAS = 224
#: Stroke width at the 224 px canvas; it scales with the image (3 px at 224 px, as in the paper's SVGs).
CANVAS_STROKE_WIDTH = 3.0
#: Where no width is asked, new strokes beside the artist's paths take their width, held within these
#: multiples of the default (image_stroke_width).
MATCHED_WIDTH = (0.5, 2.0)

CLIP_ARCHS = ("RN101", "RN50", "ViT-B/32")
ENCODER_NAMES = ("auto", "lite0") + tuple(f"clip:{a}" for a in CLIP_ARCHS)
DEVICES = ("auto", "cpu", "cuda", "mps")
#: Where to get pydiffvg: it is not on PyPI, so the one-line error says to build it.
DIFFVG_HINT = "build it from https://github.com/BachiLi/diffvg into this Python (python setup.py install)"


class Renderer(str, enum.Enum):
    """Which rasterizer draws the strokes, in the optimisation, the stroke re-laying and the previews."""

    AUTO = "auto"  #: ours (torch): installs with pip, fastest on a CPU
    TORCH = "torch"  #: our differentiable rasterizer in plain PyTorch
    DIFFVG = "diffvg"  #: diffvg, the reference's rasterizer, where pydiffvg is installed

    @property
    def backend(self) -> str:
        """The engine's render backend for this choice."""
        return "diffvg" if self is Renderer.DIFFVG else "torch"


RENDERERS = tuple(r.value for r in Renderer)


def available_renderers() -> list[str]:
    """The renderer names usable here: diffvg only where pydiffvg and its compiled module can be found.

    Found, not imported: importing pydiffvg imports torch, which this module must not.
    """
    has_diffvg = all(_findable(m) for m in ("pydiffvg", "diffvg"))
    return [r.value for r in Renderer if r is not Renderer.DIFFVG or has_diffvg]


def _findable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # None in sys.modules: Python's way of saying that a module must not be imported
        return False


class Init(str, enum.Enum):
    """Where a seed's strokes start."""

    TRACED = "traced"  #: laid along salient contours (our recipe)
    PAPER = "paper"  #: short random strokes on salient edges (the reference's)


class Focus(str, enum.Enum):
    """Where strokes belong."""

    AUTO = "auto"  #: on the subject: the photo's transparency, else a segmentation seeded by saliency
    NONE = "none"  #: anywhere the encoder's saliency map points, background included


FOCUSES = tuple(f.value for f in Focus)


class Stop(str, enum.Enum):
    """When a seed's optimisation ends before its last iteration."""

    PLATEAU = "plateau"  #: the plain-view loss stopped improving (our recipe)
    REFERENCE = "reference"  #: the reference's rule: two evaluations in a row that barely changed


@dataclass(frozen=True)
class Preset:
    iterations: int
    seeds: int
    augmentations: int  #: augmented views per step, besides the plain one
    encoder: str  #: what "auto" prefers when CLIP weights are at hand
    init: Init
    stop: Stop
    relay: bool  #: lay the least useful strokes again during the run
    #: Starts raced per sketch: each is optimised for the engine's first few iterations, then only the one
    #: with the lowest loss goes on (a bad start is the usual cause of a bad sketch); several seeds share
    #: them (see engine/optimise.py).
    starts: int = 1
    #: How far the geometric loss's target leans from the photo towards a drawing of its contours made with
    #: the sketch's own stroke width (engine/losses.py, `_target_maps`): 0 is the photo alone, the reference.
    lines: float = 0.0


PRESETS: dict[str, Preset] = {
    # The fast recipe: tuned on the built-in encoder for a laptop CPU.
    "default": Preset(iterations=130, seeds=1, augmentations=1, encoder="clip:RN101", init=Init.TRACED,
                      stop=Stop.PLATEAU, relay=True, starts=3, lines=0.5),
    # The reference settings, for comparison.
    "paper": Preset(iterations=2000, seeds=3, augmentations=4, encoder="clip:RN101", init=Init.PAPER,
                    stop=Stop.REFERENCE, relay=False),
}

ProgressCallback = Callable[[int, int, float, np.ndarray], None]
"""on_progress(iteration, total, loss, strokes): iteration counts over all seeds (1..total); strokes
are (N, 4, 2) control points in the input image's pixel coordinates. Iteration 0 (loss NaN) reports the
starting strokes, as soon as they are laid, before most of the preparation."""


def check_encoder_name(name: str) -> None:
    """Raise InputError for an encoder name the engine does not know."""
    if name not in ENCODER_NAMES:
        raise InputError(f"unknown encoder {name!r}; choose one of: {', '.join(ENCODER_NAMES)}")


def check_device(name: str) -> None:
    """A device name the engine knows: auto, cpu, cuda, cuda:N or mps (whether it is present is asked later)."""
    if name not in DEVICES and not re.fullmatch(r"cuda:[0-9]+", name):
        raise InputError(f"unknown device {name!r}; choose auto, cpu, cuda, cuda:N or mps")


def check_renderer(name: str) -> None:
    """Raise InputError for a renderer name the engine does not know, or diffvg where it is not installed."""
    if name not in RENDERERS:
        raise InputError(f"unknown renderer {name!r}; choose one of: {', '.join(RENDERERS)}")
    if name not in available_renderers():
        raise InputError(f"renderer {name!r} needs pydiffvg, which is not installed here: {DIFFVG_HINT}; "
                         "or use renderer auto")


def named_weights(path: str | os.PathLike | None) -> str | None:
    """The CLIP weights file the user named: `path` (`--weights`), else $CLIPASSO_CLIP_WEIGHTS; None."""
    return os.fspath(path) if path else os.environ.get("CLIPASSO_CLIP_WEIGHTS") or None


def check_weights(path: str | None, encoder: str = "auto") -> None:
    """Raise InputError when a CLIP weights file is named (`--weights` of sketch and serve, else
    $CLIPASSO_CLIP_WEIGHTS) but is not there, or is a folder: with encoder auto, a mistyped name would
    otherwise pass unnoticed as CLIP being unavailable. The environment's is not asked of the built-in
    encoder, which needs no weights."""
    named = named_weights(path) if path is not None or encoder != "lite0" else None
    source = "weights" if path is not None else "CLIPASSO_CLIP_WEIGHTS"
    if named and not os.path.isfile(os.path.expanduser(named)):
        what = "a folder; name the weights file in it" if os.path.isdir(os.path.expanduser(named)) else "no such file"
        raise InputError(f"{source}: {named}: {what}")


def check_range(name: str, value: object, low: int, high: int) -> None:
    """Raise InputError unless `value` is an int in low..high."""
    if not isinstance(value, int) or not low <= value <= high:
        raise InputError(f"{name} must be between {low} and {high}, got {value}")


@dataclass(frozen=True)
class SketchOptions:
    """What a caller may ask for. `None` means the preset's value."""

    strokes: int = 16
    iterations: int | None = None
    seed: int = 0
    seeds: int | None = None
    encoder: str = "auto"
    device: str = "auto"
    preset: str = "default"
    weights: str | None = None
    #: Stroke width in the input image's pixels; None: the artist's, or 3 px at 224 px scaled (image_stroke_width).
    stroke_width: float | None = None
    renderer: str = Renderer.AUTO.value
    #: SVG text of the artist's paths that stay as drawn and take part in the loss (`strokes` are added).
    keep: str | None = None
    #: SVG text of strokes to start from (each path's first segment); `strokes` more are added (0 allowed).
    refine: str | None = None
    #: Stroke counts of an abstraction ladder, finest first; the run sketches the finest, `strokes` follows it.
    levels: tuple[int, ...] | None = None
    #: Focus: `auto` keeps strokes on the subject, `none` lets the saliency map alone decide.
    focus: str = Focus.AUTO.value
    #: SVG text of closed paths in the photo's pixels that outline the subject: with focus `auto`, the
    #: subject is what they enclose, instead of the photo's transparency or the backend's segmentation.
    subject: str | None = None

    def validated(self) -> "SketchOptions":
        """These options with the preset filled in; raises InputError on a value out of range."""
        if self.preset not in PRESETS:
            raise InputError(f"unknown preset {self.preset!r}; choose one of: {', '.join(PRESETS)}")
        p = PRESETS[self.preset]
        iterations = p.iterations if self.iterations is None else self.iterations
        seeds = p.seeds if self.seeds is None else self.seeds
        drawn_paths("keep", self.keep)  # a bad file is refused here, before the photo is read
        drawn_paths("subject", self.subject)
        if self.subject is not None and self.focus == Focus.NONE.value:
            raise InputError("subject: an outline of the subject needs focus auto (focus none uses the whole photo)")
        refine = drawn_paths("refine", self.refine)
        levels = check_levels(self.levels)
        if levels is not None and levels[0] < len(refine):
            raise InputError(f"levels: the finest level has {levels[0]} strokes, fewer than the {len(refine)} "
                             "paths to refine")
        strokes = self.strokes if levels is None else levels[0] - len(refine)
        check_range("strokes", strokes, 0 if refine else 1, MAX_STROKES - len(refine))
        check_range("iterations", iterations, 1, MAX_ITERATIONS)
        check_range("seeds", seeds, 1, MAX_SEEDS)
        check_range("seed", self.seed, 0, MAX_SEED)
        if self.stroke_width is not None and not 0 < self.stroke_width <= MAX_STROKE_WIDTH:
            raise InputError(f"stroke width must be above 0 and at most {MAX_STROKE_WIDTH:g} px, got {self.stroke_width}")
        check_device(self.device)
        check_encoder_name(self.encoder)
        check_renderer(self.renderer)
        if self.focus not in FOCUSES:
            raise InputError(f"unknown focus {self.focus!r}; choose one of: {', '.join(FOCUSES)}")
        return replace(self, iterations=iterations, seeds=seeds, strokes=strokes, levels=levels)

    @property
    def starts(self) -> int:
        """Starts raced per seed (of validated options): the preset's shared among the seeds, as several
        seeds already are several starts (3 starts: 3 for one seed, 2 each for two, none for three or more),
        and none when the run is no longer than the race or has no new strokes to start differently (it
        refines the artist's strokes alone). A race triples a seed's work for its first iterations, which
        several seeds would pay again for a choice they already make."""
        if self.iterations <= RACE_ITERATIONS or self.strokes == 0:
            return 1
        return -(-self.recipe.starts // self.seeds)

    def new_strokes(self, refining: int) -> int:
        """New strokes a sketch of these (validated) options lays beside `refining` strokes to refine (those
        that lie on the photo): a ladder's finest level counts both."""
        return self.strokes if not self.levels else self.levels[0] - refining

    @property
    def planned_iterations(self) -> int:
        """The steps a sketch of these (validated) options plans over all its seeds, the raced starts'
        included: what its progress counts up to (it may stop sooner, when the loss settles)."""
        return (self.iterations + (self.starts - 1) * RACE_ITERATIONS) * self.seeds

    def warnings(self, width: int, height: int) -> list[str]:
        """What of this request on a photo of this size is ignored or will disappoint, a line each: the
        artist's paths that lie off it (drawn_on_photo), a photo too long and narrow (shape_warnings)."""
        return self.drawn_on_photo(width, height)[2] + shape_warnings(width, height)

    def drawn_on_photo(self, width: int, height: int) -> tuple[tuple[DrawnPath, ...], tuple[DrawnPath, ...], list[str]]:
        """The kept and the refined paths that lie on a photo of this size, and a warning line for each
        file some of whose paths lie wholly off it (those are ignored); InputError when none is left. A
        subject outline counts as on the photo where its extent overlaps it (it may surround the photo)."""
        found, warnings = [], []
        for name, text in (("keep", self.keep), ("refine", self.refine), ("subject", self.subject)):
            paths, on = self.paths_on_photo(name, width, height)
            if paths and not on:
                which = "its path does not lie" if len(paths) == 1 else f"none of its {len(paths)} paths lies"
                raise InputError(f"{name}: {which} on the {width}x{height} photo; its coordinates must be the "
                                 "photo's pixels")
            if paths:
                warnings += [f"{name}: {note}" for note in drawing_notes(text, width, height)]
            if len(on) < len(paths):
                off = len(paths) - len(on)
                warnings.append(f"{name}: {off} of its {len(paths)} paths {'lies' if off == 1 else 'lie'} off the "
                                f"{width}x{height} photo and {'is' if off == 1 else 'are'} ignored")
            found.append(on)
        return found[0], found[1], warnings

    def paths_on_photo(self, name: str, width: int, height: int) -> tuple[tuple[DrawnPath, ...], tuple[DrawnPath, ...]]:
        """The paths of one of the artist's SVGs (keep, refine or subject), and those of them that lie on a
        photo of this size (a subject outline where its extent overlaps it: it may surround the photo)."""
        paths = drawn_paths(name, getattr(self, name))
        return paths, tuple(p for p in paths if (p.overlaps if name == "subject" else p.inside)(width, height))

    @property
    def recipe(self) -> Preset:
        return PRESETS[self.preset]

    @property
    def encoder_choice(self) -> tuple[str, str, str | None, str]:
        """What decides which encoder a sketch loads: sketches alike in it share one, and a batch."""
        return (self.encoder, self.device, self.weights, self.recipe.encoder)

    def to_dict(self) -> dict:
        return asdict(self)


def drawn_paths(name: str, text: str | None) -> tuple[DrawnPath, ...]:
    """The paths of a --keep, --refine or --subject SVG (none when not given); InputError naming the option."""
    if text is None:
        return ()
    if len(text.encode("utf-8", "surrogatepass")) > MAX_DRAWN_SVG_BYTES:
        raise InputError(f"{name}: the SVG is over {MAX_DRAWN_SVG_BYTES / 1e6:g} MB; at most that is allowed")
    try:
        paths = read_paths(text)
    except InputError as exc:
        raise InputError(f"{name}: {exc}") from None
    if len(paths) > MAX_DRAWN_PATHS:
        raise InputError(f"{name}: has {len(paths)} paths; at most {MAX_DRAWN_PATHS} are allowed")
    return paths


def parse_levels(text: str) -> tuple[int, ...]:
    """`32,16,8,4` (or `32 16 8 4`) as a tuple of ints; InputError for anything else. Spaces separate too:
    they were dropped, so `8 4` asked for one level of 84 strokes."""
    try:
        return tuple(int(v) for v in re.split(r"[\s,]+", text.strip()))
    except ValueError:
        shown = text if len(text) <= 60 else text[:60] + "..."  # a field may be 2 MB: the message stays a line
        raise InputError(f"levels must be stroke counts separated by commas, like 32,16,8,4; got {shown!r}") from None


def check_levels(levels: tuple[int, ...] | list[int] | None) -> tuple[int, ...] | None:
    """The levels, finest first; InputError for a count outside 1..MAX_STROKES, a repeat, or too many."""
    if levels is None:
        return None
    levels = tuple(levels)
    if not 1 <= len(levels) <= MAX_LEVELS:
        raise InputError(f"levels: give 1 to {MAX_LEVELS} stroke counts, got {len(levels)}")
    for n in levels:
        check_range("levels: each level", n, 1, MAX_STROKES)
    if len(set(levels)) != len(levels):
        raise InputError(f"levels: each stroke count may appear once, got {','.join(map(str, levels))}")
    return tuple(sorted(levels, reverse=True))


def shape_warnings(width: int, height: int) -> list[str]:
    """A line when a photo is too long and narrow for the square canvas (MAX_ASPECT), and one when it is so
    small that the canvas enlarges it over eight times (its long side under an eighth of CANVAS); else none."""
    warnings = []
    if max(width, height) < CANVAS / 8:
        warnings.append(f"the photo is only {width}x{height} pixels: the encoder sees it enlarged to {CANVAS} "
                        "pixels, so expect little detail; a larger photo gives a finer sketch")
    ratio = max(width, height) / min(width, height)
    if ratio <= MAX_ASPECT:
        return warnings
    long, short = ("wide", "tall") if width > height else ("tall", "wide")
    return warnings + [
        f"the photo is {ratio:.1f} times as {long} as it is {short}: on the square canvas the encoder sees it "
        f"is {max(1, round(CANVAS / ratio))} of {CANVAS} pixels {short}, and the strokes are as wide as for "
        "its long side; crop it nearer to a square for a finer sketch"]


def image_stroke_width(options: SketchOptions, width: int, height: int) -> float:
    """Stroke width in the image's pixels: the asked one; else, beside the artist's paths (keep, refine),
    the width they are drawn with (their median), so that new and moved strokes look like theirs; else 3 px
    at 224 px scaled to the image. The artist's width is held within MATCHED_WIDTH of that default: a
    hairline the encoder barely sees would leave the loss nothing to pull on."""
    if options.stroke_width is not None:
        return float(options.stroke_width)
    default = CANVAS_STROKE_WIDTH / min(Letterbox(width, height, CANVAS).scale)
    drawn = [p.drawn_width for name in ("keep", "refine") for p in options.paths_on_photo(name, width, height)[1]]
    if not drawn:
        return default
    low, high = MATCHED_WIDTH
    return float(np.clip(np.median(drawn), low * default, high * default))


@dataclass
class SketchResult:
    """A finished (or cancelled) sketch: strokes in the photo's own pixels, and how they were made."""

    strokes: np.ndarray  #: (N, 4, 2) control points in the input image's pixel coordinates
    width: int
    height: int
    stroke_width: float  #: in the input image's pixels
    loss: float
    encoder: str  #: the encoder that ran, e.g. "lite0" or "clip:RN101"
    encoder_reason: str  #: why that encoder (auto's choice, in one line)
    options: SketchOptions
    iterations: int  #: iterations run, over all seeds
    best_seed: int
    cancelled: bool = False
    timings: dict[str, float] = field(default_factory=dict)  #: seconds
    #: An abstraction ladder: each level's stroke count and its strokes (image pixels), finest first.
    levels: dict[int, np.ndarray] | None = None
    #: Iterations of the run kept (`iterations` counts those of every seed and raced start too).
    best_iterations: int = 0

    @property
    def kept(self) -> tuple[DrawnPath, ...]:
        """The artist's paths that stayed as drawn (written first)."""
        return self.options.drawn_on_photo(self.width, self.height)[0]

    @property
    def svg(self) -> str:
        return strokes_to_svg(self.strokes, self.width, self.height, self.stroke_width, self.metadata(),
                              kept=self.kept, levels=self.levels)

    def summary(self) -> dict:
        """One-line JSON summary for `clipasso sketch --json` and the benchmarks."""
        return {
            **self.metadata(),
            "width": self.width,
            "height": self.height,
            "stroke_width": round(self.stroke_width, 4),
            "encoder_reason": self.encoder_reason,
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
        }

    def metadata(self) -> dict:
        """Settings and provenance, for the SVG's <metadata> and JSON summaries."""
        return {
            "generator": "clipasso-inkscape",
            "encoder": self.encoder,
            "strokes": int(self.strokes.shape[0]),
            # As the command line says them: the kept run's iterations, and the steps of every run (the raced
            # starts and the seeds it won over); "iterations" was the second, beside options' iterations.
            "iterations": self.best_iterations,
            "steps": self.iterations,
            "best_seed": self.best_seed,
            "loss": round(float(self.loss), 6) if np.isfinite(self.loss) else None,
            "cancelled": self.cancelled,
            # The artist's SVG files stay out: the document holds their paths already.
            "options": {k: v for k, v in self.options.to_dict().items() if k not in ("keep", "refine", "subject")},
            "kept": len(self.kept),
            "levels": None if self.levels is None else list(self.levels),
        }
