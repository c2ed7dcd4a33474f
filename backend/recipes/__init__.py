"""Recipes: one TOML format, one pydantic model per stage."""

from .base import RecipeBase
from .importing import ImportRecipe
from .pretrain import PretrainRecipe
from .registry import (
    RECIPE_KINDS,
    RecipeError,
    RecipeIssue,
    default_recipe,
    dumps_recipe,
    load_recipe,
    loads_recipe,
    parse_recipe,
    register_recipe_kind,
)
from .sampling import SampleRecipe
from .world import WorldRecipe

__all__ = [
    "RECIPE_KINDS",
    "ImportRecipe",
    "PretrainRecipe",
    "RecipeBase",
    "RecipeError",
    "RecipeIssue",
    "SampleRecipe",
    "WorldRecipe",
    "default_recipe",
    "dumps_recipe",
    "load_recipe",
    "loads_recipe",
    "parse_recipe",
    "register_recipe_kind",
]
