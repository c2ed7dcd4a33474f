"""Prompt enhancement: a switchable rewriter between the user's prompt and the sampler.

``enhance = "shapes"`` is the embedded ShapesWorld rewriter (``world/rewriter.py``), its fill-in
values learned from the project's dataset captions (or, with no dataset, from the world's own
captions). Any other value names a local causal language model folder, read through
transformers with ``local_files_only`` (nothing is downloaded): it is asked to rewrite the prompt
in the training captions' style, and its answer is kept only if every quoted string of the
prompt survives verbatim and it says something; otherwise the prompt goes to the sampler as
written, with the reason. Every sampling record keeps the prompt as written and as enhanced.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from backend.world.rewriter import Rewrite, ShapesRewriter

EMBEDDED = "shapes"
INSTRUCTION = ("Rewrite the image prompt as one detailed caption in the style of the examples. Keep every stated attribute "
               "and any text in quotes exactly; add only plausible details; answer with the caption alone.")


def dataset_captions(project: Any, limit: int = 5000) -> list[str]:
    if project is None:
        return []
    rows = project.db.execute("SELECT caption FROM items WHERE caption IS NOT NULL AND caption != '' LIMIT ?", [limit]).fetchall()
    return [r[0] for r in rows]


def world_captions(n: int = 2000, seed: int = 0) -> list[str]:
    import random

    from backend.world.captions import caption
    from backend.world.generate import sample_scene
    from backend.world.spec import CATEGORIES

    rng = random.Random(seed)
    return [caption(sample_scene(rng, CATEGORIES[i % len(CATEGORIES)], (64, 64)), paraphrase=1, rng=rng) for i in range(n)]


class LocalLMRewriter:
    """A local causal LM folder as the rewriter (real models); a few of the dataset's captions as examples."""

    def __init__(self, folder: str | Path, examples: list[str] | None = None, max_new_tokens: int = 60):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = Path(folder)
        if not (folder / "config.json").exists():
            raise FileNotFoundError(f"{folder} is not a language model folder (no config.json); prompt enhancement reads local folders only")
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, use_safetensors=True).eval()
        self.examples = (examples or [])[:4]
        self.max_new_tokens = max_new_tokens

    def _ask(self, prompt: str) -> str:
        import torch

        shots = "".join(f"Caption: {c}\n" for c in self.examples)
        text = f"{INSTRUCTION}\n{shots}Prompt: {prompt}\nCaption:"
        ids = self.tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            out = self.model.generate(**ids, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        answer = self.tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        return answer.strip().splitlines()[0].strip() if answer.strip() else ""

    def rewrite(self, prompt: str) -> Rewrite:
        answer = self._ask(prompt)
        quoted = re.findall(r'"([^"]+)"', prompt)
        lost = [q for q in quoted if f'"{q}"' not in answer and q not in answer]
        if not answer:
            return Rewrite(prompt, prompt, False, "left as written: the language model said nothing")
        if lost:
            return Rewrite(prompt, prompt, False, f"left as written: the rewrite lost the quoted text {lost[0]!r}")
        return Rewrite(prompt, answer, answer != prompt, "")


def make_enhancer(spec: str, project: Any = None, locate=None) -> Any:
    """The rewriter ``spec`` names ('shapes' or a local LM folder); ``.rewrite(prompt) -> Rewrite``."""
    if spec == EMBEDDED:
        return ShapesRewriter.fit(dataset_captions(project) or world_captions())
    path = locate(spec) if locate is not None else Path(spec)
    return LocalLMRewriter(path, examples=dataset_captions(project)[:4])


def enhance_prompts(spec: str, prompts: list[str], project: Any = None, locate=None) -> list[Rewrite]:
    """Each prompt as written and as the sampler will get it ('' = off: unchanged)."""
    if not spec:
        return [Rewrite(p, p, False, "") for p in prompts]
    rewriter = make_enhancer(spec, project, locate)
    return [rewriter.rewrite(p) for p in prompts]
