"""The progress window of Line sketch: the photo with its strokes as they form, progress, Stop and place, Cancel.

Built with inkex.gui (GTK 3, which Inkscape ships with its Python) from clipasso_window.ui. The window
shows a SketchRun and passes on the user's choice; the run does the backend work in a thread of its own,
so the window never freezes. It closes by itself when the run reaches a final phase (every job finished,
or Stop and place went through); Cancel, or closing it, cancels the run and closes it at once. The strokes are the backend's preview SVG, drawn
by GdkPixbuf's SVG loader (librsvg, which Inkscape itself needs) over a faded thumbnail of the photo.
"""

from __future__ import annotations

import os
import threading
import time

from gi.repository import GdkPixbuf, GLib
from inkex.gui import GtkApp, Window

from clipasso_jobs import Phase, Photo, SketchRun

HERE = os.path.dirname(os.path.abspath(__file__))
#: The photo is shown at most this large (the window's picture area).
PREVIEW_SIZE = (456, 320)
#: How opaque the white over the photo is (0-255), so that black strokes stand out on any photo.
FADE = 130
#: How often the elapsed and remaining times are updated when no event arrives.
TICK_MS = 500
#: How long a cancelled run may take to tell the backend before the extension ends anyway.
CANCEL_WAIT_S = 10.0


class ProgressWindow(Window):
    """The window; `gapp.kwargs["run"]` is the run it shows (inkex.gui builds windows without arguments)."""

    name = "clipasso_window"

    def load_widgets(self) -> None:
        self.run: SketchRun = self.gapp.kwargs["run"]
        self.backdrops = [backdrop(photo) for photo in self.run.photos]
        self.drawn: tuple = ()  # (photo, preview) on show, so that an unchanged picture is not drawn again
        self.pending = False
        self.widget("overall").set_visible(len(self.run.photos) > 1)
        self.widget("stop").grab_focus()
        self.run.on_change = self.changed
        self.changed()  # once GTK's main loop runs: the run may already be over, and the window must then go
        GLib.timeout_add(TICK_MS, self.tick)

    # ----- from the run's threads ------------------------------------------------------------------

    def changed(self) -> None:
        """The run changed: refresh once in GTK's thread (several changes before it make one refresh)."""
        if not self.pending:
            self.pending = True
            GLib.idle_add(self.refresh)

    # ----- GTK's thread ----------------------------------------------------------------------------

    def refresh(self) -> bool:
        self.pending = False
        if self.dead:
            return False
        if self.run.phase.final:
            self.destroy()  # ends GTK's main loop; the effect then acts on the run's phase
            return False
        report = self.run.report(time.monotonic())
        self.widget("photo").set_text(report.title)
        self.widget("progress").set_fraction(report.fraction)
        self.widget("progress").set_text(report.bar)
        self.widget("details").set_text(report.details)
        self.widget("overall").set_fraction(self.run.progress())
        self.widget("overall").set_text(report.overall)
        self.widget("stop").set_sensitive(self.run.phase != Phase.STOPPING)
        photo = self.run.current()
        if self.drawn != (photo, photo.preview):
            self.drawn = (photo, photo.preview)
            self.widget("preview").set_from_pixbuf(picture(self.backdrops[self.run.photos.index(photo)], photo.preview))
        return False

    def tick(self) -> bool:
        self.refresh()
        return not self.dead

    def on_stop(self, *_args) -> None:
        """Stop and place: the window stays, saying so, until the best strokes are in."""
        self.run.stop()
        self.refresh()

    def on_cancel(self, *_args) -> None:
        self.destroy()  # show_progress cancels the run once the window is gone

    def on_close(self, *_args) -> bool:
        return False  # let GTK destroy the window: closing it is Cancel


def show_progress(run: SketchRun) -> None:
    """Show the window while the run goes on in a thread; returns when the run is over.

    The window goes when the run has ended, or earlier when the user cancels or closes it (or something
    else destroys it): the run is then cancelled, and waited for while it tells the backend.
    """
    run.previews = True
    worker = threading.Thread(target=run.run, name="clipasso-run", daemon=True)
    worker.start()
    GtkApp(start_loop=True, app_name="clipasso", ui_dir=HERE, windows=[ProgressWindow], run=run)
    if not run.phase.final:
        run.cancel()
        if run.phase != Phase.STARTING:  # still reaching the backend: no job to cancel yet (or an attached one)
            worker.join(CANCEL_WAIT_S)


def backdrop(photo: Photo) -> GdkPixbuf.Pixbuf:
    """The photo, faded, fitted into PREVIEW_SIZE; white where GdkPixbuf cannot read the photo."""
    width, height = fit(photo.picture.width, photo.picture.height)
    try:
        loader = GdkPixbuf.PixbufLoader()
        loader.write(photo.picture.data)
        loader.close()
        image = loader.get_pixbuf().apply_embedded_orientation().scale_simple(width, height, GdkPixbuf.InterpType.BILINEAR)
        image = image.add_alpha(False, 0, 0, 0)
    except GLib.Error:
        image = None
    white = GdkPixbuf.Pixbuf.new(GdkPixbuf.Colorspace.RGB, True, 8, width, height)
    white.fill(0xFFFFFFFF)
    if image is None:
        return white
    white.composite(image, 0, 0, width, height, 0, 0, 1, 1, GdkPixbuf.InterpType.NEAREST, FADE)
    return image


def picture(backdrop_image: GdkPixbuf.Pixbuf, preview: bytes) -> GdkPixbuf.Pixbuf:
    """The backdrop with the preview's strokes drawn over it at the same scale."""
    if not preview:
        return backdrop_image
    width, height = backdrop_image.get_width(), backdrop_image.get_height()
    try:
        loader = GdkPixbuf.PixbufLoader.new_with_type("svg")
        loader.set_size(width, height)
        loader.write(preview)
        loader.close()
        strokes = loader.get_pixbuf()
    except GLib.Error:
        return backdrop_image  # not an SVG this librsvg reads: the photo alone
    shown = backdrop_image.copy()
    strokes.composite(shown, 0, 0, width, height, 0, 0, width / strokes.get_width(), height / strokes.get_height(),
                      GdkPixbuf.InterpType.BILINEAR, 255)
    return shown


def fit(width: int, height: int) -> tuple[int, int]:
    """The size of a width x height picture scaled to fit PREVIEW_SIZE, keeping its proportions."""
    scale = min(PREVIEW_SIZE[0] / width, PREVIEW_SIZE[1] / height)
    return max(1, round(width * scale)), max(1, round(height * scale))
