"""`clipasso serve` end to end: a real server on 127.0.0.1, real photos, the lite0 encoder, few iterations."""

from __future__ import annotations

import io
import json
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance
from lxml import etree
from PIL import Image

from clipasso.errors import InputError
from clipasso.options import SketchOptions, available_renderers
from clipasso.server.jobs import JobStore
from clipasso.server.worker import Worker

from servers import SERVE, ServerProcess, free_port

SVG = "{http://www.w3.org/2000/svg}"
QUICK = {"encoder": "lite0", "strokes": "4", "iterations": "3"}
ENDLESS = {"encoder": "lite0", "strokes": "4", "iterations": "10000"}
#: How long a test waits for what must happen (polled, so a quick machine does not wait it out).
WAIT_S = 120.0
TOKEN = "test-token-0123456789abcdef"


def submit(client: httpx.Client, png: bytes, **fields: str) -> dict:
    response = client.post("/jobs", files={"image": ("photo.png", png, "image/png")}, data=fields)
    assert response.status_code == 202, response.text
    return response.json()


def events(client: httpx.Client, job_id: str) -> Iterator[dict]:
    """The job's server-sent events, parsed, until the server ends the stream."""
    with client.stream("GET", f"/jobs/{job_id}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data:"):
                yield json.loads(line[5:])


def follow(client: httpx.Client, job_id: str) -> list[dict]:
    return list(events(client, job_id))


def wait_until_running(client: httpx.Client, job_id: str, iterations: int = 0) -> dict:
    """The first event that shows the job running, past `iterations` (the stream is then dropped)."""
    for event in events(client, job_id):
        assert event["state"] in ("queued", "running"), event
        if event["state"] == "running" and event["iteration"] >= iterations:
            return event
    raise AssertionError("the job ended before it was seen running")


def paths(svg: str | bytes) -> list[etree._Element]:
    root = etree.fromstring(svg.encode() if isinstance(svg, str) else svg)
    assert root.tag == f"{SVG}svg"
    return root.findall(f".//{SVG}path")


def assert_error(response: httpx.Response, status: int, words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert "\n" not in body["error"] and words.lower() in body["error"].lower(), body


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server_main(server_factory) -> ServerProcess:
    return server_factory(None, "--max-queue", "3", "--max-upload-mb", "1")


@pytest.fixture(scope="module")
def server_token(server_factory) -> ServerProcess:
    return server_factory(None, token=TOKEN)


def test_health_and_schema(server_main: ServerProcess) -> None:
    with server_main.client() as client:
        health = client.get("/health").json()
        assert health["status"] == "ok" and health["device"] == "cpu" and health["queue"] == 0
        assert client.head("/health").status_code == 200  # monitors look with HEAD
        assert "lite0" in health["encoders"] and health["version"]
        assert health["renderers"] == available_renderers() and health["renderers"][:2] == ["auto", "torch"]
        schema = client.get("/openapi.json").json()
    assert {"/health", "/jobs", "/jobs/{job_id}", "/jobs/{job_id}/events", "/jobs/{job_id}/result.svg"} <= set(
        schema["paths"]
    )
    # Invalid requests get 400 with one line, never FastAPI's 422: the schema says no other.
    statuses = {code for operations in schema["paths"].values() for op in operations.values() for code in op["responses"]}
    assert "422" not in statuses and "400" in statuses and "HTTPValidationError" not in schema["components"]["schemas"]
    page = httpx.get(server_main.url + "/")
    assert page.status_code == 200 and "/jobs/${encodeURIComponent(id)}/events" in page.text  # (test_page.py drives it)


def test_job_runs_to_result_even_after_client_disconnects(server_main: ServerProcess, server_photo_png: bytes) -> None:
    with server_main.client() as client:
        job = submit(client, server_photo_png, **QUICK)
        assert job["state"] == "queued" and len(job["id"]) >= 22
        # Read one event and hang up: the job must carry on regardless.
        first = next(events(client, job["id"]))
        assert first["id"] == job["id"] and first["state"] in ("queued", "running")
        seen = follow(client, job["id"])
        final = client.get(f"/jobs/{job['id']}").json()
        result = client.get(f"/jobs/{job['id']}/result.svg")
        head = client.head(f"/jobs/{job['id']}/result.svg")  # was 405
        preview = client.get(f"/jobs/{job['id']}/preview.svg")
        listed = client.get("/jobs").json()["jobs"]
    assert head.status_code == 200 and head.content == b"" and head.headers["content-type"].startswith("image/svg+xml")

    assert seen[-1] == final
    assert final["state"] == "succeeded" and final["progress"] == 1.0 and final["error"] is None
    assert final["iteration"] == final["iterations"] == 3 and final["encoder"] == "lite0"
    assert isinstance(final["loss"], float) and final["finished"] >= final["created"]
    iterations = [e["iteration"] for e in seen]
    assert iterations == sorted(iterations) and all(0 <= e["progress"] <= 1 for e in seen)
    assert {e["state"] for e in seen} <= {"queued", "running", "succeeded"}

    assert result.status_code == 200 and result.headers["content-type"].startswith("image/svg+xml")
    assert len(paths(result.content)) == 4
    root = etree.fromstring(result.content)
    width, height = Image.open(io.BytesIO(server_photo_png)).size
    assert (root.get("width"), root.get("height")) == (str(width), str(height))  # the photo's own size
    assert len(paths(preview.content)) == 4
    assert job["id"] in [j["id"] for j in listed]

    folder = server_main.data_dir / "jobs" / job["id"]
    assert {p.name for p in folder.iterdir()} >= {"job.json", "photo.png", "result.svg"}
    assert json.loads((folder / "job.json").read_text())["state"] == "succeeded"
    assert (folder / "result.svg").read_bytes() == result.content
    assert not list(server_main.data_dir.rglob("*.part"))
    assert job["id"] in (server_main.data_dir / "serve.log").read_text()


MINE = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 226 150">'
        '<path d="M 60 40 Q 110 0 160 40 A 50 50 0 0 1 160 110" stroke-width="3"/>'
        '<path d="M 60 40 L 60 120 M 90 70 l 10 0" stroke-width="2"/></svg>')


