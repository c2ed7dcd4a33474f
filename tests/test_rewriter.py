"""Prompt enhancement keeps what a prompt says and writes it the way the model was trained to read:
every paraphrase of a world caption comes back as the canonical caption; short prompts keep each
stated attribute and gain only the unstated ones (learned from the dataset's captions); a prompt
with words outside the world is left alone, with the reason; a sampling job records both prompts;
a local language model's rewrite is dropped when it loses quoted text."""

from __future__ import annotations

import json
import random
from pathlib import Path

from backend.world.captions import caption
from backend.world.generate import sample_scene
from backend.world.rewriter import ShapesRewriter, parse
from backend.world.spec import CATEGORIES


def test_every_paraphrase_of_a_world_caption_comes_back_canonical():
    rng = random.Random(3)
    rw = ShapesRewriter()
    for i in range(600):
        scene = sample_scene(rng, CATEGORIES[i % len(CATEGORIES)], (64, 64))
        said = caption(scene, paraphrase=1, rng=rng)
        assert rw.rewrite(said).enhanced == caption(scene), said


def test_short_prompts_keep_what_they_state_and_fill_only_the_unstated():
    rw = ShapesRewriter.fit(["a green circle", "two small green stars", "a large green heart on a dotted blue background"] * 3 + ["a red square"])
    assert (rw.colour, rw.size, rw.background) == ("green", "small", ("dots", "blue"))  # the dataset's most used values
    cases = {
        "red circle": "a red circle",
        "2 blue stars": "two blue stars",
        "circle": "a green circle",
        "three big hearts": "three large green hearts",
        "yellow heart left of purple square": "a small yellow heart to the left of a small purple square",
        "purple cross, striped orange background": "a purple cross on a striped orange background",
        "cyan star on pink background": "a cyan star on a dotted pink background",
    }
    for short, want in cases.items():
        out = rw.rewrite(short)
        assert out.enhanced == want, (short, out)
        said, got = parse(short), parse(out.enhanced)
        for g_said, g_got in zip(said.groups, got.groups):
            assert all(g_got[k] == v for k, v in g_said.items() if v is not None), (short, g_said, g_got)  # nothing stated is changed
        assert said.relation == got.relation
    assert "colour green" in rw.rewrite("circle").note


def test_a_prompt_outside_the_world_is_left_as_written_with_the_reason():
    rw = ShapesRewriter()
    for prompt, why in (("a cat on a sofa", "'cat'"), ("a red circle, a blue square and a green star", "more than two"),
                        ("a red circle on a marble background", "'marble'")):
        out = rw.rewrite(prompt)
        assert out.enhanced == prompt and not out.changed and why in out.note, out


def test_a_sampling_job_records_the_prompt_as_written_and_as_enhanced(tmp_path: Path):
    from backend.paths import shipped_base_dir
    from backend.recipes import SampleRecipe
    from backend.recipes.sampling import SamplerSettings
    from backend.stages.sample import run_sample_recipe

    recipe = SampleRecipe(model=str(shipped_base_dir()), prompts=["red circle", "a dog"], seeds=[0], enhance="shapes", out=str(tmp_path / "out"),
                          sampler=SamplerSettings(steps=2, width=32, height=32))
    summary = run_sample_recipe(None, recipe)
    recs = [json.loads(line) for line in (tmp_path / "out" / "metadata.jsonl").read_text().splitlines()]
    assert [(r["prompt"], r["enhanced"]) for r in recs] == [("red circle", "a red circle"), ("a dog", "a dog")]
    assert "'dog'" in summary["enhanced"][1]["note"]


def test_a_local_language_models_rewrite_that_loses_quoted_text_is_dropped(tmp_path: Path):
    """A tiny random causal LM in a local folder (MiniLM's tokenizer, GPT-2 layout, nothing downloaded):
    whatever it writes, the quoted text must survive or the prompt goes through as written."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from backend.models.text_encoder import minilm_path
    from backend.sample.enhance import LocalLMRewriter

    folder = tmp_path / "lm"
    tok = AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)
    tok.save_pretrained(str(folder))
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=tok.vocab_size, n_positions=256, n_embd=32, n_layer=1, n_head=2)).save_pretrained(str(folder))
    rw = LocalLMRewriter(folder, examples=["a red circle"], max_new_tokens=8)
    out = rw.rewrite('a sign that says "OPEN 24h"')
    assert out.enhanced == 'a sign that says "OPEN 24h"' and ("quoted" in out.note or "said nothing" in out.note), out
    (folder / "config.json").unlink()
    try:
        LocalLMRewriter(folder)
        raise AssertionError("a folder without a model must be refused")
    except FileNotFoundError as exc:
        assert "local folders only" in str(exc)
