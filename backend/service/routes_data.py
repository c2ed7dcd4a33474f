"""Routes for datasets, items, images, thumbnails, recipes and models."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, Field

from .params import MAX_INT, Id, like_pattern

router = APIRouter()
HASH = re.compile(r"^[0-9a-f]{64}$")


def _state(request: Request):
    return request.app.state.service


def _item(row: dict[str, Any]) -> dict[str, Any]:
    row = dict(row)
    row["flags"] = json.loads(row.get("flags") or "[]")
    row["meta"] = json.loads(row["meta"]) if row.get("meta") else None
    return row


@router.get("/datasets")
def datasets(request: Request) -> list[dict[str, Any]]:
    """Every dataset with its item count, category counts and flagged count."""
    st = _state(request)
    out = []
    for ds in st.rows("SELECT id, name, source, created FROM datasets ORDER BY id"):
        cats = st.rows("SELECT COALESCE(category, 'uncategorised') AS category, count(*) AS n FROM items WHERE dataset_id = ? GROUP BY 1 ORDER BY 1", [ds["id"]])
        ds["categories"] = {c["category"]: c["n"] for c in cats}
        ds["items"] = sum(ds["categories"].values())
        ds["flagged"] = st.db().execute("SELECT count(*) FROM items WHERE dataset_id = ? AND flags NOT IN ('[]', '[\"chosen_keeper\"]')", [ds["id"]]).fetchone()[0]
        ds["rejects"] = st.db().execute("SELECT count(*) FROM rejects WHERE dataset_id = ?", [ds["id"]]).fetchone()[0]
        out.append(ds)
    return out


@router.get("/datasets/{name}/items")
def items(
    request: Request,
    name: str,
    offset: int = Query(0, ge=0, le=MAX_INT),
    limit: int = Query(100, ge=1, le=1000),
    category: str | None = None,
    flagged: bool | None = None,
    min_width: int | None = Query(None, ge=0, le=MAX_INT),
    min_height: int | None = Query(None, ge=0, le=MAX_INT),
    caption: str | None = Query(None, max_length=200),
) -> dict[str, Any]:
    """A page of items with filters; ``total`` counts all matches."""
    st = _state(request)
    ds = st.db().execute("SELECT id FROM datasets WHERE name = ?", [name]).fetchone()
    if ds is None:
        raise HTTPException(404, f"no dataset {name!r}")
    where, params = ["dataset_id = ?"], [ds[0]]
    if category:
        where.append("category = ?")
        params.append(category)
    if flagged is not None:  # the curated view: no flags except a keeper choice (see backend.data.view.excluded)
        where.append("flags NOT IN ('[]', '[\"chosen_keeper\"]')" if flagged else "flags IN ('[]', '[\"chosen_keeper\"]')")
    if min_width is not None:
        where.append("width >= ?")
        params.append(min_width)
    if min_height is not None:
        where.append("height >= ?")
        params.append(min_height)
    if caption:
        where.append("caption LIKE ? ESCAPE '\\'")
        params.append(like_pattern(caption))
    clause = " AND ".join(where)
    total = st.db().execute(f"SELECT count(*) FROM items WHERE {clause}", params).fetchone()[0]
    rows = st.rows(
        f"SELECT id, hash, ext, width, height, mode, caption, category, flags, complexity, source_path FROM items WHERE {clause} ORDER BY id LIMIT ? OFFSET ?",
        [*params, limit, offset],
    )
    return {"total": total, "offset": offset, "items": [_item(r) for r in rows]}


@router.get("/items/{item_id}")
def item(request: Request, item_id: Id) -> dict[str, Any]:
    rows = _state(request).rows("SELECT * FROM items WHERE id = ?", [item_id])
    if not rows:
        raise HTTPException(404, f"no item {item_id}")
    return _item(rows[0])


def _blob(request: Request, digest: str, kind: str) -> FileResponse:
    if not HASH.match(digest):
        raise HTTPException(400, "not a content hash")
    proj = _state(request).project()
    folder = proj.root / kind / digest[:2]
    matches = sorted(folder.glob(f"{digest}.*")) if folder.is_dir() else []
    if not matches:
        raise HTTPException(404, "no such image")
    return FileResponse(matches[0], headers={"Cache-Control": "max-age=31536000, immutable"})


@router.get("/images/{digest}")
def image(request: Request, digest: str) -> FileResponse:
    """An image by content hash (dataset items and samples alike)."""
    return _blob(request, digest, "images")


@router.get("/thumbs/{digest}")
def thumb(request: Request, digest: str) -> Response:
    """A small thumbnail by content hash (made at import, or on first request)."""
    if not HASH.match(digest):
        raise HTTPException(400, "not a content hash")
    proj = _state(request).project()
    path = proj.blob_path(digest, "png", kind="cache/thumbs")
    if not path.exists():
        src = _blob(request, digest, "images").path
        from io import BytesIO

        from PIL import Image

        from backend.store import atomic_write_bytes

        with Image.open(src) as im:
            im = im.convert("RGB")
            im.thumbnail((96, 96))
            buf = BytesIO()
            im.save(buf, "PNG")
        atomic_write_bytes(path, buf.getvalue())
    return FileResponse(path, headers={"Cache-Control": "max-age=31536000, immutable"})


class RecipeText(BaseModel):
    text: str


@router.post("/recipes/validate")
def validate_recipe(body: RecipeText) -> dict[str, Any]:
    """Validate TOML recipe text; every problem comes back with its field path."""
    from backend.recipes import RecipeError, loads_recipe

    try:
        recipe = loads_recipe(body.text)
    except RecipeError as exc:
        return {"valid": False, "issues": [{"path": i.path, "reason": i.reason} for i in exc.issues]}
    return {"valid": True, "kind": recipe.kind, "issues": []}


@router.get("/recipes/default/{kind}")
def default_recipe(kind: str) -> Response:
    """A commented default recipe of a kind, as TOML."""
    from backend.recipes import RECIPE_KINDS, default_recipe, dumps_recipe

    if kind not in RECIPE_KINDS:
        raise HTTPException(404, f"unknown recipe kind {kind!r}; one of {sorted(RECIPE_KINDS)}")
    return Response(dumps_recipe(default_recipe(kind)), media_type="application/toml")


@router.get("/models")
def models(request: Request) -> list[dict[str, Any]]:
    rows = _state(request).rows("SELECT id, kind, name, path, parent_id, job_id, card, created FROM models ORDER BY id")
    for r in rows:
        r["card"] = json.loads(r["card"] or "{}")
    return rows


@router.get("/models/{model_id}/lineage")
def lineage(request: Request, model_id: Id) -> list[dict[str, Any]]:
    """The model and its ancestors, newest first (with the job that made each)."""
    st = _state(request)
    chain: list[dict[str, Any]] = []
    seen: set[int] = set()
    current: int | None = model_id
    while current is not None and current not in seen:
        seen.add(current)
        rows = st.rows("SELECT m.id, m.kind, m.name, m.path, m.parent_id, m.job_id, j.kind AS job_kind, j.name AS job_name FROM models m LEFT JOIN jobs j ON j.id = m.job_id WHERE m.id = ?", [current])
        if not rows:
            if not chain:
                raise HTTPException(404, f"no model {model_id}")
            break
        chain.append(rows[0])
        current = rows[0]["parent_id"]
    return chain


class RecipeData(BaseModel):
    data: dict[str, Any]


@router.post("/recipes/render")
def render_recipe(body: RecipeData) -> Response:
    """Validate recipe fields (as JSON) and return them as commented TOML; 422 lists every problem."""
    from backend.recipes import RecipeError, dumps_recipe, parse_recipe

    try:
        recipe = parse_recipe(body.data)
    except RecipeError as exc:
        raise HTTPException(422, {"message": "invalid recipe", "issues": [{"path": i.path, "reason": i.reason} for i in exc.issues]}) from None
    return Response(dumps_recipe(recipe), media_type="application/toml")


@router.post("/recipes/estimate")
def estimate_recipe(body: RecipeText, request: Request) -> dict[str, Any]:
    """Parameters, steps and an estimated duration of a pretrain, align, personalize or distill recipe on this machine."""
    import os

    from backend.recipes import PretrainRecipe, RecipeError, loads_recipe
    from backend.recipes.align import AlignRecipe
    from backend.recipes.distill import DistillRecipe
    from backend.recipes.estimate import estimate, estimate_align, estimate_distill, estimate_personalize
    from backend.recipes.personalize import PersonalizeRecipe

    try:
        recipe = loads_recipe(body.text)
    except RecipeError as exc:
        raise HTTPException(422, {"message": "invalid recipe", "issues": [{"path": i.path, "reason": i.reason} for i in exc.issues]}) from None
    from .devices import devices

    cuda = any(d["kind"] == "cuda" for d in devices())
    if isinstance(recipe, (AlignRecipe, PersonalizeRecipe, DistillRecipe)):
        from backend.store.project import ProjectError
        from backend.train.resolve import locate

        try:
            folder = locate(_state(request).project(), recipe.model)
            if (folder / "model_index.json").exists() and not (folder / "signal_model.json").exists():  # a stock SD3 / FLUX release
                from backend.models.memory import transformer_params
                from backend.models.stock_folder import check_stock_folder

                checked = check_stock_folder(folder)
                info = {"family": checked["family"], "params": transformer_params(checked), "folder": str(folder)}
            else:
                info = json.loads((folder / "signal_model.json").read_text())
        except (OSError, ValueError, ProjectError) as exc:
            raise HTTPException(422, f"model {recipe.model!r}: not a model folder of this project ({exc})") from None
        how = {AlignRecipe: estimate_align, PersonalizeRecipe: estimate_personalize, DistillRecipe: estimate_distill}[type(recipe)]
        out = how(recipe, info, cores=os.cpu_count() or 1, gpu=cuda)
        if "folder" in info:  # a real model: what its training holds against the device
            from backend.models.memory import stage_memory

            out["memory"] = stage_memory(recipe, Path(info["folder"]), cuda)
        return out
    if not isinstance(recipe, PretrainRecipe):
        raise HTTPException(422, "estimates exist for pretrain, align, personalize and distill recipes only")
    gpu = recipe.compute.device in ("cuda", "auto") and cuda
    if recipe.model.family in ("sd3", "flux"):  # a real model: sizes from its folder, and the memory plan
        from backend.models.memory import stock_estimate
        from backend.models.stock_folder import StockFolderError

        try:
            out = stock_estimate(recipe, cores=os.cpu_count() or 1, gpu=gpu)
        except StockFolderError as exc:
            raise HTTPException(422, str(exc)) from None
    else:
        out = estimate(recipe, cores=os.cpu_count() or 1, gpu=gpu)
    return {**out, "launch": launch_plan(recipe.compute)}


def launch_plan(compute: Any) -> dict[str, str]:
    """What a job of this compute section will start: in words, and the command line."""
    import shlex

    from backend.jobs import worker_command

    cmd = worker_command(Path("<project>"), 0, compute)
    n, m = compute.processes, compute.machines
    if n * m <= 1:
        what = "one process on this machine"
    else:
        what = (f"{n} process{'es' if n > 1 else ''} per machine on {m} machines ({n * m} in all), data parallel (DDP) through accelerate launch; "
                f"this is machine {compute.machine_rank}" if m > 1 else f"{n} processes on this machine, data parallel (DDP) through accelerate launch")
    return {"what": what, "command": shlex.join(["python", *cmd[1:]])}  # cmd[0] is the backend's own interpreter


class DensityBody(BaseModel):
    timesteps: dict[str, Any] = Field(default_factory=dict)
    shift: dict[str, Any] = Field(default_factory=dict)
    buckets: list[tuple[int, int]] = Field(default_factory=lambda: [(32, 32)], min_length=1, max_length=32)
    model: dict[str, Any] = Field(default_factory=dict, description="The recipe's model section: how many pixels make a token")


def token_stride(model: dict[str, Any]) -> int:
    """Image pixels per token side of a recipe's model (what the dynamic shift counts): the embedded
    VAE's 4 x the MMDiT's patch (x 1 for a UNet); a real model's from its folder."""
    family = model.get("family", "mmdit")
    if family in ("sd3", "flux") and model.get("init"):
        from backend.models.memory import stock_shape

        try:
            return stock_shape(model["init"], family)["pixels_per_token"]
        except (OSError, ValueError, KeyError):
            return 16  # SD3/FLUX releases: 8x VAE, 2x2 patches
    return 4 * (1 if family == "unet" else int(model.get("patch", 2)))


