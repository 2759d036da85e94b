"""`clipasso models`: which encoders are ready here, and fetching CLIP weights before going offline."""

from __future__ import annotations

import argparse
import json
import sys

from .options import CLIP_ARCHS

DOWNLOADABLE = tuple(f"clip:{a}" for a in CLIP_ARCHS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the list as JSON")
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    download = sub.add_parser("download", help="fetch an encoder's weights into the cache (with a progress bar)",
                              description="Fetch CLIP weights now, e.g. before taking the machine offline.")
    download.add_argument("encoder", choices=DOWNLOADABLE, metavar="ENCODER", help=f"one of {', '.join(DOWNLOADABLE)}")


def run(args: argparse.Namespace) -> int:
    # Here, not at the top: the encoders import PyTorch, which `clipasso --help` should not pay for.
    from .encoders.weights import readiness, resolve_clip_weights

    if args.action == "download":
        arch = args.encoder.split(":", 1)[1]
        path = resolve_clip_weights(arch)
        print(f"clipasso: {args.encoder} is ready: {path}", file=sys.stderr)
        return 0
    states = readiness()
    if args.json:
        print(json.dumps([s.to_dict() for s in states]))
        return 0
    for s in states:
        size = f" ({s.size / 1e6:.0f} MB)" if s.size else ""
        print(f"{s.name:<14} {s.state:<13} {s.detail}{size}")
    if not any(s.state == "cached" for s in states):
        print("\n`clipasso models download clip:RN101` fetches the paper's encoder.")
    return 0

