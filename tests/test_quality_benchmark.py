"""benchmarks/quality.py, small: its JSON lines and sheet on two photos, and judges that can tell."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPT = BENCHMARKS / "quality.py"


@pytest.fixture(scope="module")
def quality():
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(BENCHMARKS))
        import quality

        yield quality


@pytest.fixture(scope="module")
def judge(quality):
    return quality.Judge()


def test_quality_benchmark_reports_every_sketch_every_photo_and_a_summary(quality, tmp_path: Path):
    sheet, saved, earlier = tmp_path / "sheet.png", tmp_path / "lines.json", tmp_path / "earlier.json"
    # An earlier run that sketched only chelsea, seed 2: one pair to compare (this run's one seed is 2).
    earlier.write_text(json.dumps({"kind": "sketch", "photo": "chelsea", "seed": 2, "loss": 1.0, "margin": -0.5,
                                   "ink_on_edges": 0.25, "recognised": False}) + "\n")
    out = subprocess.run([sys.executable, str(SCRIPT), "--photos", "chelsea,coffee", "--seeds", "1", "--first-seed", "2",
                          "--iterations", "2", "--threads", "1", "-o", str(sheet), "--json-output", str(saved),
                          "--against", str(earlier)],
                         capture_output=True, text=True, timeout=600, check=True)
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    comparison = rows.pop()
    assert comparison["kind"] == "comparison" and comparison["pairs"] == 1
    assert comparison["loss"] == {"mean_difference": round(rows[0]["loss"] - 1.0, 4), "standard_error": None}
    assert comparison["margin"]["mean_difference"] == round(rows[0]["margin"] + 0.5, 4)
    assert comparison["recognised"] == {"this": int(rows[0]["recognised"]), "against": 0}
    rows.append(comparison)
    assert rows == [json.loads(line) for line in saved.read_text().splitlines()]
    assert [(r["kind"], r["photo"]) for r in rows[:4]] == [("sketch", "chelsea"), ("sketch", "coffee"),
                                                           ("photo", "chelsea"), ("photo", "coffee")]
    for r in rows[:2]:
        assert r["seed"] == 2 and r["iterations"] == 2 and r["seconds"] > 0 and r["loss"] > 0
        assert r["rank"] in (1, 2) and r["recognised"] == (r["rank"] == 1) == (r["margin"] > 0)
        assert (r["taken_for"] == r["photo"]) == r["recognised"] and r["taken_for"] in ("chelsea", "coffee")
        assert set(r["ranks"]) == set(quality.JUDGES) and r["ranks"]["outlines"] == r["rank"]
        assert 0 <= r["ink_on_edges"] <= 1
    for sketched, photo in zip(rows[:2], rows[2:4]):
        assert photo["recognised"] == float(sketched["recognised"]) and photo["worst_seed"] == 2
        assert photo["ink_on_edges"] == {"worst": sketched["ink_on_edges"], "median": sketched["ink_on_edges"]}
        assert 0 < photo["edge_area"] < 1
        assert photo["tracing"]["rank"] in (1, 2) and photo["tracing"]["taken_for"] in ("chelsea", "coffee")
        assert (photo["tracing"]["rank"] == 1) == (photo["tracing"]["margin"] > 0)
        agree = photo["focus"]
        assert agree["source"] in ("grabcut", "saliency") and 0 < agree["iou"] <= min(agree["precision"], agree["recall"])
    # The cat fills the frame (no hand-drawn outline), so whatever the engine finds is subject.
    assert rows[2]["focus"]["precision"] == 1 and rows[3]["focus"]["recall"] > 0.5
    summary = rows[4]
    assert summary["focus_iou"] == round((rows[2]["focus"]["iou"] + rows[3]["focus"]["iou"]) / 2, 4)
    assert summary["kind"] == "summary" and (summary["photos"], summary["seeds"], summary["sketches"]) == (2, 1, 2)
    assert summary["first_seed"] == 2
    assert summary["recognised"] == sum(r["recognised"] for r in rows[:2]) / 2
    assert summary["tracings_recognised"] == sum(p["tracing"]["rank"] == 1 for p in rows[2:4]) / 2
    assert summary["settings"]["strokes"] == 16 and summary["settings"]["encoder"] == "lite0"
    with Image.open(sheet) as im:  # photo | its one seed's sketch | tracing, two rows with their labels
        assert im.size == (3 * 160, 2 * (160 + 16))


def test_an_unknown_option_is_one_line_and_exit_2(quality, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["quality.py", "--photos", "chelsea", "--option", "colour=red"])
    with pytest.raises(SystemExit) as stop:
        quality.main()
    out = capsys.readouterr()
    assert stop.value.code == 2 and out.out == ""
    assert out.err.startswith("quality.py: --option colour: not an option here") and out.err.count("\n") == 1


def test_a_negative_first_seed_is_one_line_and_exit_2(quality, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["quality.py", "--photos", "chelsea", "--first-seed", "-1"])
    with pytest.raises(SystemExit) as stop:
        quality.main()
    out = capsys.readouterr()
    assert stop.value.code == 2 and out.out == "" and out.err == "quality.py: --first-seed must be at least 0, got -1\n"


def test_comparing_with_a_file_that_is_no_run_is_one_line_and_exit_2(quality, monkeypatch, capsys, tmp_path):
    for text, why in (("not json\n", "not the JSON lines of a quality.py run"), ('{"kind": "summary"}\n', "no sketch lines")):
        (tmp_path / "run.json").write_text(text)
        monkeypatch.setattr(sys, "argv", ["quality.py", "--photos", "chelsea", "--against", str(tmp_path / "run.json")])
        with pytest.raises(SystemExit) as stop:
            quality.main()
        out = capsys.readouterr()
        assert stop.value.code == 2 and out.out == "" and why in out.err and out.err.count("\n") == 1


def test_paired_differences_have_their_standard_error(quality):
    mine = [{"photo": "a", "seed": s, "loss": 1.0 + s, "margin": 0.1, "ink_on_edges": 0.5, "recognised": True}
            for s in range(3)]
    theirs = [{**row, "loss": row["loss"] - d, "recognised": False} for row, d in zip(mine, (0.1, 0.2, 0.3))]
    found = quality.compare(mine, theirs[:2] + [{**theirs[2], "photo": "b"}], "x")  # the third has no pair
    assert found["pairs"] == 2 and found["loss"] == {"mean_difference": 0.15, "standard_error": 0.05}
    assert found["margin"] == {"mean_difference": 0.0, "standard_error": 0.0}
    assert found["recognised"] == {"this": 2, "against": 0}


def test_the_judge_picks_each_photo_out_from_its_grey_copy(quality, judge):
    from photos import sample_photo

    photos = [sample_photo(n) for n in ("chelsea", "coffee", "astronaut", "rocket", "flower")]
    colour, grey = judge.embed(photos), judge.embed([p.convert("L") for p in photos])
    for kind in ("features", "logits"):
        found = quality.recognise(grey[kind], colour[kind], list(range(len(photos))))
        assert [f.rank for f in found] == [1] * len(photos) and min(f.margin for f in found) > 0
        assert [f.first for f in found] == list(range(len(photos)))


def test_the_judge_picks_each_photos_outline_from_a_coarser_one(quality, judge):
    from photos import sample_photo

    photos = [sample_photo(n) for n in ("chelsea", "coffee", "astronaut", "rocket", "flower")]
    outlines = judge.embed([quality.outline(p) for p in photos])
    coarser = judge.embed([Image.fromarray(np.where(quality.near_edges(p, (480, round(480 * p.height / p.width)),
                                                                       sigma=6, near=4), 0, 255).astype(np.uint8))
                           for p in photos])
    found = quality.judge_all(coarser, judge.embed(photos), outlines, list(range(len(photos))))["outlines"]
    assert [f.rank for f in found] == [1] * len(photos)


def test_a_tracing_keeps_the_longest_contours_that_hold_the_ink_it_is_given(quality):
    photo = Image.new("L", (480, 240), 255)  # a long bar and a short one: four contours, two long, two short
    photo.paste(0, (40, 40, 440, 80))
    photo.paste(0, (40, 160, 100, 200))
    whole = quality.outline(photo)
    assert quality.tracing(photo, quality.ink(whole)) == whole and quality.tracing(photo, 1e12) == whole
    one = np.asarray(quality.tracing(photo, 1.0)) < 128  # the least ink: the single longest contour
    assert one[:120].any() and not one[120:].any()
    long_bar = quality.tracing(photo, quality.ink(whole) / 2)
    assert quality.ink(long_bar) >= quality.ink(whole) / 2 and not (np.asarray(long_bar)[120:] < 128).any()
    assert quality.ink(quality.tracing(Image.new("L", (480, 240), 255), 100.0)) == 0  # no contours, no ink


def test_hand_drawn_subjects_fill_their_outline_or_the_frame(quality):
    from photos import PHOTOS, SUBJECTS, subject_mask

    assert set(SUBJECTS) == set(PHOTOS)
    assert subject_mask("coins", (30, 20)).shape == (20, 30) and subject_mask("coins", (30, 20)).all()
    flower = subject_mask("flower", (200, 100))  # the dahlia in the middle, the leaves around it not
    assert flower[50, 100] and not flower[5, 5] and not flower[50, 190] and 0.2 < flower.mean() < 0.5


def test_the_oracle_gives_the_hand_drawn_subject_as_the_artists_outline(quality):
    from photos import sample_photo

    from clipasso.options import SketchOptions

    image = sample_photo("ticotico")
    photo, options = quality.Photo.of(image), SketchOptions(encoder="lite0", iterations=1)
    outlined = replace(options, subject=quality.subject_svg("ticotico", image.width, image.height))
    oracle = quality.focus_agreement("ticotico", photo, outlined)
    assert oracle["source"] == "outline" and oracle["iou"] > 0.98  # the outline's soft edge is a pixel or two
    assert quality.focus_agreement("ticotico", photo, options)["source"] == "grabcut"
    coins = quality.focus_agreement("coins", quality.Photo.of(sample_photo("coins")),
                                    replace(options, subject=quality.subject_svg("coins", 384, 303)))
    assert coins["iou"] == 1.0  # the whole frame


def test_ink_on_edges_counts_ink_near_the_photos_edges(quality):
    from photos import sample_photo

    photo = sample_photo("coffee")
    near = quality.near_edges(photo, (224, 149))
    on = Image.fromarray(np.where(near, 0, 255).astype(np.uint8))  # ink exactly where it counts
    off = Image.fromarray(np.where(near, 255, 0).astype(np.uint8))
    assert quality.ink_on_edges(on, near) == 1 and quality.ink_on_edges(off, near) == 0
    assert quality.ink_on_edges(Image.new("L", (224, 149), 255), near) == 0  # no ink at all


def test_options_are_coerced_as_the_sketch_options_say(quality):
    assert quality.parse_options(["stroke_width=2.5", "levels=16,8", "renderer=torch", "strokes=8"]) == {
        "stroke_width": 2.5, "levels": (16, 8), "renderer": "torch", "strokes": 8}
    with pytest.raises(quality.InputError, match="strokes=many: expected int"):
        quality.parse_options(["strokes=many"])
    with pytest.raises(quality.InputError, match="seed: not an option here"):
        quality.parse_options(["seed=3"])
