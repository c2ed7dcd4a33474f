"""Where the reward prior disagrees with the rater on base pairs, term by term.

The prior's reward is a sum of three per-token terms averaged over the prompt (``RewardHead``):
``judge`` (what each token's attention found), ``bind`` (the one object its sharp attention located)
and ``where`` (a signed comparison of where the named objects sit: positive when the relation holds,
negative when mirrored). For every pair of a ``bench/reward.py`` project on which the scripted rater
has a noise-free preference, this prints the prior's accuracy per ShapesEval category and, for the
spatial pairs, per *rater's view* of the two images (the detector's reading: F faithful, E exactly the
promised objects, then each check + or -), with each term's mean margin for the preferred image.

Beside the prior as it is, variants of the sum say which term is at fault: without ``where``; and
*oracle* rows that use the detector's "exactly the promised objects" verdict (E) as a gate, an upper
bound on what a head that knew E could reach, not a model. A grid of the spatial pairs the prior gets
wrong is saved beside the table (left = the image the rater prefers).

    .venv/bin/python bench/reward_terms.py --project P [--prior FOLDER] [--grid bench/results/reward_terms_spatial.png]
"""

from __future__ import annotations

import argparse
import json
import math
import textwrap
from collections import defaultdict
from pathlib import Path

import torch
from common import REPO
from reward import hidden_utilities


def prior_terms(model, images: list, prompts: list[str]) -> dict[str, list[float]]:
    """Each part of the head's reward (``RewardHead.terms``), with their sum as ``total``; the oracle rows also read
    the raw ``where`` mean of a ``relate`` head, so it is given under that name too. With a ``mirror`` model each is
    the mean over its two views, as the model's reward is."""
    head = model.head.eval()
    views = []
    for view_images, view_prompts in model.views(images, prompts):
        states, mask = model.prompt_states(view_prompts)
        with torch.no_grad():
            tokens = head.image_tokens(model.grids(view_images))
            parts = head.terms(tokens, states, mask)
            parts["total"] = sum(parts.values())
            if "relation" in parts:
                parts["where"] = head.relation_parts(tokens, states, mask)["where"]
        views.append(parts)
    return {k: (sum(v[k] for v in views) / len(views)).tolist() for k in views[0]}


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-max(-30.0, min(30.0, x))))


