"""Pretraining batches: curriculum stages, aspect buckets, category mixture, cached encodings.

Every micro-batch is a pure function of (seed, step, micro, rank): the stage comes from the
step, the bucket and items from a generator seeded by those numbers. Resuming at step k
therefore draws exactly the batches the straight run drew, with no data-loader state to save.

Encodings are built once per stage through the content-addressed caches: latents keyed by
(image hash, bucket) under the VAE's identity, text states keyed by caption under the text
encoder's identity, REPA targets keyed by (image hash, bucket) under the encoder's identity.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from PIL import Image

from backend.data.buckets import assign_bucket, fit_to_bucket, upscale_factor
from backend.data.cache import TensorCache, cache_key, file_fingerprint
from backend.data.view import ViewItem
from backend.flow.density import bucket_alpha
from backend.imaging import to_tensor
from backend.models.family import ModelBundle, PromptEmbeds
from backend.recipes.pretrain import PretrainRecipe, StageSection
from backend.store import Project

from .objectives.base import Batch


def batch_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}:{step}:{micro}:{rank}".encode()).hexdigest()
    return torch.Generator().manual_seed(int(digest[:15], 16))


@dataclass
class BucketTable:
    """Everything a stage needs at one bucket, stacked for fast indexing."""

    size: tuple[int, int]
    alpha: float
    latents: torch.Tensor  # (N, C, h, w)
    text_index: torch.Tensor  # (N,) row into the stage's text table
    categories: list[str]
    by_category: dict[str, torch.Tensor] = field(default_factory=dict)
    repa: torch.Tensor | None = None  # (N, D, gh, gw)
    item_ids: list[int] = field(default_factory=list)  # the project's item id of each row (named when a batch goes wrong)


@dataclass
class StageTable:
    stage: StageSection
    buckets: list[BucketTable]
    states: torch.Tensor  # (T, L, D) float16
    pooled: torch.Tensor  # (T, D)
    lengths: torch.Tensor  # (T,) real tokens per caption
    eligible: int
    skipped: Counter


class CurriculumData:
    """Callable ``(step, micro, rank) -> Batch`` for a pretraining recipe."""

    def __init__(self, project: Project, recipe: PretrainRecipe, bundle: ModelBundle, items: list[ViewItem], *, encoder=None, log=print,
                 processes: int | None = None):
        self.project = project
        self.recipe = recipe
        self._processes = processes
        self.bundle = bundle
        self.encoder = encoder
        self.log = log
        self.seed = recipe.optim.seed
        self.batch_size = recipe.optim.batch_size
        self.dropout = recipe.data.caption_dropout
        cache_root = project.root / "cache" / "tensors"
        self.latent_cache = TensorCache(cache_root, f"latents-{bundle.vae_identity}")
        self.text_cache = TensorCache(cache_root, f"text-v2-{bundle.text_encoder.identity}")
        self.repa_cache = None
        if encoder is not None:
            enc_id = file_fingerprint(encoder.folder / "model.safetensors")
            self.repa_cache = TensorCache(cache_root, f"repa-{enc_id}")
        empty = bundle.empty_prompt()
        self.empty_states = empty.states[0].float()
        self.empty_pooled = empty.pooled[0].float()
        self.empty_length = int(empty.lengths[0])
        self.stages = [self._build_stage(stage, items) for stage in recipe.curriculum]
        self.bounds = []
        acc = 0
        for s in recipe.curriculum:
            acc += s.steps
            self.bounds.append(acc)

    # --- building ------------------------------------------------------------------------------

    def _load_image(self, item: ViewItem, size: tuple[int, int]) -> torch.Tensor:
        with Image.open(item.path(self.project)) as im:
            return to_tensor(fit_to_bucket(im.convert("RGB"), size))

    def _build_stage(self, stage: StageSection, items: list[ViewItem]) -> StageTable:
        lo, hi = stage.complexity
        skipped: Counter = Counter()
        per_bucket: dict[tuple[int, int], list[ViewItem]] = {}
        wanted = set(stage.mixture) if stage.mixture else None
        max_up = self.recipe.data.max_upscale
        for it in items:
            if not it.caption:
                skipped["no caption"] += 1
                continue
            if not lo <= round(it.complexity) <= hi:
                skipped["complexity outside stage range"] += 1
                continue
            if wanted is not None and it.category not in wanted:
                skipped["category not in mixture"] += 1
                continue
            buckets = [tuple(x) for x in stage.buckets]
            b = assign_bucket(it.width, it.height, buckets)
            if b is None:
                skipped["aspect fits no bucket"] += 1
                continue
            if max_up is not None and upscale_factor(it.width, it.height, b) > max_up + 1e-9:
                # the nearest bucket would enlarge it too much: the nearest one that does not, if any
                allowed = [c for c in buckets if upscale_factor(it.width, it.height, c) <= max_up + 1e-9]
                b = assign_bucket(it.width, it.height, allowed) if allowed else None
                if b is None:
                    skipped["too small for its buckets (data.max_upscale)"] += 1
                    continue
            per_bucket.setdefault(b, []).append(it)
        if not per_bucket:
            raise ValueError(f"stage '{stage.name}': no item fits (skipped: {dict(skipped)}); widen its buckets, complexity or mixture")
        captions = sorted({it.caption for its in per_bucket.values() for it in its})
        text_keys = [cache_key("text", c) for c in captions]
        cap_by_key = dict(zip(text_keys, captions))

        def encode_text(keys: list[str]) -> list[dict[str, torch.Tensor]]:
            emb = self.bundle.encode_prompts([cap_by_key[k] for k in keys])
            return [{"states": emb.states[i].half(), "pooled": emb.pooled[i].half(), "len": emb.lengths[i : i + 1]} for i in range(len(keys))]

        n_text = self.text_cache.ensure(text_keys, encode_text)
        states = self.text_cache.stack(text_keys, "states")
        pooled = self.text_cache.stack(text_keys, "pooled")
        lengths = self.text_cache.stack(text_keys, "len").flatten()
        text_row = {c: i for i, c in enumerate(captions)}
        tables = []
        n_lat = n_repa = 0
        for size, its in sorted(per_bucket.items()):
            keys = [cache_key("latent", it.hash, f"{size[0]}x{size[1]}") for it in its]
            by_key = dict(zip(keys, its))

            def encode_latents(ks: list[str], size=size, by_key=by_key) -> list[dict[str, torch.Tensor]]:
                x = torch.stack([self._load_image(by_key[k], size) for k in ks])
                z = self.bundle.encode_images(x).float().cpu()
                return [{"z": z[i]} for i in range(len(ks))]

            n_lat += self.latent_cache.ensure(keys, encode_latents, batch=64)
            latents = self.latent_cache.stack(keys, "z")
            repa = None
            if self.repa_cache is not None:
                gh, gw = self.bundle.repa_grid(size[0], size[1], self.recipe.repa.block)

                def encode_repa(ks: list[str], size=size, by_key=by_key, gh=gh, gw=gw) -> list[dict[str, torch.Tensor]]:
                    x = torch.stack([self._load_image(by_key[k], size) for k in ks])
                    with torch.no_grad():
                        grid, _ = self.encoder.tensors(x)
                        grid = F.adaptive_avg_pool2d(grid.float(), (gh, gw)).cpu()
                    return [{"g": grid[i].half()} for i in range(len(ks))]

                # the target grid follows the network's feature grid (patch size, UNet level), so it is part of the key
                grid_keys = [cache_key("latent", it.hash, f"{size[0]}x{size[1]}/{gw}x{gh}") for it in its]
                by_key.update(zip(grid_keys, its))
                n_repa += self.repa_cache.ensure(grid_keys, encode_repa, batch=64)
                repa = self.repa_cache.stack(grid_keys, "g")
            cats = [it.category for it in its]
            by_cat = {c: torch.tensor([i for i, x in enumerate(cats) if x == c]) for c in sorted(set(cats))}
            tokens = (size[0] // self.bundle.token_pixels) * (size[1] // self.bundle.token_pixels)
            tables.append(BucketTable(size, bucket_alpha(self.recipe.allocation.shift, size[0], size[1], tokens), latents,
                                      torch.tensor([text_row[it.caption] for it in its]), cats, by_cat, repa, [it.id for it in its]))
        eligible = sum(len(v) for v in per_bucket.values())
        self.log(
            f"stage '{stage.name}': {eligible} items in {len(tables)} bucket(s) "
            f"({', '.join(f'{t.size[0]}x{t.size[1]}:{len(t.categories)}' for t in tables)}); "
            f"encoded {n_lat} latents, {n_text} captions" + (f", {n_repa} REPA targets" if self.repa_cache else "")
            + (f"; skipped {dict(skipped)}" if skipped else "")
        )
        return StageTable(stage, tables, states, pooled, lengths, eligible, skipped)

    # --- drawing -------------------------------------------------------------------------------

    def stage_index(self, step: int) -> int:
        for i, bound in enumerate(self.bounds):
            if step <= bound:
                return i
        return len(self.bounds) - 1

    @property
    def processes(self) -> int:
        """Data-parallel processes of this run (accelerate's state; 1 outside a launched run)."""
        if self._processes is None:
            from accelerate import PartialState

            self._processes = PartialState().num_processes
        return self._processes

    def __call__(self, step: int, micro: int = 0, rank: int = 0) -> Batch:
        """Rows rank*B .. (rank+1)*B of one draw of B x processes items for the whole step: every
        process draws alike and keeps its own rows, so the data (and the flow objective's noise and
        timesteps, through ``Batch.own_rows``) do not depend on how many processes share the step."""
        world = self.processes
        gen = batch_generator(self.seed, step, micro, 0)
        st = self.stages[self.stage_index(step)]
        mixture = st.stage.mixture
        weights = torch.tensor([float(len(b.categories)) for b in st.buckets])
        if mixture:
            weights = torch.tensor([sum(mixture.get(c, 0.0) * len(ix) / len(b.categories) for c, ix in b.by_category.items()) for b in st.buckets])
            weights = torch.where(weights > 0, weights, torch.zeros_like(weights))
        bucket = st.buckets[int(torch.multinomial(weights / weights.sum(), 1, generator=gen))]
        n = self.batch_size
        total = n * world
        mine = slice(rank * n, (rank + 1) * n)
        if mixture:
            cats = [c for c in bucket.by_category if mixture.get(c, 0) > 0]
            w = torch.tensor([mixture[c] for c in cats])
            chosen = torch.multinomial(w / w.sum(), total, replacement=True, generator=gen)
            idx = torch.stack([bucket.by_category[cats[int(c)]][int(torch.randint(len(bucket.by_category[cats[int(c)]]), (1,), generator=gen))] for c in chosen])
        else:
            idx = torch.randint(len(bucket.categories), (total,), generator=gen)
        drop_all = torch.rand(total, generator=gen) < self.dropout
        idx, drop = idx[mine], drop_all[mine]
        rows = bucket.text_index[idx]
        states = st.states[rows].float()
        pooled = st.pooled[rows].float()
        lengths = st.lengths[rows].clone()
        if drop.any():
            states[drop] = self.empty_states
            pooled[drop] = self.empty_pooled
            lengths[drop] = self.empty_length
        extras: dict = {"categories": [bucket.categories[int(i)] for i in idx]}
        if bucket.item_ids:
            extras["items"] = [bucket.item_ids[int(i)] for i in idx]
        if bucket.repa is not None:
            extras["repa_features"] = bucket.repa[idx].float()
        own = gen if world == 1 else batch_generator(self.seed, step, micro, rank)  # what other objectives draw per process
        return Batch(bucket.latents[idx].clone(), PromptEmbeds(states, pooled, lengths), bucket.size[0], bucket.size[1], bucket.alpha, own, extras,
                     share=(rank, world), step_generator=gen)


def view_batches(project: Project, bundle: ModelBundle, dataset: str, view: str, size: tuple[int, int], batch_size: int, seed: int,
                 steps: int, log=print) -> CurriculumData:
    """The loop's batches from a dataset view at one size, through pretraining's own data path (cached
    latents and text states, the model's own resolution shift), as a one-stage curriculum: what the
    later stages that train on data (SFT, ReFL's regulariser, distillation) read."""
    from backend.data.view import load_view

    shift = bundle.info.get("shift") or {}  # the model's own resolution shift, not pretraining's default
    pre = PretrainRecipe(data={"dataset": dataset, "view": view}, curriculum=[{"steps": max(1, steps), "buckets": [list(size)]}],
                         optim={"batch_size": batch_size, "seed": seed}, **({"allocation": {"shift": shift}} if shift else {}))
    items = load_view(project, dataset, view)
    if not items:
        raise ValueError(f"dataset {dataset!r} has no items in view {view!r}")
    return CurriculumData(project, pre, bundle, items, log=log)
