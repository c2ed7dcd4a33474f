"""The reward stage learns a rater's preference: on judgements where the rater always prefers the
render of the prompt's scene over the same scene with another shape, the head trained through a
real job ranks held-out prompts (never seen in training) above chance by more than two standard
errors, and so does the saved model on fresh scenes; ties count half, both-bad and skipped pairs
are left out and counted. (Measured 2026-12-02: about 0.75 held out from 300-400 such pairs; the
issue's target of 0.85 from 500 noisy ratings is not reached yet.)"""

from __future__ import annotations

import copy
import io
import math
import random
from pathlib import Path

import pytest

from backend.jobs import create_job, execute_job
from backend.models.reward import load_reward
from backend.recipes.reward import RewardRecipe
from backend.store import Project, ratings
from backend.world.captions import caption
from backend.world.generate import make_scene
from backend.world.render import render
from backend.world.spec import SHAPES, Scene


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _swapped(scene: Scene, k: int) -> Scene:
    other = Scene.from_json(scene.to_json())
    for g in other.groups:
        g.shape = SHAPES[(SHAPES.index(g.shape) + k) % len(SHAPES)]
    for o in other.objects:
        o.shape = other.groups[o.group].shape
    return other


def _good_and_bad(seed: int, index: int) -> tuple[str, object, object]:
    scene = make_scene(seed, index, category="single_object", resolution=(64, 64))
    return caption(scene), render(scene), render(_swapped(scene, 1 + index % (len(SHAPES) - 1)))


def _queue_good_and_bad(project: Project, world_seed: int, i: int, rng: random.Random) -> tuple[int, str]:
    """Queue a render of a prompt's scene and its shape-swapped copy on random sides; returns the pair and the good side."""
    prompt, good, bad = _good_and_bad(world_seed, i)
    hg, hb = project.put_blob(_png(good), "png"), project.put_blob(_png(bad), "png")
    good_is_a = rng.random() < 0.5
    return ratings.queue_pair(project.db, prompt, *((hg, hb) if good_is_a else (hb, hg))), ("a" if good_is_a else "b")


def test_reward_model_learns_the_raters_preference(tmp_path: Path):
    rng = random.Random(0)
    with Project.init(tmp_path / "p") as project:
        for i in range(320):
            cid, choice = _queue_good_and_bad(project, 5, i, rng)
            if i % 80 == 0:
                choice = "both_bad"
            elif i % 80 == 1:
                choice = "skip"
            elif i % 80 == 2:
                choice = "tie"
            ratings.record(project.db, cid, choice, rng.choice("ab"), "rater", 400)
        job = create_job(project, RewardRecipe(name="reward-test", init="none", steps=200, eval_every=50, heldout=0.25))
        summary = execute_job(project, job, echo=False)
        assert summary["state"] == "done"
        assert summary["left_out"] == {"both_bad": 4, "skip": 4} and summary["ties"] == 4
        n_held = summary["heldout_judgements"] - summary["ties"]  # at most; ties are left out of the accuracy
        assert summary["heldout"]["accuracy"] >= 0.5 + 2 * (0.25 / n_held) ** 0.5, summary
        held = project.db.execute("SELECT value FROM metrics WHERE job_id = ? AND key = 'reward/heldout_accuracy' ORDER BY step", [job]).fetchall()
        assert len(held) >= 3  # the curve the Runs view plots
        card_row = project.db.execute("SELECT kind, path FROM models WHERE job_id = ?", [job]).fetchone()
        assert card_row[0] == "reward"
        model = load_reward(project.root / card_row[1])
    wins = 0
    for i in range(1000, 1100):  # fresh scenes of another world seed
        prompt, good, bad = _good_and_bad(9, i)
        sg, sb = model.score([good, bad], [prompt, prompt])
        wins += sg > sb
    assert wins / 100 >= 0.65  # chance 0.5, standard error 0.05


def test_the_reward_stage_keeps_the_head_before_it_memorises_noisy_judgements(tmp_path: Path):
    """A quarter of the judgements flipped and many steps: the head comes to fit the training pairs, noise
    included. The stage keeps the head with the lowest loss on validation prompts (set aside from the
    training prompts; the held-out prompts stay untouched for the figure it reports), says which step
    it kept, and the saved model is that head."""
    import json

    rng = random.Random(1)
    with Project.init(tmp_path / "p") as project:
        for i in range(320):
            cid, good = _queue_good_and_bad(project, 7, i, rng)
            choice = good if rng.random() > 0.25 else ("b" if good == "a" else "a")
            ratings.record(project.db, cid, choice, rng.choice("ab"), "rater", 400)
        # one view: the choice of head is what is tested here, and mirror views would double the 400 steps' cost
        job = create_job(project, RewardRecipe(name="kept", init="none", steps=400, eval_every=20, lr=1e-3, weight_decay=0.0, validation=0.25,
                                               mirror=False))
        summary = execute_job(project, job, echo=False)
        assert summary["state"] == "done" and summary["validation_judgements"] > 20
        rows = project.db.execute("SELECT step, key, value FROM metrics WHERE job_id = ? AND key IN "
                                  "('reward/validation_loss', 'reward/kept_step', 'reward/train_accuracy') ORDER BY step", [job]).fetchall()
        val = {step: v for step, k, v in rows if k == "reward/validation_loss"}
        kept = json.loads(project.db.execute("SELECT card FROM models WHERE job_id = ?", [job]).fetchone()[0])["kept"]
        train_acc = [v for _, k, v in rows if k == "reward/train_accuracy"]
    assert len(val) >= 10
    assert max(train_acc[-5:]) > 0.75  # it fits past the noise ceiling: memorising flipped judgements
    val[0] = kept["start_validation"]["loss"]  # the starting head is a candidate too
    best_step = min(val, key=val.get)
    assert kept["by"] == "lowest validation loss" and kept["step"] == best_step, (kept, val)
    assert abs(kept["validation"]["loss"] - val[best_step]) < 1e-6 and val[best_step] < val[400] - 0.05, val  # the last head is worse
    assert "accuracy" in kept["heldout_of_last_step"]