def test_a_stroke_width_in_the_photos_pixels(server_main: ServerProcess, server_photo_png: bytes) -> None:
    with server_main.client() as client:
        job = submit(client, server_photo_png, encoder="lite0", iterations="1", strokes="2", stroke_width="2.5")
        assert follow(client, job["id"])[-1]["state"] == "succeeded"
        root = etree.fromstring(client.get(f"/jobs/{job['id']}/result.svg").content)
    assert {p.get("stroke-width") for p in root.iter(f"{SVG}path")} == {"2.5"}


def test_keep_refine_and_ladder_fields(server_main: ServerProcess, server_photo_png: bytes) -> None:
    """One job with all three: the artist's paths kept, the same paths refined, and a two-level ladder."""
    with server_main.client() as client:
        job = submit(client, server_photo_png, encoder="lite0", iterations="2", keep=MINE, refine=MINE, levels="1,3")
        assert follow(client, job["id"])[-1]["state"] == "succeeded"
        root = etree.fromstring(client.get(f"/jobs/{job['id']}/result.svg").content)
        preview = etree.fromstring(client.get(f"/jobs/{job['id']}/preview.svg").content)
    groups = {g.get("id"): g.findall(f"{SVG}path") for g in root.findall(f"{SVG}g")}
    assert list(groups) == ["clipasso-kept", "level-1", "level-3"]  # the finest last: on top in Inkscape
    assert [p.get("d") for p in groups["clipasso-kept"]] == ["M 60 40 Q 110 0 160 40 A 50 50 0 0 1 160 110",
                                                             "M 60 40 L 60 120 M 90 70 l 10 0"]
    assert [len(groups["level-3"]), len(groups["level-1"])] == [3, 1]  # 2 refined + 1 new, then the best one
    # The live preview draws the kept paths grey under the black strokes.
    kept = preview.findall(f"{SVG}g[@id='clipasso-kept']/{SVG}path")
    assert [p.get("stroke") for p in kept] == ["#999999"] * 2
    assert {p.get("stroke") for p in preview.findall(f"{SVG}g[@id='clipasso-strokes']/{SVG}path")} == {"#000000"}


