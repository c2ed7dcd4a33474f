"""ShapesWorld: the embedded world every stage runs on offline (DESIGN.md, 'The embedded default')."""

from .captions import caption
from .generate import PlacementError, make_caption, make_scene
from .render import render
from .spec import CATEGORIES, COLORS, SHAPES, Scene

__all__ = ["CATEGORIES", "COLORS", "SHAPES", "PlacementError", "Scene", "caption", "make_caption", "make_scene", "render"]
