"""The torch-free request contract: validation, the stroke-width rule, and one source for every limit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from lxml import etree

from clipasso.errors import InputError
from clipasso.options import (
    ENCODER_NAMES,
    FOCUSES,
    MAX_ITERATIONS,
    MAX_SEED,
    MAX_STROKES,
    PRESETS,
    RACE_ITERATIONS,
    RENDERERS,
    SketchOptions,
    available_renderers,
    image_stroke_width,
    parse_levels,
)

INX = Path(__file__).resolve().parents[1] / "inkscape_extension" / "clipasso.inx"


def test_the_contract_imports_without_torch():
    code = "import sys, clipasso.options, clipasso.server.jobs; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_validated_fills_in_the_preset():
    opts = SketchOptions(preset="paper").validated()
    assert (opts.iterations, opts.seeds) == (PRESETS["paper"].iterations, PRESETS["paper"].seeds)
    assert SketchOptions(iterations=7).validated().iterations == 7


def test_planned_iterations_count_the_raced_starts():
    """The default preset races 3 starts for RACE_ITERATIONS iterations, shared among the seeds; progress
    counts every step, so a default sketch plans 130 + 2 x 15 = 160."""
    assert RACE_ITERATIONS == 15 and PRESETS["default"].starts == 3
    planned = {seeds: SketchOptions(seeds=seeds).validated().planned_iterations for seeds in (1, 2, 3)}
    assert planned == {1: 160, 2: 2 * 145, 3: 3 * 130}
    assert SketchOptions(iterations=15).validated().planned_iterations == 15  # no longer than the race: no race
    assert SketchOptions(preset="paper").validated().planned_iterations == 3 * 2000  # one start per seed
    # Refining the artist's strokes alone: every start would be the same strokes, so there is no race.
    refine = '<svg xmlns="http://www.w3.org/2000/svg"><path d="M 1 1 C 5 5 9 9 20 20"/></svg>'
    assert SketchOptions(refine=refine, strokes=0).validated().planned_iterations == 130
    assert SketchOptions(refine=refine, strokes=2).validated().planned_iterations == 160


@pytest.mark.parametrize("kw, message", [
    ({"strokes": 0}, "strokes must be between 1 and 512"),
    ({"strokes": MAX_STROKES + 1}, "strokes must be between 1 and 512"),
    ({"iterations": MAX_ITERATIONS + 1}, "iterations must be between 1 and 10000"),
    ({"seeds": 17}, "seeds must be between 1 and 16"),
    ({"seed": MAX_SEED + 1}, "seed must be between 0 and 2147483647"),
    ({"stroke_width": 0.0}, "stroke width must be above 0"),
    ({"device": "tpu"}, "unknown device 'tpu'"),
    ({"encoder": "clip:RN999"}, "unknown encoder 'clip:RN999'"),
    ({"preset": "fast"}, "unknown preset 'fast'"),
    ({"renderer": "cairo"}, "unknown renderer 'cairo'; choose one of: auto, torch, diffvg"),
])
def test_out_of_range_values_are_one_line_errors(kw, message):
    with pytest.raises(InputError, match=message):
        SketchOptions(**kw).validated()


def test_diffvg_without_pydiffvg_is_a_one_line_error_that_says_how_to_get_it(without_pydiffvg):
    assert available_renderers() == ["auto", "torch"]
    with pytest.raises(InputError, match=r"renderer 'diffvg' needs pydiffvg, which is not installed here: "
                                         r"build it from https://github.com/BachiLi/diffvg") as error:
        SketchOptions(renderer="diffvg").validated()
    assert "\n" not in str(error.value)
    assert SketchOptions(renderer="torch").validated().renderer == "torch"


def test_stroke_width_rule():
    # 3 px at 224 px, scaled to the image's longest side; an explicit width wins.
    assert image_stroke_width(SketchOptions(), 224, 100) == pytest.approx(3.0)
    assert image_stroke_width(SketchOptions(), 448, 300) == pytest.approx(6.0)
    assert image_stroke_width(SketchOptions(stroke_width=2.5), 448, 300) == 2.5


def test_the_extension_states_the_same_limits():
    """The .inx cannot import Python: it restates the limits, and this keeps it honest."""
    ns = {"i": "http://www.inkscape.org/namespace/inkscape/extension"}
    root = etree.parse(str(INX))
    param = {p.get("name"): p for p in root.iterfind(".//i:param", ns)}
    assert int(param["strokes"].get("max")) == MAX_STROKES
    assert int(param["iterations"].get("max")) == MAX_ITERATIONS
    assert int(param["seed"].get("max")) == MAX_SEED
    assert [o.get("value") for o in param["encoder"].iterfind("i:option", ns)] == list(ENCODER_NAMES)
    assert [o.get("value") for o in param["renderer"].iterfind("i:option", ns)] == list(RENDERERS)
    assert [o.get("value") for o in param["focus"].iterfind("i:option", ns)] == list(FOCUSES)


@pytest.mark.parametrize("text, levels", [("32,16,8,4", (32, 16, 8, 4)), (" 8 , 4 ", (8, 4)), ("32 16 8 4", (32, 16, 8, 4)),
                                          ("16", (16,))])
def test_levels_are_separated_by_commas_or_spaces(text, levels):
    """`8 4` asked for one level of 84 strokes: the spaces were dropped."""
    assert parse_levels(text) == levels


@pytest.mark.parametrize("text", ["8,", ",8", "8;4", "8.0,4", "abc", ""])
def test_levels_that_are_no_list_of_counts_are_refused(text):
    with pytest.raises(InputError, match="levels must be stroke counts separated by commas"):
        parse_levels(text)


def test_a_long_bad_levels_field_is_not_echoed_whole():
    """A 2 MB `levels` field came back whole in the 400."""
    with pytest.raises(InputError) as refused:
        parse_levels("8," + "x" * 2_000_000)
    assert len(str(refused.value)) < 200 and str(refused.value).endswith("...'")


def test_a_photo_too_long_and_narrow_for_the_square_canvas_is_warned_of():
    """A 6000x300 panorama is 11 canvas pixels tall, under strokes as wide as for its 6000 px: unreadable."""
    options = SketchOptions().validated()
    (line,) = options.warnings(6000, 300)
    assert line.startswith("the photo is 20.0 times as wide as it is tall: on the square canvas the encoder sees "
                           "it is 11 of 224 pixels tall")
    assert options.warnings(451, 300) == [] and options.warnings(300, 900) == []  # 3:1 still passes


def test_a_tiny_photo_is_warned_of():
    """A 20x20 photo sketched without a word, in strokes 0.27 px wide in its own pixels."""
    assert SketchOptions().validated().warnings(20, 20) == [
        "the photo is only 20x20 pixels: the encoder sees it enlarged to 224 pixels, so expect little detail; a "
        "larger photo gives a finer sketch"]
    assert SketchOptions().validated().warnings(28, 20) == []  # the extension's placement tests sketch 40x30
