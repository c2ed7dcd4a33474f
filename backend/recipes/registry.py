"""One TOML recipe format for GUI, CLI and tests.

``RECIPE_KINDS`` maps a recipe's ``kind`` to its pydantic model. It starts with the recipe
models of this package; the stage registry (``backend/stages``) adds every other stage's model
through ``register_recipe_kind`` when it registers the stage. Errors come back as
``field.path: reason`` lines so the user can find the offending line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomlkit
import tomllib
from pydantic import BaseModel, ValidationError

from .base import RecipeBase
from .importing import ImportRecipe
from .pretrain import PretrainRecipe
from .sampling import SampleRecipe
from .world import WorldRecipe

RECIPE_KINDS: dict[str, type[RecipeBase]] = {
    "import": ImportRecipe,
    "pretrain": PretrainRecipe,
    "sample": SampleRecipe,
    "world": WorldRecipe,
}


def register_recipe_kind(kind: str, model: type[RecipeBase]) -> None:
    """Make ``kind`` parseable as ``model`` (called by the stage registry)."""
    known = RECIPE_KINDS.get(kind)
    if known is not None and known is not model:
        raise ValueError(f"recipe kind {kind!r} already belongs to {known.__name__}")
    RECIPE_KINDS[kind] = model


@dataclass(frozen=True)
class RecipeIssue:
    """One problem in a recipe: where (dotted field path) and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path else self.reason


class RecipeError(ValueError):
    """A recipe that cannot run; ``issues`` lists every problem found."""

    def __init__(self, issues: list[RecipeIssue], source: str = ""):
        self.issues = issues
        self.source = source
        head = f"{source}: " if source else ""
        super().__init__(head + "; ".join(str(i) for i in issues))


def _loc_to_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def parse_recipe(data: dict[str, Any], source: str = "") -> RecipeBase:
    """Validate a recipe given as a dict (parsed TOML or JSON from the API)."""
    kind = data.get("kind")
    if kind is None:
        raise RecipeError([RecipeIssue("kind", f"missing; one of {', '.join(sorted(RECIPE_KINDS))}")], source)
    model = RECIPE_KINDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise RecipeError([RecipeIssue("kind", f"unknown recipe kind {kind!r}; one of {', '.join(sorted(RECIPE_KINDS))}")], source)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        issues = []
        for err in exc.errors():
            reason = err["msg"]
            if err["type"] == "extra_forbidden":
                reason = "unknown field (misspelt?)"
            elif err["type"] == "missing":
                reason = "required field is missing"
            issues.append(RecipeIssue(_loc_to_path(tuple(err["loc"])), reason))
        raise RecipeError(issues, source) from None


def loads_recipe(text: str, source: str = "") -> RecipeBase:
    """Parse and validate TOML text."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError([RecipeIssue("", f"not valid TOML: {exc}")], source) from None
    return parse_recipe(data, source)


def load_recipe(path: str | Path) -> RecipeBase:
    """Read and validate a recipe file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RecipeError([RecipeIssue("", f"cannot read: {exc.strerror or exc}")], str(path)) from None
    except UnicodeDecodeError:
        raise RecipeError([RecipeIssue("", "not UTF-8 text")], str(path)) from None
    return loads_recipe(text, str(path))


def _plain(value: Any) -> Any:
    """Turn model values into TOML-friendly values (tuples to lists, drop None)."""
    if isinstance(value, BaseModel):
        return {k: _plain(v) for k, v in value.model_dump(mode="python").items() if v is not None}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _fill_table(table: Any, model: BaseModel) -> None:
    fields = type(model).model_fields
    scalars = []
    nested = []
    for name, info in fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel) or (isinstance(value, list) and value and isinstance(value[0], BaseModel)):
            nested.append((name, info, value))
        else:
            scalars.append((name, info, value))
    for name, info, value in scalars:
        if info.description:
            table.add(tomlkit.comment(info.description))
        if value is None:
            table.add(tomlkit.comment(f"{name} = "))
        else:
            table.add(name, _plain(value))
    for name, info, value in nested:
        if isinstance(value, BaseModel):
            sub = tomlkit.table()
            if info.description:
                sub.add(tomlkit.comment(info.description))
            _fill_table(sub, value)
            table.add(name, sub)
        else:
            aot = tomlkit.aot()
            for element in value:
                sub = tomlkit.table()
                _fill_table(sub, element)
                aot.append(sub)
            table.add(name, aot)


def dumps_recipe(recipe: RecipeBase, *, comments: bool = True) -> str:
    """TOML text of a recipe; with ``comments`` each field carries its description."""
    if not comments:
        return tomlkit.dumps(_plain(recipe))
    doc = tomlkit.document()
    doc.add(tomlkit.comment(f"Signal Studio recipe: {(type(recipe).__doc__ or '').strip()}"))
    doc.add(tomlkit.comment("Validate with: signal-backend recipe validate FILE"))
    _fill_table(doc, recipe)
    return tomlkit.dumps(doc)


def default_recipe(kind: str) -> RecipeBase:
    try:
        return RECIPE_KINDS[kind]()
    except KeyError:
        raise RecipeError([RecipeIssue("kind", f"unknown recipe kind {kind!r}; one of {', '.join(sorted(RECIPE_KINDS))}")]) from None
