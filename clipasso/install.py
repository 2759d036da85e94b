"""`clipasso install-inkscape`: put the extension into Inkscape, tied to this installation's backend.

The extension files go into a `clipasso` folder inside Inkscape's user extensions folder (Inkscape finds
.inx files in sub-folders), so installing again after an upgrade replaces them (and removes those a
release no longer has), and `--remove` takes the folder away. Next to them, `clipasso_backend.json`
records how to start this installation's backend and its version, for the extension to start it when it
does not answer (Inkscape's own Python has no torch and cannot run it) and to tell an upgraded backend.
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

#: The extension's source files: inside the package where it was installed from a wheel (pyproject.toml maps
#: the folder there), else the source checkout's folder beside the package (a checkout, an editable install).
_PACKAGED = Path(__file__).resolve().parent / "extension"
SOURCE_DIR = _PACKAGED if _PACKAGED.is_dir() else Path(__file__).resolve().parent.parent / "inkscape_extension"
FOLDER = "clipasso"
CONFIG = "clipasso_backend.json"
#: Where the extension writes the pid of a backend it started (clipasso_client).
PID = "clipasso_backend.pid"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="Inkscape's extensions folder (default: the user extensions folder that Inkscape reports, or the "
        "platform's usual one)",
    )
    parser.add_argument("--remove", action="store_true",
                        help="remove the extension from Inkscape (before `pip uninstall`); jobs stay in the "
                             "backend's data folder")


def run(args: argparse.Namespace) -> int:
    """Copy the extension and write its backend config (or with --remove take them away); print where,
    and what to do next."""
    extensions = (args.dir or user_extensions_dir()).expanduser()
    target = extensions / FOLDER
    if args.remove:
        return remove(target)
    sources = extension_files()
    try:
        target.mkdir(parents=True, exist_ok=True)
        for source in sources:
            write_atomic(target / source.name, source.read_bytes())
            shutil.copymode(source, target / source.name)  # temp files are private; these need not be
        shipped = {source.name for source in sources}
        for old in target.iterdir():  # a file an earlier release had: an old .inx would stay in the menu
            if old.suffix in SHIPPED_SUFFIXES and old.name not in shipped:
                old.unlink()
        write_atomic(target / CONFIG, json.dumps(backend_config(), indent=2) + "\n")
        os.chmod(target / CONFIG, 0o644)
    except OSError as exc:
        raise InputError(f"cannot write to {target}: {exc.strerror or exc}") from None
    print(f"Installed the CLIPasso extension in {target}")
    print("Restart Inkscape, select a photo and choose Extensions > CLIPasso > Line sketch...")
    return 0


def remove(target: Path) -> int:
    """Take the extension's folder (its files, backend config, log and pid file) out of Inkscape."""
    from .server.command import default_data_dir  # the serve command's module, only here

    if not (target / CONFIG).exists() and not any(target.glob("*.inx")):
        print(f"There is no CLIPasso extension in {target}: nothing to remove")
        return 0
    try:  # a backend the extension started may still run: its pid goes with the folder, so say it first
        pid = (target / PID).read_text().strip()
    except OSError:
        pid = ""
    stop = f"taskkill /PID {pid}" if sys.platform == "win32" else f"kill {pid}"
    running = f" (a backend it started may still run as process {pid}: stop it first with `{stop}`)" if pid.isdigit() else ""
    try:
        shutil.rmtree(target)
    except OSError as exc:
        raise InputError(f"cannot remove {target}: {exc.strerror or exc}{running}") from None
    print(f"Removed the CLIPasso extension from {target}; restart Inkscape.")
    if running:
        print(f"A backend the extension started may still run as process {pid}; stop it with `{stop}`.")
    print(f"Jobs, with copies of their photos, stay in {default_data_dir()} (a backend started with --data-dir "
          "keeps them there): remove it too to delete them.")
    return 0


#: The kinds of file the extension is made of (extension_files).
SHIPPED_SUFFIXES = (".inx", ".py", ".ui")


def extension_files() -> list[Path]:
    """The .inx, the Python files Inkscape runs and the window's GTK Builder file."""
    files = [f for suffix in SHIPPED_SUFFIXES for f in sorted(SOURCE_DIR.glob(f"*{suffix}"))]
    if not any(f.suffix == ".inx" for f in files):
        raise InputError(
            f"the extension files are not in {SOURCE_DIR}; install clipasso again (pip install from its source folder or its wheel)"
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
