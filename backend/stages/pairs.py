"""The ``pairs`` stage: images of the same prompt, paired and queued for rating.

Each image is stored content-addressed with its generation record (model, seed, sampler
settings, the prompt as written and as given to the sampler, and the prompt's ShapesEval spec
when it has one, which lets the detector judge it). Pairs are queued a batch of prompts at a time,
each batch in one transaction, so a job killed half-way resumes after the last batch it finished.
"""

from __future__ import annotations

import io
import itertools
import random
from pathlib import Path
from typing import Any

from backend.recipes.pairs import PairsRecipe
from backend.store import Project, ratings
from backend.store.project import write_transaction


def choose_prompts(project: Project, recipe: PairsRecipe) -> list[tuple[str, dict[str, Any] | None]]:
    """(prompt, spec or None) in a fixed order for this recipe."""
    rng = random.Random(recipe.seed)
    if recipe.prompts_from == "list":
        return [(p.strip(), None) for p in recipe.prompts if p.strip()][: recipe.max_prompts]
    if recipe.prompts_from == "dataset":
        ds = project.dataset_id(recipe.dataset)
        caps = sorted({r[0] for r in project.db.execute("SELECT caption FROM items WHERE dataset_id = ? AND caption != ''", [ds]).fetchall()})
        if not caps:
            raise ValueError(f"dataset {recipe.dataset!r} has no captions to use as prompts")
        return [(c, None) for c in rng.sample(caps, min(recipe.max_prompts, len(caps)))]
    from backend.eval.shapes_eval import load_eval_prompts

    pool = [p for p in load_eval_prompts() if not recipe.categories or p.category in recipe.categories]
    if not pool:
        raise ValueError(f"no ShapesEval prompts in categories {recipe.categories}")
    by_cat: dict[str, list] = {}
    for p in pool:
        by_cat.setdefault(p.category, []).append(p)
    for group in by_cat.values():
        rng.shuffle(group)
    # round-robin over categories: every category in proportion, whatever max_prompts is
    ordered = [p for group in itertools.zip_longest(*by_cat.values()) for p in group if p is not None]
    return [(p.prompt, p.spec) for p in ordered[: recipe.max_prompts]]


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def run(project: Project, recipe: PairsRecipe, run_dir: Path, reporter: Any, resume: bool) -> dict[str, Any]:
    from backend.sample.euler import generate, settings_from
    from backend.train.resolve import own_sampler, resolve_model

    job_id = getattr(reporter, "job_id", None)
    prompts = choose_prompts(project, recipe)
    per = recipe.pairs_per_prompt()
    done = 0
    if job_id is not None:
        done = project.db.execute("SELECT count(*) FROM comparisons WHERE job_id = ?", [job_id]).fetchone()[0] // per
        if done:
            reporter.log(f"resuming after {done} prompt(s) already paired")
    # each model with the sampler it is meant for: a distilled student at its own steps, unguided
    sa = own_sampler(project, recipe.model, recipe.sampler)
    sb = own_sampler(project, recipe.model_b, recipe.sampler) if recipe.model_b else sa
    settings_a, settings_b = settings_from(sa), settings_from(sb)
    record_a, record_b = ({"sampler": {"steps": s.steps, "cfg": s.cfg, "shift": s.shift, "width": s.width, "height": s.height, "kind": s.kind}}
                          for s in (sa, sb))
    bundle_a, what_a = resolve_model(project, recipe.model)
    bundle_b, what_b = resolve_model(project, recipe.model_b) if recipe.model_b else (bundle_a, what_a)
    for s, what in ((sa, what_a), (sb, what_b)) if recipe.model_b else ((sa, what_a),):
        if s is not recipe.sampler:
            reporter.log(f"{what} is a distilled student: it draws with its own sampler ({s.steps} steps, cfg {s.cfg:g}, {s.kind})")
    k = recipe.images_per_prompt
    reporter.log(f"{len(prompts)} prompts x {per} pairs from {what_a}" + (f" against {what_b}" if recipe.model_b else f", {k} seeds each"))
    chunk = max(1, 32 // k)
    for start in range(done, len(prompts), chunk):
        part = list(enumerate(prompts[start: start + chunk], start))
        seeds = {i: [recipe.seed * 1_000_003 + i * 16 + j for j in range(k)] for i, _ in part}
        flat_prompts = [p for i, (p, _) in part for _ in range(k)]
        flat_seeds = [sd for i, _ in part for sd in seeds[i]]
        images_a = generate(bundle_a, flat_prompts, flat_seeds, settings_a)
        images_b = generate(bundle_b, flat_prompts, flat_seeds, settings_b) if recipe.model_b else images_a
        with write_transaction(project.db):
            for n, (i, (prompt, spec)) in enumerate(part):
                rec = [{"prompt": prompt, "prompt_sampled": prompt, "seed": sd, **({"spec": spec} if spec else {})} for sd in seeds[i]]
                imgs_a = images_a[n * k: (n + 1) * k]
                imgs_b = images_b[n * k: (n + 1) * k]
                if recipe.model_b:
                    pairs = [((imgs_a[j], {**record_a, **rec[j], "model": what_a}), (imgs_b[j], {**record_b, **rec[j], "model": what_b}))
                             for j in range(k)]
                else:
                    pairs = [((imgs_a[x], {**record_a, **rec[x], "model": what_a}), (imgs_a[y], {**record_a, **rec[y], "model": what_a}))
                             for x, y in itertools.combinations(range(k), 2)]
                # one model: the prompt's k images form a group the Rate page can show at once for ranking
                group = {} if recipe.model_b else {"group": f"{job_id if job_id is not None else run_dir.name}:{i}"}
                for (img_a, meta_a), (img_b, meta_b) in pairs:
                    ha, hb = project.put_blob(_png(img_a), "png"), project.put_blob(_png(img_b), "png")
                    ratings.queue_pair(project.db, prompt, ha, hb, {"a": meta_a, "b": meta_b, **group}, job_id)
        reporter.progress(min(start + chunk, len(prompts)), len(prompts))
    total = project.db.execute("SELECT count(*) FROM comparisons WHERE job_id = ?", [job_id]).fetchone()[0] if job_id is not None else len(prompts) * per
    reporter.log(f"queued {total} pairs for rating")
    return {"state": "done", "prompts": len(prompts), "pairs": total, "model": what_a, "model_b": what_b if recipe.model_b else None}
