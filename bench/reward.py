"""How many ratings a reward model needs: held-out accuracy against the rater's hidden preference.

Pairs come from the shipped base (every ShapesEval prompt, 4 images each: 6 pairs per prompt),
queued by a real ``pairs`` job; the scripted rater judges them all through the service's API with
10 % noise. A quarter of the prompts is held out (every pair of a prompt on one side). From the
rest, the first N judgements (N = 100, 250, 500, 1000) go to a reward run — the product's own
``reward`` stage, in-process — once starting from the shipped reward prior and once from a fresh
head. Each model is then scored on the held-out pairs against the rater's *noise-free* preference
(the pairs where it has one); N = 0 is the prior alone, 0.5 is chance (the prior, which saw no rating,
is also measured on every pair with a preference: a tighter figure). Beside the table: the
accuracy curve (PNG) and a grid of held-out pairs with both rewards and the rater's verdict.

    .venv/bin/python bench/reward.py [--json bench/results/reward.json] [--taste faithful] [--project P] [--prior FOLDER]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import tempfile
import textwrap
from pathlib import Path

from common import REPO, Collect, chart, scratch_project, table

SIZES = (100, 250, 500, 1000)


def fold_of(prompt: str, folds: int) -> int:
    """Which of ``folds`` equal shares of the prompts this one falls in (fold 0 of 4 is the held-out quarter)."""
    return hashlib.sha256(f"bench:{prompt}".encode()).digest()[0] * folds // 256


def heldout(prompt: str, fold: int = 0, folds: int = 4) -> bool:
    return fold_of(prompt, folds) == fold  # a quarter of the prompts by default


def make_pairs(project: Path, per_prompt: int) -> None:
    from backend.service.client import start_backend

    proc, client = start_backend(project)
    try:
        job = client.create_job(f'kind = "pairs"\nmodel = "models/shapes-base"\nmax_prompts = 100000\nimages_per_prompt = {per_prompt}\n', "bench pairs")
        end = client.wait_job(job["id"], timeout=3600)
        assert end["state"] == "done", client.log(job["id"])["text"][-2000:]
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=30)


def rate_all(project: Path, tastes: tuple[str, ...], noise: float) -> dict:
    from backend.scripted_rater import ScriptedRater
    from backend.service.client import start_backend

    proc, client = start_backend(project)
    try:
        rater = ScriptedRater(client, "hidden", tastes, noise=noise, seed=0)
        report = rater.rate(100_000)
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=30)
    return {"rated": report.rated, "choices": report.choices, "flipped": report.flipped}


def hidden_utilities(project, tastes: tuple[str, ...]) -> tuple[dict[str, float], dict[str, object], dict[str, float]]:
    """The rater's noise-free liking of every image for its prompt, read once; beside it the part of that
    liking the prompt's promises decide (faithful, exactly the promised objects, share of checks kept),
    without the near-miss credit."""
    from PIL import Image

    from backend.eval.shapes_eval import check_image, exact_objects, strict_pass
    from backend.scripted_rater import ScriptedRater
    from backend.world.spec import Scene

    rater = ScriptedRater(None, "hidden", tastes, noise=0.0)
    rows = project.db.execute("SELECT prompt, image_a, image_b, meta FROM comparisons").fetchall()
    todo = {}
    for _, a, b, meta in rows:
        spec = json.loads(meta)["a"]["spec"]
        todo[a] = spec
        todo[b] = spec
    hashes = sorted(todo)
    images = {h: Image.open(io.BytesIO(project.blob_path(h, "png").read_bytes())).convert("RGB") for h in hashes}
    utilities, promises = {}, {}
    for i in range(0, len(hashes), 256):
        part = hashes[i: i + 256]
        for h, det in zip(part, rater.detector([images[x] for x in part])):
            utilities[h] = rater.utility(todo[h], images[h], det)[0]
            scene = Scene.from_json(todo[h])
            checks = check_image(scene, det)
            promises[h] = 4.0 * strict_pass(scene, det) + exact_objects(scene, det) + sum(checks.values()) / max(1, len(checks))
    return utilities, images, promises


def copy_judgements(project, rater: str, n: int, fold: int = 0, folds: int = 4) -> int:
    """The first ``n`` judgements of the hidden rater on training prompts (outside ``fold``), stored again as ``rater``."""
    rows = project.db.execute("""SELECT r.comparison_id, r.choice, r.shown_left, r.decision_ms, c.prompt FROM ratings r
                                 JOIN comparisons c ON c.id = r.comparison_id WHERE r.rater = 'hidden' AND r.undone IS NULL ORDER BY r.id""").fetchall()
    rows = [r for r in rows if not heldout(r[4], fold, folds)][:n]
    with project.transaction():
        for cid, choice, left, ms, _ in rows:
            project.db.execute("INSERT INTO ratings (comparison_id, choice, shown_left, rater, decision_ms) VALUES (?, ?, ?, ?, ?)", [cid, choice, left, rater, ms])
    return len(rows)


def share(right: list[bool]) -> dict:
    acc = sum(right) / max(1, len(right))
    return {"accuracy": acc, "se": math.sqrt(acc * (1 - acc) / max(1, len(right))), "n": len(right)}


def accuracy(model, pairs: list[tuple], utilities: dict[str, float], images: dict, promises: dict[str, float] | None = None,
             categories: dict[str, str] | None = None) -> dict:
    """Share of held-out pairs with a hidden preference where the reward orders the two images the same way;
    with ``promises``, also apart: pairs the prompt's promises decide, and pairs only the near-miss credit decides;
    with ``categories`` (prompt -> ShapesEval category), per category."""
    prompts = [p for p, _, _ in pairs]
    ra = model.score([images[a] for _, a, _ in pairs], prompts)
    rb = model.score([images[b] for _, _, b in pairs], prompts)
    right = [(x > y) == (utilities[a] > utilities[b]) for (_, a, b), x, y in zip(pairs, ra, rb)]
    out = {**share(right), "ra": ra, "rb": rb}
    if promises is not None:
        by_promise = [abs(promises[a] - promises[b]) > 1e-9 for _, a, b in pairs]
        out["by_promises"] = share([r for r, d in zip(right, by_promise) if d])
        out["by_near_miss_credit"] = share([r for r, d in zip(right, by_promise) if not d])
    if categories is not None:
        out["by_category"] = {c: share([r for r, (p, _, _) in zip(right, pairs) if categories[p] == c]) for c in sorted({categories[p] for p, _, _ in pairs})}
    return out


def pair_grid(pairs: list[tuple], images: dict, utilities: dict, ra: list[float], rb: list[float], out: Path, n: int = 16) -> None:
    """Held-out pairs side by side: the prompt, each image's reward, and the rater's hidden verdict
    (green frame = the reward agrees with the rater)."""
    from PIL import Image, ImageDraw

    scale, w = 2, 64
    cell_w, cell_h = 2 * w * scale + 16, w * scale + 58
    cols = 4
    sheet = Image.new("RGB", (cols * cell_w, ((n + cols - 1) // cols) * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, ((prompt, a, b), x, y) in enumerate(list(zip(pairs, ra, rb))[:n]):
        cx, cy = (i % cols) * cell_w, (i // cols) * cell_h
        agree = (x > y) == (utilities[a] > utilities[b])
        draw.rectangle([cx + 1, cy + 1, cx + cell_w - 2, cy + w * scale + 6], outline=(40, 160, 60) if agree else (200, 40, 40), width=3)
        sheet.paste(images[a].resize((w * scale, w * scale), Image.NEAREST), (cx + 4, cy + 4))
        sheet.paste(images[b].resize((w * scale, w * scale), Image.NEAREST), (cx + 8 + w * scale, cy + 4))
        pref = "rater: left" if utilities[a] > utilities[b] else "rater: right"
        for k, line in enumerate(textwrap.wrap(prompt, 44)[:2]):  # relation prompts run past one line
            draw.text((cx + 4, cy + w * scale + 8 + 13 * k), line, fill=(0, 0, 0))
        draw.text((cx + 4, cy + w * scale + 36), f"r {x:+.2f} | {y:+.2f}   {pref}", fill=(60, 60, 60))
    sheet.save(out)


def plot(rows: dict[str, list[tuple[int, float, float]]], zero_shot: float, out: Path, zero_shot_every: float | None = None) -> None:
    """The accuracy curves; with cross-validated curves the prior alone on every decided pair is drawn too (their baseline)."""
    lines = [(zero_shot, f"prior alone on the held-out quarter {zero_shot:.3f}")]
    if zero_shot_every is not None:
        lines.append((zero_shot_every, f"prior alone on every decided pair {zero_shot_every:.3f}"))
    chart(rows, out, xlabel="judgements given to the reward run (log scale)", ylabel="held-out accuracy vs the rater's hidden preference",
          hlines=lines + [(0.85, "target 0.85"), (0.5, "chance")], logx=True, ylim=(0.4, 1.0))


def cross_validated_curves(rows: list[dict]) -> dict[str, list[tuple[int, float, float]]]:
    """The cross-validated rows as curves, one per start."""
    out: dict[str, list[tuple[int, float, float]]] = {}
    for r in rows:
        out.setdefault(f"from {'the prior' if r['init'] == 'prior' else 'a fresh head'}, {r['folds']}-fold cross-valid.", []).append(
            (r["judgements"], r["accuracy"], r["se"]))
    return out


def recipe_overrides(args: argparse.Namespace, init: str) -> dict:
    extra: dict = {}
    if args.anchor is not None and init == "prior":
        extra["anchor"] = args.anchor
    if args.tune is not None and init == "prior":
        extra["tune"] = args.tune
    if args.validation is not None:
        extra["validation"] = args.validation
    if args.ties is not None:
        extra["ties"] = args.ties
    if args.label_noise is not None:
        extra["label_noise"] = args.label_noise
    return extra


def tag(args: argparse.Namespace, init: str) -> str:
    """The overrides in a model's name, so runs of different settings on one project keep their own folders."""
    return "".join(f"-{k}{v}" for k, v in recipe_overrides(args, init).items())


