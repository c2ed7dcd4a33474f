"""Small widgets shared by the views: errors a user can act on, image tiles, themed plots."""

from __future__ import annotations

import html

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QImage, QPalette, QPixmap
from PySide6.QtWidgets import QFrame, QGridLayout, QLabel, QMessageBox, QSizePolicy, QVBoxLayout, QWidget


def duration_text(seconds: float) -> str:
    """An estimate as a person reads it: minutes up to two hours, then hours up to two days, then days."""
    minutes = seconds / 60
    if minutes < 120:
        return f"{minutes:.0f} minute{'s' if round(minutes) != 1 else ''}"
    hours = minutes / 60
    return f"{hours:.0f} hours" if hours < 48 else f"{hours / 24:.0f} days"


def memory_text(mem: dict | None) -> str:
    """A real model's memory plan as the compute page shows it: the total against the device, the
    biggest parts, and (when it does not fit) what to turn."""
    if not mem:
        return "small: fits any machine (the embedded families)"
    gib = 2**30
    parts = html.escape(", ".join(f"{what} {b / gib:.1f}" for what, b in sorted(mem["held"], key=lambda x: -x[1])[:4]))
    head = f"about {mem['bytes'] / gib:.1f} GiB of {mem['available'] / gib:.1f} GiB ({html.escape(mem['device'])})" if mem.get("available") else \
        f"about {mem['bytes'] / gib:.1f} GiB"
    if mem.get("fits", True):
        return f"<span style='color:#27ae60'>{head}</span> ({parts} GiB)"
    return (f"<span style='color:#c0392b'><b>does not fit</b>: {head}</span> ({parts} GiB). Turn: " + html.escape("; ".join(mem.get("knobs", []))))


def show_error(parent: QWidget | None, what: str, why: str = "", todo: str = "", details: str = "") -> None:
    """What failed, why, what to do, and the details on demand."""
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Warning)
    box.setWindowTitle("Signal Studio")
    box.setText(what)
    info = "\n\n".join(x for x in (why, todo) if x)
    if info:
        box.setInformativeText(info)
    if details:
        box.setDetailedText(details)
    box.setStandardButtons(QMessageBox.Ok)
    box.open()


NO_MODEL = ("This project has no model yet: pretrain one (<b>Pretrain</b>), or open the demo project "
            "(<b>File → Open the demo project</b>), which ships a base model that draws.")


def alive(widget: QWidget) -> bool:
    """False once Qt has deleted the widget (a late reply for a tile that was replaced)."""
    import shiboken6

    return shiboken6.isValid(widget)


def pixmap_from_bytes(data: bytes) -> QPixmap:
    img = QImage.fromData(data)
    return QPixmap.fromImage(img)


class ImageTile(QFrame):
    """An image with a caption underneath, scaled crisp (nearest) for tiny renders."""

    clicked = Signal()

    def __init__(self, side: int = 128, caption: str = "", parent: QWidget | None = None):
        super().__init__(parent)
        self.side = side
        self.setFrameShape(QFrame.StyledPanel)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        self.image = QLabel()
        self.image.setFixedSize(side, side)
        self.image.setAlignment(Qt.AlignCenter)
        self.label = QLabel(caption)
        self.label.setWordWrap(True)
        self.label.setAlignment(Qt.AlignHCenter | Qt.AlignTop)
        self.label.setMaximumWidth(side + 8)
        lay.addWidget(self.image, 0, Qt.AlignHCenter)
        lay.addWidget(self.label)
        self._pix: QPixmap | None = None

    def set_pixmap(self, pix: QPixmap) -> None:
        self._pix = pix
        self.image.setPixmap(pix.scaled(QSize(self.side, self.side), Qt.KeepAspectRatio, Qt.FastTransformation))

    def set_caption(self, text: str) -> None:
        if self.label.text() != text:
            self.label.setText(text)

    def clear(self) -> None:
        self._pix = None
        self.image.clear()

    def mousePressEvent(self, event) -> None:  # noqa: N802 - Qt naming
        self.clicked.emit()
        super().mousePressEvent(event)


class TileGrid(QWidget):
    """A grid of ImageTiles that can be refilled."""

    def __init__(self, cols: int = 4, side: int = 128, parent: QWidget | None = None):
        super().__init__(parent)
        self.cols = cols
        self.side = side
        self.grid = QGridLayout(self)
        self.grid.setSpacing(6)
        self.tiles: list[ImageTile] = []
        self.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Preferred)

    def reset(self, captions: list[str]) -> list[ImageTile]:
        """One empty tile per caption. Existing tiles are reused: making a tile costs 10-20 ms
        on a busy CPU, and remaking a whole grid stalled the window for over 100 ms."""
        while len(self.tiles) > len(captions):
            t = self.tiles.pop()
            t.setParent(None)
            t.deleteLater()
        self.ensure(len(captions))
        for tile, cap in zip(self.tiles, captions):
            tile.set_caption(cap)
            tile.clear()
        return self.tiles

    def ensure(self, n: int) -> list[ImageTile]:
        """At least ``n`` tiles; the ones there keep their captions and pictures."""
        while len(self.tiles) < n:
            i = len(self.tiles)
            tile = ImageTile(self.side)
            self.grid.addWidget(tile, i // self.cols, i % self.cols)
            self.tiles.append(tile)
        return self.tiles


def themed_plot(title: str = "", left: str = "", bottom: str = ""):
    """A pyqtgraph PlotWidget that follows the application palette (light or dark)."""
    import pyqtgraph as pg
    from PySide6.QtWidgets import QApplication

    pal = QApplication.palette()
    w = pg.PlotWidget()
    w.setBackground(pal.color(QPalette.Base))
    fg = pal.color(QPalette.Text)
    for axis in ("left", "bottom"):
        ax = w.getAxis(axis)
        ax.setPen(fg)
        ax.setTextPen(fg)
    if title:
        w.setTitle(title, color=fg.name())
    if left:
        w.setLabel("left", left)
    if bottom:
        w.setLabel("bottom", bottom)
    w.showGrid(x=True, y=True, alpha=0.2)
    return w


def heading(text: str) -> QLabel:
    label = QLabel(text)
    font = label.font()
    font.setPointSize(font.pointSize() + 3)
    font.setBold(True)
    label.setFont(font)
    return label


def hint(text: str) -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    label.setTextFormat(Qt.RichText)
    label.setOpenExternalLinks(False)
    pal = label.palette()
    pal.setColor(QPalette.WindowText, pal.color(QPalette.PlaceholderText))
    label.setPalette(pal)
    return label
