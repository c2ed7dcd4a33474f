"""``signal-backend ratings export|import``: preference data in and out of a project (Pick-a-Pic-style parquet)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from backend.cli import command, fail


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", type=Path, help="parquet file to write")
    p.add_argument("--project", type=Path, required=True)
    p.add_argument("--rater", default=None, help="only this rater's judgements")


@command("ratings export", "write a project's judgements as Pick-a-Pic-style parquet", _export_args)
def _export(args: argparse.Namespace) -> int:
    from backend.data.preferences import export_ratings
    from backend.store import Project

    with Project.open(args.project) as project:
        print(json.dumps(export_ratings(project, args.out, args.rater).to_json()))
    return 0


def _import_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path, help="Pick-a-Pic-style parquet file")
    p.add_argument("--project", type=Path, required=True)
    p.add_argument("--rater", default=None, help="store the judgements under this rater (default: the file's user_id)")


@command("ratings import", "add the pairs and judgements of a Pick-a-Pic-style parquet file (all or nothing)", _import_args)
def _import(args: argparse.Namespace) -> int:
    from backend.data.preferences import PreferenceImportError, import_ratings
    from backend.store import Project

    with Project.open(args.project) as project:
        try:
            print(json.dumps(import_ratings(project, args.file, args.rater)))
        except PreferenceImportError as exc:
            return fail(f"{exc}; nothing was imported")
    return 0


def _score_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", type=Path, nargs="+", help="image files to score")
    p.add_argument("--model", type=Path, required=True, help="reward model folder (models/reward-N in a project)")
    p.add_argument("--prompt", required=True, help="the prompt the images were drawn for")


@command("reward score", "score images for a prompt with a reward model", _score_args)
def _score(args: argparse.Namespace) -> int:
    from PIL import Image, UnidentifiedImageError

    from backend.models.reward import load_reward

    try:
        model = load_reward(args.model)
    except FileNotFoundError as exc:
        return fail(str(exc))
    images = []
    for path in args.images:
        try:
            images.append(Image.open(path).convert("RGB"))
        except (OSError, UnidentifiedImageError) as exc:
            return fail(f"{path}: not a readable image ({exc})")
    for path, score in zip(args.images, model.score(images, [args.prompt] * len(images))):
        print(json.dumps({"image": str(path), "prompt": args.prompt, "reward": round(score, 4)}))
    return 0


def _pretrain_args(p: argparse.ArgumentParser) -> None:
    from backend.paths import shipped_reward_prior_dir

    p.add_argument("--out", type=Path, default=shipped_reward_prior_dir(), help="folder to write the prior into (default: the shipped one)")
    p.add_argument("--scenes", type=int, default=12000, help="scenes rendered (each beside a copy with one promise broken)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--width", type=int, default=32, help="width of the head")
    p.add_argument("--trunk", type=int, default=2, help="residual convolution blocks over the image's patch grid before the attention")
    p.add_argument("--mix", type=int, default=1, help="decoder layers in which the prompt's tokens read each other's findings (relations)")
    p.add_argument("--where", action=argparse.BooleanOptionalAction, default=True,
                   help="compare where the prompt's tokens found their objects (relations: left of, above)")
    p.add_argument("--bind", action=argparse.BooleanOptionalAction, default=False,
                   help="with --where: each token also judges the one object its locating attention found (a colour bound to its shape)")
    p.add_argument("--relation-share", type=float, default=0.3,
                   help="share of each batch given to scenes whose copy mirrors a relation (0: as they come, about one in twelve)")
    p.add_argument("--locate-weight", type=float, default=1.0,
                   help="with --where: weight of the term teaching each group's words to look where its objects are")
    p.add_argument("--sibling-weight", type=float, default=1.0,
                   help="weight of the pairwise term: each caption's own image above its sibling with one promise broken")
    p.add_argument("--relate", action=argparse.BooleanOptionalAction, default=False,
                   help="with --bind: the where term bounded and paid only as far as the located objects are the named ones")
    p.add_argument("--init", type=Path, default=None, help="go on from this prior's weights (its width, trunk, mix, where and bind)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (AdamW); lower when going on from --init")
    p.add_argument("--base-share", type=float, default=0.0,
                   help="share of scenes redrawn by the shipped base model from t = 0.4 (the base's strokes on known promises)")
    p.add_argument("--compound-share", type=float, default=0.0,
                   help="share of broken copies with two promises broken (the base's misses often come in pairs)")
    p.add_argument("--group-breaks", action="store_true",
                   help="also break whole groups: drop one of two named groups, or add a stray object to a one-group scene")
    p.add_argument("--near-share", type=float, default=0.0,
                   help="share of relation scenes drawn with the two named groups close along the relation's axis, broken by mirroring")
    p.add_argument("--no-mirror", action="store_true",
                   help="read the saved prior on the picture alone, not as the mean over it and its mirror image under the mirrored caption")
    p.add_argument("--seed", type=int, default=0)


@command("reward pretrain", "pretrain the reward prior: the reward head matched to ShapesWorld captions, no ratings", _pretrain_args)
def _pretrain(args: argparse.Namespace) -> int:
    from backend.models.reward_prior import pretrain_prior
    from backend.sample.redraw import redraw_pairs

    card = pretrain_prior(args.out, scenes=args.scenes, steps=args.steps, width=args.width, trunk=args.trunk, mix=args.mix, where=args.where,
                         relation_share=args.relation_share, locate_weight=args.locate_weight, sibling_weight=args.sibling_weight, bind=args.bind, relate=args.relate,
                         init=args.init, lr=args.lr, seed=args.seed, base_share=args.base_share, compound_share=args.compound_share,
                         redraw=redraw_pairs, group_breaks=args.group_breaks, near_share=args.near_share, mirror=not args.no_mirror)
    print(json.dumps(card["zero_shot"]))
    return 0
