"""Checks a recipe passes before its job is queued, where validating the text is not enough: the
model folder it names (a stock SD3 / FLUX folder must hold every part in a trainable dtype), the
memory its training needs against the device's, and options the device cannot run. Each problem is
a ``RecipeIssue`` naming the field and the fix, so the service answers 422 and the CLI prints it
before any weight is loaded or any run folder is made."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from backend.recipes import PretrainRecipe, RecipeError, RecipeIssue
from backend.recipes.pretrain import STOCK_FAMILIES


def wants_gpu(device: str) -> bool:
    if device == "cpu":
        return False
    import torch

    return torch.cuda.is_available()


def _pretrain_issues(recipe: PretrainRecipe) -> list[RecipeIssue]:
    from backend.models.memory import pretrain_memory
    from backend.models.stock_folder import StockFolderError, stock_family_name

    issues: list[RecipeIssue] = []
    m = recipe.model
    on_gpu = wants_gpu(recipe.compute.device)
    if recipe.optim.eight_bit and not on_gpu:
        issues.append(RecipeIssue("optim.eight_bit", "8-bit AdamW states (bitsandbytes) need a CUDA GPU and this run has none; set it to false"))
    if m.family not in STOCK_FAMILIES:
        try:
            stock = stock_family_name(Path(m.init)) if m.init else None
        except StockFolderError as exc:
            return issues + [RecipeIssue("model.init", str(exc))]
        if stock:
            issues.append(RecipeIssue("model.family", f"model.init is a stock {stock.upper()} folder: set model.family = '{stock}'"))
        return issues
    try:
        mem = pretrain_memory(recipe, on_gpu)
    except StockFolderError as exc:
        return issues + [RecipeIssue("model.init", str(exc))]
    if mem is not None and not mem["fits"]:
        issues.append(RecipeIssue("compute", refusal(mem)))
    return issues


def _model_issues(project: Any, spec: str, recipe: Any) -> list[RecipeIssue]:
    """A stage that starts from ``spec`` (align, personalize, distill, sample): a stock folder must be
    complete, and a training stage's memory plan must fit."""
    from backend.models.stock_folder import StockFolderError, check_stock_folder
    from backend.train.resolve import locate

    try:
        folder = locate(project, spec)
    except Exception:  # outside the project and the like: the stage says it when it runs
        return []
    if not (folder / "model_index.json").exists():
        return []
    try:
        check_stock_folder(folder)
    except StockFolderError as exc:
        return [RecipeIssue("model", str(exc))]
    if getattr(recipe, "kind", "") in ("align", "personalize", "distill"):
        from backend.models.memory import stage_memory

        mem = stage_memory(recipe, folder, wants_gpu("auto"))
        if not mem["fits"]:
            return [RecipeIssue("model", refusal(mem))]
    return []


def refusal(mem: dict[str, Any]) -> str:
    """A memory plan that does not fit, as one sentence: how much, where, the biggest parts, what to turn."""
    gib = 2**30
    biggest = ", ".join(f"{what} {b / gib:.1f} GiB" for what, b in sorted(mem["held"], key=lambda x: -x[1])[:3])
    return (f"training needs about {mem['bytes'] / gib:.1f} GiB but {mem['device']} has {mem['available'] / gib:.1f} GiB ({biggest}); turn: "
            + "; ".join(mem["knobs"]))


def preflight(project: Any, recipe: Any) -> None:
    """Raise ``RecipeError`` listing what would stop ``recipe`` on this machine."""
    issues: list[RecipeIssue] = []
    if isinstance(recipe, PretrainRecipe):
        issues = _pretrain_issues(recipe)
    elif isinstance(getattr(recipe, "model", None), str) and recipe.model:
        issues = _model_issues(project, recipe.model, recipe)
    if issues:
        raise RecipeError(issues)