def test_a_subject_outline_keeps_the_strokes_within_it(server_main: ServerProcess, server_photo_png: bytes) -> None:
    """The outline is the subject: every stroke's ends lie near the square drawn around the photo's middle.
    Its path has the many points of one drawn by hand (about 3 kB of text, as a form field)."""
    steps = [t / 2 for t in range(140)]  # half a pixel apart
    sides = [(150, 40 + t) for t in steps] + [(150 - t, 110) for t in steps] + [(80, 110 - t) for t in steps]
    square = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 226 150"><path d="M 80 40 L 150 40 '
              + " ".join(f"L {x:g} {y:g}" for x, y in sides[1:]) + ' Z"/></svg>')
    assert len(square) > 3000
    with server_main.client() as client:
        job = submit(client, server_photo_png, **{**QUICK, "subject": square})
        assert follow(client, job["id"])[-1]["state"] == "succeeded"
        result = client.get(f"/jobs/{job['id']}/result.svg")
    numbers = [[float(v) for v in re.findall(r"-?[0-9.]+", p.get("d"))] for p in paths(result.content)]
    assert len(numbers) == 4
    for n in numbers:  # M x0,y0 C x1,y1 x2,y2 x3,y3: the ends within a stroke's reach of the square
        assert all(80 - 15 < x < 150 + 15 for x in (n[0], n[6])) and all(40 - 15 < y < 110 + 15 for y in (n[1], n[7]))
    assert "M 80 40 L 150 40" not in result.text  # the outline is the artist's, not written into the result


def test_a_raced_job_counts_its_starts_in_its_iterations(server_main: ServerProcess, server_photo_png: bytes) -> None:
    """20 iterations with the default preset's 3 starts raced for 15: 50 planned steps, and the progress the
    events report never passes them (it did: "iteration 160 of 130" at the end of a default job)."""
    with server_main.client() as client:
        job = submit(client, server_photo_png, **{**QUICK, "iterations": "20"})
        assert job["iterations"] == 20 + 2 * 15
        seen = list(events(client, job["id"]))
    assert seen[-1]["state"] == "succeeded" and seen[-1]["iterations"] == 50
    assert all(e["iteration"] <= 50 and e["progress"] <= 1 for e in seen)
    assert max(e["iteration"] for e in seen) > 20  # the raced starts' steps count


def test_a_job_with_the_diffvg_renderer(pydiffvg, server_main: ServerProcess, server_photo_png: bytes) -> None:
    with server_main.client() as client:
        job = submit(client, server_photo_png, **QUICK, renderer="diffvg")
        follow(client, job["id"])
        final = client.get(f"/jobs/{job['id']}").json()
        result = client.get(f"/jobs/{job['id']}/result.svg")
    assert final["state"] == "succeeded", final["error"]
    assert len(paths(result.content)) == 4 and '"renderer": "diffvg"' in result.text


def test_diffvg_without_pydiffvg_is_refused_before_queueing(without_pydiffvg, tmp_path: Path,
                                                            server_photo_png: bytes) -> None:
    """What POST /jobs runs before it queues: its InputError is the 400 (see test_bad_parameters_are_400)."""
    store = JobStore(tmp_path)
    with pytest.raises(InputError, match="renderer 'diffvg' needs pydiffvg"):
        store.submit(server_photo_png, SketchOptions(renderer="diffvg"))
    assert not store.root.exists() or not any(store.root.iterdir())


