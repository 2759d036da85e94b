"""Shared by the extension tests: Inkscape's own inkex on sys.path, Inkscape itself, documents.

The extension runs in Inkscape's Python with the inkex that Inkscape ships, so the tests import that
same inkex (from Inkscape's system data folder) rather than a PyPI copy. Where Inkscape is missing the
tests skip, except under CI=true, where .ci/run installs it and a skip would hide a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXTENSION_DIR = ROOT / "inkscape_extension"
DATA = ROOT / "tests" / "data" / "extension"
IN_CI = os.environ.get("CI", "").lower() == "true"
INKSCAPE = shutil.which("inkscape")
#: The Python Inkscape runs extensions with on Linux: the system's python3, not this virtual environment's.
INKSCAPE_PYTHON = shutil.which("python3", path=os.defpath)
XVFB_RUN = shutil.which("xvfb-run")
#: A job that takes seconds on a CPU: the built-in encoder, few strokes, one iteration.
FAST = ["--encoder=lite0", "--strokes=4", "--iterations=1"]


def missing(what: str) -> None:
    """Skip, or fail under CI=true."""
    if IN_CI:
        pytest.fail(f"{what}, and CI=true: .ci/run should have installed it", pytrace=False)
    pytest.skip(what, allow_module_level=True)


def inkex_dir() -> Path | None:
    """The folder of Inkscape's bundled extensions (and inkex), as the installed Inkscape reports it."""
    candidates = []
    if INKSCAPE:
        try:
            out = subprocess.run([INKSCAPE, "--system-data-directory"], capture_output=True, text=True, timeout=60)
            candidates.append(Path(out.stdout.strip()) / "extensions")
        except (OSError, subprocess.SubprocessError):
            pass
    candidates.append(Path("/usr/share/inkscape/extensions"))
    return next((c for c in candidates if (c / "inkex" / "__init__.py").is_file()), None)


def import_extension(with_inkex: bool = True) -> None:
    """Make `import clipasso_sketch` (and its helpers) work; `with_inkex`: also Inkscape's inkex, or skip the
    module (fail under CI) where it is missing."""
    folders = [str(EXTENSION_DIR)]
    if with_inkex:
        folder = inkex_dir()
        if folder is None:
            missing("Inkscape's inkex is not installed")
        folders.append(str(folder))
    for path in folders:
        if path not in sys.path:
            sys.path.insert(0, path)


def extension_env(**extra: str) -> dict[str, str]:
    """The environment Inkscape gives the extension: inkex importable, our settings added."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(inkex_dir() or ""), env.get("PYTHONPATH", "")) if p)
    return env


def stroke_shapes(data: bytes) -> bytes:
    """Comparison filter: a stroke's coordinates come from the optimisation and vary with the machine's
    arithmetic; what a reference can pin down is that each is one cubic Bezier."""
    number = rb"-?[0-9.]+"
    point = number + b"," + number
    return re.sub(rb'd="M ' + point + rb" C " + point + b" " + point + b" " + point + b'"', b'd="M x,y C x,y x,y x,y"', data)


def stop_backend(pid_file: Path) -> None:
    """Stop the backend the extension started (not our child: signal it and wait until it is gone)."""
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.2)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
