"""Captions for ShapesWorld scenes at four levels of complexity, with paraphrases.

The canonical caption (``paraphrase=0``) is the one evaluation prompts use; training draws
paraphrases so the model does not learn one template.
"""

from __future__ import annotations

import random
import re

from .spec import COUNT_WORDS, Group, Scene, plural

_RELATION_WORDS = {
    "left of": ("to the left of", "left of", "on the left of"),
    "right of": ("to the right of", "right of", "on the right of"),
    "above": ("above", "over", "on top of"),
    "below": ("below", "under", "beneath"),
}
_BACKGROUND_WORDS = {
    "plain": ("plain {c}", "{c}", "solid {c}"),
    "gradient": ("{c} gradient", "fading {c}", "{c} gradient"),
    "stripes": ("striped {c}", "{c} striped", "{c} and white striped"),
    "dots": ("dotted {c}", "{c} polka-dot", "{c} spotted"),
}
_PREFIXES = ("", "", "a picture of ", "an image of ", "a drawing of ")
_CONNECTIVES = (" and ", " and ", " next to ")


def group_phrase(group: Group, with_size: bool) -> str:
    noun = group.shape if group.count == 1 else plural(group.shape)
    words = [COUNT_WORDS[group.count]]
    if with_size:
        words.append(group.size)
    words += [group.color, noun]
    phrase = " ".join(words)
    if phrase.startswith("a ") and phrase[2] in "aeiou":
        phrase = "an " + phrase[2:]
    return phrase


def caption(scene: Scene, paraphrase: int = 0, rng: random.Random | None = None) -> str:
    """Caption of ``scene``; ``paraphrase`` > 0 picks wording variants from ``rng``."""
    pick = (lambda options: options[0]) if paraphrase == 0 or rng is None else rng.choice
    with_size = scene.mention_size or scene.complexity == 4
    phrases = [group_phrase(g, with_size) for g in scene.groups]
    if scene.relation is not None:
        rel = scene.relation
        text = f"{phrases[rel.a]} {pick(_RELATION_WORDS[rel.kind])} {phrases[rel.b]}"
    elif len(phrases) == 2:
        text = phrases[0] + pick(_CONNECTIVES) + phrases[1]
    else:
        text = phrases[0]
    if scene.mention_background:
        bg = scene.background
        words = pick(_BACKGROUND_WORDS[bg.kind]).format(c=bg.color)
        text += f" on a {words} background"
    prefix = pick(_PREFIXES)
    if prefix:
        text = prefix + text
    return text


_MIRRORED_SIDE = {"left": "right", "right": "left"}


def mirror_caption(text: str) -> str:
    """The caption of the left-right mirror image: "left" and "right" swap, every other word stays.

    The world draws every shape left-right symmetric (a triangle points up, a heart's lobes sit on
    top), so a picture mirrored keeps its promises once its caption's sides swap; upside down it
    would not (a flipped triangle is no longer one), so there is no vertical counterpart."""
    def swap(m: re.Match) -> str:
        word = _MIRRORED_SIDE[m.group(0).lower()]
        return word.capitalize() if m.group(0)[0].isupper() else word

    return re.sub(r"\b(left|right)\b", swap, text, flags=re.IGNORECASE)
