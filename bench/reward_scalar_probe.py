"""How far re-weighing the reward prior's terms can go on base pairs: an upper bound for term-weight tuning.

A reward run with ``tune = "terms"`` learns one weight per term of the prior. This probe asks what any
handful of such scalars could reach, with the rater's *noise-free* preference in hand: a grid over the judge
and bind weights, the relation term's scale and slope, and its gate's sharpness and offset (six knobs, 1620
settings), scored on every decided pair of a ``bench/reward.py`` project. The best setting on all pairs
flatters (it is chosen on them); the honest figure picks the best on three quarters of the prompts and scores
it on the fourth, in turn (the same folds as ``bench/reward.py --folds 4``). If that figure is no better than
the prior as it is, what the prior misses is not a weighting of its terms, and ratings spent on term weights
cannot supply it.

    .venv/bin/python bench/reward_scalar_probe.py --project P [--prior FOLDER] [--json bench/results/reward_scalar_probe.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from common import REPO  # noqa: F401  (puts the repository on the path)
from reward import fold_of, hidden_utilities

GRID = {"judge": (0.5, 1, 2), "bind": (0.5, 1, 2), "scale": (0.125, 0.25, 0.5, 1, 2), "slope": (0.5, 1, 2), "sharpness": (1, 2, 4),
        "offset": (-4, -2, 0, 2)}
AS_IS = (1, 1, 1, 1, 1, 0)


def parts(model, images: list, prompts: list[str]) -> tuple[torch.Tensor, ...]:
    """Per image: the judge and bind terms, the mean located ``where`` and the gate's per-token logits (a relate head)."""
    head = model.head.eval()
    grid = model.grids(images)
    states, mask = model.prompt_states(prompts)
    with torch.no_grad():
        tokens = head.image_tokens(grid)
        terms = head.terms(tokens, states, mask)
        relation = head.relation_parts(tokens, states, mask)
    return terms["judge"], terms["bind"], relation["where"], relation["gate_logits"], relation["mask"]


def reward(features: tuple[torch.Tensor, ...], head, judge: float, bind: float, scale: float, slope: float, sharpness: float,
           offset: float) -> torch.Tensor:
    """The prior's reward with every knob turned (``AS_IS`` gives the head's own relation term back)."""
    j, b, mean_where, gate, m = features
    opened = ((F.logsigmoid(sharpness * gate + offset) * m).sum(1) / m.sum(1).clamp_min(1)).exp()
    relation = scale * head.relate_scale.item() * torch.sigmoid(slope * head.relate_slope.item() * mean_where) * opened
    return judge * j + bind * b + relation


def main() -> None:
    from backend.models.reward import load_reward
    from backend.paths import shipped_reward_prior_dir
    from backend.store import Project

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--project", type=Path, required=True, help="a project bench/reward.py made (its pairs and the hidden rater)")
    ap.add_argument("--prior", type=Path, default=None, help="a reward model folder with a relate head (default: the shipped prior)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    model = load_reward(args.prior or shipped_reward_prior_dir())
    if not model.head.config.get("relate"):
        raise SystemExit("the probe turns the relation term's knobs: it needs a head trained with --relate")
    with Project.open(args.project) as project:
        utilities, images, _ = hidden_utilities(project, ("faithful",))
        rows = project.db.execute("SELECT prompt, image_a, image_b FROM comparisons ORDER BY id").fetchall()
    pairs = [(p, a, b) for p, a, b in rows if abs(utilities[a] - utilities[b]) > 1e-9]
    prompts = [p for p, _, _ in pairs]
    fa = parts(model, [images[a] for _, a, _ in pairs], prompts)
    fb = parts(model, [images[b] for _, _, b in pairs], prompts)
    prefer_a = torch.tensor([utilities[a] > utilities[b] for _, a, b in pairs])
    folds = torch.tensor([fold_of(p, 4) for p in prompts])
    settings = list(itertools.product(*GRID.values()))
    right = torch.stack([(reward(fa, model.head, *s) > reward(fb, model.head, *s)) == prefer_a for s in settings]).float()
    as_is = float(((reward(fa, model.head, *AS_IS) > reward(fb, model.head, *AS_IS)) == prefer_a).float().mean())
    best = int(right.mean(1).argmax())
    held_right, picked = 0.0, []
    for f in range(4):
        train, test = folds != f, folds == f
        choice = int(right[:, train].mean(1).argmax())
        held_right += float(right[choice, test].sum())
        picked.append(dict(zip(GRID, settings[choice])))
    n = len(pairs)
    cv = held_right / n
    result = {"pairs": n, "as_is": as_is, "best_in_sample": float(right[best].mean()), "best_setting": dict(zip(GRID, settings[best])),
              "cross_validated": cv, "se": (cv * (1 - cv) / n) ** 0.5, "picked_per_fold": picked, "settings": len(settings),
              "prior": str(args.prior or shipped_reward_prior_dir())}
    print(f"{n} decided pairs; the prior as it is {as_is:.3f}; the best of {len(settings)} settings on all pairs {result['best_in_sample']:.3f} "
          f"(flatters: chosen on them); chosen on three quarters, scored on the fourth: {cv:.3f} ± {result['se']:.3f}")
    for f, p in enumerate(picked):
        print(f"  fold {f}: {p}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