@pytest.mark.parametrize("terms", [{}, {"where": True, "bind": True}, {"where": True, "bind": True, "relate": True}], ids=["judge", "where+bind", "relate"])
def test_the_starting_scale_is_fitted_without_changing_the_ranking(terms: dict):
    """An over-confident starting head (a contrastive prior's scale) gets one temperature fitted to the
    training pairs, folded into its output: every reward difference is scaled by the same positive
    factor (so the ranking and every accuracy stay), and the Bradley-Terry loss falls. Whatever terms
    the head adds up (the shipped prior has where and bind beside judge)."""
    import torch

    from backend.models.reward import RewardHead
    from backend.stages.reward import Features, bt_loss, calibrate

    torch.manual_seed(0)
    head = RewardHead(width=16, **terms).eval()
    n = 48
    grid_a, grid_b = torch.randn(n, 64, 16, 16), torch.randn(n, 64, 16, 16)
    states, mask = torch.randn(n, 6, 384), torch.ones(n, 6, dtype=torch.bool)
    with torch.no_grad():
        for p in head.parameters():  # every term in play (where starts at zero), then far too confident
            p.add_(0.3 * torch.randn_like(p))
        head.scale_output(30.0 / float((head(grid_a, states, mask) - head(grid_b, states, mask)).std()))
    with torch.no_grad():
        before = head(grid_a, states, mask) - head(grid_b, states, mask)
    label = (before > 0).float()
    label[: n // 3] = 1 - label[: n // 3]  # a third of the judgements disagree with the head: confidence costs
    data = Features(grid_a, grid_b, states, mask, label)
    scale = calibrate(head, data)
    with torch.no_grad():
        after = head(grid_a, states, mask) - head(grid_b, states, mask)
    assert 0 < scale < 1
    assert torch.allclose(after, scale * before, rtol=1e-4, atol=1e-5)
    assert ((after > 0) == (before > 0)).all()
    assert float(bt_loss(after, label)) < 0.75 < float(bt_loss(before, label)) - 1.0


def test_robust_bradley_terry_keeps_a_term_that_a_few_confident_mistakes_would_silence():
    """Two terms add up to the judged preference; on a tenth of the pairs the second term is far off the
    other way (what a head's term cannot express, or a mistaken judgement). Plain Bradley-Terry pays those
    pairs without bound, so it all but switches the second term off and ranks the other pairs worse; with
    ``noise`` (recipe ``label_noise``) a pair costs at most -log ε, the term keeps its weight and every
    other pair is ranked right. At noise 0 the loss is plain Bradley-Terry."""
    import torch

    from backend.stages.reward import bt_loss

    torch.manual_seed(0)
    n = 400
    a, b = torch.randn(n), torch.randn(n)
    label = ((a + b) > 0).float()
    off = torch.zeros(n, dtype=torch.bool)
    off[: n // 10] = True
    b = torch.where(off, -8 * torch.sign(a + b) * (1 + torch.rand(n)), b)
    accuracy, weights = {}, {}
    for noise in (0.0, 0.1):
        w = torch.zeros(2, requires_grad=True)
        opt = torch.optim.Adam([w], lr=0.05)
        for _ in range(400):
            loss = bt_loss(w[0].exp() * a + w[1].exp() * b, label, noise)
            opt.zero_grad()
            loss.backward()
            opt.step()
        diff = (w[0].exp() * a + w[1].exp() * b).detach()
        accuracy[noise] = float(((diff > 0) == (label > 0.5))[~off].float().mean())
        weights[noise] = (w[1] - w[0]).exp().item()  # the second term's weight beside the first's
    assert weights[0.0] < 0.1 and weights[0.1] > 0.5
    assert accuracy[0.1] > 0.95 and accuracy[0.0] < accuracy[0.1] - 0.1
    wrong, one = torch.tensor([-100.0]), torch.tensor([1.0])
    assert float(bt_loss(wrong, one, 0.1)) <= -torch.log(torch.tensor(0.1)).item() + 1e-4 < float(bt_loss(wrong, one))
    d, y = torch.randn(32), torch.tensor([0.0, 0.5, 1.0]).repeat(11)[:32]
    assert torch.allclose(bt_loss(d, y, 0.0), bt_loss(d, y, 1e-9), atol=1e-5)


def test_the_trunk_lets_the_head_see_how_patches_sit_together(tmp_path: Path):
    """Without the trunk the head weighs the patches one by one: an image and the same patches
    shuffled score the same (at zero position embedding), so an outline is invisible to it. The
    trunk's convolutions read neighbourhoods, so the shuffle changes the score. A head saved before
    the trunk existed (no "trunk" in its config) loads as trunk 0 and scores exactly as before."""
    import json

    import torch

    from backend.models.reward import RewardHead, save_reward

    torch.manual_seed(0)
    grid = torch.randn(3, 64, 16, 16)
    shuffled = grid.flatten(2)[:, :, torch.randperm(256)].view_as(grid)
    states, mask = torch.randn(3, 5, 384), torch.ones(3, 5, dtype=torch.bool)
    flat, deep = RewardHead(width=16).eval(), RewardHead(width=16, trunk=2).eval()
    with torch.no_grad():
        # a fresh head starts out knowing where each patch sits (sine-cosine codes), so a shuffle shows even without the trunk ...
        assert (flat(grid, states, mask) - flat(shuffled, states, mask)).abs().min() > 1e-5  # at zero codes: below 1e-8
        flat.pos.zero_(), deep.pos.zero_()  # ... and without those codes only the trunk's neighbourhoods see it
        assert torch.allclose(flat(grid, states, mask), flat(shuffled, states, mask), atol=1e-5)
        assert (deep(grid, states, mask) - deep(shuffled, states, mask)).abs().min() > 1e-4
        flat.pos.normal_()
        want = flat(grid, states, mask)
    save_reward(flat, tmp_path / "old-head", {"kind": "reward"})
    config = json.loads((tmp_path / "old-head" / "config.json").read_text())
    del config["trunk"], config["mix"]
    (tmp_path / "old-head" / "config.json").write_text(json.dumps(config))
    loaded = load_reward(tmp_path / "old-head").head
    assert loaded.config["trunk"] == 0 and loaded.config["mix"] == 0
    with torch.no_grad():
        assert torch.allclose(loaded(grid, states, mask), want, atol=1e-6)
    with pytest.raises(ValueError, match="divisible by 8"):
        RewardRecipe(init="none", width=12, trunk=2)


def test_mixing_layers_read_the_other_tokens_and_ignore_padding(tmp_path: Path):
    """With ``mix`` a token's judgement depends on what the other tokens found (how a relation
    between two objects can be judged): changing the first token changes the last one's reading,
    which without mix it cannot. Padded tokens take no part (the score of a prompt is the same with
    and without padding), and the head scores the same after a save and load."""
    import torch

    from backend.models.reward import RewardHead, save_reward

    torch.manual_seed(0)
    grid, states = torch.randn(2, 64, 16, 16), torch.randn(2, 4, 384)
    mask = torch.tensor([[True, True, True, True], [True, True, True, False]])
    other = states.clone()
    other[:, 0] = torch.randn(2, 384)
    for mix in (0, 1):
        head = RewardHead(width=16, mix=mix).eval()
        last = {}  # the last token's judgement, read through a hook on the head's final layer
        head.judge.register_forward_hook(lambda m, i, o: last.__setitem__("out", o[:, 3].detach().clone()))
        with torch.no_grad():
            head(grid[:1], states[:1], mask[:1])
            before = last["out"]
            head(grid[:1], other[:1], mask[:1])
            changed = not torch.allclose(before, last["out"], atol=1e-6)
        assert changed == (mix > 0)
    padded = torch.cat([states, torch.randn(2, 3, 384)], 1)
    with torch.no_grad():
        assert torch.allclose(head(grid, states, mask), head(grid, padded, torch.cat([mask, torch.zeros(2, 3, dtype=torch.bool)], 1)), atol=1e-5)
        want = head(grid, states, mask)
    save_reward(head, tmp_path / "mixed", {"kind": "reward"})
    with torch.no_grad():
        assert torch.allclose(load_reward(tmp_path / "mixed").head(grid, states, mask), want, atol=1e-6)


def test_reward_refuses_too_few_judgements(tmp_path: Path):
    with Project.init(tmp_path / "p") as project:
        prompt, good, bad = _good_and_bad(5, 0)
        cid = ratings.queue_pair(project.db, prompt, project.put_blob(_png(good), "png"), project.put_blob(_png(bad), "png"))
        ratings.record(project.db, cid, "a", "a", "r")
        job = create_job(project, RewardRecipe(steps=5, init="none"))
        with pytest.raises(ValueError, match="only 1 decisive judgements"):
            execute_job(project, job, echo=False)
        assert project.db.execute("SELECT state FROM jobs WHERE id = ?", [job]).fetchone()[0] == "failed"


def test_a_broken_promise_changes_both_the_picture_and_the_caption():
    from backend.models.reward_prior import break_promise

    rng = random.Random(0)
    seen = set()
    for i in range(150):
        scene = make_scene(3, i, resolution=(64, 64))
        broken, what = break_promise(scene, rng)
        seen.add(what)
        assert caption(broken) != caption(scene), what
        assert render(broken).tobytes() != render(scene).tobytes(), what
        assert sum(g.count for g in broken.groups) == len(broken.objects)  # groups and objects stay consistent
        assert caption(scene) == caption(make_scene(3, i, resolution=(64, 64)))  # the original is untouched
        if what == "swap":  # the same colours and shapes, bound the other way round
            assert sorted(g.color for g in broken.groups) == sorted(g.color for g in scene.groups)
            assert [g.shape for g in broken.groups] == [g.shape for g in scene.groups]
            assert len({(g.shape, g.color) for g in broken.groups}) == len(broken.groups)
            assert all(o.color == broken.groups[o.group].color for o in broken.objects)
        if what == "size":
            assert sorted(o.radius for o in broken.objects) != sorted(o.radius for o in scene.objects)
    assert seen == {"shape", "colour", "swap", "size", "fewer", "more", "relation"}


def test_a_group_of_four_can_grow_to_five_in_its_broken_copy():
    """The base sometimes draws five objects for "four": the prior must see such copies (captioned "five"),
    or it has no reason to rank them below four."""
    from backend.models.reward_prior import break_promise

    scene = next(s for s in (make_scene(3, i, resolution=(64, 64)) for i in range(2000)) if len(s.groups) == 1 and s.groups[0].count == 4)
    grown = [b for b, what in (break_promise(scene, random.Random(k)) for k in range(300)) if what == "more"]
    assert grown, "no 'more' break of a group of four in 300 tries"
    assert grown[0].groups[0].count == 5 and len(grown[0].objects) == 5
    assert "five" in caption(grown[0]) and "four" in caption(scene)


def test_an_added_object_is_drawn_as_the_world_draws_one():
    """'more' and 'extra' copies add an object: it must be turned as the world turns its objects (circles
    upright, the rest within 15 degrees), lie inside the canvas and touch nothing where there is room, or a prior could
    tell the broken copy by an odd angle, a clipped edge or an overlap rather than by the broken promise. (They were
    turned anywhere in 0-360 and placed at 0.15-0.85 whatever their size.)"""
    from backend.models.reward_prior import break_promise

    rng = random.Random(1)
    added = 0
    for i in range(400):
        scene = make_scene(5, i, resolution=(64, 64))
        broken, what = break_promise(scene, rng, group_breaks=True)
        if what not in ("more", "extra"):
            continue
        new = broken.objects[-1]
        assert len(broken.objects) == len(scene.objects) + 1, what
        assert (new.rotation == 0.0) if new.shape == "circle" else (-15 <= new.rotation <= 15), (what, new.shape, new.rotation)
        assert all(new.radius <= c <= 1 - new.radius for c in new.center), (what, new.center, new.radius)  # not clipped by the edge
        if len(scene.objects) <= 2 and all(o.radius < 0.15 for o in broken.objects):  # room for one more (two large ones may fill it)
            assert all(math.dist(new.center, o.center) > new.radius + o.radius for o in broken.objects[:-1]), (what, i)
        added += 1
    assert added >= 40, added


def test_prior_pretraining_lowers_its_contrastive_loss(tmp_path: Path):
    from backend.models.reward_prior import pretrain_prior

    card = pretrain_prior(tmp_path / "prior", scenes=150, steps=80, batch=16, vae_share=0.5, log=lambda *_: None)
    assert card["final_loss"] < card["first_loss"] - 0.2, card
    model = load_reward(tmp_path / "prior")
    assert model.head.config["trunk"] == card["trunk"] == 2
    assert card["zero_shot"]["n"] == 50 and 0.0 <= card["zero_shot"]["accuracy"] <= 1.0
    prompt, good, bad = _good_and_bad(5, 0)
    assert len(model.score([good, bad], [prompt, prompt])) == 2
    # going on from a prior (here adding the relation gate it lacked, which starts fresh): it starts where that one ended
    more = pretrain_prior(tmp_path / "more", scenes=150, steps=60, batch=16, vae_share=0.5, where=True, bind=True, log=lambda *_: None)
    on = pretrain_prior(tmp_path / "on", scenes=100, steps=10, batch=16, vae_share=0.5, relate=True, init=tmp_path / "more", lr=5e-4, log=lambda *_: None)
    assert on["init"] == str(tmp_path / "more") and on["relate"] and load_reward(tmp_path / "on").head.config["relate"]
    assert on["first_loss"] < more["first_loss"] - 0.2, (on["first_loss"], more["first_loss"])


def test_two_breaks_give_a_copy_the_caption_no_longer_describes():
    """``compound_share``'s copies: two promises broken one after the other, never one that undoes the other
    (the copy's caption is never the scene's); the second break is applied to the first's result."""
    from backend.models.reward_prior import break_promise, break_two

    rng = random.Random(3)
    kinds = []
    for i in range(300):
        scene = make_scene(9, i, resolution=(64, 64))
        copy, what = break_two(scene, rng)
        assert caption(copy) != caption(scene), (what, caption(scene))
        kinds.append(what)
    two = [k for k in kinds if "+" in k]
    assert len(two) > 200, len(kinds) - len(two)  # most copies break two (a relation mirrored back is the usual fallback)
    assert {k.split("+")[0] for k in two} >= {"shape", "colour", "swap", "more"}
    # the same draws, made by hand: the first break, then a second on its result
    scene = make_scene(9, 0, resolution=(64, 64))
    a, b = random.Random(5), random.Random(5)
    once, first = break_promise(scene, b)
    twice, second = break_promise(once, b)
    copy, what = break_two(scene, a)
    assert what == f"{first}+{second}" and caption(copy) == caption(twice)


def test_group_breaks_drop_a_named_group_or_add_a_stray_object_and_the_caption_follows():
    """``group_breaks``: a two-group scene loses one whole group (its relation with it), a one-group scene gains
    one object of another shape and colour; the copy's render and caption agree, and differ from the scene's."""
    from backend.models.reward_prior import break_promise

    rng = random.Random(2)
    seen = {"drop": 0, "extra": 0}
    for i in range(300):
        scene = make_scene(4, i, resolution=(64, 64))
        copy, what = break_promise(scene, rng, group_breaks=True)
        assert caption(copy) != caption(scene), (what, caption(scene))
        if what not in seen:
            continue
        seen[what] += 1
        if what == "drop":
            assert len(scene.groups) == 2 and len(copy.groups) == 1 and copy.relation is None
            kept = copy.groups[0]
            assert kept in scene.groups and len(copy.objects) == kept.count
            assert all((o.shape, o.color, o.group) == (kept.shape, kept.color, 0) for o in copy.objects)
        else:
            assert len(scene.groups) == 1 and len(copy.groups) == 2 and len(copy.objects) == len(scene.objects) + 1
            stray = copy.objects[-1]
            assert (stray.shape, stray.color, stray.group) == (copy.groups[1].shape, copy.groups[1].color, 1)
            assert stray.shape != scene.groups[0].shape and stray.color != scene.groups[0].color
            assert caption(copy).startswith(caption(scene).split(" on a ")[0] + " and ")
    assert seen["drop"] > 20 and seen["extra"] > 20, seen
    # off by default: no group is dropped or added
    assert not {break_promise(make_scene(4, i, resolution=(64, 64)), rng)[1] for i in range(200)} & {"drop", "extra"}


def test_a_close_up_keeps_its_relation_at_a_small_distance_and_its_mirror_breaks_it():
    """``near_share``: a relation scene drawn close up (the named groups 0.08-0.2 apart along the relation's
    axis, anywhere across it, no overlap) still shows its caption to the ShapesEval detector, every check;
    its mirrored copy fails the relation and only the relation. Off by default: the data are the same as
    without the option."""
    from backend.eval.shapes_eval import check_image
    from backend.models.reward_prior import _mirror, close_up, prior_data
    from backend.world.pretrained import load_detector

    rng = random.Random(5)
    relation_scenes = [s for s in (make_scene(6, i, category="spatial", resolution=(64, 64)) for i in range(60)) if s.relation is not None][:24]
    near = [n for n in (close_up(s, rng) for s in relation_scenes) if n is not None]
    assert len(near) >= 18, len(near)
    for n in near:
        axis = 0 if n.relation.kind in ("left of", "right of") else 1
        centre = [sum(o.center[axis] for o in n.objects if o.group == g) / n.groups[g].count for g in (n.relation.a, n.relation.b)]
        first = n.relation.kind in ("left of", "above")
        assert 0.07 < (centre[1] - centre[0] if first else centre[0] - centre[1]) < 0.21
    mirrored = []
    for n in near:
        m = copy.deepcopy(n)
        _mirror(m)
        mirrored.append(m)
    det = load_detector()
    checks_true = [check_image(n, d) for n, d in zip(near, det([render(n) for n in near]))]
    checks_mirror = [check_image(n, d) for n, d in zip(near, det([render(m) for m in mirrored]))]
    assert sum(all(c.values()) for c in checks_true) >= len(near) - 2, checks_true
    assert sum(not c["relation"] and all(v for k, v in c.items() if k != "relation") for c in checks_mirror) >= len(near) - 2, checks_mirror
    plain = prior_data(40, 3, vae_share=0.0, log=lambda *_: None)
    again = prior_data(40, 3, vae_share=0.0, log=lambda *_: None, near_share=0.0)
    assert plain["captions"] == again["captions"] and plain["breaks"] == again["breaks"]
    with_near = prior_data(40, 3, vae_share=0.0, log=lambda *_: None, near_share=1.0)
    assert "near" in with_near["breaks"]


def test_renders_redrawn_by_the_base_keep_their_scene_and_a_pair_keeps_its_difference():
    """The prior's ``base_share``: a render noised to t = 0.4 and drawn back by the shipped base takes the
    base's strokes but keeps its objects (closer to its own render than to another scene's), and the two
    images of a pair share their noise, so two equal renders come back equal."""
    import numpy as np

    from backend.sample.redraw import redraw_pairs

    scenes = [make_scene(5, i, resolution=(64, 64)) for i in range(3)]
    images = [render(scenes[0]), render(scenes[0]), render(scenes[1]), render(scenes[2])]
    captions = [caption(scenes[0])] * 2 + [caption(scenes[1]), caption(scenes[2])]
    out = redraw_pairs(images, captions, [True] * 4, 0.4, seed=0)

    def a(im):
        return np.asarray(im, dtype=np.float32) / 255.0

    assert np.array_equal(a(out[0]), a(out[1]))  # one pair, one noise: no difference but the scene's
    assert not np.array_equal(a(out[2]), a(out[3]))
    for i, j in ((0, 2), (2, 0), (3, 0)):
        own, other = float(np.abs(a(out[i]) - a(images[i])).mean()), float(np.abs(a(out[i]) - a(images[j])).mean())
        assert 0.0 < own < 0.5 * other, (i, own, other)


def test_a_redraw_from_pure_noise_is_the_full_draw_and_from_part_way_keeps_the_latent_closer():
    """SDEdit runs on the sampler's own loop: from t = 1 with the draw's noise it gives the draw itself, and
    from t = 0.4 it lands nearer the latent it started from than the full draw does."""
    import torch

    from backend.imaging import to_tensor
    from backend.models.family import load_model
    from backend.paths import shipped_base_dir
    from backend.sample.euler import SampleSettings, initial_noise, redraw_latents, sample_latents

    bundle = load_model(shipped_base_dir())
    settings = SampleSettings(width=64, height=64, steps=8, cfg=3.0)
    cond = bundle.encode_prompts(["a red star", "two blue circles"])
    drawn = sample_latents(bundle, cond, [3, 4], settings)
    noise = initial_noise([3, 4], drawn.shape[1], drawn.shape[2], drawn.shape[3])
    z = bundle.encode_images(torch.stack([to_tensor(render(make_scene(5, i, resolution=(64, 64)))) for i in range(2)]))
    assert torch.allclose(redraw_latents(bundle, z, cond, noise, 1.0, settings), drawn, atol=1e-5)
    part = redraw_latents(bundle, z, cond, noise, 0.4, settings)
    assert float((part - z).abs().mean()) < 0.5 * float((drawn - z).abs().mean())


def test_shipped_prior_prefers_the_true_render_without_any_rating():
    """Zero-shot: the shipped prior ranks a scene's render above the same scene with one promise
    broken, on scenes of a world seed it was not trained on (chance 0.5)."""
    from backend.models.reward_prior import break_promise
    from backend.paths import shipped_reward_prior_dir

    model = load_reward(shipped_reward_prior_dir())
    rng = random.Random(1)
    prompts, good, bad = [], [], []
    for i in range(200):
        scene = make_scene(77, i, resolution=(64, 64))
        broken, _ = break_promise(scene, rng)
        prompts.append(caption(scene))
        good.append(render(scene))
        bad.append(render(broken))
    sg, sb = model.score(good, prompts), model.score(bad, prompts)
    acc = sum(a > b for a, b in zip(sg, sb)) / len(sg)
    assert acc >= 0.75, acc  # standard error about 0.03


def test_a_score_job_scores_project_images_and_names_a_bad_one(tmp_path: Path):
    """The API's way to score images (a ``score`` job): each stored image or project file gets the
    reward the model gives it, in the job's summary and scores.json; an unreadable image fails the
    job with its name."""
    import json

    from backend.paths import shipped_reward_prior_dir
    from backend.recipes.reward import ScoreRecipe

    prior = shipped_reward_prior_dir()
    with Project.init(tmp_path / "p") as project:
        prompt, good, bad = _good_and_bad(5, 3)
        h = project.put_blob(_png(good), "png")
        (project.root / "exports").mkdir(exist_ok=True)
        bad.save(project.root / "exports" / "bad.png")
        job = create_job(project, ScoreRecipe(reward=str(prior), items=[{"image": h, "prompt": prompt}, {"image": "exports/bad.png", "prompt": prompt}]))
        summary = execute_job(project, job, echo=False)
        want = load_reward(prior).score([good, bad], [prompt, prompt])
        assert [s["reward"] for s in summary["scores"]] == pytest.approx(want, abs=1e-3)
        run_dir = project.db.execute("SELECT run_dir FROM jobs WHERE id = ?", [job]).fetchone()[0]
        run_dir = Path(run_dir) if Path(run_dir).is_absolute() else project.root / run_dir
        assert json.loads((run_dir / "scores.json").read_text()) == summary["scores"]
        (project.root / "exports" / "broken.png").write_bytes(b"not a png")
        job = create_job(project, ScoreRecipe(reward=str(prior), items=[{"image": "exports/broken.png", "prompt": prompt}]))
        with pytest.raises(ValueError, match="exports/broken.png"):
            execute_job(project, job, echo=False)


def test_the_where_term_flips_sign_when_the_picture_is_turned_round():
    """A relation is a comparison of positions: the same picture turned 180° (left <-> right, top <-> bottom) must get
    the opposite where term, and a picture shifted as a whole nothing new from it."""
    import torch

    from backend.models.reward import RewardHead

    torch.manual_seed(0)
    head = RewardHead(width=16, grid=4, where=True).eval()
    torch.nn.init.normal_(head.where.weight)  # zero at the start: nothing learned yet means no opinion
    tokens, states = torch.randn(2, 16, 16), torch.randn(2, 5, 384)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], dtype=torch.float32)
    turned = tokens.view(2, 4, 4, 16).flip(1, 2).reshape(2, 16, 16)
    with torch.no_grad():
        term, term_turned = head._where_term(tokens, states, mask)[0], head._where_term(turned, states, mask)[0]
    real = mask.bool()
    assert term[real].abs().max() > 1e-3
    assert torch.allclose(term_turned[real], -term[real], atol=1e-5)