def test_cancel_queue_limit_and_a_failing_job(server_main: ServerProcess, server_photo_png: bytes) -> None:
    with server_main.client() as client:
        running = submit(client, server_photo_png, **ENDLESS)
        wait_until_running(client, running["id"], iterations=1)  # cancel it mid-run
        # The worker is busy: these wait in the queue (limit 3), the next is refused.
        doomed, second, third = (submit(client, server_photo_png, **QUICK) for _ in range(3))
        assert_error(client.post("/jobs", files={"image": ("p.png", server_photo_png)}, data=QUICK), 429, "queued")
        assert client.get("/health").json()["queue"] == 3
        assert client.get(f"/jobs/{running['id']}").json()["state"] == "running"
        assert_error(client.get(f"/jobs/{doomed['id']}/result.svg"), 409, "queued")

        cancelled = client.delete(f"/jobs/{second['id']}")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        assert_error(client.delete(f"/jobs/{second['id']}"), 409, "already finished")
        assert_error(client.get(f"/jobs/{second['id']}/result.svg"), 409, "without a result")
        assert client.delete(f"/jobs/{third['id']}").json()["state"] == "cancelled"
        # A fault while the job waits: its upload vanishes from the disk. Only that job may fail.
        (server_main.data_dir / "jobs" / doomed["id"] / "photo.png").unlink()

        stopping = client.delete(f"/jobs/{running['id']}")
        assert stopping.status_code == 202 and stopping.json()["state"] == "running"
        stopped = follow(client, running["id"])[-1]
        best_so_far = client.get(f"/jobs/{running['id']}/result.svg")
        failed = follow(client, doomed["id"])[-1]
        health = client.get("/health").json()

    assert stopped["state"] == "cancelled" and 1 <= stopped["iteration"] < stopped["iterations"] == 10000 + 2 * 15
    assert best_so_far.status_code == 200 and len(paths(best_so_far.content)) == 4
    assert failed["state"] == "failed" and "no such file" in failed["error"] and failed["finished"]
    assert health == {**health, "status": "ok", "queue": 0}


def test_attached_jobs_are_cancelled_when_their_client_goes_away(server_main: ServerProcess,
                                                                 server_photo_png: bytes) -> None:
    """attach=true: a running job whose only event stream closes, and a queued one whose stream never opened,
    are both cancelled for that reason (after a grace of 2 s); the running one keeps its best strokes. The
    running job has 10,000 iterations: left alone it would outlast the bounded wait by far."""
    with server_main.client() as client:
        running = submit(client, server_photo_png, attach="true", **ENDLESS)
        assert running["attached"] and running["queue_position"] == 0
        stream = events(client, running["id"])
        next(e for e in stream if e["state"] == "running" and e["iteration"] >= 1)
        waiting = submit(client, server_photo_png, attach="true", **ENDLESS)
        assert waiting["queue_position"] == 0 and client.get(f"/jobs/{running['id']}").json()["queue_position"] is None
        stream.close()  # the client goes away after the second job was queued, which must never start
        ended = {}
        deadline = time.monotonic() + WAIT_S
        while len(ended) < 2 and time.monotonic() < deadline:
            for job in (running, waiting):
                view = client.get(f"/jobs/{job['id']}").json()
                if view["state"] in ("succeeded", "failed", "cancelled"):
                    ended.setdefault(job["id"], view)
            time.sleep(0.1)
        best_so_far = client.get(f"/jobs/{running['id']}/result.svg")
    assert set(ended) == {running["id"], waiting["id"]}, f"not cancelled within {WAIT_S} s of the client going away"
    assert ended[running["id"]]["state"] == "cancelled" and ended[running["id"]]["iteration"] >= 1
    why = " (no client followed this attached job any more)"  # it said only "cancelled at iteration 59 of 230"
    assert ended[waiting["id"]]["state"] == "cancelled" and ended[waiting["id"]]["error"] == "cancelled before it started" + why
    assert ended[running["id"]]["error"].endswith(why)
    assert best_so_far.status_code == 200 and len(paths(best_so_far.content)) == 4
    assert "no client follows this attached job any more" in (server_main.data_dir / "serve.log").read_text()


