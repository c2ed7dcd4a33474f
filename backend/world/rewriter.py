"""The embedded prompt rewriter: a short ShapesWorld prompt -> the caption style the model was trained on.

"2 red stars left of blue square" becomes "two small red stars to the left of a small blue
square": every stated attribute kept (count, size, colour, shape, relation, background), the
unstated ones a spatial caption always carries (sizes) or an object needs (a colour) filled with
the value the dataset's captions use most, then written as the canonical caption
(``captions.caption``). The parser reads the vocabulary and every paraphrase the world's captions
use, so ``rewrite(caption(scene, paraphrase=k)) == caption(scene)``. A prompt with a word it cannot
place (outside the world's vocabulary) is left as written, with the reason: a rewriter that drops
what it does not understand changes the meaning. Hand-written because the grammar is the world's
own; real models get a local language model through the same interface (``sample/enhance.py``).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from .captions import caption
from .spec import BACKGROUNDS, COLOR_NAMES, RELATIONS, SHAPES, Background, Group, Relation, Scene, plural

NUMBERS = {"a": 1, "an": 1, "one": 1, "1": 1, "two": 2, "2": 2, "three": 3, "3": 3, "four": 4, "4": 4}
SIZE_WORDS = {"small": "small", "little": "small", "tiny": "small", "large": "large", "big": "large"}
NOUNS = {**{s: s for s in SHAPES}, **{plural(s): s for s in SHAPES}}
RELATION_PHRASES = sorted(
    [("to the left of", "left of"), ("on the left of", "left of"), ("left of", "left of"), ("to the right of", "right of"),
     ("on the right of", "right of"), ("right of", "right of"), ("on top of", "above"), ("above", "above"), ("over", "above"),
     ("below", "below"), ("under", "below"), ("beneath", "below")], key=lambda p: -len(p[0]))
BACKGROUND_KINDS = {"plain": "plain", "solid": "plain", "gradient": "gradient", "fading": "gradient", "striped": "stripes",
                    "stripes": "stripes", "dotted": "dots", "polka-dot": "dots", "spotted": "dots", "dots": "dots"}
FILLER = {"picture", "image", "drawing", "photo", "of", "and", "next", "to", "with", "the", "white", "on", "background"}
assert set(RELATIONS) == {r for _, r in RELATION_PHRASES} and set(BACKGROUND_KINDS.values()) == set(BACKGROUNDS)


class NotUnderstood(ValueError):
    """The prompt says something the world's vocabulary cannot hold."""


@dataclass
class Parsed:
    groups: list[dict] = field(default_factory=list)  # {"count", "size", "color", "shape"}; None where unstated
    relation: str | None = None
    background: dict | None = None  # {"kind", "color"}; None where unstated


def _group(words: list[str]) -> dict:
    """'two small red stars' -> {"count": 2, "size": "small", "color": "red", "shape": "star"}."""
    g: dict = {"count": None, "size": None, "color": None, "shape": None}
    for w in words:
        if w in NUMBERS and g["count"] is None and g["shape"] is None:
            g["count"] = NUMBERS[w]
        elif w in SIZE_WORDS and g["shape"] is None:
            g["size"] = SIZE_WORDS[w]
        elif w in COLOR_NAMES and g["shape"] is None:
            g["color"] = w
        elif w in NOUNS and g["shape"] is None:
            g["shape"] = NOUNS[w]
            if g["count"] is None and w != NOUNS[w]:
                g["count"] = 2  # "stars": more than one; the smallest plural
        elif w in FILLER:
            continue
        else:
            raise NotUnderstood(f"'{w}' is not a word of this world's captions")
    if g["shape"] is None:
        raise NotUnderstood("no shape named (" + ", ".join(SHAPES) + ")")
    return g


def _background_phrase(text: str) -> tuple[str, int] | None:
    """(the words before "background", where the phrase starts): after the last "on/with/against",
    or after a comma ("red star, striped green background")."""
    if not text.rstrip().endswith(" background"):
        return None
    starts = list(re.finditer(r" (?:on|with|against) (?:an? )?", text))
    if starts:
        m = re.compile(r"([a-z\- ]*?)\s*background ?$").match(text, starts[-1].end())
        if m:
            return m.group(1), starts[-1].start()
    m = re.search(r"(?:^| , )([a-z\- ]+?) background ?$", text)
    return (m.group(1), m.start()) if m else None


