"""What a stock diffusers folder (SD3 / SD3.5, FLUX.1) holds, read without torch and without loading
a weight: which pipeline, which parts, how many bytes of weights in which dtype (from the
safetensors headers). The service checks a recipe's folder with it before a job is queued, so a
missing text encoder or a quantized copy is refused with the fix, not found minutes into a load.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

PIPELINES = {"StableDiffusion3Pipeline": "sd3", "FluxPipeline": "flux"}
# the parts each family's folder must hold (model_index.json names them; these are the ones we use)
PARTS = {
    "sd3": ("transformer", "vae", "scheduler", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3", "tokenizer_3"),
    "flux": ("transformer", "vae", "scheduler", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"),
}
TRAINABLE_DTYPES = {"F32", "F16", "BF16"}


class StockFolderError(ValueError):
    """A stock folder that cannot be trained as it is; the message names every problem and its fix."""


def stock_family_name(folder: Path) -> str | None:
    """'sd3' / 'flux' for a stock pipeline folder, None when ``folder`` has no ``model_index.json``;
    a pipeline of another kind is an error naming what is supported."""
    index = Path(folder) / "model_index.json"
    if not index.exists():
        return None
    try:
        cls = json.loads(index.read_text()).get("_class_name", "")
    except (OSError, ValueError) as exc:
        raise StockFolderError(f"{index} cannot be read ({exc})") from exc
    if cls not in PIPELINES:
        raise StockFolderError(f"{folder} holds a {cls or 'pipeline of unknown kind'}; Signal Studio trains "
                               f"{', '.join(sorted(PIPELINES))} folders (SD3/SD3.5, FLUX.1) and its own models")
    return PIPELINES[cls]


def safetensors_dtypes(folder: Path) -> dict[str, int]:
    """Bytes of weights per stored dtype in a component folder, read from the safetensors headers
    (nothing is loaded); an empty dict when the folder holds no safetensors file."""
    sizes: dict[str, int] = {}
    for file in sorted(Path(folder).glob("*.safetensors")):
        with open(file, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, entry in header.items():
            if name != "__metadata__":
                begin, end = entry["data_offsets"]
                sizes[entry["dtype"]] = sizes.get(entry["dtype"], 0) + end - begin
    return sizes


def check_stock_folder(folder: str | Path) -> dict[str, Any]:
    """What a stock folder holds ({family, parts: {name: {bytes, dtypes}}, weight_bytes}); raises
    ``StockFolderError`` listing every missing part, pickled-only weights and untrainable dtype."""
    folder = Path(folder)
    if not folder.is_dir():
        raise StockFolderError(f"{folder} is not a folder; point model.init at a local diffusers folder of SD3/SD3.5 or FLUX.1")
    family = stock_family_name(folder)
    if family is None:
        raise StockFolderError(f"{folder} has no model_index.json: not a diffusers pipeline folder")
    index = json.loads((folder / "model_index.json").read_text())
    problems: list[str] = []
    parts: dict[str, Any] = {}
    for part in PARTS[family]:
        sub = folder / part
        entry = index.get(part)
        if not entry or entry[0] is None or not sub.is_dir():
            what = "the T5 text encoder" if part in ("text_encoder_3",) or (family == "flux" and part == "text_encoder_2") else part
            problems.append(f"{part}/ is missing ({what}); copy it from the full {family.upper()} release into {folder}")
            continue
        if part.startswith("tokenizer") or part == "scheduler":
            parts[part] = {"bytes": 0, "dtypes": {}}
            continue
        dtypes = safetensors_dtypes(sub)
        if not dtypes:
            pickled = [p.name for p in sub.glob("*.bin")] + [p.name for p in sub.glob("*.pt")]
            problems.append(f"{part}/ holds no .safetensors weights" + (f" (only {', '.join(pickled)}, which is never unpickled here)" if pickled else "")
                            + "; convert it to safetensors")
            continue
        bad = sorted(set(dtypes) - TRAINABLE_DTYPES)
        if bad:
            problems.append(f"{part}/ is stored as {', '.join(bad)} (a quantized copy); training needs float32, float16 or bfloat16 weights: "
                            f"point model.init at the unquantized release")
        parts[part] = {"bytes": sum(dtypes.values()), "dtypes": dtypes}
    if problems:
        raise StockFolderError(f"{folder} cannot be used as a {family.upper()} model:\n  - " + "\n  - ".join(problems))
    return {"family": family, "parts": parts, "weight_bytes": sum(p["bytes"] for p in parts.values())}