def test_the_bind_term_reads_only_the_object_the_locating_attention_landed_on():
    """Binding ("a blue circle", not a blue triangle beside a purple circle) reads what each token's sharp
    attention located: a patch no token looks at changes nothing it judges, the patch one looks at does."""
    import torch

    from backend.models.reward import RewardHead

    torch.manual_seed(0)
    head = RewardHead(width=16, grid=4, where=True, bind=True).eval()
    with torch.no_grad():
        head.locate_t.fill_(8.0)  # scores x 3000: every head of every token settles on one patch
        head.locate_k.bias.zero_()  # a patch scaled up keeps its key's direction, so where the attention lands stays put
        tokens, states, mask = torch.randn(1, 16, 16), torch.randn(1, 5, 384), torch.ones(1, 5)
        seen = head._looked(tokens, states)[0].amax((0, 1))  # the most any head of any token looks at each patch
        ignored, watched = int(seen.argmin()), int(seen.argmax())
        assert seen[ignored] < 1e-6 and seen[watched] > 0.99
        def found_there(t):  # what the bind term reads: the patches each token's attention landed on
            return (head._where_term(t, states, mask)[1] @ t[:, None]).mean(1)

        found = found_there(tokens)
        reward = head.judge_tokens(tokens, states, mask)
        for patch, changes in ((ignored, False), (watched, True)):
            other = tokens.clone()
            other[0, patch] *= 3.0
            moved = (found_there(other) - found).abs().max()
            assert (moved > 0.1) if changes else (moved < 1e-4), (patch, float(moved))
        # and the reward itself depends on the bind judge's reading
        torch.nn.init.normal_(head.bind[-1].weight)
        assert (head.judge_tokens(tokens, states, mask) - reward).abs().max() > 1e-3


