"""Load on `clipasso serve`: is the HTTP side still quick while the worker is busy?

Starts a real server on a free loopback port, queues `--jobs` sketch jobs (lite0, few iterations), and
runs `--clients` concurrent clients until every job has finished: a quarter follow a job's server-sent
events, the rest poll `GET /jobs/{id}` every `--poll` seconds. Prints one JSON object: p50/p99/max
latency of `GET /jobs/{id}` while a job was running, event counts, the final state of every job and
whether each result is on disk and served.

First, on the same server, the memory figure: the server's resident memory when idle (lite0 loaded), and
its peak (VmHWM) after ten worst-case uploads were sent at once (100 MP PNGs of a few hundred KB each).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _photo() -> bytes:
    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.chelsea()).reduce(2).save(buffer, "PNG")
    return buffer.getvalue()


def _memory_mb(pid: int, field: str) -> float:
    """VmRSS (now) or VmHWM (peak so far) of a process, in MB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(float(line.split()[1]) * 1024 / 1e6, 1)
    raise RuntimeError(f"no {field} for process {pid}")


def _decode_memory(url: str, pid: int, fields: dict) -> dict:
    """Ten worst-case uploads at once: the server's idle memory and its peak while it decodes them."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from images_support import huge_png

    worst = huge_png(10_000, 10_000, "RGB")
    idle = _memory_mb(pid, "VmRSS")

    def send(_: int) -> int:
        with httpx.Client(base_url=url, timeout=300) as client:
            return client.post("/jobs", files={"image": ("huge.png", worst, "image/png")}, data=fields).status_code

    t0 = time.perf_counter()
    with ThreadPoolExecutor(10) as pool:
        statuses = list(pool.map(send, range(10)))
    return {"uploads": 10, "upload_kb": round(len(worst) / 1024), "megapixels": 100, "statuses": statuses,
            "idle_rss_mb": idle, "peak_rss_mb": _memory_mb(pid, "VmHWM"),
            "all_accepted_s": round(time.perf_counter() - t0, 1)}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


class Load:
    def __init__(self, url: str, ids: list[str], poll: float) -> None:
        self.url, self.ids, self.poll = url, ids, poll
        self.states: dict[str, str] = {i: "queued" for i in ids}
        self.latencies_ms: list[float] = []
        self.events = 0
        self.errors: list[str] = []

    @property
    def busy(self) -> bool:
        return any(s in ("queued", "running") for s in self.states.values())

    async def poller(self, client: httpx.AsyncClient, seed: int) -> None:
        rng = random.Random(seed)
        while self.busy:
            job_id = rng.choice(self.ids)
            start = time.perf_counter()
            response = await client.get(f"/jobs/{job_id}")
            elapsed = (time.perf_counter() - start) * 1000
            if response.status_code != 200:
                self.errors.append(f"GET /jobs/{job_id}: {response.status_code}")
                continue
            state = response.json()["state"]
            self.states[job_id] = state
            if any(s == "running" for s in self.states.values()):
                self.latencies_ms.append(elapsed)
            await asyncio.sleep(self.poll)

    async def follower(self, client: httpx.AsyncClient, seed: int) -> None:
        rng = random.Random(seed)
        while self.busy:
            waiting = [i for i, s in self.states.items() if s in ("queued", "running")]
            if not waiting:
                break
            job_id = rng.choice(waiting[:5])  # the jobs about to run or running: events keep coming
            async with client.stream("GET", f"/jobs/{job_id}/events") as response:
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        self.events += 1
                        self.states[job_id] = json.loads(line[5:])["state"]


async def _run_load(url: str, ids: list[str], clients: int, poll: float) -> Load:
    load = Load(url, ids, poll)
    limits = httpx.Limits(max_connections=clients + 5)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        followers = max(1, clients // 4)
        tasks = [load.follower(client, k) for k in range(followers)]
        tasks += [load.poller(client, 1000 + k) for k in range(clients - followers)]
        await asyncio.gather(*tasks)
    return load


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--strokes", type=int, default=8)
    parser.add_argument("--poll", type=float, default=0.2, help="seconds between one client's status polls")
    parser.add_argument("--threads", type=int, default=None, help="the server's --threads (default: its default)")
    parser.add_argument("--memory-only", action="store_true", help="only the memory figure, no load test")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="clipasso-bench-") as tmp:
        data = Path(tmp) / "data"
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "clipasso", "serve", "--port", str(port), "--data-dir", str(data),
               "--preload", "lite0", "--max-queue", str(max(100, args.jobs))]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        with open(Path(tmp) / "server.log", "wb") as out:
            server = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(url + "/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"server did not start:\n{(Path(tmp) / 'server.log').read_text()}")
                time.sleep(0.2)

            photo = _photo()
            fields = {"encoder": "lite0", "iterations": str(args.iterations), "strokes": str(args.strokes)}
            memory = _decode_memory(url, server.pid, fields)
            if args.memory_only:
                print(json.dumps({"benchmark": "serve-memory", "cpus": os.cpu_count(), "memory": memory}))
                return 0
            t0 = time.perf_counter()
            submit_ms, ids = [], []
            with httpx.Client(base_url=url, timeout=60) as client:
                for _ in range(args.jobs):
                    start = time.perf_counter()
                    response = client.post("/jobs", files={"image": ("cat.png", photo, "image/png")}, data=fields)
                    submit_ms.append((time.perf_counter() - start) * 1000)
                    response.raise_for_status()
                    ids.append(response.json()["id"])
            load = asyncio.run(_run_load(url, ids, args.clients, args.poll))
            wall = time.perf_counter() - t0

            finals, on_disk, served = {}, 0, 0
            with httpx.Client(base_url=url, timeout=60) as client:
                for job_id in ids:
                    state = client.get(f"/jobs/{job_id}").json()["state"]
                    finals[state] = finals.get(state, 0) + 1
                    path = data / "jobs" / job_id / "result.svg"
                    if path.is_file():
                        on_disk += 1
                        served += client.get(f"/jobs/{job_id}/result.svg").content == path.read_bytes()
            runs = []
            for job_id in ids:
                record = json.loads((data / "jobs" / job_id / "job.json").read_text())
                if record["started"] and record["finished"]:
                    runs.append(record["finished"] - record["started"])
        finally:
            server.terminate()
            server.wait(60)

    lat = load.latencies_ms
    print(json.dumps({
        "benchmark": "serve",
        "cpus": os.cpu_count(),
        "engine_threads": args.threads or "server default (cores - 1)",
        "jobs": args.jobs,
        "clients": args.clients,
        "poll_s": args.poll,
        "iterations": args.iterations,
        "strokes": args.strokes,
        "get_job_while_busy": {
            "requests": len(lat),
            "p50_ms": round(statistics.median(lat), 2) if lat else None,
            "p99_ms": round(_percentile(lat, 99), 2) if lat else None,
            "max_ms": round(max(lat), 2) if lat else None,
        },
        "submit_p50_ms": round(statistics.median(submit_ms), 2),
        "events_received": load.events,
        "http_errors": load.errors[:5],
        "final_states": finals,
        "results_on_disk": on_disk,
        "results_served_equal_disk": served,
        "all_final_with_result": finals.get("succeeded", 0) == args.jobs == on_disk == served,
        "job_run_s_median": round(statistics.median(runs), 2) if runs else None,
        "wall_s": round(wall, 1),
        "memory": memory,
    }))
    return 0 if finals.get("succeeded", 0) == args.jobs == on_disk == served else 1


if __name__ == "__main__":
    sys.exit(main())
