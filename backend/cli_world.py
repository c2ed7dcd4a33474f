"""CLI for ShapesWorld (export, training the world's networks) and evaluation (ShapesEval, FD)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from backend.cli import _size, command, fail


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", type=Path, help="output folder (created)")
    p.add_argument("--n", type=int, default=1000, help="number of scenes")
    p.add_argument("--seed", type=int, default=0, help="world seed (same seed, same images)")
    p.add_argument("--resolution", type=_size, default=None, help="fixed WIDTHxHEIGHT (default: mixed 32-128 px, 7 aspect ratios)")
    p.add_argument("--no-subject", action="store_true", help="leave out the DreamBooth subject's renders")
    p.add_argument("--defects", action="store_true", help="plant corrupt files and duplicates (curation demo)")


@command("world export", "write ShapesWorld images, captions and metadata.jsonl to a folder", _export_args)
def _world_export(args: argparse.Namespace) -> int:
    from backend.world.export import export_world

    if args.n < 1:
        return fail("--n must be at least 1")

    def progress(i: int, n: int) -> None:
        print(f"\r[world] {i}/{n}", end="", file=sys.stderr, flush=True)

    summary = export_world(args.dir, args.n, args.seed, subject=not args.no_subject, defects=args.defects, resolution=args.resolution, progress=progress)
    print(file=sys.stderr)
    print(json.dumps(summary, indent=2))
    return 0


def _train_args(default_out: str, steps: int):
    def configure(p: argparse.ArgumentParser) -> None:
        from backend.paths import resources_dir

        p.add_argument("--out", type=Path, default=resources_dir() / "world" / default_out)
        p.add_argument("--steps", type=int, default=steps)
        p.add_argument("--seed", type=int, default=0)

    return configure


def _vae_args(p: argparse.ArgumentParser) -> None:
    _train_args("vae", 6000)(p)
    p.add_argument("--blur-weight", type=float, default=0.0, help="weight of the blurred-latent reconstruction term (0 = off)")
    p.add_argument("--anchor-weight", type=float, default=0.0, help="weight of the term tying latent channels 0-2 to the downsampled image (0 = off)")
    p.add_argument("--init", type=Path, default=None, help="fine-tune this VAE folder instead of starting from random weights")
    p.add_argument("--lr", type=float, default=1e-3)


@command("world train-vae", "train the ShapesWorld VAE (CPU, minutes)", _vae_args)
def _train_vae(args: argparse.Namespace) -> int:
    from backend.world.train_vae import train_vae

    train_vae(args.out, steps=args.steps, seed=args.seed, blur_weight=args.blur_weight, anchor_weight=args.anchor_weight, init=args.init, lr=args.lr)
    return 0


@command("world train-detector", "train the ShapesWorld detector (CPU, minutes)", _train_args("detector", 3000))
def _train_detector(args: argparse.Namespace) -> int:
    from backend.world.train_detector import train_detector

    train_detector(args.out, steps=args.steps, seed=args.seed)
    return 0


@command("world train-encoder", "train the representation encoder (CPU, minutes)", _train_args("encoder", 1500))
def _train_encoder(args: argparse.Namespace) -> int:
    from backend.world.encoder import train_encoder

    train_encoder(args.out, steps=args.steps, seed=args.seed)
    return 0


def _prompts_args(p: argparse.ArgumentParser) -> None:
    from backend.paths import resources_dir

    p.add_argument("--out", type=Path, default=resources_dir() / "eval" / "shapes_eval.jsonl")
    p.add_argument("--per-category", type=int, default=48, help="prompts per category other than single objects (those are every shape x colour)")
    p.add_argument("--seeds", type=int, default=4, help="seeds per prompt")


@command("world eval-prompts", "write the fixed ShapesEval prompt set", _prompts_args)
def _eval_prompts(args: argparse.Namespace) -> int:
    from backend.eval.shapes_eval import build_eval_prompts, save_eval_prompts

    prompts = build_eval_prompts(per_category=args.per_category, seeds_per_prompt=args.seeds)
    save_eval_prompts(prompts, args.out)
    print(f"wrote {len(prompts)} prompts to {args.out}")
    return 0


# --- evaluation -----------------------------------------------------------------------------


def _eval_shapes_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", type=Path, help="folder of generated images")
    p.add_argument("--out", type=Path, default=None, help="JSON report (default: DIR/shapes_eval.json)")
    p.add_argument("--detector", type=str, default=None, help="detector folder (default: the shipped one)")


@command("eval shapes", "ShapesEval a folder of generated images (spec from sidecars, metadata.jsonl or prompt ids)", _eval_shapes_args)
def _eval_shapes(args: argparse.Namespace) -> int:
    from backend.eval.folder import collect_specs
    from backend.eval.shapes_eval import shapes_eval
    from backend.world.pretrained import load_detector

    try:
        images, specs, names, skipped = collect_specs(args.dir)
    except FileNotFoundError as exc:
        return fail(str(exc))
    for name, why in skipped:
        print(f"skipped {name}: {why}", file=sys.stderr)
    if not images:
        return fail(f"no image in {args.dir} carries a prompt spec (a .json sidecar, metadata.jsonl or an eval prompt id in its name)")
    report = shapes_eval(images, specs, load_detector(args.detector), names)
    print(report.table())
    out = args.out or args.dir / "shapes_eval.json"
    out.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    print(f"report: {out}")
    return 0


def _eval_fd_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)


@command("eval fd", "Fréchet distance between two image folders in the encoder's space", _eval_fd_args)
def _eval_fd(args: argparse.Namespace) -> int:
    from backend.eval.fd import frechet_distance
    from backend.eval.folder import read_images
    from backend.world.pretrained import load_encoder

    enc = load_encoder()
    a, _ = read_images(args.a)
    b, _ = read_images(args.b)
    if len(a) < 2 or len(b) < 2:
        return fail("each folder needs at least two readable images")
    fd = frechet_distance(enc.pooled(a).numpy(), enc.pooled(b).numpy())
    print(json.dumps({"fd": fd, "n_a": len(a), "n_b": len(b)}))
    return 0