def test_token_places_mark_only_the_words_of_each_named_group():
    from backend.models.reward_prior import token_places
    from backend.models.text_encoder import load_text_encoder

    text = "a red circle left of a blue square"
    places = [[(0, 12, -0.5, 0.1), (21, len(text), 0.6, -0.2)]]
    tok = load_text_encoder().tokenizer
    xy, known = token_places(tok, [text], places, 16)
    words = tok.convert_ids_to_tokens(tok(text, padding="max_length", max_length=16)["input_ids"])
    marked = [(w, tuple(round(v, 2) for v in xy[0, j].tolist())) for j, w in enumerate(words) if known[0, j]]
    left, right = (-0.5, 0.1), (0.6, -0.2)
    assert marked == [("a", left), ("red", left), ("circle", left), ("a", right), ("blue", right), ("square", right)]
    assert not any(known[0, j] for j, w in enumerate(words) if w in ("left", "of", "[CLS]", "[SEP]", "[PAD]"))


def test_tuning_only_the_term_weights_learns_which_part_of_the_prior_the_rater_cares_about(tmp_path: Path):
    """A rater who judges by one part of the shipped prior's reading alone (its judgement of the words over the
    whole picture), on renders beside copies with one promise broken: the prior's whole reward agrees with
    them only in part (0.72 measured). A run with tune = "terms" trains nothing but one
    weight per term: the judge term's weight comes to dwarf the others, held-out accuracy rises well above
    the prior's, and the saved head is the prior with those weights folded in (each term scaled by its own
    factor, nothing else changed)."""
    import json

    import torch
    from PIL import Image

    from backend.models.reward_prior import break_promise
    from backend.paths import shipped_reward_prior_dir

    prior = load_reward(shipped_reward_prior_dir())
    rng = random.Random(3)
    with Project.init(tmp_path / "p") as project:
        items = []
        for i in range(200):
            scene = make_scene(11, i, resolution=(64, 64))
            items.append((caption(scene), render(scene), render(break_promise(scene, rng)[0])))
        prompts = [p for p, _, _ in items]
        states, mask = prior.prompt_states(prompts)
        with torch.no_grad():
            parts = [prior.head.terms(prior.head.image_tokens(prior.grids([im for _, *ims in items for im in [ims[k]]])), states, mask) for k in (0, 1)]
        prefer_good = (parts[0]["judge"] > parts[1]["judge"]).tolist()
        whole_agrees = ((sum(parts[0].values()) > sum(parts[1].values())) == (parts[0]["judge"] > parts[1]["judge"])).float().mean()
        assert whole_agrees < 0.85, whole_agrees  # the rater's taste is not the prior's as it stands
        for (prompt, good, bad), pg in zip(items, prefer_good):
            hg, hb = project.put_blob(_png(good), "png"), project.put_blob(_png(bad), "png")
            good_is_a = rng.random() < 0.5
            cid = ratings.queue_pair(project.db, prompt, *((hg, hb) if good_is_a else (hb, hg)))
            ratings.record(project.db, cid, ("a" if good_is_a == pg else "b"), rng.choice("ab"), "rater", 400)
        job = create_job(project, RewardRecipe(name="terms", tune="terms", steps=150, eval_every=50, heldout=0.25, validation=0.0))
        summary = execute_job(project, job, echo=False)
        assert summary["state"] == "done"
        card = json.loads(project.db.execute("SELECT card FROM models WHERE job_id = ?", [job]).fetchone()[0])
        saved = load_reward(project.root / summary["path"])
        # the figure the stage reports is the saved model's own reading (both views of each picture, as trained)
        held = [r for r in ratings.history(project.db, limit=1000) if ratings.heldout_prompt(r["prompt"], 0.25, 0) and r["choice"] in "ab"]
        look = {h: Image.open(io.BytesIO(project.blob_path(h, "png").read_bytes())).convert("RGB") for r in held for h in (r["image_a"], r["image_b"])}
    assert saved.mirror and len(held) >= 30
    ra = saved.score([look[r["image_a"]] for r in held], [r["prompt"] for r in held])
    rb = saved.score([look[r["image_b"]] for r in held], [r["prompt"] for r in held])
    assert sum((x > y) == (r["choice"] == "a") for x, y, r in zip(ra, rb, held)) / len(held) == pytest.approx(summary["heldout"]["accuracy"], abs=1e-6)
    weights = card["term_weights"]
    assert set(weights) == {"judge", "bind", "relation"} and card["tune"] == "terms"
    assert weights["judge"] > 3 * max(weights["bind"], weights["relation"]), weights
    assert summary["heldout"]["accuracy"] >= card["heldout_before"]["accuracy"] + 0.1, (summary["heldout"], card["heldout_before"])
    prompt, good, _ = items[0]
    s, m = prior.prompt_states([prompt])
    with torch.no_grad():
        before = prior.head.terms(prior.head.image_tokens(prior.grids([good])), s, m)
        after = saved.head.terms(saved.head.image_tokens(saved.grids([good])), s, m)
    for name, w in weights.items():
        assert torch.allclose(after[name], before[name] * card["start_scale"] * w, rtol=1e-4, atol=1e-5), name