def cross_validate(project, args: argparse.Namespace, rows: list, utilities: dict, images: dict, promises: dict, categories: dict,
                   prior_dir: Path, trained: dict) -> list[dict]:
    """Each share of the prompts held out in turn: a reward run on the first N judgements of the others, scored on the
    share's decided pairs; the shares' verdicts pooled, so every decided pair counts once. ``trained`` holds the
    models of the main table ((init, N) -> model folder), whose held-out quarter is fold 0 of 4: not trained again."""
    from backend.models.reward import load_reward
    from backend.recipes.reward import RewardRecipe
    from backend.stages import reward as reward_stage

    out = []
    for init in args.inits:
        for n in args.sizes:
            right: list[bool] = []
            by_cat: dict[str, list[bool]] = {}
            weights = []
            for fold in range(args.folds):
                if args.folds == 4 and fold == 0 and (init, n) in trained:
                    folder = trained[(init, n)]
                else:
                    rater = f"n{n}f{fold}of{args.folds}"
                    if not project.db.execute("SELECT 1 FROM ratings WHERE rater = ? LIMIT 1", [rater]).fetchone():
                        copy_judgements(project, rater, n, fold, args.folds)
                    start = str(prior_dir) if init == "prior" and args.prior else init
                    recipe = RewardRecipe(rater=rater, init=start, heldout=0.1, name=f"bench-{init}-{n}-fold{fold}{tag(args, init)}", **recipe_overrides(args, init))
                    summary = reward_stage.run(project, recipe, Path(tempfile.mkdtemp(prefix="reward-bench-")), Collect(quiet=True), resume=False)
                    folder = project.root / summary["path"]
                model = load_reward(folder)
                weights.append(json.loads((folder / "card.json").read_text()).get("term_weights"))
                pairs = [r for r in rows if heldout(r[0], fold, args.folds) and abs(utilities[r[1]] - utilities[r[2]]) > 1e-9]
                acc = accuracy(model, pairs, utilities, images)
                verdicts = [(x > y) == (utilities[a] > utilities[b]) for (_, a, b), x, y in zip(pairs, acc["ra"], acc["rb"])]
                right += verdicts
                for (p, _, _), v in zip(pairs, verdicts):
                    by_cat.setdefault(categories[p], []).append(v)
            row = {"init": init, "judgements": n, "folds": args.folds, **share(right), "by_category": {c: share(v) for c, v in sorted(by_cat.items())},
                   "term_weights": weights, **recipe_overrides(args, init)}
            out.append(row)
            print(f"{init:6s} {n:5d} judgements, {args.folds}-fold cross-validated: {row['accuracy']:.3f} ± {row['se']:.3f} on {row['n']} pairs; "
                  + ", ".join(f"{c} {v['accuracy']:.2f}" for c, v in row["by_category"].items()), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--taste", default="faithful")
    ap.add_argument("--noise", type=float, default=0.1)
    ap.add_argument("--per-prompt", type=int, default=4)
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    ap.add_argument("--inits", nargs="+", default=["prior", "none"])
    ap.add_argument("--anchor", type=float, default=None, help="override the recipe's anchor for runs from the prior")
    ap.add_argument("--tune", choices=["all", "terms"], default=None, help="override the recipe's tune for runs from the prior")
    ap.add_argument("--ties", choices=["half", "ignore"], default=None, help="override the recipe's ties")
    ap.add_argument("--label-noise", type=float, default=None, help="override the recipe's label_noise (robust Bradley-Terry)")
    ap.add_argument("--folds", type=int, default=1, help="also cross-validate over this many shares of the prompts (each held out "
                                                          "in turn): every decided pair measured once, a tighter figure than one quarter")
    ap.add_argument("--validation", type=float, default=None, help="override the recipe's validation share (0 = keep the last step's head)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--project", type=Path, default=None, help="reuse the project (pairs and judgements) of an earlier run")
    ap.add_argument("--prior", type=Path, default=None, help="a candidate prior folder in place of the shipped one (zero-shot and init)")
    args = ap.parse_args()
    tastes = tuple(t for t in args.taste.split(",") if t)

    from backend.models.reward import load_reward
    from backend.paths import shipped_reward_prior_dir
    from backend.recipes.reward import RewardRecipe
    from backend.stages import reward as reward_stage
    from backend.stages.world import install_shipped_base
    from backend.store import Project

    if args.project:  # a project an earlier run of this bench made: its pairs and judgements are reused
        project_dir = args.project
        with Project.open(project_dir) as project:
            rated = {"rated": project.db.execute("SELECT count(*) FROM ratings WHERE rater = 'hidden'").fetchone()[0], "reused": str(project_dir)}
    else:
        project_dir = scratch_project(32, (64, 64))
        print(f"bench project: {project_dir}", flush=True)
        with Project.open(project_dir) as project:
            install_shipped_base(project)
        make_pairs(project_dir, args.per_prompt)
        rated = rate_all(project_dir, tastes, args.noise)
    print(f"scripted rater ({args.taste}, noise {args.noise}): {rated}")
    result: dict = {"taste": args.taste, "noise": args.noise, "rated": rated, "runs": []}
    with Project.open(project_dir) as project:
        utilities, images, promises = hidden_utilities(project, tastes)
        rows = project.db.execute("SELECT prompt, image_a, image_b FROM comparisons ORDER BY id").fetchall()
        held = [r for r in rows if heldout(r[0]) and abs(utilities[r[1]] - utilities[r[2]]) > 1e-9]
        result["heldout_pairs"] = len(held)
        result["heldout_prompts"] = len({r[0] for r in held})
        prior_dir = args.prior.resolve() if args.prior else shipped_reward_prior_dir()
        result["prior"] = str(prior_dir)
        prior_model = load_reward(prior_dir)
        prior = accuracy(prior_model, held, utilities, images, promises)
        result["zero_shot"] = {k: prior[k] for k in ("accuracy", "se", "n", "by_promises", "by_near_miss_credit")}
        args.out.mkdir(parents=True, exist_ok=True)
        pair_grid(held, images, utilities, prior["ra"], prior["rb"], args.out / "reward_pairs_prior.png")
        print(f"prior alone: {prior['accuracy']:.3f} ± {prior['se']:.3f} on {prior['n']} held-out pairs with a hidden preference")
        # the prior saw no rating, so every pair with a hidden preference measures it (a tighter figure than the held-out quarter)
        every = [r for r in rows if abs(utilities[r[1]] - utilities[r[2]]) > 1e-9]
        categories = {p: json.loads(m)["a"]["spec"].get("category", "?") for p, m in project.db.execute("SELECT prompt, meta FROM comparisons")}
        prior_all = accuracy(prior_model, every, utilities, images, promises, categories)
        result["zero_shot_every_pair"] = {k: prior_all[k] for k in ("accuracy", "se", "n", "by_promises", "by_near_miss_credit", "by_category")}
        print(f"prior alone on every pair with a hidden preference: {prior_all['accuracy']:.3f} ± {prior_all['se']:.3f} ({prior_all['n']} pairs); "
              + ", ".join(f"{c} {v['accuracy']:.2f} of {v['n']}" for c, v in prior_all["by_category"].items()))
        curves: dict[str, list[tuple[int, float, float]]] = {}
        trained: dict[tuple[str, int], Path] = {}
        best = None
        for init in args.inits:
            for n in args.sizes:
                rater = f"n{n}"
                if not project.db.execute("SELECT 1 FROM ratings WHERE rater = ? LIMIT 1", [rater]).fetchone():
                    copy_judgements(project, rater, n)
                extra = recipe_overrides(args, init)
                start = str(prior_dir) if init == "prior" and args.prior else init
                recipe = RewardRecipe(rater=rater, init=start, heldout=0.1, name=f"bench-{init}-{n}{tag(args, init)}", **extra)
                summary = reward_stage.run(project, recipe, Path(tempfile.mkdtemp(prefix="reward-bench-")), Collect(quiet=True), resume=False)
                trained[(init, n)] = project.root / summary["path"]
                model = load_reward(trained[(init, n)])
                acc = accuracy(model, held, utilities, images, promises)
                row = {"init": init, "judgements": n, "accuracy": acc["accuracy"], "se": acc["se"], "n": acc["n"],
                       "by_promises": acc["by_promises"], "by_near_miss_credit": acc["by_near_miss_credit"],
                       "stage_heldout_accuracy_noisy": summary["heldout"].get("accuracy"), "anchor": recipe.anchor, "tune": recipe.tune,
                       "validation": recipe.validation}
                result["runs"].append(row)
                curves.setdefault(f"from {'the prior' if init == 'prior' else 'a fresh head'}" + (", term weights only" if recipe.tune == "terms" else ""), []).append((n, acc["accuracy"], acc["se"]))
                print(f"{init:6s} {n:5d} judgements: {acc['accuracy']:.3f} ± {acc['se']:.3f}", flush=True)
                if init == args.inits[0] and n == 500:
                    best = acc
        if args.folds > 1:
            result["cross_validated"] = cross_validate(project, args, rows, utilities, images, promises, categories, prior_dir, trained)
    def cells(r: dict) -> list:
        return [f"{r['accuracy']:.3f} ± {r['se']:.3f}", r["n"]] + [f"{r[k]['accuracy']:.3f} ± {r[k]['se']:.3f} ({r[k]['n']})"
                                                                 for k in ("by_promises", "by_near_miss_credit")]

    lines = [[r["init"] + (" (terms)" if r["tune"] == "terms" else ""), r["judgements"], *cells(r)] for r in result["runs"]]
    lines.insert(0, ["prior alone", 0, *cells(result["zero_shot"])])
    result["heldout_split"] = {"by_promises": result["zero_shot"]["by_promises"]["n"], "by_near_miss_credit": result["zero_shot"]["by_near_miss_credit"]["n"]}
    print(table(lines, ["start", "judgements", "held-out accuracy vs hidden preference", "pairs", "pairs the promises decide",
                        "pairs only near-miss credit decides"]))
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.taste == "faithful" else "_" + args.taste.replace(",", "_")
    if "cross_validated" in result:
        curves.update(cross_validated_curves(result["cross_validated"]))
    plot(curves, result["zero_shot"]["accuracy"], args.out / f"reward_accuracy{suffix}.png",
         result["zero_shot_every_pair"]["accuracy"] if "cross_validated" in result else None)
    if best is not None:
        pair_grid(held, images, utilities, best["ra"], best["rb"], args.out / f"reward_pairs{suffix}.png")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
