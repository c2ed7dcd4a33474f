"""The reward prior: the reward head pretrained to match ShapesWorld images to their captions.

Learned reward models start from an image-text model that already knows what a caption means
(PickScore and HPS from CLIP, ImageReward from BLIP) and learn the raters' taste on top; a head
trained from nothing on a few hundred judgements has to learn what "a red star" looks like from
them alone. The world is free to render, so its image-text model is pretrained here: the same
head as the reward (``RewardHead``), on the frozen encoder and MiniLM, with a contrastive loss over
scenes and their *hard negatives* — each scene beside a copy with one promise broken (a shape or a
colour changed, two groups' colours swapped, a size changed, an object removed or added, a relation mirrored), rendered and captioned. For each
caption: which of its own image, its sibling and a few images of other scenes does it describe?
A pairwise term (``sibling_weight``) adds the comparison a reward is used for, its own image
above its sibling alone: among six easy images of other scenes the sibling's share of the loss is
small, and shape swaps stayed at chance without it (2026-12-04, trunk 2: shape 0.52 without, 0.64 with).
So the head learns to rank images for a prompt, which is what a reward does (one direction only:
scoring every caption against every image of a batch cost 20x more on a CPU for the same use). Part of the renders go
through the world's VAE and back, so the head has seen the softened edges of generated images, and with
``base_share`` part are redrawn by the shipped base from part-way noise (SDEdit): its strokes on scenes
whose promises are still known.

No rater's judgement is used: the prior is the "CLIP" of this world. Its zero-shot accuracy is
reported beside what ratings add (``bench/reward.py``). Hand-written because no library pretrains
a matching head for this world's encoder.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from backend.models.reward import RewardHead, RewardModel, save_reward
from backend.world.fit import fit
from backend.world.generate import MARGIN, draw_rotation
from backend.world.spec import COLOR_NAMES, SHAPES, SIZES, PlacedObject, Scene

FLIP = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
# (images, captions, which to redraw, t_start, seed) -> images: the base's SDEdit redraw, from backend.sample.redraw
Redraw = Callable[[list, list[str], list[bool], float, int], list]
BREAKS = ("shape", "colour", "swap", "size", "fewer", "more", "relation")
# how often each promise is broken: a colour or a count is easy to see (held out 0.98-1.0 at equal
# weights), a shape and above all a relation are not, and only a fifth of scenes have a relation
# (at equal weights 1 in 25 siblings broke one: 0.54 held out, chance; at weight 8 still 0.47). A swap of two groups'
# colours keeps every colour and shape of the caption, so only the binding tells them apart: the
# base's commonest colour-binding miss, which a "colour" break (a new colour) does not teach. A
# size promise (small / large, where the caption says it) decided a fifth of the base's rated pairs
BREAK_WEIGHTS = {"shape": 2.0, "colour": 1.0, "swap": 3.0, "size": 2.0, "fewer": 1.0, "more": 1.0, "relation": 8.0}
# with ``group_breaks``: a whole named group dropped (two-group scenes; a relation goes with it) or a stray object
# of another shape and colour added (one-group scenes): the base's misses are often not exactly the promised
# objects (a relation drawn with one object, a second circle beside the cross), which no break above showed
GROUP_BREAKS = ("drop", "extra")
GROUP_BREAK_WEIGHTS = {"drop": 3.0, "extra": 2.0}


def _swappable(s: Scene) -> list[tuple[int, int]]:
    """Pairs of groups whose colours can be swapped into a different, still well-formed scene."""
    def distinct_after(i: int, j: int) -> bool:
        colours = [g.color for g in s.groups]
        colours[i], colours[j] = colours[j], colours[i]
        return len({(g.shape, c) for g, c in zip(s.groups, colours)}) == len(s.groups)

    return [(i, j) for i in range(len(s.groups)) for j in range(i + 1, len(s.groups))
            if s.groups[i].color != s.groups[j].color and s.groups[i].shape != s.groups[j].shape and distinct_after(i, j)]


def break_promise(scene: Scene, rng: random.Random, group_breaks: bool = False) -> tuple[Scene, str]:
    """A copy of ``scene`` with one promise broken, objects and groups changed together so that the
    copy's render and caption agree with each other (and not with the original)."""
    s = copy.deepcopy(scene)
    growable = [i for i, h in enumerate(s.groups) if h.size == "large" or h.count <= 2]  # three or four grown would pile up
    possible = {"relation": s.relation is not None, "swap": bool(_swappable(s)), "size": (s.mention_size or s.complexity == 4) and bool(growable),
                "drop": len(s.groups) == 2, "extra": len(s.groups) == 1}
    weights = {**BREAK_WEIGHTS, **(GROUP_BREAK_WEIGHTS if group_breaks else {})}
    options = [b for b in weights if possible.get(b, True)]
    what = rng.choices(options, [weights[b] for b in options])[0]
    if what in GROUP_BREAKS:
        return _break_group(s, what, rng), what
    gi = rng.choice(growable) if what == "size" else rng.randrange(len(s.groups))
    g = s.groups[gi]
    members = [o for o in s.objects if o.group == gi]
    if what == "fewer" and g.count == 1:
        what = "more"
    # a group of four grows to five (a caption the world never draws): the base draws five for "four" more
    # often than any other miscount, and a prior that never saw five preferred it (counting pairs 0.48, 2026-12-06)
    if what == "shape":
        g.shape = rng.choice([x for x in SHAPES if x != g.shape and all(x != h.shape or h.color != g.color for h in s.groups)])
        for o in members:
            o.shape = g.shape
    elif what == "colour":
        g.color = rng.choice([c for c in COLOR_NAMES if c != g.color and all(c != h.color or h.shape != g.shape for h in s.groups)])
        for o in members:
            o.color = g.color
    elif what == "swap":
        i, j = rng.choice(_swappable(s))
        s.groups[i].color, s.groups[j].color = s.groups[j].color, s.groups[i].color
        for o in s.objects:
            o.color = s.groups[o.group].color
    elif what == "size":  # the caption names sizes (as captions.caption decides): the group grows or shrinks
        old, g.size = g.size, "large" if g.size == "small" else "small"
        for o in members:
            o.size, o.radius = g.size, o.radius * SIZES[g.size] / SIZES[old]
    elif what == "fewer":
        s.objects.remove(rng.choice(members))
        g.count -= 1
    elif what == "more":
        like = rng.choice(members)
        _add_object(s, like.shape, like.color, gi, like, rng)
        g.count += 1
    else:
        _mirror(s)
    return s, what