def test_ties_can_be_left_out_instead_of_counted_half(tmp_path: Path):
    """With ties = "ignore" a tie teaches nothing (it is left out and counted, like "both bad"); by default it
    is a half-and-half label. And term weights need a head to re-weigh: tune = "terms" refuses init = "none"."""
    from pydantic import ValidationError

    from backend.models.reward import RewardHead, RewardModel
    from backend.stages.reward import gather

    rng = random.Random(4)
    with Project.init(tmp_path / "p") as project:
        for i in range(60):
            cid, good = _queue_good_and_bad(project, 13, i, rng)
            ratings.record(project.db, cid, "tie" if i % 3 == 0 else good, rng.choice("ab"), "rater", 400)
        model = RewardModel(RewardHead(width=16))
        half = gather(project, RewardRecipe(heldout=0.25, validation=0.0), model, log=lambda *_: None)
        ignore = gather(project, RewardRecipe(heldout=0.25, validation=0.0, ties="ignore"), model, log=lambda *_: None)
    assert half[2]["ties"] == 20 and (half[0].label == 0.5).sum() + (half[1].label == 0.5).sum() == 20
    assert ignore[2]["ties"] == 0 and ignore[2]["left_out"]["tie"] == 20 and ignore[2]["judgements"] == 40
    assert not bool((ignore[0].label == 0.5).any() or (ignore[1].label == 0.5).any())
    with pytest.raises(ValidationError, match="needs init"):
        RewardRecipe(tune="terms", init="none")


