"""The `clipasso` command: `sketch`, `serve` and `install-inkscape`.

Each subcommand's module adds its own arguments and runs it; this module only dispatches and turns user
errors into one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, NoReturn

from tqdm import tqdm

from . import __version__, install, models
from .errors import InputError
from .files import check_writable, write_atomic
from .images import load_photo
from .options import ENCODER_NAMES, FOCUSES, PRESETS, RENDERERS, SketchOptions, check_weights, parse_levels
from .server import command


#: The input name that reads the photo from standard input, and how much of it is read at most (held in
#: memory: a file's name has no such bound).
STDIN = "-"
MAX_STDIN_BYTES = 256_000_000
#: Stopping signals the sketch command handles alike: it stops after the current step and writes the best
#: strokes so far (SIGHUP, a closed terminal, is not on Windows).
STOPPING_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the full usage stays in --help)."""

    def error(self, message: str) -> "NoReturn":
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="clipasso", description="CLIPasso line sketches from photos.")
    parser.add_argument("--version", action="version", version=f"clipasso {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module, text in (
        ("sketch", sys.modules[__name__], "sketch a photo into an SVG of strokes"),
        ("serve", command, "run the HTTP backend that the Inkscape extension talks to"),
        ("models", models, "list the encoders and whether each is ready; download CLIP weights"),
        ("install-inkscape", install, "install the extension into Inkscape"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    return parser


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `clipasso sketch`."""
    p.add_argument("input", help="the photo (PNG, JPEG, WebP, TIFF, GIF, BMP ...), or - to read it from standard input")
    p.add_argument("-o", "--output", required=True, help="the SVG to write")
    p.add_argument("--strokes", type=int, help="number of new strokes, 1..512 (default 16; with --refine, "
                   "how many to add to its strokes: default 0)")
    p.add_argument("--iterations", type=int, help="optimisation steps per seed (default: the preset's)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--seeds", type=int, help="independent runs, the best kept (default: the preset's)")
    p.add_argument("--encoder", default="auto", choices=ENCODER_NAMES, metavar="ENCODER",
                   help=f"one of {', '.join(ENCODER_NAMES)} (default auto: CLIP when its weights can be had, "
                   "else the built-in lite0)")
    p.add_argument("--weights", help="a CLIP checkpoint file to use instead of the cache or a download")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--preset", default="default", choices=tuple(PRESETS), help="default (fast) or paper")
    p.add_argument("--stroke-width", type=float, help="stroke width in the photo's pixels "
                   "(default: the median width of the --keep or --refine paths, within half to twice 3 px per 224 px of the "
                   "photo's longest side; without them, that)")
    p.add_argument("--renderer", default="auto", choices=RENDERERS,
                   help="the rasterizer: auto or torch (ours, the default: fastest, installs with pip), or "
                   "diffvg (the reference's, where pydiffvg is installed)")
    p.add_argument("--focus", default="auto", choices=FOCUSES,
                   help="auto (default): strokes on the subject, found from the photo's transparency or else "
                   "a segmentation; none: wherever the encoder looks, background included")
    p.add_argument("--keep", metavar="SVG", help="an SVG of your own paths in the photo's pixels: they stay as "
                   "drawn, take part in the sketch, and come first in the output; --strokes new ones complete them")
    p.add_argument("--refine", metavar="SVG", help="an SVG whose paths' first segments are the strokes to start "
                   "from (a previous result, say); they are moved, and --strokes more are added")
    p.add_argument("--subject", metavar="SVG", help="an SVG of closed paths in the photo's pixels drawn around its "
                   "subject: strokes start inside them and the loss weighs them most (instead of the subject found "
                   "from transparency or segmentation)")
    p.add_argument("--levels", metavar="N,N,...", help="an abstraction ladder, e.g. 32,16,8,4: "
                   "one group per level, each coarser level a subset of the finer one, settled again")
    p.add_argument("--preview", help="also write a PNG of the strokes")
    p.add_argument("--quiet", action="store_true", help="no progress bar or messages")
    p.add_argument("--json", action="store_true", help="print a one-line JSON summary on stdout")


def run(args: argparse.Namespace) -> int:
    """`clipasso sketch`: check every argument before the slow part, write outputs atomically."""
    # Here, not at the top: PyTorch takes seconds to import, which `clipasso --help` should not pay.
    from .engine import preview_image, sketch

    outputs = [Path(args.output)] + ([Path(args.preview)] if args.preview else [])
    inputs = {"the input photo": args.input, "the --keep file": args.keep, "the --refine file": args.refine,
              "the --subject file": args.subject}
    for out in outputs:
        if not out.parent.is_dir():
            raise InputError(f"{out}: the folder {out.parent} does not exist")
        if out.is_dir():
            raise InputError(f"{out}: is a folder, not a file name")
        for what, given in inputs.items():
            if given not in (None, STDIN) and _same_file(out, Path(given)):
                raise InputError(f"{out}: that is {what}; choose another output name")
    if args.preview and _same_file(*outputs):
        raise InputError(f"{args.preview}: the preview and the SVG cannot be the same file")
    if Path(args.output).suffix.lower() != ".svg":
        raise InputError(f"{args.output}: the output must be an .svg file")
    if args.preview and Path(args.preview).suffix.lower() != ".png":
        raise InputError(f"{args.preview}: the preview must be a .png file")
    for folder in {Path(os.path.realpath(out)).parent for out in outputs}:  # where a link's file is written
        _check_writable(folder)
    check_weights(args.weights, args.encoder)
    files = {"keep": args.keep, "refine": args.refine, "subject": args.subject}
    keep, refine, subject = (_read_svg(f"--{name}", given) for name, given in files.items())
    strokes = args.strokes if args.strokes is not None else (0 if refine else 16)
    with _naming_files(files):
        options = SketchOptions(
            strokes=strokes, keep=keep, refine=refine, levels=parse_levels(args.levels) if args.levels else None,
            iterations=args.iterations, seed=args.seed, seeds=args.seeds,
            encoder=args.encoder, device=args.device, preset=args.preset, weights=args.weights,
            stroke_width=args.stroke_width, renderer=args.renderer, focus=args.focus, subject=subject,
        ).validated()
    photo = load_photo(_read_stdin(), name="standard input") if args.input == STDIN else load_photo(args.input)
    with _naming_files(files):  # (the SVGs are parsed once: read_paths keeps what it read)
        refined = options.drawn_on_photo(photo.width, photo.height)[1]
        warnings = [_naming(warning, files) for warning in options.warnings(photo.width, photo.height)]
    if args.levels and args.strokes is not None and options.new_strokes(len(refined)) != args.strokes:
        warnings.append(f"--strokes {args.strokes} is ignored: the finest level of --levels sets the strokes "
                        f"({options.levels[0]})")
    if args.weights and args.encoder == "lite0":
        warnings.append("--weights is ignored: it is for the CLIP encoders, and lite0 has its weights built in")
    for warning in warnings:
        print(f"clipasso: warning: {warning}", file=sys.stderr)

    stop: dict = {"asked": None, "stepping": False}  # asked: the first stopping signal's number

    bar = None
    if not args.quiet and sys.stderr.isatty():
        bar = tqdm(total=1, unit="it", file=sys.stderr, dynamic_ncols=True, leave=False)

    def say(line: str) -> None:
        """A line on stderr, above the progress bar rather than into it."""
        if bar is not None:
            bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def on_signal(signum: int, frame: object) -> None:
        """Ctrl-C, SIGTERM (`timeout`, a service manager) or SIGHUP (the terminal closed): stop after this
        step and write the best strokes; before the first step, a second time, or while writing, abort
        (write_atomic then removes its temporary file)."""
        if stop["asked"] is not None or not stop["stepping"]:
            raise Interrupted(signum)
        stop["asked"] = signum
        again = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        say(f"clipasso: stopping after this step ({again} again to abort)")

    def on_activity(text: str) -> None:
        if not args.quiet:
            say(f"clipasso: {text}")

    def on_encoder(name: str, reason: str) -> None:
        if not args.quiet:  # as soon as it is loaded: a CLIP run is long to wait for the news
            say(f"clipasso: {reason}")

    def on_progress(iteration: int, total: int, loss: float, strokes: object) -> None:
        if iteration >= 1 and not stop["stepping"]:  # the first report after a step
            stop["stepping"] = True
            if not args.quiet:
                say("clipasso: sketching; Ctrl-C stops and keeps the best strokes so far")
        if bar is not None:
            bar.total = total
            bar.n = iteration
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            bar.refresh()

    with _handling(STOPPING_SIGNALS, on_signal):
        try:
            result = sketch(photo, options, on_progress=on_progress, should_stop=lambda: stop["asked"] is not None,
                            on_encoder=on_encoder, on_activity=on_activity)
        finally:
            stop["stepping"] = False  # a signal now aborts the writing
            if bar is not None:
                bar.close()
        _write(args.output, result.svg)
        if args.preview:
            buf = io.BytesIO()
            preview_image(result).save(buf, format="PNG")
            _write(args.preview, buf.getvalue(), f" (the SVG is written: {args.output})")
    if not args.quiet:
        state = "cancelled, best so far" if result.cancelled else "done"
        steps = result.best_iterations
        others = "" if result.iterations == steps else f" ({result.iterations} steps with the starts and seeds it won over)"
        print(f"clipasso: {state}: {len(result.strokes)} strokes, {steps} iteration{'' if steps == 1 else 's'}{others}, "
              f"{result.timings['total']:.1f} s -> {args.output}", file=sys.stderr)
    if args.json:
        print(json.dumps({**result.summary(), "output": args.output, "preview": args.preview}))
    return 0 if stop["asked"] is None else 128 + stop["asked"]


class Interrupted(KeyboardInterrupt):
    """A stopping signal that aborts: the command exits with 128 + its number, as a shell reports it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextmanager
def _handling(signums: tuple[int, ...], handler: Callable[[int, object], None]) -> Iterator[None]:
    """`handler` for these signals inside, the previous handlers after. A signal the command was started
    with ignored (`nohup`, a background job of a script) stays ignored."""
    previous = {n: signal.getsignal(n) for n in signums}
    for n, before in previous.items():
        if before is not signal.SIG_IGN:
            signal.signal(n, handler)
    try:
        yield
    finally:
        for n, before in previous.items():
            signal.signal(n, before)


def _naming(message: str, files: dict[str, str | None]) -> str:
    """A message about the `keep` field, as the options word it for the service too, naming the option and
    its file instead: `--keep mine.svg: not an SVG file`."""
    field, sep, rest = message.partition(": ")
    return f"--{field} {files[field]}: {rest}" if sep and files.get(field) else message


@contextmanager
def _naming_files(files: dict[str, str | None]) -> Iterator[None]:
    """InputErrors raised inside, worded by `_naming`."""
    try:
        yield
    except InputError as exc:
        raise InputError(_naming(str(exc), files)) from None


def _read_svg(option: str, name: str | None) -> str | None:
    """The text of an SVG file named on the command line; InputError in one line."""
    if name is None:
        return None
    try:
        return Path(name).read_text("utf-8")
    except FileNotFoundError:
        raise InputError(f"{option} {name}: no such file") from None
    except UnicodeDecodeError:
        raise InputError(f"{option} {name}: not an SVG file (not text)") from None
    except OSError as exc:
        raise InputError(f"{option} {name}: cannot be read ({exc.strerror})") from None


def _read_stdin() -> bytes:
    """The photo piped in (`clipasso sketch - ...`), at most MAX_STDIN_BYTES; InputError in one line."""
    if sys.stdin is None or sys.stdin.isatty():
        raise InputError("- reads the photo from standard input, which is a terminal here: pipe one in "
                         "(clipasso sketch - -o out.svg < photo.jpg)")
    data = sys.stdin.buffer.read(MAX_STDIN_BYTES + 1)
    if len(data) > MAX_STDIN_BYTES:
        raise InputError(f"standard input: over {MAX_STDIN_BYTES / 1e6:.0f} MB; give a file that large by its name")
    return data


def _check_writable(folder: Path) -> None:
    """InputError unless a file can be made in `folder`: found before the sketch, not after it."""
    try:
        check_writable(folder)
    except OSError as exc:
        raise InputError(f"{folder}: cannot write there ({exc.strerror or exc})") from None


def _write(path: str, data: str | bytes, already: str = "") -> None:
    """write_atomic, with a failure (a disk that filled meanwhile) as one line."""
    try:
        write_atomic(path, data)
    except OSError as exc:
        raise InputError(f"{path}: could not be written ({exc.strerror or exc}){already}") from None


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (also through links or another spelling), existing or not."""
    if a.exists() and b.exists():
        return a.samefile(b)
    return a.resolve() == b.resolve()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except InputError as exc:
        print(f"clipasso: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print("clipasso: interrupted", file=sys.stderr)
        return 128 + getattr(exc, "signum", signal.SIGINT)


if __name__ == "__main__":
    sys.exit(main())
