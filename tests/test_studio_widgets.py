"""Studio parts that keep the window responsive: reused preview tiles, a settled plot range."""

from __future__ import annotations

from PySide6.QtGui import QPixmap

from studio.views.runs_view import nice_ceiling, settled_range
from studio.widgets import TileGrid


def test_tile_grid_reuses_tiles_and_keeps_pictures_when_growing(qtbot):
    grid = TileGrid(cols=2, side=16)
    qtbot.addWidget(grid)
    first = grid.reset(["a", "b"])
    pix = QPixmap(16, 16)
    pix.fill()
    first[0].set_pixmap(pix)
    kept = list(first)
    grid.ensure(3)
    assert grid.tiles[:2] == kept and len(grid.tiles) == 3
    assert grid.tiles[0]._pix is not None  # ensure() leaves pictures alone
    again = grid.reset(["c"])
    assert again == kept[:1] and again[0].label.text() == "c"
    assert again[0]._pix is None  # reset() empties the tiles it keeps


def test_plot_range_settles_instead_of_following_every_point():
    assert [nice_ceiling(x) for x in (0.3, 7, 10, 10.5, 260, 5001)] == [1, 10, 10, 20, 500, 10000]
    r = settled_range(1.0, 2.0, None)
    assert r[0] < 1.0 and r[1] > 2.0
    assert settled_range(1.1, 1.9, r) is None  # inside and filling most of it: no change
    assert settled_range(1.0, 2.5, r) is not None  # data left the range
    smaller = settled_range(1.4, 1.5, r)  # the loss fell into a small band: zoom in
    assert smaller is not None and smaller[1] - smaller[0] < 0.5