def test_an_empty_tune_and_label_noise_are_decided_by_where_the_head_starts():
    """The recipe's empty ``tune`` is term weights from a prior or a model and the whole head from nothing; an
    empty ``label_noise`` follows it (robust Bradley-Terry for term weights, plain for a whole head). Both are
    written into the recipe, so a job's record says what trained; a value given is kept as given."""
    assert (RewardRecipe().tune, RewardRecipe().label_noise) == ("terms", 0.1)
    assert (RewardRecipe(init="none").tune, RewardRecipe(init="none").label_noise) == ("all", 0.0)
    assert (RewardRecipe(tune="all").tune, RewardRecipe(tune="all").label_noise) == ("all", 0.0)
    assert RewardRecipe(label_noise=0.0).label_noise == 0.0 and RewardRecipe(init="none", label_noise=0.2).label_noise == 0.2
    from backend.recipes import dumps_recipe

    assert "label_noise = 0.1" in dumps_recipe(RewardRecipe(), comments=False)


def test_the_world_mirrored_keeps_its_promises_and_a_mirror_model_reads_both_views_alike():
    """The premise of ``mirror``: a world picture mirrored left-right is a picture of its caption with "left" and
    "right" swapped (the ShapesEval detector passes or fails it exactly as it does the original against its own
    caption, on every category), while upside down it is not (a turned triangle or heart is another thing).
    A reward model with ``mirror`` reads a picture as the mean of its two views, so the mirror image under the
    mirrored caption gets the very same reward, and each reward is the mean of the plain head's two readings."""
    import copy

    import torch
    from PIL import ImageOps

    from backend.eval.shapes_eval import strict_pass
    from backend.models.reward import RewardModel
    from backend.paths import shipped_reward_prior_dir
    from backend.world.captions import mirror_caption
    from backend.world.pretrained import load_detector

    assert mirror_caption("a red circle to the left of two blue squares") == "a red circle to the right of two blue squares"
    assert mirror_caption("Right of a bright star, on the left of") == "Left of a bright star, on the right of"
    scenes = [make_scene(21, i, category=c, resolution=(64, 64)) for c, n in (("spatial", 20), ("colour_binding", 8), ("counting", 8)) for i in range(n)]
    mirrored = []
    for s in scenes:
        m = Scene.from_json(s.to_json())
        for o in m.objects:
            o.center = (1 - o.center[0], o.center[1])
        if m.relation is not None and m.relation.kind in ("left of", "right of"):
            m.relation.kind = "right of" if m.relation.kind == "left of" else "left of"
        mirrored.append(m)
        assert caption(m) == mirror_caption(caption(s))
    assert sum(s.relation is not None and s.relation.kind in ("left of", "right of") for s in scenes) >= 6
    detector = load_detector()
    pictures = [render(s) for s in scenes]
    kept = [strict_pass(s, d) for s, d in zip(scenes, detector(pictures))]
    kept_mirrored = [strict_pass(m, d) for m, d in zip(mirrored, detector([ImageOps.mirror(p) for p in pictures]))]
    kept_upside_down = [strict_pass(s, d) for s, d in zip(scenes, detector([ImageOps.flip(p) for p in pictures]))]
    assert sum(kept) >= 30 and kept_mirrored == kept, (kept, kept_mirrored)
    assert sum(kept_upside_down) < sum(kept) - 5  # the premise holds for left-right only

    model = load_reward(shipped_reward_prior_dir())
    assert model.mirror
    prompts = [caption(s) for s in scenes]
    reward = model.score(pictures, prompts)
    assert reward == pytest.approx(model.score([ImageOps.mirror(p) for p in pictures], [mirror_caption(p) for p in prompts]), abs=1e-4)
    plain_head = copy.deepcopy(model.head)
    plain_head.config["mirror"] = False
    plain = RewardModel(plain_head, model.encoder, model.text)
    one, other = plain.score(pictures, prompts), plain.score([ImageOps.mirror(p) for p in pictures], [mirror_caption(p) for p in prompts])
    assert reward == pytest.approx([(a + b) / 2 for a, b in zip(one, other)], abs=1e-4)
    assert max(abs(a - b) for a, b in zip(one, other)) > 1e-2  # the two views are read differently: their mean is a new reading
    from backend.world.arrays import square_batch
    from backend.world.encoder import INPUT

    with torch.no_grad():  # ReFL's differentiable reading is the same mean
        pixels = model.score_pixels(square_batch(pictures, INPUT), prompts).tolist()
    assert pixels == pytest.approx(reward, abs=1e-4)


