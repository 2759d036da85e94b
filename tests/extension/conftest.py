"""Fixtures of the extension tests: a real backend for the extension to talk to."""

from __future__ import annotations

from typing import Callable, Iterator

import pytest


@pytest.fixture(scope="module")
def backend(server_factory: Callable, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """A real `clipasso serve` on 127.0.0.1, offline (so `auto` is lite0 and CLIP jobs fail fast)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CLIPASSO_OFFLINE", "1")
        env.setenv("CLIPASSO_CACHE", str(tmp_path_factory.mktemp("no-weights")))
        server = server_factory()
    yield server
    server.stop()
