"""The stage registry: one declaration per kind of job.

A stage ties a recipe kind to its recipe model, the function a worker runs, what it produces and
how that is measured, and where the Studio shows it. The service's routes (``/api/stages``,
``/api/recipes/{kind}/...``, ``POST /api/jobs``), the job executor and the Studio's sidebar all read
this one table, so adding a stage is its own module plus one ``register_stage`` call.

Runners are named as ``"module:function"`` and imported only when a job runs: listing the stages
(the service does it at every start) must not load torch.

Stages from outside the package register through the ``SIGNAL_STAGES`` environment variable (a
comma-separated list of modules imported by ``load_plugins``); workers inherit it from the service.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.recipes import RecipeBase, register_recipe_kind
from backend.store import Project

Runner = Callable[[Project, RecipeBase, Path, Any, bool], dict[str, Any]]
PLUGINS_ENV = "SIGNAL_STAGES"


@dataclass(frozen=True)
class Stage:
    """One kind of job.

    ``page`` is the Studio sidebar entry that holds the stage (several stages may share one, as
    ``world`` and ``import`` share "Data"); a page the Studio has no view for gets the generic
    recipe page. ``order`` sorts the sidebar."""

    kind: str
    title: str
    summary: str
    recipe: type[RecipeBase]
    runner: str
    produces: str
    evaluation: str = ""
    page: str = ""
    order: int = 100

    def run(self) -> Runner:
        module, _, name = self.runner.partition(":")
        return getattr(importlib.import_module(module), name)

    def describe(self) -> dict[str, Any]:
        """What the service serves about this stage (the Studio builds its sidebar from it)."""
        return {"kind": self.kind, "title": self.title, "summary": self.summary, "produces": self.produces,
                "evaluation": self.evaluation, "page": self.page or self.title, "order": self.order}


_STAGES: dict[str, Stage] = {}


def register_stage(stage: Stage) -> Stage:
    """Add a stage (and its recipe kind); registering the same kind twice is a programming error."""
    if stage.kind in _STAGES and _STAGES[stage.kind] != stage:
        raise ValueError(f"stage kind {stage.kind!r} is registered twice")
    if ":" not in stage.runner:
        raise ValueError(f"stage {stage.kind!r}: runner must be 'module:function', not {stage.runner!r}")
    register_recipe_kind(stage.kind, stage.recipe)
    _STAGES[stage.kind] = stage
    return stage


def get_stage(kind: str) -> Stage:
    try:
        return _STAGES[kind]
    except KeyError:
        raise KeyError(f"no stage of kind {kind!r}; known: {', '.join(sorted(_STAGES))}") from None


def all_stages() -> list[Stage]:
    return sorted(_STAGES.values(), key=lambda s: (s.order, s.kind))


def load_plugins(spec: str | None = None) -> list[str]:
    """Import the stage modules named in ``SIGNAL_STAGES`` (each registers itself); returns their names."""
    names = [n.strip() for n in (os.environ.get(PLUGINS_ENV, "") if spec is None else spec).split(",") if n.strip()]
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ImportError(f"{PLUGINS_ENV}: cannot import stage module {name!r}: {exc}") from exc
    return names
