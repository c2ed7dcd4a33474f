"""A recipe's JSON schema as served by the backend (``/api/recipes/schema/{kind}``), read by field path.

The wizards take every limit, default and help text from here, so a rule changed in a backend
recipe model reaches the Studio without a second copy to keep in step."""

from __future__ import annotations

from typing import Any

# a spin box needs an upper end even where a recipe sets none
OPEN_INT = 10_000_000
OPEN_FLOAT = 1e6


class RecipeSchema:
    def __init__(self, schema: dict[str, Any]):
        self.schema = schema
        self.defs = schema.get("$defs", {})

    def _resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            node = {**self.defs[node["$ref"].rsplit("/", 1)[-1]], **{k: v for k, v in node.items() if k != "$ref"}}
        for key in ("anyOf", "oneOf"):  # Optional[X]: the branch that is not null
            if key in node:
                branches = [self._resolve(b) for b in node[key] if b.get("type") != "null"]
                if len(branches) == 1:
                    node = {**branches[0], **{k: v for k, v in node.items() if k != key}}
        return node

    def field(self, path: str) -> dict[str, Any]:
        """The schema of a dotted field (``allocation.timesteps.m``; ``curriculum.steps`` reads list items)."""
        node = self._resolve(self.schema)
        for part in path.split("."):
            if node.get("type") == "array":
                node = self._resolve(node["items"])
            props = node.get("properties", {})
            if part not in props:
                raise KeyError(f"the recipe has no field {path!r} ({part!r} is not in {sorted(props)})")
            node = self._resolve(props[part])
        if node.get("type") == "array" and "items" in node and "properties" in self._resolve(node["items"]):
            node = {**self._resolve(node["items"]), "description": node.get("description", "")}
        return node

    def limits(self, path: str, *, step: float = 1.0) -> tuple[float, float]:
        """The closed range a spin box may offer (an exclusive bound moves in by one ``step``)."""
        f = self.field(path)
        integer = f.get("type") == "integer"
        lo = f.get("minimum", f["exclusiveMinimum"] + step if "exclusiveMinimum" in f else (-OPEN_INT if integer else -OPEN_FLOAT))
        hi = f.get("maximum", f["exclusiveMaximum"] - step if "exclusiveMaximum" in f else (OPEN_INT if integer else OPEN_FLOAT))
        return lo, hi

    def description(self, path: str) -> str:
        return self.field(path).get("description", "")
