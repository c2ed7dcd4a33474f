"""Caption measures used by filters and curricula."""

from __future__ import annotations

import re

_RELATIONS = re.compile(r"\b(left|right|above|below|under|over|beneath|on top of|next to|behind|in front of)\b")
_CONJ = re.compile(r"\b(and|with)\b")
_BACKGROUND = re.compile(r"\bbackground|backdrop\b")


def caption_complexity(caption: str) -> float:
    """A 1-4 score: 1 = a single noun phrase ... 4 = several objects in relation (plus scene).

    ShapesWorld items carry their exact level in metadata; this heuristic scores other data
    the same way from words alone.
    """
    text = caption.lower().strip()
    if not text:
        return 0.0
    words = len(text.split())
    score = 1.0
    if words > 4:
        score += 1
    if _CONJ.search(text) or _BACKGROUND.search(text):
        score += 1
    if _RELATIONS.search(text):
        score += 1
    return min(4.0, score)
