"""`clipasso install-inkscape`: put the extension into Inkscape, tied to this installation's backend.

The extension files go into a `clipasso` folder inside Inkscape's user extensions folder (Inkscape finds
.inx files in sub-folders), so an upgrade replaces them and removing that folder uninstalls. Next to
them, `clipasso_backend.json` records how to start this installation's backend, for the extension to
start it when it does not answer (Inkscape's own Python has no torch and cannot run it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from . import __version__
from .errors import InputError
from .files import write_atomic

#: The extension's source files, next to this package (a source checkout or an editable install).
SOURCE_DIR = Path(__file__).resolve().parent.parent / "inkscape_extension"
FOLDER = "clipasso"
CONFIG = "clipasso_backend.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="Inkscape's extensions folder (default: the user extensions folder that Inkscape reports, or the "
        "platform's usual one)",
    )


def run(args: argparse.Namespace) -> int:
    """Copy the extension and write its backend config; print where, and what to do next."""
    extensions = (args.dir or user_extensions_dir()).expanduser()
    target = extensions / FOLDER
    sources = extension_files()
    try:
        target.mkdir(parents=True, exist_ok=True)
        for source in sources:
            write_atomic(target / source.name, source.read_bytes())
            shutil.copymode(source, target / source.name)  # temp files are private; these need not be
        write_atomic(target / CONFIG, json.dumps(backend_config(), indent=2) + "\n")
        os.chmod(target / CONFIG, 0o644)
    except OSError as exc:
        raise InputError(f"cannot write to {target}: {exc.strerror or exc}") from None
    print(f"Installed the CLIPasso extension in {target}")
    print("Restart Inkscape, select a photo and choose Extensions > CLIPasso > Line sketch...")
    return 0


def extension_files() -> list[Path]:
    """The .inx, the Python files Inkscape runs and the window's GTK Builder file."""
    files = sorted(SOURCE_DIR.glob("*.inx")) + sorted(SOURCE_DIR.glob("*.py")) + sorted(SOURCE_DIR.glob("*.ui"))
    if not any(f.suffix == ".inx" for f in files):
        raise InputError(
            f"the extension files are not in {SOURCE_DIR}; install clipasso from its source folder (pip install -e .)"
        )
    return files


def backend_config() -> dict:
    """How the extension starts this installation's backend; it appends --host and --port itself."""
    return {
        "command": [sys.executable, "-m", "clipasso", "serve"],
        "version": __version__,
    }


def user_extensions_dir() -> Path:
    """Inkscape's user extensions folder: $INKSCAPE_PROFILE_DIR, then what Inkscape itself reports, then the
    platform's default."""
    profile = os.environ.get("INKSCAPE_PROFILE_DIR")
    if profile:
        return Path(profile) / "extensions"
    reported = _ask_inkscape()
    if reported is not None:
        return reported / "extensions"
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming") / "inkscape" / "extensions"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "org.inkscape.Inkscape" / "config" / "inkscape" / "extensions"
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "inkscape" / "extensions"


def _ask_inkscape() -> Path | None:
    """`inkscape --user-data-directory` (Inkscape 1.0 and later), when an Inkscape can be found."""
    candidates = [shutil.which("inkscape")]
    if sys.platform == "darwin":
        candidates.append("/Applications/Inkscape.app/Contents/MacOS/inkscape")
    elif sys.platform == "win32":
        candidates.append(os.path.join(os.environ.get("ProgramFiles", r"C:\Program Files"), "Inkscape", "bin", "inkscape.exe"))
    for exe in candidates:
        if not exe or not os.path.isfile(exe):
            continue
        try:
            done = subprocess.run([exe, "--user-data-directory"], capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            continue
        try:  # Inkscape prints GLib's UTF-8 on every platform (not the Windows code page)
            lines = done.stdout.decode("utf-8").strip().splitlines()
        except UnicodeDecodeError:
            continue
        if done.returncode == 0 and lines and os.path.isabs(lines[-1].strip()):
            return Path(lines[-1].strip())
    return None
