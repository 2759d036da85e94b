"""The real `clipasso serve` as a subprocess on a free 127.0.0.1 port, for the tests that talk to it."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import httpx

#: The `clipasso serve` command (the console script runs the same `cli.main`).
SERVE = [sys.executable, "-m", "clipasso", "serve"]
#: How long a server may take to answer /health after it was started (imports torch, loads lite0).
SERVER_START_SECONDS = 90.0


def wait_for(condition: Callable[[], object], what: str, seconds: float = 120.0) -> object:
    """Poll `condition` until it returns something true; bounded, and says what it waited for."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what} ({seconds:.0f} s)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A `clipasso serve` subprocess on a free loopback port; output goes to `output.log` beside the data."""

    def __init__(self, data_dir: Path, *args: str, token: str | None = None, port: int | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()  # a given one: a restart where clients (the live page) expect it
        self.url = f"http://127.0.0.1:{self.port}"
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.output = self.data_dir.parent / f"{self.data_dir.name}-output-{self.port}.log"
        cmd = [*SERVE, "--port", str(self.port), "--data-dir", str(self.data_dir), "--preload", "lite0", *args]
        if token:
            cmd += ["--token", token]
        with open(self.output, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + SERVER_START_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output.read_text()}")
            try:
                if httpx.get(f"{self.url}/health", headers=self.headers, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop(signal.SIGKILL)
        raise RuntimeError(f"server did not answer /health in {SERVER_START_SECONDS} s:\n{self.output.read_text()}")

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=60, **kwargs)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Stop the server (SIGTERM: clean shutdown; SIGKILL: a crash); its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