def parse(prompt: str) -> Parsed:
    """What a ShapesWorld prompt promises, with None for what it leaves unstated."""
    text = " " + re.sub(r"[^a-z0-9\-, ]", " ", prompt.lower()).replace(",", " , ") + " "
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"^ (?:an? )?(?:picture|image|drawing|photo) of ", " ", text)
    out = Parsed()
    found = _background_phrase(text)
    if found:
        words_text, cut = found
        words = [w for w in words_text.split() if w not in ("and", "white", "a", "an", ",")]
        bg: dict = {"kind": None, "color": None}
        for w in words:
            if w in BACKGROUND_KINDS:
                bg["kind"] = BACKGROUND_KINDS[w]
            elif w in COLOR_NAMES:
                bg["color"] = w
            else:
                raise NotUnderstood(f"'{w}' is not a background this world draws")
        out.background = bg
        text = text[:cut] + " "
    for phrase, kind in RELATION_PHRASES:
        at = text.find(f" {phrase} ")
        if at >= 0:
            out.relation = kind
            halves = [text[:at], text[at + len(phrase) + 2:]]
            break
    else:
        halves = re.split(r" (?:and|next to|with|,) ", text)
    for half in halves:
        words = [w for w in half.split() if w]
        if not words or all(w in FILLER for w in words):
            continue
        out.groups.append(_group(words))
    if not out.groups:
        raise NotUnderstood("no object named")
    if len(out.groups) > 2:
        raise NotUnderstood("more than two kinds of object: this world draws one or two groups")
    if out.relation is not None and len(out.groups) != 2:
        raise NotUnderstood("a relation needs an object on each side")
    return out


@dataclass
class Rewrite:
    prompt: str  # as written
    enhanced: str  # what the sampler gets (the prompt itself when left alone)
    changed: bool
    note: str = ""  # why it was left alone, or what was filled in


class ShapesRewriter:
    """Fill the unstated from the dataset's most used values, write the canonical caption."""

    def __init__(self, colour: str = "red", size: str = "small", background: tuple[str, str] = ("plain", "yellow")):
        self.colour, self.size, self.background = colour, size, background

    @classmethod
    def fit(cls, captions: list[str]) -> ShapesRewriter:
        """Learn the fill-in values from a dataset's captions (those it cannot parse are skipped)."""
        colours: Counter = Counter()
        sizes: Counter = Counter()
        kinds: Counter = Counter()
        bg_colours: Counter = Counter()
        for c in captions:
            try:
                p = parse(c)
            except NotUnderstood:
                continue
            colours.update(g["color"] for g in p.groups if g["color"])
            sizes.update(g["size"] for g in p.groups if g["size"])
            if p.background:
                kinds.update([p.background["kind"]] if p.background["kind"] else [])
                bg_colours.update([p.background["color"]] if p.background["color"] else [])
        top = lambda c, default: c.most_common(1)[0][0] if c else default  # noqa: E731
        return cls(top(colours, "red"), top(sizes, "small"), (top(kinds, "plain"), top(bg_colours, "yellow")))

    def scene(self, p: Parsed) -> Scene:
        spatial = p.relation is not None
        stated_size = any(g["size"] for g in p.groups)
        groups = [Group(g["shape"], g["color"] or self.colour, g["size"] or self.size, g["count"] or 1) for g in p.groups]
        if len(groups) == 2 and groups[0].color == groups[1].color and groups[0].shape == groups[1].shape:
            raise NotUnderstood("the same object twice")
        bg = Background(*self.background)
        if p.background:
            bg = Background(p.background["kind"] or self.background[0], p.background["color"] or self.background[1])
        category = ("spatial" if spatial else "colour_binding" if len(groups) == 2 else "background" if p.background
                    else "counting" if groups[0].count > 1 else "single_object")
        return Scene(64, 64, category, groups, bg, Relation(p.relation) if spatial else None, mention_size=stated_size or spatial,
                     mention_background=p.background is not None)

    def rewrite(self, prompt: str) -> Rewrite:
        try:
            p = parse(prompt)
            scene = self.scene(p)
        except NotUnderstood as exc:
            return Rewrite(prompt, prompt, False, f"left as written: {exc}")
        text = caption(scene)
        filled = [f"colour {self.colour}" for g in p.groups if not g["color"]]
        if scene.mention_size:
            filled += [f"size {self.size}" for g in p.groups if not g["size"]]
        if p.background and not p.background["kind"]:
            filled.append(f"background {self.background[0]}")
        if p.background and not p.background["color"]:
            filled.append(f"background colour {self.background[1]}")
        return Rewrite(prompt, text, text != prompt.strip(), ("filled in: " + ", ".join(filled)) if filled else "")
