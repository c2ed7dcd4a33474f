"""Does prompt enhancement help? Strict ShapesEval of the shipped base on terse prompts, as written and enhanced.

Every ShapesEval prompt is rewritten the way a person types it — digits for counts, no articles,
"left of", a comma before the background ("2 small red stars left of large blue square, striped
green background") — keeping every attribute the evaluation checks, so the enhanced prompt can be
judged against the same spec. The base samples every eval image (same seeds, ODE 20 steps, CFG 3)
three ways: the canonical captions (the reference), the terse prompts as written, and the terse
prompts through the embedded rewriter. A grid of terse-vs-enhanced pairs is saved beside the table.

    .venv/bin/python bench/prompt_enhancement.py --json bench/results/prompt_enhancement.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import REPO, table

OUT = REPO / "bench" / "results" / "prompt_enhancement"


def terse(spec) -> str:
    """What a person would type for this scene: every checked attribute, none of the style."""
    from backend.world.spec import plural

    with_size = spec.mention_size or spec.relation is not None
    parts = []
    for g in spec.groups:
        words = ([str(g.count)] if g.count > 1 else []) + ([g.size] if with_size else []) + [g.color, plural(g.shape) if g.count > 1 else g.shape]
        parts.append(" ".join(words))
    text = f"{parts[0]} {spec.relation.kind} {parts[1]}" if spec.relation is not None else ", ".join(parts)
    if spec.mention_background:
        kind = {"plain": "plain", "gradient": "gradient", "stripes": "striped", "dots": "dotted"}[spec.background.kind]
        text += f", {kind} {spec.background.color} background"
    return text


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=0, help="eval images (0 = all 960)")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    from backend.eval.model_eval import eval_pairs, labelled_grid
    from backend.eval.shapes_eval import EVAL_SEED_OFFSET, shapes_eval
    from backend.models.family import load_model
    from backend.sample.enhance import enhance_prompts
    from backend.sample.euler import SampleSettings, generate
    from backend.world.pretrained import load_detector

    bundle = load_model(REPO / "resources" / "models" / "shapes-base")
    pairs = eval_pairs(args.images or None)
    specs = [p.scene for p, _ in pairs]
    seeds = [EVAL_SEED_OFFSET + s for _, s in pairs]
    short = [terse(sp) for sp in specs]
    rewrites = enhance_prompts("shapes", short)
    settings = SampleSettings(width=64, height=64, steps=20, cfg=3.0)
    detector = load_detector()
    variants = {"canonical captions": [p.prompt for p, _ in pairs], "terse, as written": short, "terse, enhanced": [r.enhanced for r in rewrites]}
    rows, reports, images = [], {}, {}
    for name, prompts in variants.items():
        images[name] = generate(bundle, prompts, seeds, settings)
        reports[name] = shapes_eval(images[name], specs, detector)
    restored = sum(r.enhanced == p.prompt for r, (p, _) in zip(rewrites, pairs)) / len(pairs)
    cats = list(reports["canonical captions"].categories)
    for name, rep in reports.items():
        rows.append([name, f"{rep.overall:.3f} ± {rep.se['overall']:.3f}", *[f"{rep.categories[c]:.3f} ± {rep.se[c]:.3f}" for c in cats]])
    print(table(rows, ["prompts", "strict overall", *cats]))
    print(f"enhanced prompt == canonical caption for {restored:.1%} of the {len(pairs)} prompts")
    OUT.mkdir(parents=True, exist_ok=True)
    take = list(range(0, len(pairs), max(1, len(pairs) // 24)))[:24]
    for name in ("terse, as written", "terse, enhanced"):
        rep = reports[name]
        labelled_grid([images[name][i] for i in take], [variants[name][i] for i in take],
                      [rep.per_image[i]["pass"] for i in take], cols=6).save(OUT / f"{name.split(', ')[1].replace(' ', '_')}.png")
    if args.json:
        Path(args.json).write_text(json.dumps({"images": len(pairs), "restored": restored, "examples": [
            {"canonical": pairs[i][0].prompt, "terse": short[i], "enhanced": rewrites[i].enhanced} for i in take[:10]],
            "reports": {k: {kk: vv for kk, vv in v.to_json().items() if kk != "per_image"} for k, v in reports.items()}}, indent=1))


if __name__ == "__main__":
    main()