@router.post("/allocation/density")
def allocation_density(body: DensityBody) -> dict[str, Any]:
    """The effective density of training timesteps per bucket (density, then resolution shift)."""
    from pydantic import ValidationError

    from backend.flow.density import density_curves
    from backend.recipes.pretrain import ShiftSection, TimestepDensity

    try:
        ts, sh = TimestepDensity(**body.timesteps), ShiftSection(**body.shift)
    except ValidationError as exc:
        raise HTTPException(422, [{"path": ".".join(map(str, e["loc"])), "reason": e["msg"]} for e in exc.errors()]) from None
    for w, h in body.buckets:
        if not (8 <= w <= 8192 and 8 <= h <= 8192):
            raise HTTPException(422, f"bucket {w}x{h} out of range")
    return density_curves(ts, sh, [tuple(b) for b in body.buckets], token_stride=token_stride(body.model))


@router.get("/recipes/builtin/{name}")
def builtin_recipe(name: str) -> Response:
    """A recipe shipped in resources/recipes (e.g. demo_pretrain)."""
    from backend.paths import resources_dir

    if not re.fullmatch(r"[a-z0-9_]{1,64}", name):
        raise HTTPException(404, "no such recipe")
    path = resources_dir() / "recipes" / f"{name}.toml"
    if not path.is_file():
        raise HTTPException(404, f"no shipped recipe {name!r}")
    return Response(path.read_text(encoding="utf-8"), media_type="application/toml")
