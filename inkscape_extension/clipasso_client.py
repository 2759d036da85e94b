"""A client of the `clipasso serve` HTTP API, and starting the local backend when it does not answer.

Standard library only (urllib): this runs in Inkscape's own Python on Linux, Windows and macOS.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import subprocess
import sys
import time
import uuid
import warnings
from typing import Iterator
from urllib.error import HTTPError, URLError
from urllib.parse import quote, urlsplit
from urllib.request import ProxyHandler, Request, build_opener

FINAL_STATES = ("succeeded", "failed", "cancelled")
#: How long a freshly started backend may take to answer /health (it imports PyTorch, loads weights).
START_WAIT_S = 180.0
REQUEST_TIMEOUT_S = 60.0
#: Longest silence on an event stream (the backend sends a keep-alive every 15 s).
STREAM_TIMEOUT_S = 60.0
#: The backend's log is set aside (as .1) once it is larger than this, when the extension starts a backend.
LOG_KEEP_BYTES = 5_000_000


class BackendError(Exception):
    """Anything that went wrong talking to the backend; the message is shown to the user as it is."""


class Unreachable(BackendError):
    """Nothing answers at the backend URL."""


class NotFound(BackendError):
    """The backend has no such job (HTTP 404)."""


class Backend:
    """One backend URL (and token): the calls the extension makes, with errors as one readable line."""

    def __init__(self, url: str, token: str = "") -> None:
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BackendError(f"the backend URL {url!r} is not an http:// or https:// address, e.g. http://127.0.0.1:8765")
        self.url = url.strip().rstrip("/")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.token = token.strip()
        # Proxies from the environment would intercept 127.0.0.1; a remote backend may need them.
        self._opener = build_opener(ProxyHandler({})) if self.is_local else build_opener()

    @property
    def is_local(self) -> bool:
        """Whether the URL points to this machine (the only case where the extension starts a backend)."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback  # 127.evil.example is not 127.0.0.1
        except ValueError:
            return False

    def health(self, timeout: float = 5.0) -> dict:
        return self._json("GET", "/health", timeout=timeout)

    def submit(self, image: bytes, filename: str, mime: str, fields: dict, attach: bool = False) -> dict:
        """Queue a job for the image; returns its view (id, state, ...).

        `attach`: the backend cancels the job once no event stream of it (`events`) has been open for a
        couple of seconds, so that it stops when this process is killed; `detach` unties it.
        """
        body, content_type = _multipart({**fields, "attach": str(attach).lower()}, "image", filename, mime, image)
        job = self._json("POST", "/jobs", body, {"Content-Type": content_type})
        if "id" not in job:
            raise BackendError(f"{self.url}/jobs answered without a job id; is this a CLIPasso backend?")
        return job

    def events(self, job_id: str) -> Iterator[dict]:
        """The job's server-sent events (each the JSON of GET /jobs/{id}) until the backend ends the stream.

        While the stream is open it keeps an attached job alive on the backend.
        """
        response = self._open("GET", f"/jobs/{_quoted(job_id)}/events", None, {"Accept": "text/event-stream"},
                              STREAM_TIMEOUT_S)
        data: list[str] = []
        try:
            with response:
                for raw in response:
                    line = raw.decode("utf-8").rstrip("\r\n")
                    if line.startswith("data:"):
                        data.append(line[5:].lstrip(" "))
                    elif not line and data:
                        yield json.loads("\n".join(data))
                        data = []
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise BackendError(f"the event stream of job {job_id} broke off ({exc})") from None

    def job(self, job_id: str) -> dict:
        """The job's view (state, progress, the photo's size ...); NotFound where the backend has no such job."""
        return self._json("GET", f"/jobs/{_quoted(job_id)}")

    def preview_svg(self, job_id: str) -> bytes:
        """The job's strokes as they are now."""
        return self._request("GET", f"/jobs/{_quoted(job_id)}/preview.svg")

    def result_svg(self, job_id: str) -> bytes:
        return self._request("GET", f"/jobs/{_quoted(job_id)}/result.svg")

    def detach(self, job_id: str) -> None:
        """Let an attached job run to its end without an event stream (its result can be fetched later)."""
        self._request("POST", f"/jobs/{_quoted(job_id)}/detach", b"", timeout=5.0)

    def live_page(self, job_id: str) -> str:
        """The backend's page that shows the job's strokes as they form; with the token, which the page reads
        from the address's fragment (browsers do not send that part to the server)."""
        token = f"&token={quote(self.token, safe='')}" if self.token else ""
        return f"{self.url}/#job={_quoted(job_id)}{token}"

    def cancel(self, job_id: str) -> None:
        """Ask the backend to stop a job; best effort (a job that has just finished has nothing to stop, and a
        backend that is gone stops attached jobs by itself)."""
        try:
            self._request("DELETE", f"/jobs/{_quoted(job_id)}", timeout=5.0)
        except BackendError:
            pass

    def _json(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
              timeout: float = REQUEST_TIMEOUT_S) -> dict:
        raw = self._request(method, path, body, headers, timeout)
        try:
            value = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise BackendError(f"{self.url}{path} did not answer with JSON; is this a CLIPasso backend?") from None
        if not isinstance(value, dict):
            raise BackendError(f"{self.url}{path} answered with unexpected JSON; is this a CLIPasso backend?")
        return value

    def _request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                 timeout: float = REQUEST_TIMEOUT_S) -> bytes:
        response = self._open(method, path, body, headers, timeout)
        try:
            with response:
                return response.read()
        except OSError as exc:
            raise Unreachable(f"{self.url} stopped answering ({exc})") from None

    def _open(self, method: str, path: str, body: bytes | None, headers: dict | None, timeout: float):
        """The response to one request, its body not read yet; errors as BackendError."""
        request = Request(self.url + path, data=body, method=method, headers=dict(headers or {}))
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            return self._opener.open(request, timeout=timeout)
        except HTTPError as exc:
            message = _error_message(exc)
            if message is None:  # not our JSON: another server on that address, or a proxy in the way
                raise BackendError(f"{self.url}{path} answered HTTP {exc.code} {exc.reason}, not as a CLIPasso "
                                   "backend does; is `clipasso serve` the server at that address?") from None
            if exc.code == 401:
                raise BackendError(
                    f"the backend at {self.url} refused the token ({message}); set Token on the Backend page "
                    "to the one the backend was started with"
                ) from None
            if exc.code == 404:
                raise NotFound(message) from None
            raise BackendError(message if 400 <= exc.code < 500 else f"the backend failed ({exc.code}: {message})") from None
        except (URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Unreachable(f"nothing answers at {self.url} ({reason})") from None


#: The backend's job ids: what `secrets.token_urlsafe(16)` gives.
JOB_ID = re.compile(r"^[A-Za-z0-9_-]{22}$")


def check_job_id(job_id: str) -> str:
    """The id as given, or a BackendError that says what an id looks like."""
    if not JOB_ID.fullmatch(job_id):
        raise BackendError(f"{job_id!r} is not a job id: the backend's ids are 22 letters, digits, '-' or '_'")
    return job_id


def _quoted(job_id: str) -> str:
    return quote(job_id, safe="")


def unready_encoder(health: dict, encoder: str) -> str | None:
    """Why the backend cannot run `encoder` now, from its /health readiness list; None when it can (or when
    an older backend does not say)."""
    models = [m for m in health.get("models") or [] if isinstance(m, dict)]
    for model in models:
        if model.get("name") == encoder and model.get("state") == "unavailable":
            ready = ", ".join(str(m.get("name")) for m in models if m.get("ready")) or "none"
            return (
                f"The backend cannot use the encoder {encoder}: {model.get('detail')}. Ready there: {ready}. "
                f"Choose one of those on the Options page, or run `clipasso models download {encoder}` where "
                "the backend runs."
            )
    return None


def _error_message(exc: HTTPError) -> str | None:
    """The backend's one-line message: {"error": ...}, or FastAPI's {"detail": ...} (a string or a list);
    None when the answer has neither (it is not the backend's)."""
    try:
        body = json.loads(exc.read().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        body = None
    if isinstance(body, dict):
        detail = body.get("error") or body.get("detail")
        if isinstance(detail, list):
            detail = "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail)
        if detail:
            return " ".join(str(detail).split())
    return None


def _multipart(fields: dict, file_field: str, filename: str, mime: str, data: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body (the standard library has no encoder for it)."""
    boundary = f"----clipasso-{uuid.uuid4().hex}"
    parts = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode("utf-8")
        )
    safe_name = filename.replace('"', "_").replace("\r", "_").replace("\n", "_")
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{safe_name}"\r\n'
        f"Content-Type: {mime}\r\n\r\n".encode("utf-8")
    )
    parts.append(data)
    parts.append(f"\r\n--{boundary}--\r\n".encode("ascii"))
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


# ----- starting the local backend ---------------------------------------------------------------------


def _config(path: str) -> dict:
    """What `clipasso install-inkscape` recorded next to the extension ({} where nothing readable is)."""
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def read_config(path: str) -> list[str] | None:
    """The backend command that `clipasso install-inkscape` recorded next to the extension, if any."""
    command = _config(path).get("command")
    if isinstance(command, list) and command and all(isinstance(c, str) for c in command):
        return command
    return None


def version_note(health: dict, config_path: str, pid_path: str) -> str | None:
    """A line where the backend is another version than the one that installed this extension: an older
    backend still running after an upgrade (stop it: the extension starts the new one), or clipasso upgraded
    without installing the extension again (whose files then stay as they were)."""
    installed, running = _config(config_path).get("version"), health.get("version")
    if not (isinstance(installed, str) and isinstance(running, str)) or installed == running:
        return None
    if _release(running) < _release(installed):
        try:
            with open(pid_path, encoding="utf-8") as f:
                pid = f.read().strip()
        except OSError:
            pid = ""
        which = f"process {pid}" if pid.isdigit() else "it"
        how = f" ({stop_command(pid)})" if pid.isdigit() else ""
        return (f"the running backend is clipasso {running}, older than this extension's {installed}: stop {which}"
                f"{how} and run the extension again, which then starts the new one")
    return (f"the backend is clipasso {running} but this extension was installed by {installed}: run "
            "`clipasso install-inkscape` again to update it")


def _release(version: str) -> tuple:
    """A version's numbers, for comparing releases (`0.10.1` after `0.9`); text parts count as 0."""
    return tuple(int(part) if part.isdigit() else 0 for part in re.split(r"[.+-]", version))


def stop_command(pid: str) -> str:
    """The command that stops process `pid` on this system."""
    return f"taskkill /PID {pid}" if sys.platform == "win32" else f"kill {pid}"


def start_command(backend: Backend, command: list[str]) -> list[str]:
    """The recorded command, told to serve at the backend URL's address."""
    return list(command) + ["--host", backend.host, "--port", str(backend.port)]


def how_to_start(backend: Backend, command: list[str] | None) -> str:
    """The exact command a user types to start the backend the extension expects."""
    argv = start_command(backend, command or ["clipasso", "serve"])
    argv += ["--token", backend.token] if backend.token else []
    return subprocess.list2cmdline(argv) if sys.platform == "win32" else shlex.join(argv)


def ensure_backend(backend: Backend, config_path: str, log_path: str, pid_path: str) -> None:
    """Make sure the backend answers; start the recorded local one if it does not.

    A remote URL is never started: the user's message says to check it. A local one is started detached
    (it outlives Inkscape's run of the extension and serves the next runs), appends to its log at `log_path`
    (or in user_state_dir() where that cannot be written), and is waited for with a bounded poll of /health.
    """
    try:
        backend.health()
        return
    except Unreachable as exc:
        reason = str(exc)
    if not backend.is_local:
        raise BackendError(
            f"The CLIPasso backend does not answer: {reason}. Check the Backend URL and the network, and that "
            "`clipasso serve --host 0.0.0.0 --token ...` runs on that machine."
        )
    command = read_config(config_path)
    if command is None:
        raise BackendError(
            f"The CLIPasso backend does not answer: {reason}. Start it in a terminal with\n\n"
            f"    {how_to_start(backend, None)}\n\n"
            "and run the extension again (or run `clipasso install-inkscape` so that the extension can start it)."
        )
    failure = _start_and_wait(backend, start_command(backend, command), log_path, pid_path)
    refused = _refusal(backend, failure or "")
    if refused:
        raise BackendError(refused)
    if failure and ("No module named clipasso" in failure or not os.path.exists(command[0])):
        raise BackendError(
            f"The CLIPasso backend that `clipasso install-inkscape` recorded is no longer installed ({command[0]} "
            "has no clipasso module, or is gone). Install clipasso again and run `clipasso install-inkscape`, or "
            f"remove this extension: delete the folder {os.path.dirname(os.path.abspath(config_path))}."
        )
    if failure:
        raise BackendError(
            f"The CLIPasso backend does not answer at {backend.url} and starting it failed: {failure}\n"
            f"Start it in a terminal with\n\n    {how_to_start(backend, command)}\n\nand run the extension again."
        )


def _start_and_wait(backend: Backend, argv: list[str], log_path: str, pid_path: str) -> str | None:
    """Start the backend detached and wait for /health; None when it answers, else why not."""
    env = backend_env(dict(os.environ), sys.platform)
    if backend.token:
        env["CLIPASSO_TOKEN"] = backend.token  # not on the command line, where other users could read it
    options: dict = {"start_new_session": True}
    if sys.platform == "win32":
        options = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW}
    # The backend outlives this script on purpose; Python would warn on stderr, which Inkscape shows.
    warnings.filterwarnings("ignore", "subprocess .* is still running", ResourceWarning)
    try:
        log, log_path = _open_log(log_path, argv)
    except OSError as exc:
        return f"its log {log_path} cannot be written ({exc.strerror or exc})"
    try:
        with log:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                cwd=os.path.expanduser("~"), close_fds=True, **options,
            )
    except OSError as exc:
        return f"{argv[0]}: {exc.strerror or exc}"
    deadline = time.monotonic() + START_WAIT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"it exited with code {process.returncode}; its log {log_path} ends with:\n{_tail(log_path)}"
        try:
            backend.health(timeout=2.0)
        except Unreachable:
            time.sleep(0.5)
            continue
        # Only now: a start that failed must not take the place of a running backend's pid. Beside the log,
        # where it could be written.
        try:
            with open(os.path.join(os.path.dirname(log_path), os.path.basename(pid_path)), "w", encoding="ascii") as f:
                f.write(f"{process.pid}\n")
        except OSError:
            pass  # the pid file only helps to stop the backend by hand
        return None
    return f"it did not answer within {START_WAIT_S:.0f} s (it is still starting, or stuck: see {log_path})"


def _open_log(log_path: str, argv: list[str]):
    """The backend's log, opened for appending (a backend started earlier may still write to it: truncating
    it under that one left a file of NULs), with a line for this start; beside the extension, else (a
    folder installed read-only) in the user's own state folder. Returns (file, its path)."""
    try:
        return _append_log(log_path, argv)
    except OSError:
        return _append_log(os.path.join(user_state_dir(), os.path.basename(log_path)), argv)


def _append_log(path: str, argv: list[str]):
    """(file, path): the log at `path` opened for appending, set aside first past LOG_KEEP_BYTES."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    log = open(path, "ab")
    if log.tell() > LOG_KEEP_BYTES:
        try:  # (Windows does not rename a file a running backend holds open: then it stays as it is)
            log.close()
            os.replace(path, path + ".1")
        except OSError:
            pass
        log = open(path, "ab")
    log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} the extension starts: {shlex.join(argv)}\n".encode())
    log.flush()
    return log, path


def user_state_dir() -> str:
    """Where the extension keeps the backend's log when its own folder is read-only."""
    if sys.platform == "win32":
        return os.path.join(os.environ.get("LOCALAPPDATA") or os.path.expanduser("~"), "clipasso")
    if sys.platform == "darwin":
        return os.path.expanduser("~/Library/Logs/clipasso")
    return os.path.join(os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "clipasso")


def backend_env(environ: dict, platform: str) -> dict:
    """The environment the backend starts with: the user's, without what Inkscape set for its own Python and
    its app bundle. PYTHONPATH and PYTHONHOME point at Inkscape's Python; on macOS, Inkscape.app also sets
    DYLD_* (the backend's Python would load Inkscape's libraries) and points XDG_* into its own folder
    (huggingface_hub's cache would not be the one `clipasso models download` filled)."""
    dropped = {"PYTHONPATH", "PYTHONHOME", "PYTHONEXECUTABLE", "CLIPASSO_TOKEN"}
    if platform == "darwin":
        dropped |= {k for k, v in environ.items()
                    if k.startswith("DYLD_") or (k.startswith("XDG_") and "org.inkscape.Inkscape" in v)}
    return {k: v for k, v in environ.items() if k not in dropped}


def _refusal(backend: Backend, failure: str) -> str | None:
    """What to do when the backend refused to start for a reason starting it again will not mend: another
    backend holds the data folder (the user changed the port), or something else holds the port."""
    other = re.search(r"another `clipasso serve` \(at (\S+)\) uses the data folder", failure)
    if other and other.group(1).rstrip("/") == backend.url:
        return (f"The CLIPasso backend at {backend.url} is still starting (another run of the extension started "
                "it). Wait a moment and run the extension again.")
    if other:
        return (f"Another CLIPasso backend already runs at {other.group(1)}, and only one may use the data folder. "
                f"Set Backend URL on the Backend page to {other.group(1)} (or stop that backend), and run the "
                "extension again.")
    if "cannot listen on" in failure and "the port is in use" in failure:
        return (f"Something at {backend.host}:{backend.port} holds the port but does not answer as a CLIPasso "
                "backend. Set another port in Backend URL on the Backend page (say "
                f"http://{backend.host}:{backend.port + 1}), or stop what runs there, and run the extension again.")
    return None


def _tail(path: str, lines: int = 5) -> str:
    """The last lines the latest start wrote to the log (not an earlier start's: the log is appended to)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            written = f.readlines()
    except OSError:
        return "(no log)"
    starts = [i for i, line in enumerate(written) if line.startswith("--- ") and " the extension starts: " in line]
    return "".join(written[starts[-1] + 1 if starts else 0:][-lines:]).rstrip() or "(nothing)"
