"""The wheel a user installs: only the `clipasso` package, with the extension inside it, which
`clipasso install-inkscape` then finds and copies."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]
EXTENSION = ROOT / "inkscape_extension"


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_folder_is_listed() -> None:
    """pyproject.toml lists the packages (to map the extension's folder into the package): a new subpackage
    left out of the list would be missing from the wheel."""
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    folders = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "clipasso").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert folders <= listed, f"not in pyproject.toml's packages: {sorted(folders - listed)}"


def test_the_wheel_holds_only_clipasso_and_installs_the_extension(tmp_path: Path) -> None:
    # Built from a copy of what the wheel is made of: a build in the checkout would leave its build/ folder
    # there, whose stale files a later build takes in.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in"):
        shutil.copy2(ROOT / name, source / name)
    for folder in ("clipasso", "inkscape_extension"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"clipasso"}
    shipped = sorted(p.name for p in EXTENSION.iterdir() if p.suffix in (".inx", ".py", ".ui"))
    assert sorted(n.split("/")[-1] for n in names if n.startswith("clipasso/extension/")) == shipped
    assert "clipasso/server/static/index.html" in names

    site = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                                str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr
    env = {**os.environ, "PYTHONPATH": str(site)}  # the wheel's clipasso before the checkout's editable one
    folder = tmp_path / "extensions"
    done = subprocess.run([sys.executable, "-c", "import clipasso, sys; print(clipasso.__file__); "
                           "from clipasso.cli import main; sys.exit(main(sys.argv[1:]))",
                           "install-inkscape", "--dir", str(folder)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith(str(site))
    copied = folder / "clipasso"
    for name in shipped:
        assert (copied / name).read_bytes() == (EXTENSION / name).read_bytes()
    assert json.loads((copied / "clipasso_backend.json").read_text())["command"][1:] == ["-m", "clipasso", "serve"]
