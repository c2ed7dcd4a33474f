"""A reward model beside strict ShapesEval, in pictures: held-out base pairs of a ``bench/reward.py`` project where
exactly one image passes strict ShapesEval (exactly the promised objects, every check kept), each image framed
by its verdict (green PASS, red fail) with the prompt under the pair and the rewards of the model (t) and of
the shipped prior (p). Prints how often each ranks the passing image higher (chance 0.5) and saves the grid
(the first pair of up to 12 prompts).

    .venv/bin/python bench/reward_strict_grid.py --project P --model models/NAME [--fold 0 --folds 4] [--grid OUT.png]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import textwrap
from pathlib import Path

from common import REPO
from reward import heldout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", type=Path, required=True, help="a project bench/reward.py made")
    ap.add_argument("--model", required=True, help="reward model folder, project-relative (one bench/reward.py trained)")
    ap.add_argument("--fold", type=int, default=0, help="the share of prompts the model did not see")
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--grid", type=Path, default=REPO / "bench" / "results" / "reward_strict_pairs.png")
    args = ap.parse_args()

    from PIL import Image, ImageDraw

    from backend.eval.shapes_eval import strict_pass
    from backend.models.reward import load_reward
    from backend.paths import shipped_reward_prior_dir
    from backend.store import Project
    from backend.world.pretrained import load_detector
    from backend.world.spec import Scene

    with Project.open(args.project) as project:
        rows = project.db.execute("SELECT prompt, image_a, image_b, meta FROM comparisons ORDER BY id").fetchall()
        held = [r for r in rows if heldout(r[0], args.fold, args.folds)]
        model = load_reward(project.root / args.model)
        hashes = sorted({h for r in held for h in r[1:3]})
        images = {h: Image.open(io.BytesIO(project.blob_path(h, "png").read_bytes())).convert("RGB") for h in hashes}
    prior = load_reward(shipped_reward_prior_dir())
    detector = load_detector()
    scene = {h: Scene.from_json(json.loads(r[3])["a"]["spec"]) for r in held for h in r[1:3]}
    strict = {}
    for i in range(0, len(hashes), 128):
        part = hashes[i: i + 128]
        strict.update({h: strict_pass(scene[h], d) for h, d in zip(part, detector([images[x] for x in part]))})
    decided = [r for r in held if strict[r[1]] != strict[r[2]]]
    if not decided:
        raise SystemExit("no held-out pair where exactly one image passes strict ShapesEval")
    prompts = [r[0] for r in decided]
    scores = {name: (m.score([images[r[1]] for r in decided], prompts), m.score([images[r[2]] for r in decided], prompts))
              for name, m in (("model", model), ("prior", prior))}
    right = {name: [(x > y) == strict[r[1]] for r, x, y in zip(decided, *scores[name])] for name in scores}
    n = len(decided)
    for name, ok in right.items():
        acc = sum(ok) / n
        print(f"{name}: ranks the passing image higher in {sum(ok)} of {n} pairs, {acc:.3f} ± {math.sqrt(acc * (1 - acc) / n):.3f} (chance 0.5)")

    pick, seen = [], set()
    for i, r in enumerate(decided):
        if r[0] not in seen and len(pick) < 12:
            seen.add(r[0])
            pick.append(i)
    w, cols = 128, 3
    cell_w, cell_h = 2 * w + 16, w + 62
    sheet = Image.new("RGB", (cols * cell_w, math.ceil(len(pick) / cols) * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for c, i in enumerate(pick):
        prompt, a, b, _ = decided[i]
        x, y = (c % cols) * cell_w, (c // cols) * cell_h
        for k, h in enumerate((a, b)):
            left = x + 4 + k * (w + 4)
            sheet.paste(images[h].resize((w, w), Image.NEAREST), (left, y + 4))
            draw.rectangle([left - 2, y + 2, left + w + 1, y + w + 5], outline=(40, 160, 60) if strict[h] else (200, 40, 40), width=3)
            draw.text((left + 2, y + w + 8), f"{'PASS' if strict[h] else 'fail'}  t {scores['model'][k][i]:+.1f}  p {scores['prior'][k][i]:+.1f}",
                      fill=(0, 0, 0))
        for j, line in enumerate(textwrap.wrap(prompt, 44)[:2]):
            draw.text((x + 4, y + w + 24 + 12 * j), line, fill=(0, 0, 0))
    args.grid.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.grid)
    print(f"grid: {args.grid}")


if __name__ == "__main__":
    main()
