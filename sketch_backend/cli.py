"""The `clipasso` command: `sketch`, `serve` and `install-inkscape`.

Each subcommand's module adds its own arguments and runs it; this module only dispatches and turns user
errors into one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .errors import InputError


def build_parser() -> argparse.ArgumentParser:
    from . import install, service
    from . import sketch_cli

    parser = argparse.ArgumentParser(prog="clipasso", description="CLIPasso line sketches from photos.")
    parser.add_argument("--version", action="version", version=f"clipasso {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module, text in (
        ("sketch", sketch_cli, "sketch a photo into an SVG of strokes"),
        ("serve", service, "run the HTTP backend that the Inkscape extension talks to"),
        ("install-inkscape", install, "install the extension into Inkscape"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except InputError as exc:
        print(f"clipasso: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("clipasso: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