def wrong_grid(rows: list[tuple], images: dict, out: Path, n: int = 16) -> None:
    """Spatial pairs the prior orders against the rater: preferred image left, the rater's view of each under it."""
    from PIL import Image, ImageDraw

    scale, w, cols = 2, 64, 4
    cell_w, cell_h = 2 * w * scale + 16, w * scale + 72
    sheet = Image.new("RGB", (cols * cell_w, max(1, (min(n, len(rows)) + cols - 1) // cols) * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (prompt, win, lose, vw, vl, margin) in enumerate(rows[:n]):
        cx, cy = (i % cols) * cell_w, (i // cols) * cell_h
        sheet.paste(images[win].resize((w * scale, w * scale), Image.NEAREST), (cx + 4, cy + 4))
        sheet.paste(images[lose].resize((w * scale, w * scale), Image.NEAREST), (cx + 8 + w * scale, cy + 4))
        for k, line in enumerate(textwrap.wrap(prompt, 44)[:2]):
            draw.text((cx + 4, cy + w * scale + 8 + 13 * k), line, fill=(0, 0, 0))
        draw.text((cx + 4, cy + w * scale + 36), f"rater prefers left: {vw} | {vl}", fill=(60, 60, 60))
        draw.text((cx + 4, cy + w * scale + 50), f"prior margin for the left image {margin:+.2f}", fill=(200, 40, 40))
    sheet.save(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", type=Path, required=True, help="a project bench/reward.py made (its pairs and the hidden rater's judgements)")
    ap.add_argument("--prior", type=Path, default=None, help="a reward model folder (default: the shipped prior)")
    ap.add_argument("--grid", type=Path, default=REPO / "bench" / "results" / "reward_terms_spatial.png")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from backend.eval.shapes_eval import check_image, exact_objects, strict_pass
    from backend.models.reward import load_reward
    from backend.paths import shipped_reward_prior_dir
    from backend.store import Project
    from backend.world.pretrained import load_detector
    from backend.world.spec import Scene

    model = load_reward(args.prior or shipped_reward_prior_dir())
    detector = load_detector()
    with Project.open(args.project) as project:
        utilities, images, _ = hidden_utilities(project, ("faithful",))
        rows = project.db.execute("SELECT prompt, image_a, image_b, meta FROM comparisons ORDER BY id").fetchall()
    pairs = [(p, a, b, Scene.from_json(json.loads(meta)["a"]["spec"])) for p, a, b, meta in rows if abs(utilities[a] - utilities[b]) > 1e-9]
    hashes = sorted({h for _, a, b, _ in pairs for h in (a, b)})
    dets = {}
    for i in range(0, len(hashes), 256):
        dets.update(zip(hashes[i: i + 256], detector([images[h] for h in hashes[i: i + 256]])))
    ta = prior_terms(model, [images[a] for _, a, _, _ in pairs], [p for p, *_ in pairs])
    tb = prior_terms(model, [images[b] for _, _, b, _ in pairs], [p for p, *_ in pairs])
    has_where = "where" in ta

    def view(scene, h: str) -> str:
        det = dets[h]
        return ("F" if strict_pass(scene, det) else "") + ("E" if exact_objects(scene, det) else "e") + "".join(
            k[0] + ("+" if v else "-") for k, v in sorted(check_image(scene, det).items()))

    def reward(t: dict, i: int, variant: str, exact: bool) -> float:
        base = t["judge"][i] + t.get("bind", [0.0] * (i + 1))[i]  # without the where term (or relation)
        if variant == "as is":
            return t["total"][i]
        if variant == "without where":
            return base
        c = float(variant.split("c=")[1])  # oracle: c * sigmoid(where) paid only to an image with exactly the promised objects
        return base + c * sigmoid(t["where"][i]) * exact
    variants = ["as is"] + (["without where"] + [f"oracle E-gated sigmoid(where), c={c}" for c in (2, 4, 8)] if has_where else [])
    right = {v: defaultdict(list) for v in variants}
    by_view: dict[str, list] = defaultdict(list)
    wrong_rows = []
    for i, (prompt, a, b, scene) in enumerate(pairs):
        pref_a = utilities[a] > utilities[b]
        ea, eb = exact_objects(scene, dets[a]), exact_objects(scene, dets[b])
        for v in variants:
            right[v][scene.category].append((reward(ta, i, v, ea) > reward(tb, i, v, eb)) == pref_a)
        if scene.category != "spatial":
            continue
        win, lose, sign = (a, b, 1) if pref_a else (b, a, -1)
        margins = {k: sign * (ta[k][i] - tb[k][i]) for k in ta}
        key = f"{view(scene, win)} > {view(scene, lose)}"
        by_view[key].append((margins["total"] > 0, margins))
        if margins["total"] <= 0:
            wrong_rows.append((prompt, win, lose, view(scene, win), view(scene, lose), margins["total"]))
    result = {"project": str(args.project), "prior": str(args.prior or shipped_reward_prior_dir()), "pairs": len(pairs), "variants": {}}
    for v in variants:
        every = [x for xs in right[v].values() for x in xs]
        acc = sum(every) / len(every)
        result["variants"][v] = {"accuracy": acc, "se": math.sqrt(acc * (1 - acc) / len(every)), "n": len(every),
                                 "by_category": {c: (sum(x) / len(x), len(x)) for c, x in sorted(right[v].items())}}
        print(f"{v:38s} {acc:.3f} ± {result['variants'][v]['se']:.3f} ({len(every)})  "
              + ", ".join(f"{c} {a:.2f} of {n}" for c, (a, n) in result["variants"][v]["by_category"].items()))
    print("\nspatial pairs by the rater's view (preferred > other; F faithful, E exact objects, c colour, o object, r relation, s size, b background):")
    result["spatial_by_view"] = {}
    for key, xs in sorted(by_view.items(), key=lambda kv: -len(kv[1]))[:15]:
        acc = sum(ok for ok, _ in xs) / len(xs)
        mean = {k: sum(m[k] for _, m in xs) / len(xs) for k in xs[0][1]}
        result["spatial_by_view"][key] = {"n": len(xs), "accuracy": acc, "mean_margin": mean}
        print(f"{len(xs):4d}  prior right {acc:.2f}  {key:34s} " + " ".join(f"{k} {v:+.2f}" for k, v in mean.items()))
    args.grid.parent.mkdir(parents=True, exist_ok=True)
    wrong_grid(wrong_rows, images, args.grid)
    print(f"\n{len(wrong_rows)} spatial pairs ordered against the rater; grid of the first 16: {args.grid}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