def test_a_trained_head_replaces_the_prior_only_when_validation_says_so_clearly(tmp_path: Path):
    """Judgements that are the prior's own ranking carry nothing the prior lacks: training only makes it surer of
    them, which lowers the validation loss at some step, but it cannot rank the validation judgements better (the
    start ranks them all as judged), so with keep_start = 2 standard errors (paired) the stage saves the starting
    head, rescaled: it ranks every picture as the prior does. With keep_start = 0 the same run keeps the step of
    lowest validation loss. (Until 2026-12-08 a third of the judgements were flipped at random and a step was
    lower by chance; the two runs also drew different flips. A change to the broken copies' draws took that luck.)"""
    import json

    from backend.models.reward_prior import break_promise
    from backend.paths import shipped_reward_prior_dir

    prior = load_reward(shipped_reward_prior_dir())
    rng = random.Random(5)
    items = []
    for i in range(240):
        scene = make_scene(17, i, resolution=(64, 64))
        items.append((caption(scene), render(scene), render(break_promise(scene, rng)[0])))
    ra = prior.score([g for _, g, _ in items], [p for p, _, _ in items])
    rb = prior.score([b for _, _, b in items], [p for p, _, _ in items])
    choices = ["a" if x > y else "b" for x, y in zip(ra, rb)]  # the prior's own ranking
    cards = {}
    for keep_start in (2.0, 0.0):
        with Project.init(tmp_path / f"p{keep_start:g}") as project:
            for (prompt, good, bad), choice in zip(items, choices):
                cid = ratings.queue_pair(project.db, prompt, project.put_blob(_png(good), "png"), project.put_blob(_png(bad), "png"))
                ratings.record(project.db, cid, choice, "a", "rater", 400)
            job = create_job(project, RewardRecipe(name="r", steps=120, eval_every=20, heldout=0.2, validation=0.3, keep_start=keep_start))
            summary = execute_job(project, job, echo=False)
            assert summary["state"] == "done"
            cards[keep_start] = json.loads(project.db.execute("SELECT card FROM models WHERE job_id = ?", [job]).fetchone()[0])
            saved = load_reward(project.root / summary["path"])
            if keep_start:
                sa = saved.score([g for _, g, _ in items], [p for p, _, _ in items])
                assert sa == pytest.approx([cards[keep_start]["start_scale"] * x for x in ra], rel=1e-4, abs=1e-5)
    strict, loose = cards[2.0]["kept"], cards[0.0]["kept"]
    assert loose["step"] > 0 and loose["by"] == "lowest validation loss", loose  # some step had a lower validation loss...
    assert loose["validation"]["loss"] < loose["start_validation"]["loss"], loose
    assert loose["validation"]["accuracy"] <= loose["start_validation"]["accuracy"] == 1.0, loose  # ...and ranked no better
    assert strict["step"] == 0 and strict["by"].startswith("the starting head"), strict  # so keep_start kept the start
    assert strict["paired_gain_over_start"]["z"] < 2.0