def _mirror(s: Scene) -> None:
    """Mirror the picture across the axis of the relation, in place: "a left of b" becomes "a right of b"."""
    horizontal = s.relation.kind in ("left of", "right of")
    for o in s.objects:
        x, y = o.center
        o.center = (1 - x, y) if horizontal else (x, 1 - y)
    s.relation.kind = FLIP[s.relation.kind]


def close_up(scene: Scene, rng: random.Random, tries: int = 30) -> Scene | None:
    """A copy of a relation scene with its two named groups moved close along the relation's axis (centres
    0.08-0.2 of the picture apart, the right way round) and anywhere across it, or None when no free layout
    is found. The world always puts the two groups in their own halves, so a prior never saw a star *just*
    left of a triangle, both in the right half, which is how the base often draws a relation; ShapesEval
    still decides such a picture (its relation check needs 0.05)."""
    if scene.relation is None:
        return None
    horizontal = scene.relation.kind in ("left of", "right of")
    axis = 0 if horizontal else 1
    before = scene.relation.kind in ("left of", "above")  # group a sits first along the axis
    a, b = scene.relation.a, scene.relation.b
    for _ in range(tries):
        s = copy.deepcopy(scene)
        gap = rng.uniform(0.08, 0.2)
        centre = rng.uniform(0.3, 0.7)
        along = {a: centre - gap / 2 if before else centre + gap / 2, b: centre + gap / 2 if before else centre - gap / 2}
        across = {a: rng.uniform(0.2, 0.8), b: rng.uniform(0.2, 0.8)}
        for gi in (a, b):
            members = [o for o in s.objects if o.group == gi]
            mean_along = sum(o.center[axis] for o in members) / len(members)
            mean_across = sum(o.center[1 - axis] for o in members) / len(members)
            for o in members:
                pos = [0.0, 0.0]
                pos[axis] = o.center[axis] - mean_along + along[gi]
                pos[1 - axis] = o.center[1 - axis] - mean_across + across[gi]
                o.center = (pos[0], pos[1])
        inside = all(o.radius <= x <= 1 - o.radius for o in s.objects for x in o.center)
        apart = all(math.dist(p.center, q.center) > p.radius + q.radius + 0.02 for i, p in enumerate(s.objects) for q in s.objects[i + 1:])
        if inside and apart:
            return s
    return None


