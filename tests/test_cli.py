"""`clipasso sketch` as a person runs it: real files in, SVG and PNG out, one-line errors with exit 2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from disks import fill, tmpfs
from PIL import Image
from skimage import data

from clipasso.cli import STOPPING_SIGNALS, main


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("in") / "coffee.jpg"
    Image.fromarray(data.coffee()).save(p, quality=90)
    return p


def test_sketch_command_writes_svg_preview_and_json(photo, tmp_path):
    svg, png = tmp_path / "out.svg", tmp_path / "out.png"
    run = subprocess.run(
        [sys.executable, "-m", "clipasso", "sketch", str(photo), "-o", str(svg), "--preview", str(png),
         "--strokes", "6", "--iterations", "20", "--encoder", "lite0", "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)  # stdout is the JSON line alone
    assert summary["strokes"] == 6 and summary["encoder"] == "lite0" and summary["output"] == str(svg)
    # The kept run's iterations (20, as asked), and every run's steps with the raced starts (2 more, 15 each):
    # "iterations" said 50 beside the options' 20.
    assert (summary["iterations"], summary["steps"], summary["options"]["iterations"]) == (20, 50, 20)
    assert svg.read_text().count("<path") == 6
    with Image.open(png) as im:
        assert im.size == (600, 400)
        assert im.getextrema()[0] < 128  # some ink
    assert "encoder lite0" in run.stderr and "Traceback" not in run.stderr
    assert not list(tmp_path.glob("*.part"))


def bad(tmp_path: Path, photo: Path) -> dict:
    notimg = tmp_path / "notes.png"
    notimg.write_text("hello")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(photo.read_bytes()[:5000])
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (1, 1)).save(tiny)
    out = str(tmp_path / "o.svg")
    no_paths = tmp_path / "empty.svg"
    no_paths.write_text('<svg xmlns="http://www.w3.org/2000/svg"><text>hello</text></svg>')
    too_many = tmp_path / "many.svg"
    too_many.write_text('<svg xmlns="http://www.w3.org/2000/svg">' + '<path d="M 1 1 L 9 9"/>' * 513 + "</svg>")
    huge = tmp_path / "huge.svg"  # one path of 2.4 MB: more than any outline drawn by hand
    huge.write_text('<svg xmlns="http://www.w3.org/2000/svg"><path d="M 1 1' + " L 9 9" * 400_000 + '"/></svg>')
    off = tmp_path / "off.svg"
    off.write_text('<svg xmlns="http://www.w3.org/2000/svg"><path d="M 700 500 L 900 900"/></svg>')
    return {
        "missing file": ([str(tmp_path / "none.jpg"), "-o", out], "no such file"),
        "not an image": ([str(notimg), "-o", out], "not an image"),
        "truncated": ([str(truncated), "-o", out], "corrupt or truncated"),
        "1x1": ([str(tiny), "-o", out], "too small"),
        "strokes 0": ([str(photo), "-o", out, "--strokes", "0"], "strokes must be between 1 and 512"),
        "strokes 513": ([str(photo), "-o", out, "--strokes", "513"], "strokes must be between 1 and 512"),
        "iterations 0": ([str(photo), "-o", out, "--iterations", "0"], "iterations must be between 1"),
        "no such folder": ([str(photo), "-o", str(tmp_path / "nope" / "o.svg")], "does not exist"),
        "not svg": ([str(photo), "-o", str(tmp_path / "o.png")], "must be an .svg"),
        "cuda absent": ([str(photo), "-o", out, "--device", "cuda"], "no CUDA GPU"),
        "output is the input": ([str(photo), "-o", out, "--preview", str(photo)], "that is the input photo"),
        "preview is the svg": ([str(photo), "-o", out, "--preview", out], "cannot be the same file"),
        "keep missing": ([str(photo), "-o", out, "--keep", str(tmp_path / "none.svg")], "no such file"),
        "keep not svg": ([str(photo), "-o", out, "--keep", str(photo)], f"--keep {photo}: not an SVG file ("),
        "keep no paths": ([str(photo), "-o", out, "--keep", str(no_paths)], f"--keep {no_paths}: has no <path>"),
        "keep 513 paths": ([str(photo), "-o", out, "--keep", str(too_many)], "at most 512"),
        "keep over 2 MB": ([str(photo), "-o", out, "--keep", str(huge)], f"--keep {huge}: the SVG is over 2 MB"),
        "weights missing": ([str(photo), "-o", out, "--weights", str(tmp_path / "RN101.pt")],
                            f"weights: {tmp_path / 'RN101.pt'}: no such file"),
        "refine off the photo": ([str(photo), "-o", out, "--refine", str(off)], "its path does not lie on"),
        "subject not svg": ([str(photo), "-o", out, "--subject", str(photo)], "not an SVG file"),
        "subject, focus none": ([str(photo), "-o", out, "--subject", str(off), "--focus", "none"], "needs focus auto"),
        "subject off the photo": ([str(photo), "-o", out, "--subject", str(off)], f"--subject {off}: its path does not lie on"),
        "levels repeated": ([str(photo), "-o", out, "--levels", "8,4,8"], "may appear once"),
        "levels 0": ([str(photo), "-o", out, "--levels", "4,0"], "levels: each level must be between 1 and 512"),
        "levels 9": ([str(photo), "-o", out, "--levels", "9,8,7,6,5,4,3,2,1"], "1 to 8"),
        "levels text": ([str(photo), "-o", out, "--levels", "many"], "separated by commas"),
    }


CASES = ["missing file", "not an image", "truncated", "1x1", "strokes 0", "strokes 513", "iterations 0",
         "no such folder", "not svg", "cuda absent", "output is the input", "preview is the svg",
         "keep missing", "keep not svg", "keep no paths", "keep 513 paths", "keep over 2 MB", "weights missing",
         "refine off the photo",
         "subject not svg", "subject, focus none", "subject off the photo",
         "levels repeated", "levels 0", "levels 9", "levels text"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_one_line_exit_2(case, photo, tmp_path, capsys):
    if case == "cuda absent":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    argv, message = bad(tmp_path, photo)[case]
    assert main(["sketch", *argv, "--encoder", "lite0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("clipasso: error:") and message in err and "\n" not in err
    assert not (tmp_path / "o.svg").exists() and not list(tmp_path.glob("*.part"))


def test_keep_adds_new_strokes_after_the_artist_paths(photo, tmp_path, capsys):
    mine = tmp_path / "mine.svg"
    mine.write_text('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 600 400">'
                    '<path d="M 200 100 A 100 80 0 1 1 400 100 Z" stroke-width="5"/>'
                    '<path d="M 5000 10 L 5100 10"/></svg>')
    out = tmp_path / "out.svg"
    assert main(["sketch", str(photo), "-o", str(out), "--keep", str(mine), "--strokes", "3", "--iterations", "2",
                 "--encoder", "lite0"]) == 0
    said = f"clipasso: warning: --keep {mine}: 1 of its 2 paths lies off the 600x400 photo and is ignored\n"
    assert said in capsys.readouterr().err
    text = out.read_text()
    assert text.count("<path") == 4 and text.index('d="M 200 100 A 100 80 0 1 1 400 100 Z"') < text.index("stroke-1")
    # Refining that result starts from its 4 paths and adds none unless asked.
    again = tmp_path / "again.svg"
    assert main(["sketch", str(photo), "-o", str(again), "--refine", str(out), "--iterations", "1",
                 "--encoder", "lite0", "--quiet"]) == 0
    assert again.read_text().count("<path") == 4


def test_the_input_photo_is_never_overwritten(photo, tmp_path, capsys):
    linked = tmp_path / "same.jpg"
    linked.symlink_to(photo)
    before = photo.read_bytes()
    assert main(["sketch", str(photo), "-o", str(tmp_path / "o.svg"), "--preview", str(linked)]) == 2
    assert "that is the input photo" in capsys.readouterr().err and photo.read_bytes() == before


def test_the_artists_own_files_are_never_overwritten(photo, tmp_path, capsys):
    """-o or --preview naming the --keep, --refine or --subject file is refused before anything is written."""
    mine = tmp_path / "mine.svg"
    mine.write_text('<svg xmlns="http://www.w3.org/2000/svg"><path d="M 10 10 L 100 100 L 10 100 Z"/></svg>')
    before = mine.read_bytes()
    for option in ("--keep", "--refine", "--subject"):
        for argv in (["-o", str(mine)], ["-o", str(tmp_path / "o.svg"), "--preview", str(mine)]):
            assert main(["sketch", str(photo), *argv, option, str(mine), "--encoder", "lite0"]) == 2
            assert f"that is the {option} file" in capsys.readouterr().err and mine.read_bytes() == before
    assert main(["sketch", str(photo), "-o", str(tmp_path / "o.svg"), "--preview", str(tmp_path / "p.jpg")]) == 2
    assert "the preview must be a .png file" in capsys.readouterr().err


def test_a_folder_that_cannot_be_written_is_refused_before_the_sketch(photo, tmp_path, capsys):
    if os.geteuid() == 0:  # root writes through permissions: a folder of the kernel's, then
        folder = Path("/sys")
        if not folder.is_dir():
            pytest.skip("no /sys here")
    else:
        folder = tmp_path / "locked"
        folder.mkdir(mode=0o500)
    assert main(["sketch", str(photo), "-o", str(folder / "o.svg"), "--encoder", "lite0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"clipasso: error: {folder}: cannot write there (") and "\n" not in err  # denied, read-only


def test_a_photo_piped_in(photo, tmp_path):
    """`-` reads the photo from standard input; nothing piped in is one line and exit 2."""
    out = tmp_path / "piped.svg"
    args = [sys.executable, "-m", "clipasso", "sketch", "-", "-o", str(out), "--strokes", "3", "--iterations", "1",
            "--encoder", "lite0", "--quiet"]
    done = subprocess.run(args, input=photo.read_bytes(), capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert out.read_text().count("<path") == 3 and 'viewBox="0 0 600 400"' in out.read_text()
    empty = subprocess.run(args, input=b"", capture_output=True, timeout=300)
    assert (empty.returncode, empty.stderr) == (2, b"clipasso: error: standard input is empty\n")


def test_a_disk_that_fills_during_the_sketch_is_one_line(photo, tmp_path):
    """A real disk (a 1 MB tmpfs) that fills up after the folder was checked, while the sketch runs: the
    SVG cannot be written, which is one line and exit 2, and nothing is left on the disk but the filler."""
    with tmpfs(tmp_path / "disk", "1m") as disk:
        out = disk / "o.svg"
        run = subprocess.Popen(
            [sys.executable, "-m", "clipasso", "sketch", str(photo), "-o", str(out), "--strokes", "2",
             "--iterations", "40", "--encoder", "lite0"], stderr=subprocess.PIPE, text=True)
        try:
            while not (line := run.stderr.readline()).startswith("clipasso: sketching;"):
                assert line, "the sketch ended before its first step"
            fill(disk)
            rest = run.communicate(timeout=300)[1]
        finally:
            run.kill()
        assert run.returncode == 2, rest
        assert rest.splitlines()[-1] == f"clipasso: error: {out}: could not be written (No space left on device)"
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]


def _sketching(photo: Path, svg: Path, ignored: tuple[int, ...] = ()) -> subprocess.Popen:
    """`clipasso sketch` of 10,000 iterations, once its first step is done; started with the stopping signals
    at their defaults, whatever this test run inherited (`nohup` ignores SIGHUP), but `ignored`."""
    def signals() -> None:
        for n in STOPPING_SIGNALS:
            signal.signal(n, signal.SIG_IGN if n in ignored else signal.SIG_DFL)

    run = subprocess.Popen(
        [sys.executable, "-m", "clipasso", "sketch", str(photo), "-o", str(svg), "--strokes", "4", "--iterations",
         "10000", "--encoder", "lite0"], stderr=subprocess.PIPE, text=True, preexec_fn=signals)
    encoder = run.stderr.readline()  # as soon as the encoder is loaded, before any step
    assert encoder == "clipasso: encoder lite0 (as asked)\n", encoder
    first = run.stderr.readline()  # printed once the first step is done
    assert first.startswith("clipasso: sketching; Ctrl-C stops and keeps the best strokes so far"), first
    return run


@pytest.mark.parametrize("signum", STOPPING_SIGNALS, ids=lambda n: signal.Signals(n).name)
def test_a_stopping_signal_writes_the_best_strokes_and_exits_128_plus_it(photo, tmp_path, signum):
    """Ctrl-C, `timeout`'s SIGTERM and a closed terminal's SIGHUP alike: exit 130, 143 and 129."""
    svg = tmp_path / "stopped.svg"
    run = _sketching(photo, svg)
    try:
        run.send_signal(signum)
        rest = run.communicate(timeout=300)[1]
    finally:
        run.kill()
    assert run.returncode == 128 + signum, rest
    assert "cancelled, best so far: 4 strokes" in rest and svg.read_text().count("<path") == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stopped.svg"]


def test_ctrl_c_ignored_when_started_stays_ignored(photo, tmp_path):
    """A background job of a script starts with SIGINT ignored: the Ctrl-C meant for the script must not stop
    the sketch (it did once the steps began). SIGTERM still does."""
    run = _sketching(photo, tmp_path / "o.svg", ignored=(signal.SIGINT,))
    try:
        run.send_signal(signal.SIGINT)
        run.send_signal(signal.SIGTERM)
        rest = run.communicate(timeout=300)[1]
    finally:
        run.kill()
    assert run.returncode == 128 + signal.SIGTERM, rest
    assert rest.count("stopping after this step") == 1 and "Ctrl-C again" not in rest


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to tell the output's file")
def test_a_signal_while_writing_leaves_the_old_file_and_no_temporary_one(photo, tmp_path, capsys, monkeypatch):
    """Once the sketch is done a stopping signal aborts the writing: the SVG from before stays whole and the
    temporary file is removed (it was left behind)."""
    out = tmp_path / "o.svg"
    out.write_text("before")
    fsync = os.fsync

    def interrupted(fd: int) -> None:
        fsync(fd)
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".part"):
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(os, "fsync", interrupted)

    def unhandled(signum: int, frame: object) -> None:  # (without it a SIGTERM the command missed ends pytest)
        raise AssertionError("the sketch command did not handle SIGTERM")

    before = signal.signal(signal.SIGTERM, unhandled)
    try:
        code = main(["sketch", str(photo), "-o", str(out), "--iterations", "1", "--strokes", "2", "--encoder",
                     "lite0", "--quiet"])
    finally:
        signal.signal(signal.SIGTERM, before)
    assert (code, capsys.readouterr().err) == (128 + signal.SIGTERM, "clipasso: interrupted\n")
    assert out.read_text() == "before" and sorted(p.name for p in tmp_path.iterdir()) == ["o.svg"]


def test_options_that_do_not_apply_are_named(photo, tmp_path, capsys):
    """Strokes beside a ladder (its finest level is the count), weights for the built-in encoder."""
    assert main(["sketch", str(photo), "-o", str(tmp_path / "o.svg"), "--levels", "3,1", "--strokes", "5",
                 "--iterations", "1", "--encoder", "lite0", "--weights", str(photo)]) == 0
    err = capsys.readouterr().err
    assert "clipasso: warning: --strokes 5 is ignored: the finest level of --levels sets the strokes (3)\n" in err
    assert "clipasso: warning: --weights is ignored: it is for the CLIP encoders" in err


def test_diffvg_without_pydiffvg_is_refused_before_the_photo_is_read(without_pydiffvg, tmp_path, capsys):
    assert main(["sketch", str(tmp_path / "none.jpg"), "-o", str(tmp_path / "o.svg"), "--renderer", "diffvg"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("clipasso: error: renderer 'diffvg' needs pydiffvg") and "\n" not in err
    assert "https://github.com/BachiLi/diffvg" in err and "no such file" not in err


def test_unknown_encoder_is_refused_by_argparse(photo, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["sketch", str(photo), "-o", str(tmp_path / "o.svg"), "--encoder", "clip:ViT-L/14"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "invalid choice" in err and "\n" not in err


def test_failed_run_keeps_the_old_output(photo, tmp_path, capsys):
    out = tmp_path / "o.svg"
    out.write_text("<svg>my earlier sketch</svg>")
    assert main(["sketch", str(photo), "-o", str(out), "--strokes", "9999"]) == 2
    assert out.read_text() == "<svg>my earlier sketch</svg>"


def test_outputs_have_ordinary_permissions(tmp_path):
    from clipasso.files import write_atomic

    fresh = tmp_path / "fresh.svg"
    write_atomic(fresh, "<svg/>")
    umask = os.umask(0)
    os.umask(umask)
    assert fresh.stat().st_mode & 0o777 == 0o666 & ~umask
    kept = tmp_path / "kept.svg"
    kept.write_text("old")
    kept.chmod(0o640)
    write_atomic(kept, "<svg/>")
    assert kept.read_text() == "<svg/>" and kept.stat().st_mode & 0o777 == 0o640
    risky = tmp_path / "risky.svg"
    risky.write_text("old")
    risky.chmod(0o4755)  # setuid: never carried over to the new file
    write_atomic(risky, "<svg/>")
    assert risky.stat().st_mode & 0o7777 == 0o755 & ~umask
    private = tmp_path / "private.json"
    write_atomic(private, "{}", mode=0o600)
    assert private.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh.svg", "kept.svg", "private.json", "risky.svg"]


@pytest.mark.skipif(sys.platform == "win32", reason="symbolic links need privileges on Windows")
def test_an_output_that_is_a_link_is_written_through(photo, tmp_path):
    """`-o out.svg` where out.svg links to the artist's file elsewhere: the file is replaced, the link stays
    (before, the link itself was replaced by a file and the target kept its old content)."""
    elsewhere = tmp_path / "real"
    elsewhere.mkdir()
    (elsewhere / "target.svg").write_text("old")
    link = tmp_path / "out.svg"
    link.symlink_to(elsewhere / "target.svg")
    assert main(["sketch", str(photo), "-o", str(link), "--iterations", "1", "--strokes", "2", "--encoder", "lite0",
                 "--quiet"]) == 0
    assert link.is_symlink() and (elsewhere / "target.svg").read_text().count("<path") == 2
    assert sorted(p.name for p in elsewhere.iterdir()) == ["target.svg"]