def test_the_relation_parts_the_probes_read_rebuild_the_relation_term():
    """``RewardHead.relation_parts`` (what bench/reward_terms.py and bench/reward_scalar_probe.py turn their knobs on)
    gives back the head's own relation term when the head's scale, slope and gate are applied to it."""
    import torch
    import torch.nn.functional as F

    from backend.models.reward import RewardHead
    from backend.paths import shipped_reward_prior_dir

    model = load_reward(shipped_reward_prior_dir())
    scenes = [make_scene(23, i, category="spatial", resolution=(64, 64)) for i in range(6)]
    states, mask = model.prompt_states([caption(s) for s in scenes])
    head = model.head.eval()
    with torch.no_grad():
        tokens = head.image_tokens(model.grids([render(s) for s in scenes]))
        term = head.terms(tokens, states, mask)["relation"]
        parts = head.relation_parts(tokens, states, mask)
        m = parts["mask"]
        gate = ((F.logsigmoid(parts["gate_logits"]) * m).sum(1) / m.sum(1)).exp()
        rebuilt = head.relate_scale * torch.sigmoid(head.relate_slope * parts["where"]) * gate
    assert torch.allclose(rebuilt, term, atol=1e-6) and float(term.std()) > 1e-3
    with pytest.raises(ValueError, match="relate"):
        RewardHead(width=16, where=True, bind=True).relation_parts(tokens[:, :, :16], states, mask)


def test_the_paired_gain_counts_only_pairs_the_two_heads_order_differently():
    """``paired_gain``: +1 for a pair only the new head orders as judged, −1 for one only the start does, 0 where they
    agree; its z stays finite when every pair moves the same way (a floor of one pair's worth on the standard error),
    and ties do not count."""
    import torch

    from backend.stages.reward import Features, paired_gain

    class Reads(torch.nn.Module):  # a stand-in head: the reward is the grid's first number times a sign
        def __init__(self, sign: torch.Tensor):
            super().__init__()
            self.sign = sign

        def forward(self, grid, states, mask):
            return self.sign[: len(grid)] * grid.flatten(1)[:, 0]

    n = 10
    label = torch.tensor([1.0] * 8 + [0.5, 0.5])  # a judged better on 8 pairs, 2 ties
    data = Features(torch.ones(n, 1, 1, 1), torch.zeros(n, 1, 1, 1), torch.zeros(n, 2, 3), torch.ones(n, 2, dtype=torch.bool), label)
    right, wrong = torch.ones(n), -torch.ones(n)
    every = paired_gain(Reads(right), Reads(wrong), data)
    assert every["pairs"] == 8 and every["accuracy_gain"] == 1.0 and every["z"] == pytest.approx(8.0)
    assert paired_gain(Reads(right), Reads(right), data)["z"] == 0.0
    some = paired_gain(Reads(torch.tensor([1.0, 1, 1, -1, -1, -1, -1, -1, 1, 1])), Reads(wrong), data)
    assert some["accuracy_gain"] == pytest.approx(3 / 8) and 0 < some["z"] < every["z"]