BAD_FIELDS = [
    ({"strokes": "0"}, "strokes must be between 1 and 512"),
    ({"strokes": "513"}, "strokes must be between 1 and 512"),
    ({"strokes": "many"}, "strokes: input should be a valid integer"),
    ({"iterations": "0"}, "iterations must be between 1 and 10000"),
    ({"iterations": "10001"}, "iterations must be between 1 and 10000"),
    ({"seed": "-1"}, "seed must be"),
    ({"seeds": "17"}, "seeds must be"),
    ({"encoder": "vgg16"}, "unknown encoder 'vgg16'"),
    ({"preset": "best"}, "unknown preset 'best'"),
    ({"renderer": "cairo"}, "unknown renderer 'cairo'"),
    ({"keep": "hello"}, "keep: not an SVG file"),
    ({"refine": '<svg xmlns="http://www.w3.org/2000/svg"><text>hello</text></svg>'}, "refine: has no <path>"),
    ({"keep": '<svg xmlns="http://www.w3.org/2000/svg"><path d="M 5000 5 L 5100 5"/></svg>'}, "its path does not lie on"),
    ({"subject": "hello"}, "subject: not an SVG file"),
    ({"subject": '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 0 0"><path d="M 1 1 L 9 9"/></svg>'},
     "subject: its viewBox has no area"),  # was a 500 and a traceback
    ({"subject": MINE, "focus": "none"}, "subject: an outline of the subject needs focus auto"),
    ({"subject": '<svg xmlns="http://www.w3.org/2000/svg"><path d="M 500 5 L 600 5 L 600 90 Z"/></svg>'},
     "subject: its path does not lie on the 226x150 photo"),
    ({"orientation": "sideways"}, "orientation must be exif or stored"),
    ({"levels": "8,8"}, "may appear once"),
    ({"levels": "600,4"}, "between 1 and 512"),
    ({"levels": "a lot"}, "separated by commas"),
    ({"stroke_width": "0"}, "stroke width must be above 0"),
    ({"stroke": "8"}, "unknown field 'stroke'; POST /jobs takes image, strokes, iterations,"),
    ({"bogus": "1", "colour": "red"}, "unknown fields 'bogus', 'colour'; POST /jobs takes"),
]


@pytest.mark.parametrize(("fields", "words"), BAD_FIELDS, ids=["&".join(f"{k}={v[:12]}" for k, v in f.items())
                                                              for f, _ in BAD_FIELDS])
def test_bad_parameters_are_400(server_main: ServerProcess, server_photo_png: bytes, fields: dict, words: str) -> None:
    with server_main.client() as client:
        assert_error(client.post("/jobs", files={"image": ("p.png", server_photo_png)}, data=fields), 400, words)


def test_paths_off_the_photo_are_named_in_the_jobs_warnings(server_main: ServerProcess, server_photo_png: bytes) -> None:
    """The job runs with the paths on the photo; the client is told which were left out, not the log alone."""
    mixed = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 226 150"><path d="M 10 10 L 90 60"/>'
             '<path d="M 500 5 L 600 5"/></svg>')
    with server_main.client() as client:
        job = submit(client, server_photo_png, **{**QUICK, "keep": mixed})
        warned = ["keep: 1 of its 2 paths lies off the 226x150 photo and is ignored"]
        assert job["warnings"] == warned
        assert follow(client, job["id"])[-1]["warnings"] == warned  # and in every view of it
        assert client.get(f"/jobs/{job['id']}").json()["warnings"] == warned
        plain = submit(client, server_photo_png, **QUICK)
        assert plain["warnings"] == []
        follow(client, plain["id"])


def test_an_outline_sent_as_a_file_is_refused_with_what_to_do(server_main: ServerProcess, server_photo_png: bytes) -> None:
    """`curl -F subject=@outline.svg` uploads a file, but only the photo is one: the answer says to send text."""
    with server_main.client() as client:
        response = client.post("/jobs", files={"image": ("p.png", server_photo_png), "subject": ("o.svg", MINE)})
    assert_error(response, 400, "send keep, refine and subject as text fields")


