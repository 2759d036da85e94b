"""The .inx file: inkex's own check (parameters, types and defaults match the script's arguments), and
what the issue asks of the dialog."""

from __future__ import annotations

import os

from extension_support import EXTENSION_DIR, import_extension

import_extension()

from inkex.inx import InxFile  # noqa: E402
from inkex.tester import TestCase  # noqa: E402
from inkex.tester.inx import InxMixin  # noqa: E402

INX = str(EXTENSION_DIR / "clipasso.inx")
PLACE_INX = str(EXTENSION_DIR / "clipasso_place.inx")


class TestInx(InxMixin, TestCase):
    def test_inx_matches_the_script(self) -> None:
        cwd = os.getcwd()
        os.chdir(EXTENSION_DIR)  # InxFile imports the script by its path relative to the .inx
        try:
            self.assertInxIsGood(INX)
            self.assertInxIsGood(PLACE_INX)
        finally:
            os.chdir(cwd)

    def test_placing_a_job_is_a_menu_item_of_its_own(self) -> None:
        """A job id typed on Line sketch's Backend page stayed in Inkscape's preferences, and every later
        Line sketch placed that old result over whatever photo was selected."""
        assert "job_id" not in {p.name for p in InxFile(INX).params}
        inx = InxFile(PLACE_INX)
        assert inx.ident == "org.clipasso.place" and inx.menu == ["CLIPasso", "Place a job's result"]
        assert {p.name for p in inx.params} == {"tab", "job_id", "stroke_width", "backend_url", "token", "timeout", "window"}
        # The settings both restate alike: their type, limits and defaults.
        sketch = {p.name: p for p in InxFile(INX).params}
        for param in inx.params:
            if param.name in sketch and param.name != "tab":
                shared = sketch[param.name]
                assert (param.param_type, param.get("min"), param.get("max"), param.text) == (
                    shared.param_type, shared.get("min"), shared.get("max"), shared.text), param.name

    def test_menu_pages_and_parameters(self) -> None:
        inx = InxFile(INX)
        assert inx.ident == "org.clipasso.sketch"
        assert inx.menu == ["CLIPasso", "Line sketch"]
        assert inx.metadata["type"] == "effect" and inx.metadata["preview"] is False
        pages = [p.get("name") for p in inx.xml.xpath("//page")]
        assert pages == ["options", "backend", "help"]
        params = {p.name: p for p in inx.params}
        assert (params["strokes"].get("min"), params["strokes"].get("max"), params["strokes"].text) == ("0", "512", "16")
        assert params["paths"].options == ["keep", "refine", "ignore"]  # the first, keep, is the default
        assert params["levels"].text in (None, "")
        assert params["iterations"].text == "0"
        assert params["backend_url"].text == "http://127.0.0.1:8765"
        assert params["encoder"].options == ["auto", "lite0", "clip:RN101", "clip:RN50", "clip:ViT-B/32"]
        assert params["renderer"].options == ["auto", "torch", "diffvg"]
        assert params["focus"].options == ["auto", "none"]
        assert {"seed", "stroke_width", "token", "timeout"} <= set(params)
        assert params["window"].param_type == "bool" and params["window"].text == "true"
