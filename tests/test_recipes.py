"""Recipes: every kind round-trips through its commented default; errors name field and reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli

import backend.stages  # noqa: F401 - registers every stage's recipe kind, so each default is checked below
from backend.recipes import RECIPE_KINDS, PretrainRecipe, RecipeError, default_recipe, dumps_recipe, loads_recipe


@pytest.mark.parametrize("kind", sorted(RECIPE_KINDS))
def test_commented_default_round_trips(kind: str):
    text = dumps_recipe(default_recipe(kind))
    assert text.count("#") > 3, "the default should explain its fields"
    recipe = loads_recipe(text)
    assert recipe == default_recipe(kind)


def _issues(text: str) -> dict[str, str]:
    with pytest.raises(RecipeError) as info:
        loads_recipe(text)
    return {issue.path: issue.reason for issue in info.value.issues}


def test_errors_name_every_bad_field_with_its_path():
    text = dumps_recipe(default_recipe("pretrain"))
    text = text.replace("lr = 0.001", "lr = -1").replace("steps = 1000", "stpes = 1000")
    text = text.replace('kind = "logit_normal"', 'kind = "lognormal"')
    issues = _issues(text)
    assert "optim.lr" in issues and "greater than 0" in issues["optim.lr"]
    assert "curriculum[0].stpes" in issues and "unknown field" in issues["curriculum[0].stpes"]
    assert "allocation.timesteps.kind" in issues
    assert len(issues) == 3


def test_cross_field_rules_are_checked():
    issues = _issues('kind = "pretrain"\n[[curriculum]]\nbuckets = [[30, 32]]\n')
    assert any("multiples of 8" in reason for path, reason in issues.items() if path.startswith("curriculum[0]"))
    issues = _issues('kind = "pretrain"\n[[curriculum]]\ncomplexity = [3, 2]\n')
    assert any("complexity" in reason for reason in issues.values())


def test_bad_toml_and_unknown_kind_are_clear():
    assert "not valid TOML" in next(iter(_issues("kind = 'pretrain\n").values()))
    assert "unknown recipe kind" in _issues('kind = "pretrian"')["kind"]
    assert "missing" in _issues('name = "x"')["kind"]


def test_total_steps_is_the_curriculum_sum():
    recipe = loads_recipe('kind = "pretrain"\n[[curriculum]]\nsteps = 10\n[[curriculum]]\nsteps = 32\n')
    assert isinstance(recipe, PretrainRecipe) and recipe.total_steps == 42


def test_cli_validate_and_show(tmp_path: Path):
    shown = run_cli("recipe", "show", "pretrain", check=True).stdout
    good = tmp_path / "good.toml"
    good.write_text(shown)
    out = run_cli("recipe", "validate", str(good))
    assert out.returncode == 0 and "valid pretrain recipe" in out.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(shown.replace("batch_size = 32", "batch_size = 0").replace("ema = 0.999", "emma = 0.9"))
    out = run_cli("recipe", "validate", str(bad))
    assert out.returncode == 1
    assert "optim.batch_size: Input should be greater than or equal to 1" in out.stderr
    assert "optim.emma: unknown field" in out.stderr
    assert "2 problem(s)" in out.stderr
    missing = run_cli("recipe", "validate", str(tmp_path / "nope.toml"))
    assert missing.returncode == 1 and "cannot read" in missing.stderr


def test_buckets_must_split_into_whole_tokens_for_the_patch_size():
    ok = 'kind = "pretrain"\n[model]\npatch = 4\n[[curriculum]]\nbuckets = [[64, 64], [64, 48]]\n[preview.sampler]\nwidth = 64\nheight = 64\n'
    assert loads_recipe(ok).model.patch == 4
    with pytest.raises(RecipeError) as info:
        loads_recipe(ok.replace("[64, 48]", "[72, 72]"))
    assert "72x72" in str(info.value) and "multiples of 16" in str(info.value) and "patch 4" in str(info.value)
    with pytest.raises(RecipeError):
        loads_recipe(ok.replace("patch = 4", "patch = 3"))
    assert loads_recipe(ok.replace("patch = 4", "patch = 2").replace("[64, 48]", "[72, 72]")).model.patch == 2


def test_a_pairs_recipe_refuses_a_model_against_itself_and_a_list_without_prompts():
    from backend.recipes import RecipeError, parse_recipe

    with pytest.raises(RecipeError, match="model_b"):
        parse_recipe({"kind": "pairs", "model": "models/a", "model_b": "models/a/"})
    with pytest.raises(RecipeError, match="at least one prompt"):
        parse_recipe({"kind": "pairs", "prompts_from": "list", "prompts": ["  "]})
    assert parse_recipe({"kind": "pairs", "model": "models/a", "model_b": "models/b"}).pairs_per_prompt() == 2
