"""`clipasso install-inkscape`, and the installed extension starting the backend it was installed with."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from extension_support import DATA, EXTENSION_DIR, FAST, INKSCAPE, extension_env, import_extension, stop_backend
from servers import free_port

from clipasso import __version__
from clipasso.cli import main
from clipasso.install import CONFIG, FOLDER, user_extensions_dir

SHIPPED = sorted(p.name for p in EXTENSION_DIR.iterdir() if p.suffix in (".inx", ".py", ".ui"))


def test_install_copies_the_extension_and_records_the_backend(tmp_path: Path, capsys) -> None:
    assert main(["install-inkscape", "--dir", str(tmp_path / "extensions")]) == 0
    target = tmp_path / "extensions" / FOLDER
    assert str(target) in capsys.readouterr().out
    assert sorted(p.name for p in target.iterdir()) == sorted([*SHIPPED, CONFIG])
    for name in SHIPPED:
        assert (target / name).read_bytes() == (EXTENSION_DIR / name).read_bytes()
        assert (target / name).stat().st_mode & 0o444 == 0o444  # readable by Inkscape, whoever runs it
    config = json.loads((target / CONFIG).read_text())
    assert config == {"command": [sys.executable, "-m", "clipasso", "serve"], "version": __version__}
    # The recorded command is this installation's backend.
    done = subprocess.run([*config["command"], "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--port" in done.stdout
    # Installing again (an upgrade) replaces the files in place.
    (target / "clipasso_sketch.py").write_text("old")
    assert main(["install-inkscape", "--dir", str(tmp_path / "extensions")]) == 0
    assert (target / "clipasso_sketch.py").read_bytes() == (EXTENSION_DIR / "clipasso_sketch.py").read_bytes()


def test_install_again_drops_what_a_release_no_longer_has_and_remove_takes_it_away(tmp_path: Path, capsys) -> None:
    """An upgrade's install left an old release's .inx in Inkscape's menu; pip uninstall left the whole
    extension, which then failed to start a backend that was gone."""
    extensions = tmp_path / "extensions"
    assert main(["install-inkscape", "--dir", str(extensions)]) == 0
    (extensions / FOLDER / "clipasso_old.inx").write_text("<inkscape-extension/>")
    (extensions / FOLDER / "clipasso_backend.log").write_text("the backend's log stays")
    assert main(["install-inkscape", "--dir", str(extensions)]) == 0
    assert not (extensions / FOLDER / "clipasso_old.inx").exists()
    assert (extensions / FOLDER / "clipasso_backend.log").exists()
    (extensions / FOLDER / "clipasso_backend.pid").write_text("4242\n")  # a backend the extension started
    capsys.readouterr()
    assert main(["install-inkscape", "--dir", str(extensions), "--remove"]) == 0
    out = capsys.readouterr().out
    assert not (extensions / FOLDER).exists() and extensions.exists()
    stop = "taskkill /PID 4242" if sys.platform == "win32" else "kill 4242"
    assert out.startswith(f"Removed the CLIPasso extension from {extensions / FOLDER}; restart Inkscape.\n"
                          f"A backend the extension started may still run as process 4242; stop it with `{stop}`.\n")
    assert "Jobs, with copies of their photos, stay in " in out
    assert main(["install-inkscape", "--dir", str(extensions), "--remove"]) == 0
    assert "nothing to remove" in capsys.readouterr().out


def test_a_backend_uninstalled_since_is_said_so(tmp_path: Path) -> None:
    """After `pip uninstall`, the extension's recorded backend fails with "No module named clipasso": the
    message said to start it in a terminal the same way, which cannot work."""
    import_extension()
    from inkex.utils import ABORT_STATUS

    assert main(["install-inkscape", "--dir", str(tmp_path)]) == 0
    config = tmp_path / FOLDER / CONFIG
    recorded = json.loads(config.read_text())
    python = tmp_path / "venv-gone" / "bin" / "python3"  # the environment removed with the package
    config.write_text(json.dumps({**recorded, "command": [str(python), "-m", "clipasso", "serve"]}))
    done = subprocess.run(
        [sys.executable, str(tmp_path / FOLDER / "clipasso_sketch.py"), "--id=cat",
         f"--backend_url=http://127.0.0.1:{free_port()}", str(DATA / "linked.svg")],
        capture_output=True, text=True, timeout=300, env=extension_env(), cwd=tmp_path / FOLDER,
    )
    assert done.returncode == ABORT_STATUS % 256
    assert "The CLIPasso backend that `clipasso install-inkscape` recorded is no longer installed" in done.stderr
    assert f"delete the folder {tmp_path / FOLDER}" in done.stderr and "Traceback" not in done.stderr


def test_a_backend_of_another_version_is_said(tmp_path: Path) -> None:
    """clipasso upgraded without installing the extension again: its files stay those of the old release."""
    import_extension()
    from clipasso_client import version_note

    config, pid = tmp_path / CONFIG, tmp_path / "clipasso_backend.pid"
    config.write_text(json.dumps({"command": ["python3"], "version": "0.10.0"}))
    assert version_note({"version": "0.10.0"}, str(config), str(pid)) is None
    assert version_note({"version": "0.11.0"}, str(config), str(pid)) == (
        "the backend is clipasso 0.11.0 but this extension was installed by 0.10.0: run `clipasso install-inkscape` "
        "again to update it")
    # Installed again after an upgrade while the old backend runs: installing again would not help.
    pid.write_text("4242\n")
    stop = "taskkill /PID 4242" if sys.platform == "win32" else "kill 4242"
    assert version_note({"version": "0.9.1"}, str(config), str(pid)) == (
        f"the running backend is clipasso 0.9.1, older than this extension's 0.10.0: stop process 4242 ({stop}) "
        "and run the extension again, which then starts the new one")
    assert version_note({"version": "0.2.0"}, str(tmp_path / "none.json"), str(pid)) is None  # not installed so


def test_default_folder_is_inkscapes_user_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("INKSCAPE_PROFILE_DIR", str(tmp_path / "profile"))
    assert user_extensions_dir() == tmp_path / "profile" / "extensions"
    monkeypatch.delenv("INKSCAPE_PROFILE_DIR")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    if sys.platform.startswith("linux"):
        # What Inkscape reports where it is installed, else the XDG default: the same folder on Linux.
        assert user_extensions_dir() == tmp_path / "config" / "inkscape" / "extensions"
    if INKSCAPE:
        reported = subprocess.run([INKSCAPE, "--user-data-directory"], capture_output=True, text=True, timeout=60)
        assert user_extensions_dir() == Path(reported.stdout.strip()) / "extensions"


def test_unwritable_folder_is_one_line(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["install-inkscape", "--dir", str(blocker / "extensions")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("clipasso: error: cannot write to ") and err.count("\n") == 1


def test_installed_extension_says_how_to_start_a_backend_that_fails_to_start(tmp_path: Path) -> None:
    """The extension starts the recorded backend (for real) when nothing answers; this one refuses to start
    (a token shorter than the backend allows), and the message carries its reason and the command."""
    import_extension()
    from inkex.utils import ABORT_STATUS  # what inkex exits with after an AbortExtension message

    assert main(["install-inkscape", "--dir", str(tmp_path)]) == 0
    port = free_port()
    done = subprocess.run(
        [sys.executable, str(tmp_path / FOLDER / "clipasso_sketch.py"), "--id=cat",
         f"--backend_url=http://127.0.0.1:{port}", "--token=short", str(DATA / "linked.svg")],
        capture_output=True, text=True, timeout=300, env=extension_env(), cwd=tmp_path / FOLDER,
    )
    assert (done.returncode, done.stdout) == (ABORT_STATUS % 256, "")
    assert "starting it failed: it exited with code 2" in done.stderr
    assert "--token must be at least 16 characters" in done.stderr
    assert f"serve --host 127.0.0.1 --port {port} --token short\n" in done.stderr
    assert "Traceback" not in done.stderr
    assert (tmp_path / FOLDER / "clipasso_backend.log").exists()


def test_a_second_port_names_the_backend_that_holds_the_data_folder(tmp_path: Path) -> None:
    """The user changes the port in Backend URL while the backend the extension started runs on the old one:
    the new start is refused (one backend per data folder), and the message names where the running one
    answers. The log is appended to (truncating it under the running backend left a file of NULs) and
    the pid file still names the running backend."""
    import_extension()
    from inkex.utils import ABORT_STATUS

    assert main(["install-inkscape", "--dir", str(tmp_path)]) == 0
    folder = tmp_path / FOLDER
    env = extension_env(XDG_DATA_HOME=str(tmp_path / "data"), CLIPASSO_OFFLINE="1")

    def run(port: int) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(folder / "clipasso_sketch.py"), "--id=cat", "--window=false", *FAST,
             f"--backend_url=http://127.0.0.1:{port}", str(DATA / "linked.svg")],
            capture_output=True, text=True, timeout=300, env=env, cwd=folder)

    first, second = free_port(), free_port()
    try:
        done = run(first)
        assert done.returncode == 0, done.stderr
        pid = (folder / "clipasso_backend.pid").read_text()
        done = run(second)
        assert (done.returncode, done.stdout) == (ABORT_STATUS % 256, "")
        assert done.stderr.startswith(f"Another CLIPasso backend already runs at http://127.0.0.1:{first}, and only "
                                      f"one may use the data folder. Set Backend URL on the Backend page to "
                                      f"http://127.0.0.1:{first}"), done.stderr
        log = (folder / "clipasso_backend.log").read_bytes()
        assert b"\0" not in log and log.count(b"the extension starts: ") == 2
        assert (folder / "clipasso_backend.pid").read_text() == pid
    finally:
        stop_backend(folder / "clipasso_backend.pid")


def test_the_log_goes_to_the_users_state_folder_when_the_extension_folder_is_read_only(tmp_path, monkeypatch):
    """A system-wide installation cannot be written by the user: starting the backend failed, blamed on the
    Python interpreter."""
    import_extension()
    from clipasso_client import _open_log

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")  # the log cannot be made under it, even by root
    log, path = _open_log(str(blocked / "clipasso_backend.log"), ["clipasso", "serve"])
    with log:
        log.write(b"hello\n")
    assert path == str(tmp_path / "state" / "clipasso" / "clipasso_backend.log")
    assert Path(path).read_text().endswith("the extension starts: clipasso serve\nhello\n")