def _break_group(s: Scene, what: str, rng: random.Random) -> Scene:
    """``s`` (a copy) with a whole group dropped or a stray object added; sizes stay in the caption if they were."""
    s.mention_size = s.mention_size or s.complexity == 4
    if what == "drop":
        keep = rng.randrange(2)
        s.objects = [o for o in s.objects if o.group == keep]
        for o in s.objects:
            o.group = 0
        s.groups, s.relation = [s.groups[keep]], None
        return s
    g, like = s.groups[0], s.objects[0]
    shape = rng.choice([x for x in SHAPES if x != g.shape])
    color = rng.choice([c for c in COLOR_NAMES if c != g.color])
    s.groups.append(type(g)(shape, color, like.size, 1))
    _add_object(s, shape, color, 1, like, rng)
    return s


def _add_object(s: Scene, shape: str, color: str, group: int, like: PlacedObject, rng: random.Random, tries: int = 300) -> None:
    """Append an object of ``like``'s size inside the canvas where it touches nothing (else the spot of ``tries`` with the most room),
    turned as the world turns one (``draw_rotation``): a broken copy must differ from its scene only in the broken
    promise, and an extra square at 45 degrees, which the world never draws, would tell a prior which copy is broken."""
    def room(spot: tuple[float, float]) -> float:
        return min((math.dist(spot, o.center) - o.radius - like.radius for o in s.objects), default=1.0)

    lo = like.radius + MARGIN  # inside the canvas by the world's margin: a clipped object is a tell too
    best, most = (0.5, 0.5), float("-inf")
    for _ in range(tries):
        spot = (rng.uniform(lo, 1 - lo), rng.uniform(lo, 1 - lo))
        if (r := room(spot)) > most:
            best, most = spot, r
        if most > 0:
            break
    s.objects.append(PlacedObject(shape, color, like.size, group, best, like.radius, draw_rotation(shape, rng)))


def break_two(scene: Scene, rng: random.Random) -> tuple[Scene, str]:
    """A copy with two promises broken, one after the other ("swap+shape"): the base's misses often come in
    pairs (an orange star above a red square for "a red star right of an orange triangle": colours swapped and
    a shape wrong), which a prior taught one break at a time ranked above the faithful picture. When the second
    break undoes the first (a relation mirrored back, a colour changed back: the caption is the scene's
    again) or grows a group past five (no caption counts six), the copy keeps its one break."""
    from backend.world.captions import COUNT_WORDS, caption

    once, first = break_promise(scene, rng)
    twice, second = break_promise(once, rng)
    if any(g.count not in COUNT_WORDS for g in twice.groups) or caption(twice) == caption(scene):
        return once, first
    return twice, f"{first}+{second}"