def test_bad_uploads_are_refused_before_queueing(server_main: ServerProcess, server_photo_png: bytes) -> None:
    jobs_before = set((server_main.data_dir / "jobs").iterdir())
    huge = png_bytes(Image.new("1", (12000, 9000)))  # 108 MP, a few kB compressed
    cases = [
        ({}, "missing field 'image'", 400),
        ({"files": {"image": ("e.png", b"")}}, "empty", 400),
        ({"files": {"image": ("notes.txt", b"these are not pixels\n" * 20)}}, "not an image", 400),
        ({"files": {"image": ("half.png", server_photo_png[: len(server_photo_png) // 2])}}, "corrupt", 400),
        ({"files": {"image": ("huge.png", huge)}}, "108 megapixels", 400),
        ({"files": {"image": ("dot.png", png_bytes(Image.new("RGB", (1, 1))))}}, "too small", 400),
        ({"files": {"image": ("big.png", bytes(1_500_000))}}, "upload too large", 413),
    ]
    with server_main.client() as client:
        for kwargs, words, status in cases:
            assert_error(client.post("/jobs", data=QUICK, **kwargs), status, words)
        # Without Content-Length (chunked), the limit holds while reading.
        head = b'--b\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n\r\n'
        chunks = iter([head, *(bytes(65536) for _ in range(40)), b"\r\n--b--\r\n"])
        chunked = client.post("/jobs", content=chunks, headers={"Content-Type": "multipart/form-data; boundary=b"})
        assert "content-length" not in chunked.request.headers
        assert_error(chunked, 413, "upload too large")
    assert set((server_main.data_dir / "jobs").iterdir()) == jobs_before


@pytest.mark.parametrize("path", ["AAAAAAAAAAAAAAAAAAAAAA", "..%2F..%2Fetc%2Fpasswd", "x" * 300, "%00", "a.b"])
def test_unknown_jobs_are_404(server_main: ServerProcess, path: str) -> None:
    # A well-formed id that no job has is an unknown job; anything else never matches a job either
    # (an escaped slash even makes it another path).
    words = "unknown job" if "%2F" not in path else ""
    with server_main.client() as client:
        for suffix in ("", "/events", "/preview.svg", "/result.svg"):
            assert_error(client.get(f"/jobs/{path}{suffix}"), 404, words)
        assert_error(client.delete(f"/jobs/{path}"), 404, words)


def test_unknown_routes_and_methods_answer_json(server_main: ServerProcess) -> None:
    with server_main.client() as client:
        assert_error(client.get("/nowhere"), 404, "no such path")
        assert_error(client.put("/jobs"), 405, "not allowed")


def test_token_is_required_on_every_request(server_token: ServerProcess, server_photo_png: bytes) -> None:
    url = server_token.url
    good = {"Authorization": f"Bearer {TOKEN}"}
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": TOKEN},
                    [("Authorization", "Bearer wrong-token-0123456789"), ("Authorization", f"Bearer {TOKEN}")]):
        for method, path in (("GET", "/health"), ("GET", "/jobs"), ("GET", "/openapi.json"), ("POST", "/jobs"),
                             ("DELETE", "/jobs/AAAAAAAAAAAAAAAAAAAAAA"), ("GET", "/jobs/AAAAAAAAAAAAAAAAAAAAAA")):
            response = httpx.request(method, url + path, headers=headers)
            assert_error(response, 401, "token")
            assert response.headers["www-authenticate"] == "Bearer"
    assert httpx.get(url + "/health", headers=good).status_code == 200
    # HTTP's scheme names are case-insensitive (RFC 9110, 11.1): a client that sends "bearer" was refused.
    assert httpx.get(url + "/health", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200
    assert_error(httpx.get(url + "/jobs/AAAAAAAAAAAAAAAAAAAAAA", headers=good), 404, "unknown job")
    # The page is a static file with no data; it carries the token from its URL fragment itself.
    page = httpx.get(url + "/")
    assert page.status_code == 200 and "Bearer" in page.text
    # No other page may frame it (and trick a click on Cancel), nor learn its address through a Referer.
    assert page.headers["x-frame-options"] == "DENY" and page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["content-security-policy"] == "frame-ancestors 'none'"
    assert page.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--host", "0.0.0.0"], "--token"),
        (["--token", "short"], "at least 16 characters"),
        (["--preload", "vgg16"], "unknown encoder"),
        (["--max-queue", "0"], "--max-queue"),
    ],
)
def test_unsafe_or_bad_settings_refuse_to_start(tmp_path: Path, args: list[str], words: str) -> None:
    cmd = [*SERVE, "--port", str(free_port()), "--data-dir", str(tmp_path), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("clipasso: error:") and words in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("option", ["--max-data-gb", "--max-upload-mb", "--keep-days"])
@pytest.mark.parametrize("value", ["inf", "nan"])
def test_numbers_that_are_not_finite_are_refused(tmp_path: Path, option: str, value: str) -> None:
    """They were an OverflowError's or ValueError's traceback, or (--keep-days) a server that kept nothing."""
    done = subprocess.run([*SERVE, "--data-dir", str(tmp_path), option, value], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        f"clipasso serve: error: argument {option}: not a finite number: '{value}' (see clipasso serve --help)"]


def test_port_in_use_is_a_clear_error(server_main: ServerProcess, tmp_path: Path) -> None:
    """One line, exit 2, and the data folder this start made is not left behind with a lock file in it."""
    cmd = [*SERVE, "--port", str(server_main.port), "--data-dir", str(tmp_path / "new" / "data")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "another server" in done.stderr, done.stderr
    assert not (tmp_path / "new" / "data").exists()


def test_restart_keeps_results_and_accounts_for_unfinished_jobs(server_factory, tmp_path: Path,
                                                                server_photo_png: bytes) -> None:
    data = tmp_path / "data"
    first = server_factory(data)
    with first.client() as client:
        done = submit(client, server_photo_png, **QUICK)
        assert follow(client, done["id"])[-1]["state"] == "succeeded"
        result = client.get(f"/jobs/{done['id']}/result.svg").content
        crashed = submit(client, server_photo_png, **ENDLESS)
        wait_until_running(client, crashed["id"])
        waiting = submit(client, server_photo_png, **ENDLESS)
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL  # a crash: no chance to tidy up

    second = server_factory(data)
    with second.client() as client:
        assert client.get(f"/jobs/{done['id']}/result.svg").content == result
        lost = client.get(f"/jobs/{crashed['id']}").json()
        assert lost["state"] == "failed" and "server stopped while this job was running" in lost["error"]
        # Whether a result is there is known again (the page offers Download by it; `drawn` is not kept).
        assert client.get(f"/jobs/{done['id']}").json()["result"] is True and lost["result"] is False
        resumed = client.get(f"/jobs/{waiting['id']}").json()
        assert resumed["state"] in ("queued", "running")
        wait_until_running(client, waiting["id"])
    # A clean shutdown (uvicorn ends by re-raising SIGTERM) stops the running job and keeps it queued.
    assert second.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    record = json.loads((data / "jobs" / waiting["id"] / "job.json").read_text())
    assert record["state"] == "queued" and record["error"] is None and record["iteration"] == 0
    assert not (data / "jobs" / waiting["id"] / "result.svg").exists()
    log = (data / "serve.log").read_text()
    assert "1 interrupted marked failed" in log and "1 queued again" in log and "Application shutdown complete" in log


@pytest.mark.parametrize(("sig", "attached"), [(signal.SIGTERM, False), (signal.SIGINT, True)],
                         ids=["SIGTERM, a job", "Ctrl-C, an attached job"])
def test_stopping_ends_the_event_streams_with_the_jobs_fate(server_factory, tmp_path: Path, server_photo_png: bytes,
                                                          sig: int, attached: bool) -> None:
    """A client following a running job while the server stops: its stream's last event says what became of
    the job (queued again; an attached one, whose stream ends with the server, cancelled with its best
    strokes: after a restart it would have started over only to be cancelled), then the stream ends, the
    server stops within its grace period, and the log has no traceback (uvicorn had cancelled the open
    stream after 3 s: 'Exception in ASGI application ... CancelledError')."""
    server = server_factory(tmp_path / "data")
    with server.client() as client:
        job = submit(client, server_photo_png, **ENDLESS, **({"attach": "true"} if attached else {}))
        wait_until_running(client, job["id"])
        ended: list = []

        def watch() -> None:
            with client.stream("GET", f"/jobs/{job['id']}/events") as stream:
                ended.extend(json.loads(line[5:]) for line in stream.iter_lines() if line.startswith("data:"))
            ended.append("end")

        watcher = threading.Thread(target=watch)
        watcher.start()
        for _ in range(600):  # the stream's first event comes at once; bounded at 60 s all the same
            if ended:
                break
            time.sleep(0.1)
        assert server.stop(sig) in (0, -sig, 128 + sig)  # 130 after Ctrl-C, as shells expect
        watcher.join(60)
    assert ended[-1] == "end" and not watcher.is_alive()
    last = ended[-2]
    record = json.loads((tmp_path / "data" / "jobs" / job["id"] / "job.json").read_text())
    if attached:
        assert last["state"] == record["state"] == "cancelled" and last["result"] is True
        assert last["error"].endswith("(the server stopped, ending the event stream that kept this attached job)")
        assert (tmp_path / "data" / "jobs" / job["id"] / "result.svg").read_text().count("<path") == 4  # ENDLESS draws 4
    else:
        assert last["state"] == record["state"] == "queued" and last["queue_position"] == 0
    log = (tmp_path / "data" / "serve.log").read_text()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log


def test_an_upload_still_arriving_when_the_server_stops_gets_503(server_factory, tmp_path: Path,
                                                                  server_photo_png: bytes) -> None:
    """A slow upload held the shutdown until uvicorn cancelled it: a 500 in plain text and a traceback. Now it
    is answered as any submit during shutdown: 503 with Retry-After, in JSON."""
    server = server_factory(tmp_path / "data")
    boundary = "clipasso-test"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"p.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + server_photo_png[:100]
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(f"POST /jobs HTTP/1.1\r\nHost: {host}:{port}\r\nExpect: 100-continue\r\n"
                     f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                     f"Content-Length: {len(head) + 10_000_000}\r\n\r\n".encode())
        assert sock.recv(100).startswith(b"HTTP/1.1 100")  # sent once the service starts reading the body
        sock.sendall(head)  # ... and the rest never comes
        stopping = threading.Thread(target=server.stop)
        stopping.start()
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        stopping.join(60)
    status, _, rest = answer.partition(b"\r\n")
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert status == b"HTTP/1.1 503 Service Unavailable", answer
    assert b"retry-after: 10" in headers.lower()
    assert json.loads(body) == {"error": "the server is shutting down; submit the job again once it has restarted"}
    log = (tmp_path / "data" / "serve.log").read_text()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log
    assert not list((tmp_path / "data" / "jobs").iterdir())


def test_engine_failures_fail_only_their_job(tmp_path: Path, server_photo_png: bytes) -> None:
    """The worker's error handling with an engine that fails each job of a batch as a real one can (no
    server needed): each job gets its own one-line reason."""
    calls = []

    def engine(requests, batch):
        calls.append([r.options.strokes for r in requests])
        outcomes = []
        for r in requests:
            exc = {1: MemoryError(), 2: RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")}.get(
                r.options.strokes, ValueError("bad\nthing"))
            r.on_finish(exc)
            outcomes.append(exc)
        return outcomes

    store = JobStore(tmp_path, device="cpu")
    store.load()
    ids = [store.submit(server_photo_png, SketchOptions(strokes=n, iterations=1, encoder="lite0"))["id"]
           for n in (1, 2, 3)]
    Worker(store, engine=engine, batch=3).run_jobs(store.next_jobs(3, timeout=0))
    errors = [store.snapshot(i)[1]["error"] for i in ids]
    assert calls == [[1, 2, 3]]
    assert errors[0].startswith("out of memory;") and errors[1].startswith("out of memory on cpu:")
    assert errors[2] == "ValueError: bad thing"
    assert all(store.snapshot(i)[1]["state"] == "failed" for i in ids)


def test_fuzz_the_api_from_its_schema(server_token: ServerProcess) -> None:
    """Whatever the OpenAPI schema allows, and data it does not, the answer is never a 5xx.

    Every operation, positive and negative cases, a fixed number of examples, derandomized; each
    request has a timeout, so the run is bounded in count and time.
    """
    schema = schemathesis.openapi.from_url(server_token.url + "/openapi.json", headers=server_token.headers)
    cases = st.one_of(schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE))

    @given(case=cases)
    @settings(max_examples=150, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def call(case) -> None:
        # Schema-valid uploads are arbitrary bytes, not photos: a 400 is the right answer for them.
        case.call_and_validate(headers=server_token.headers, excluded_checks=[positive_data_acceptance], timeout=30)

    call()


def test_reload_runs_queued_jobs_on_the_new_device_and_skips_broken_folders(tmp_path: Path,
                                                                            server_photo_png: bytes) -> None:
    before = JobStore(tmp_path, device="cpu")
    before.load()
    queued = before.submit(server_photo_png, SketchOptions(strokes=2, iterations=1, encoder="lite0"))
    broken = tmp_path / "jobs" / ("B" * 22)
    broken.mkdir()
    (broken / "job.json").write_text("{not json")
    (tmp_path / "jobs" / "not-a-job-id").mkdir()

    after = JobStore(tmp_path, device="cuda:1", weights="/models/clip")
    after.load()
    [job] = after.next_jobs(1, timeout=0)
    assert job.id == queued["id"]
    assert (job.options.device, job.options.weights, job.options.strokes) == ("cuda:1", "/models/clip", 2)
    assert [j["id"] for j in after.list()] == [queued["id"]]
