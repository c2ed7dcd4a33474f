"""Ranking mode of the Rate page: order k images of one prompt at once, with the number keys.

Press the number under the best image, then the next best, and so on; the last one is implied
and the ranking goes out at once, as one judgement that the backend expands into the k(k-1)/2
pair judgements it implies (one transaction). Backspace takes back the last number pressed, or,
with none pressed, the last ranking sent (the whole of it); space skips the prompt. Groups and
their images are fetched ahead, so the next prompt is painted as soon as a ranking is complete.
Groups come from ``pairs`` jobs of one model with three or more images per prompt.
"""

from __future__ import annotations

import time
from collections import deque

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QGridLayout, QLabel, QVBoxLayout, QWidget

from ..widgets import alive, hint, pixmap_from_bytes, show_error
from .prefetch import ready_in_order

PREFETCH = 3  # groups held ready (all images loaded) ahead of the one shown
MAX_IMAGES = 8
ORDINAL = ["best", "2nd", "3rd", "4th", "5th", "6th", "7th", "8th"]


def tile_side(k: int) -> int:
    """Image size that fits k images in two rows at most of a wide window."""
    return 256 if k <= 4 else 200


class RankTile(QWidget):
    """An image with its key underneath and, once picked, its place."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        self.image = QLabel()
        self.image.setAlignment(Qt.AlignCenter)
        self.caption = QLabel("")
        self.caption.setAlignment(Qt.AlignCenter)
        font = self.caption.font()
        font.setPointSize(font.pointSize() + 3)
        self.caption.setFont(font)
        lay.addWidget(self.image)
        lay.addWidget(self.caption)

    def show_image(self, pm, side: int, key: int) -> None:
        self.image.setFixedSize(side, side)
        self.image.setPixmap(pm.scaled(side, side, Qt.KeepAspectRatio, Qt.FastTransformation))
        self.mark(key, None)

    def mark(self, key: int, place: int | None) -> None:
        if place is None:
            self.caption.setText(f"[{key}]")
            self.image.setStyleSheet("background: #222; border: 3px solid transparent; border-radius: 6px;")
        else:
            self.caption.setText(f"[{key}]  {ORDINAL[place]}")
            self.image.setStyleSheet("background: #222; border: 3px solid #3a7; border-radius: 6px;")


class RankPanel(QWidget):
    """The ranking mode: a prompt's images in a row, ordered with the number keys."""

    ranked = Signal(int)  # +1 when a ranking went out, -1 when one was taken back (pairs it covered)

    def __init__(self, link, rater, parent: QWidget | None = None):
        super().__init__(parent)
        self.link = link
        self.rater = rater  # callable: the rater's name
        self.queue: deque[dict] = deque()
        self.loading: dict[str, dict] = {}
        self.current: dict | None = None
        self.picks: list[int] = []  # indexes into current["images"], best first
        self.sent: list[dict] = []  # {"group", "ranking_id", "undo"} newest last
        self.broken: set[str] = set()
        self.undoing: dict[str, list] = {}  # group -> submissions waiting for its undo to land
        self.fetching = False
        self.generation = 0
        self.shown_at = 0.0

        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.prompt = QLabel("")
        font = self.prompt.font()
        font.setPointSize(font.pointSize() + 6)
        self.prompt.setFont(font)
        self.prompt.setAlignment(Qt.AlignCenter)
        self.prompt.setWordWrap(True)
        lay.addWidget(self.prompt)
        self.grid = QGridLayout()
        self.grid.setHorizontalSpacing(12)
        self.tiles = [RankTile() for _ in range(MAX_IMAGES)]
        for n, tile in enumerate(self.tiles):
            self.grid.addWidget(tile, n // 4, n % 4)
            tile.hide()
        lay.addLayout(self.grid)
        self.help = hint("Press the number under the best image, then the next best…; the last one is implied. "
                         "Backspace takes back a number (or, with none pressed, the last ranking); space skips this prompt.")
        lay.addWidget(self.help)
        self.message = QLabel("")
        self.message.setAlignment(Qt.AlignCenter)
        self.message.setWordWrap(True)
        lay.addWidget(self.message)

    # --- the queue -----------------------------------------------------------------------------

    def reload(self) -> None:
        self.queue.clear()
        self.loading.clear()
        self.broken.clear()
        self.current = None
        self.picks = []
        self.generation += 1  # a reply to a fetch made before this reload is dropped (as on the pairs page)
        self.fetching = False
        self._show(None)
        self.fill()

    def _held(self) -> list[str]:
        groups = [g["group"] for g in self.queue] + list(self.loading) + sorted(self.broken)
        groups += [e["group"]["group"] for e in self.sent if e["ranking_id"] is None]
        if self.current:
            groups.append(self.current["group"])
        return groups

    def fill(self) -> None:
        if self.fetching or self.link.client is None or len(self.queue) + len(self.loading) >= PREFETCH:
            return
        self.fetching = True
        gen = self.generation
        self.link.call("ranking_queue", self.rater(), PREFETCH, self._held(), done=lambda groups: self._fetched(groups, gen),
                       failed=lambda exc, details: self._fetch_failed(exc, details, gen))

    def _fetch_failed(self, exc, details, generation: int) -> None:
        if generation != self.generation:
            return
        self.fetching = False
        self.message.setText(f"Could not fetch images to rank: {exc}")

    def _fetched(self, groups: list[dict], generation: int) -> None:
        if not alive(self) or generation != self.generation:
            return
        self.fetching = False
        held = set(self._held())
        fresh = [g for g in groups if g["group"] not in held and len(g["images"]) <= MAX_IMAGES]
        for group in fresh:
            group["pixmaps"] = {}
            self.loading[group["group"]] = group
            for im in group["images"]:
                self.link.call("image", im["image"], done=lambda data, g=group, h=im["image"]: self._image(g, h, data),
                               failed=lambda e, d, g=group: self._image_failed(g, e))
        if self.current is None and not self.queue:
            self._show(None)

    def _image(self, group: dict, image: str, data: bytes) -> None:
        if self.loading.get(group["group"]) is not group or not alive(self):
            return
        group["pixmaps"][image] = pixmap_from_bytes(data)
        self._queue_loaded()

    def _queue_loaded(self) -> None:
        """Groups whose images have all arrived join the queue in the backend's order (the oldest first)."""
        ready = ready_in_order(self.loading, lambda g: len(g["pixmaps"]) == len(g["images"]))
        self.queue.extend(ready)
        if ready:
            if self.current is None:
                self._advance()
            self.fill()

    def _image_failed(self, group: dict, exc) -> None:
        self.loading.pop(group["group"], None)
        self.broken.add(group["group"])
        self.message.setText(f"An image of “{group['prompt']}” could not be loaded ({exc}); that prompt stays in the queue.")
        self._queue_loaded()  # the groups behind it need not wait for it

    def _advance(self) -> None:
        self._show(self.queue.popleft() if self.queue else None)
        self.fill()

    def _show(self, group: dict | None) -> None:
        self.current = group
        self.picks = []
        for tile in self.tiles:
            tile.hide()
        self.prompt.setText(group["prompt"] if group else "")
        if group is None:
            waiting = self.fetching or self.loading
            self.message.setText("Loading the next images…" if waiting else
                                 "Nothing to rank. Generate pairs with 3 or more images per prompt from one model.")
            return
        side = tile_side(len(group["images"]))
        for n, im in enumerate(group["images"]):
            self.tiles[n].show_image(group["pixmaps"][im["image"]], side, n + 1)
            self.tiles[n].show()
        self.message.setText("")
        self.shown_at = time.perf_counter()

    # --- ranking -------------------------------------------------------------------------------

    def press(self, key: int | str) -> None:
        """A number key (1-based image position), "skip" or "undo"."""
        if key == "undo":
            self.take_back()
            return
        group = self.current
        if group is None:
            return
        if key == "skip":
            self._send(group, [], skip=True)
            return
        n = int(key) - 1
        if not 0 <= n < len(group["images"]) or n in self.picks:
            return
        self.picks.append(n)
        self.tiles[n].mark(n + 1, len(self.picks) - 1)
        left = [i for i in range(len(group["images"])) if i not in self.picks]
        if len(left) == 1:
            self.picks.append(left[0])
            self._send(group, [group["images"][i]["image"] for i in self.picks])

    def _send(self, group: dict, ranked: list[str], skip: bool = False) -> None:
        ms = int(1000 * (time.perf_counter() - self.shown_at))
        shown = [im["image"] for im in group["images"]]
        entry = {"group": group, "ranking_id": None, "undo": False, "skip": skip}
        self.sent.append(entry)
        post = lambda: self.link.call("submit_ranking", group["group"], ranked, shown, self.rater(), ms, skip,  # noqa: E731
                                      done=lambda r: self._sent(entry, r), failed=lambda exc, d: self._send_failed(entry, exc, d))
        if group["group"] in self.undoing:  # ranked again before the undo of its last ranking landed: send after it
            self.undoing[group["group"]].append(post)
        else:
            post()
        self.ranked.emit(group["pairs"])
        self._advance()

    def _sent(self, entry: dict, result: dict) -> None:
        entry["ranking_id"] = result["id"]
        entry["rating"] = result["ratings"][0]
        if entry["undo"]:
            self._undo(entry)

    def _undo(self, entry: dict) -> None:
        """Undo a sent ranking in the backend; a new ranking of the same images waits for it."""
        group = entry["group"]["group"]
        self.undoing.setdefault(group, [])

        def landed(*_):
            for post in self.undoing.pop(group, []):
                post()

        self.link.call("undo_rating", entry["rating"], done=landed, failed=lambda exc, d: (landed(), self.message.setText(f"Undo failed: {exc}")))

    def _send_failed(self, entry: dict, exc, details: str) -> None:
        if entry in self.sent:
            self.sent.remove(entry)
        if self.current is not None:
            self.queue.appendleft(self.current)
        self._show(entry["group"])
        self.ranked.emit(-entry["group"]["pairs"])
        show_error(self, "A ranking was not saved.", str(getattr(exc, "detail", exc)), "The images are shown again; rank them again.", details)

    def take_back(self) -> None:
        """The last number pressed; with none, the last ranking sent (shown again to be ranked anew)."""
        if self.picks and self.current is not None:
            n = self.picks.pop()
            self.tiles[n].mark(n + 1, None)
            return
        if not self.sent:
            self.message.setText("Nothing to take back in this session.")
            return
        entry = self.sent.pop()
        if entry["ranking_id"] is not None:
            self._undo(entry)
        else:
            entry["undo"] = True  # applied when its submission comes back
            self.undoing.setdefault(entry["group"]["group"], [])
        if self.current is not None:
            self.queue.appendleft(self.current)
        self._show(entry["group"])
        self.ranked.emit(-entry["group"]["pairs"])
        self.message.setText(f"Took back your {'skip' if entry['skip'] else 'ranking'} of “{entry['group']['prompt']}”; rank it again.")