def prior_data(scenes: int, seed: int, vae_share: float = 0.5, log=print, base_share: float = 0.0, base_from: float = 0.4,
               compound_share: float = 0.0, redraw: Redraw | None = None, group_breaks: bool = False, near_share: float = 0.0) -> dict[str, Any]:
    """Scenes at 64 px with their broken copies: renders (some through the VAE, some redrawn by the base), canonical captions.
    ``redraw`` (``backend.sample.redraw.redraw_pairs``, passed in by the caller: a model does not sample)
    redraws the ``base_share`` of scenes. A ``near_share`` of the relation scenes is drawn close up (``close_up``)
    and broken by mirroring (break "near"): the relation's sign at a small distance."""
    from backend.world.captions import caption
    from backend.world.generate import make_scene
    from backend.world.render import render

    rng = random.Random(seed)
    t0 = time.perf_counter()
    originals = [make_scene(seed + 11, i, resolution=(64, 64)) for i in range(scenes)]
    if near_share > 0:
        near = [close_up(s, rng) if s.relation is not None and rng.random() < near_share else None for s in originals]
        originals = [n or s for n, s in zip(near, originals)]
    else:
        near = [None] * scenes

    def broken_copy(s: Scene, was_near: bool) -> tuple[Scene, str]:
        if was_near:
            b = copy.deepcopy(s)
            _mirror(b)
            return b, "near"
        return break_two(s, rng) if compound_share > 0 and rng.random() < compound_share else break_promise(s, rng, group_breaks)

    broken = [broken_copy(s, n is not None) for s, n in zip(originals, near)]
    all_scenes = [x for s, (b, _) in zip(originals, broken) for x in (s, b)]  # pairs side by side: 2i true, 2i+1 broken
    images = [render(s) for s in all_scenes]
    captions = [caption(s) for s in all_scenes]
    log(f"[reward-prior] rendered {len(images)} images ({scenes} scenes and their broken copies) in {time.perf_counter() - t0:.0f} s")
    if base_share > 0 and redraw is None:
        raise ValueError("base_share needs a redraw function (signal-backend reward pretrain passes the shipped base's)")
    chosen = [rng.random() < base_share for _ in range(scenes)] if base_share > 0 else [False] * scenes
    if vae_share > 0:  # the VAE's share is of the scenes the base does not redraw
        soften = [not r and rng.random() < vae_share for r in chosen]
        images = _through_vae(images, [w for w in soften for _ in range(2)])
    if base_share > 0:
        t1 = time.perf_counter()
        images = redraw(images, captions, [w for w in chosen for _ in range(2)], base_from, seed)
        log(f"[reward-prior] {2 * sum(chosen)} images redrawn by the base from t = {base_from} in {time.perf_counter() - t1:.0f} s")
    return {"images": images, "captions": captions, "breaks": [w for _, w in broken], "places": [group_places(s, c) for s, c in zip(all_scenes, captions)]}


def group_places(scene: Scene, text: str) -> list[tuple[int, int, float, float]]:
    """Where each group the caption names sits: (first char, end char of its phrase, x, y in [-1, 1], y down)."""
    from backend.world.captions import group_phrase

    with_size = scene.mention_size or scene.complexity == 4
    out = []
    for gi, g in enumerate(scene.groups):
        start = text.find(group_phrase(g, with_size))
        members = [o.center for o in scene.objects if o.group == gi]
        if start < 0 or not members:
            continue
        x, y = (sum(c[k] for c in members) / len(members) for k in (0, 1))
        out.append((start, start + len(group_phrase(g, with_size)), 2 * x - 1, 2 * y - 1))
    return out


