"""Shared fixtures. Server fixtures (prefix `server_`) start the real `clipasso serve` on 127.0.0.1."""

from __future__ import annotations

import importlib
import io
import os
import shutil
import signal
import sys
import tempfile
from types import ModuleType
from pathlib import Path
from typing import Callable, Iterator

import pytest
from servers import ServerProcess

_CACHES = Path(tempfile.mkdtemp(prefix="clipasso-tests-"))


def pytest_configure(config: pytest.Config) -> None:
    """No test reads or writes the user's caches, and none reaches the real hub: HF_ENDPOINT is a closed
    port on 127.0.0.1 unless a test points it at its own stand-in. Set before huggingface_hub is imported."""
    os.environ["HF_HOME"] = str(_CACHES / "hf")
    os.environ["CLIPASSO_CACHE"] = str(_CACHES / "clipasso")
    os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_CACHES, ignore_errors=True)


@pytest.fixture(scope="session")
def server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ServerProcess]]:
    """start(data_dir=None, *args, token=None, port=None): a running server; every one is stopped at the end."""
    started: list[ServerProcess] = []

    def start(data_dir: Path | None = None, *args: str, token: str | None = None,
              port: int | None = None) -> ServerProcess:
        server = ServerProcess(data_dir or tmp_path_factory.mktemp("serve") / "data", *args, token=token, port=port)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop(signal.SIGKILL)


@pytest.fixture(scope="session")
def server_photo_png() -> bytes:
    """A real photo (skimage's cat, halved) as PNG bytes: small to send, quick to decode."""
    from PIL import Image
    from skimage import data

    image = Image.fromarray(data.chelsea()).reduce(2)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()



@pytest.fixture(scope="session")
def pydiffvg() -> ModuleType:
    """The real pydiffvg. Its tests skip where it is not installed, but fail under CI when .ci/run built it
    (CLIPASSO_EXPECT_DIFFVG=1): there a skip would hide a broken build."""
    try:
        return importlib.import_module("pydiffvg")
    except ImportError as exc:
        if os.environ.get("CI") == "true" and os.environ.get("CLIPASSO_EXPECT_DIFFVG") == "1":
            pytest.fail(f".ci/run built diffvg, but pydiffvg does not import: {exc}")
        pytest.skip("pydiffvg is not installed (../shared/diffvg/build.sh PYTHON builds it)")


@pytest.fixture
def without_pydiffvg(monkeypatch: pytest.MonkeyPatch) -> None:
    """This test runs as if pydiffvg were not installed: None in sys.modules is Python's import block."""
    for name in ("pydiffvg", "diffvg"):
        monkeypatch.setitem(sys.modules, name, None)