def token_places(tokenizer: Any, captions: list[str], places: list[list[tuple[int, int, float, float]]], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per caption token, where the group its phrase names sits: (N, length, 2) and (N, length) True where known."""
    tok = tokenizer(captions, padding="max_length", truncation=True, max_length=length, return_offsets_mapping=True)
    xy, known = torch.zeros(len(captions), length, 2), torch.zeros(len(captions), length, dtype=torch.bool)
    for i, (offsets, spans) in enumerate(zip(tok["offset_mapping"], places)):
        for j, (a, b) in enumerate(offsets):
            for start, end, x, y in spans:
                if b > a and start <= a and b <= end:
                    xy[i, j] = torch.tensor([x, y])
                    known[i, j] = True
    return xy, known


@torch.no_grad()
def _through_vae(images: list, which: list[bool], batch: int = 128) -> list:
    """The chosen images encoded and decoded by the world's VAE (both of a pair together, so the
    pair differs only in the broken promise)."""
    from backend.world.arrays import to_image, to_tensor
    from backend.world.pretrained import load_vae

    vae = load_vae()
    idx = [i for i, w in enumerate(which) if w]
    out = list(images)
    for k in range(0, len(idx), batch):
        part = idx[k: k + batch]
        x = torch.stack([to_tensor(images[i]) for i in part])
        y = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
        for i, t in zip(part, y):
            out[i] = to_image(t)
    return out


def pretrain_prior(out: Path, scenes: int = 6000, steps: int = 1500, batch: int = 32, lr: float = 2e-3, width: int = 32, seed: int = 0,
                   vae_share: float = 0.5, others: int = 6, trunk: int = 2, mix: int = 0, where: bool = False,
                   sibling_weight: float = 1.0, relation_share: float = 0.0, locate_weight: float = 0.0, bind: bool = False, relate: bool = False,
                   init: Path | None = None, base_share: float = 0.0, compound_share: float = 0.0, redraw: Redraw | None = None,
                   group_breaks: bool = False, near_share: float = 0.0, mirror: bool = True, log=print) -> dict[str, Any]:
    """Train the head and save it as a reward model folder with a card (zero-shot figures on held-out scenes).
    ``init``: go on from an earlier prior's weights (its width, trunk, mix, where and bind); parts it lacks
    (``relate`` on an ungated prior) start fresh. ``mirror``: the saved model is read as the mean over the picture
    and its mirror image (``RewardModel.views``); the held-out figures here read the picture alone."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    data = prior_data(scenes, seed, vae_share, log, base_share=base_share, compound_share=compound_share, redraw=redraw,
                      group_breaks=group_breaks, near_share=near_share)
    if init is not None:
        from safetensors.torch import load_file

        from backend.models.reward import HEAD_FILE

        shape = json.loads((Path(init) / "config.json").read_text())
        width, trunk, mix, where, bind = shape["width"], shape.get("trunk", 0), shape.get("mix", 0), shape.get("where", False), shape.get("bind", False)
        head = RewardHead(width=width, trunk=trunk, mix=mix, where=where, bind=bind, relate=relate)
        missing, unexpected = head.load_state_dict(load_file(str(Path(init) / HEAD_FILE)), strict=False)
        if unexpected or any(not k.startswith(("gate.", "relate_")) for k in missing):
            raise ValueError(f"{init} does not fit this head: missing {missing}, unexpected {unexpected}")
    else:
        head = RewardHead(width=width, trunk=trunk, mix=mix, where=where, bind=bind, relate=relate)
    model = RewardModel(head)
    grids = model.grids(data["images"])
    t1 = time.perf_counter()
    states, mask = model.prompt_states(data["captions"])
    if where and locate_weight > 0:
        place, placed = token_places(model.text.tokenizer, data["captions"], data["places"], states.shape[1])
    log(f"[reward-prior] features ready in {time.perf_counter() - t0:.0f} s (prompts {time.perf_counter() - t1:.0f} s)")
    n_held = max(50, scenes // 10)
    train_scenes = scenes - n_held
    losses: list[float] = []
    # how often each training scene is drawn: scenes whose copy breaks a relation make up ``relation_share`` of a batch
    # (0 = as they come, about one in twelve)
    rel = torch.tensor([b == "relation" for b in data["breaks"][:train_scenes]])
    draw = torch.ones(train_scenes)
    if relation_share > 0 and 0 < int(rel.sum()) < train_scenes:
        draw[rel] = relation_share / float(rel.sum())
        draw[~rel] = (1 - relation_share) / float((~rel).sum())

    def loss_at(step: int) -> tuple[torch.Tensor, str]:
        pick = torch.multinomial(draw, batch, generator=gen)  # scenes; 2i is a scene's render, 2i + 1 its broken copy
        caps = torch.stack([2 * pick, 2 * pick + 1], 1).flatten()
        own = torch.arange(2 * batch) // 2
        # for every caption: its own image, its sibling (the same scene with one promise kept or broken), and
        # `others` images of other scenes of the batch; which of them does the caption describe?
        other_scene = (own[:, None] + torch.randint(1, batch, (2 * batch, others), generator=gen)) % batch
        pos = torch.arange(2 * batch)  # candidates as positions in the batch's images (caps), whose tokens are computed once
        cand = torch.cat([pos[:, None], pos[:, None] ^ 1, 2 * other_scene + torch.randint(2, (2 * batch, others), generator=gen)], 1)
        keep = int(mask[caps].sum(1).max())  # drop the padding every caption of the batch shares (padded tokens do not count)
        k = cand.shape[1]
        tokens = head.image_tokens(grids[caps])
        logits = head.judge_tokens(tokens[cand.flatten()], states[caps, :keep].repeat_interleave(k, 0),
                                   mask[caps, :keep].repeat_interleave(k, 0)).view(-1, k)
        loss = F.cross_entropy(logits, torch.zeros(len(caps), dtype=torch.long))
        if sibling_weight > 0:  # the sibling alone, as a reward is used: its own image above the one with a promise broken
            loss = loss - sibling_weight * F.logsigmoid(logits[:, 0] - logits[:, 1]).mean()
        text = f"loss {loss.item():.4f}"
        if where and locate_weight > 0:  # each group's words look where its objects are (every caption on its own image)
            at = head.locate(tokens, states[caps, :keep])  # (2B, L, heads, 2)
            known = placed[caps, :keep]
            miss = ((at - place[caps, :keep, None, :]) ** 2).sum(-1).mean(-1)
            aux = (miss * known).sum() / known.sum().clamp_min(1)
            loss = loss + locate_weight * aux
            text += f" locate {aux.item():.3f}"
        losses.append(loss.item())
        return loss, text

    seconds = fit(head.parameters(), steps, loss_at, lr=lr, weight_decay=1e-4, name="reward-prior", log=log)
    head.eval()
    held = heldout_figures(head, grids, states, mask, range(train_scenes, scenes), data["breaks"])
    log(f"[reward-prior] held-out: true render preferred over its broken copy {held['accuracy']:.3f} "
        f"({', '.join(f'{k} {v:.2f}' for k, v in held['by_break'].items())})")
    card = {"kind": "reward", "backbone": "ShapesWorld encoder + MiniLM (frozen)", "prior": True, "scenes": scenes, "steps": steps,
            "batch": batch, "seed": seed, "vae_share": vae_share, "base_share": base_share, "compound_share": compound_share, "group_breaks": group_breaks, "near_share": near_share, "mirror": mirror, "width": width, "trunk": trunk, "mix": mix, "where": where, "bind": bind, "relate": relate,
            "init": str(init) if init is not None else None, "lr": lr, "break_weights": {**BREAK_WEIGHTS, **(GROUP_BREAK_WEIGHTS if group_breaks else {})}, "sibling_weight": sibling_weight, "relation_share": relation_share, "locate_weight": locate_weight, "train_seconds": round(seconds, 1),
            "total_seconds": round(time.perf_counter() - t0, 1), "heldout_scenes": n_held, "zero_shot": held,
            "first_loss": round(sum(losses[:20]) / len(losses[:20]), 4), "final_loss": round(sum(losses[-20:]) / len(losses[-20:]), 4),
            "script": "signal-backend reward pretrain", "judgements": 0}
    head.config["mirror"] = mirror
    save_reward(head, out, card)
    (out / "README.md").write_text(
        "# shapes-reward-prior\n\nThe reward head pretrained to match ShapesWorld images to captions (no ratings): the starting point of\n"
        "every reward model trained on ratings. Rebuild with `signal-backend reward pretrain --out <folder>`.\n\n"
        f"Held-out zero-shot: the true render beats its broken copy for the true caption in {held['accuracy']:.3f} of {n_held} scenes.\n"
        f"```\n{json.dumps(held, indent=2)}\n```\n")
    return card


@torch.no_grad()
def heldout_figures(head: RewardHead, grids: torch.Tensor, states: torch.Tensor, mask: torch.Tensor, scenes, breaks: list[str]) -> dict[str, Any]:
    """For each held-out scene and its true caption: is the true render scored above its broken copy?"""
    scenes = list(scenes)
    true = torch.tensor([2 * i for i in scenes])
    r_true = head(grids[true], states[true], mask[true])
    r_broken = head(grids[true + 1], states[true], mask[true])
    right = (r_true > r_broken).float()
    by: dict[str, list[float]] = {}
    for i, ok in zip(scenes, right.tolist()):
        by.setdefault("two" if "+" in breaks[i] else breaks[i], []).append(ok)  # two breaks counted together
    acc = float(right.mean())
    return {"accuracy": acc, "se": math.sqrt(acc * (1 - acc) / len(scenes)), "n": len(scenes),
            "by_break": {k: sum(v) / len(v) for k, v in sorted(by.items())}, "by_break_n": {k: len(v) for k, v in sorted(by.items())}}
