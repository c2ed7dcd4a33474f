"""ShapesWorld generator: determinism, ground truth that matches the pixels, captions, subject, export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from backend.world import CATEGORIES, COLORS, SHAPES, make_caption, make_scene, render
from backend.world.captions import caption
from backend.world.spec import BACKGROUNDS, RESOLUTIONS, Scene, pastel
from backend.world.subject import SUBJECT_COLORS, subject_instances


def test_vocabulary_is_as_wide_as_promised():
    assert len(SHAPES) >= 6 and len(COLORS) >= 8 and len(BACKGROUNDS) >= 4
    aspects = {round(w / h, 3) for w, h in RESOLUTIONS}
    assert len(aspects) >= 5
    assert min(min(r) for r in RESOLUTIONS) == 32 and max(max(r) for r in RESOLUTIONS) == 128


def test_scenes_are_deterministic_by_seed():
    a = [make_scene(3, i).to_json() for i in range(20)]
    b = [make_scene(3, i).to_json() for i in range(20)]
    c = [make_scene(4, i).to_json() for i in range(20)]
    assert a == b and a != c
    assert np.array_equal(np.asarray(render(make_scene(3, 5))), np.asarray(render(make_scene(3, 5))))


def test_every_category_and_feature_appears():
    scenes = [make_scene(0, i) for i in range(400)]
    assert {s.category for s in scenes} == set(CATEGORIES)
    assert {s.background.kind for s in scenes} == set(BACKGROUNDS)
    assert {o.shape for s in scenes for o in s.objects} == set(SHAPES)
    assert {o.color for s in scenes for o in s.objects} == set(COLORS)
    assert {g.count for s in scenes for g in s.groups} == {1, 2, 3, 4}
    assert {s.relation.kind for s in scenes if s.relation} == {"left of", "right of", "above", "below"}
    assert {s.complexity for s in scenes} == {1, 2, 3, 4}


@pytest.mark.parametrize("index", range(0, 120, 7))
def test_ground_truth_matches_the_rendered_pixels(index: int):
    scene = make_scene(1, index)
    img = np.asarray(render(scene)).astype(int)
    H, W, _ = img.shape
    assert (W, H) == (scene.width, scene.height)
    assert len(scene.objects) == sum(g.count for g in scene.groups)
    for obj in scene.objects:
        # the pixel at each object's centre has the object's exact palette colour
        cx, cy = int(obj.center[0] * W), int(obj.center[1] * H)
        assert np.abs(img[cy, cx] - np.array(COLORS[obj.color])).max() <= 2, (scene.category, obj)
        x0, y0, x1, y1 = obj.box(W, H)
        assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
    # objects do not overlap
    for i, a in enumerate(scene.objects):
        for b in scene.objects[i + 1 :]:
            d = np.hypot((a.center[0] - b.center[0]) * W, (a.center[1] - b.center[1]) * H)
            assert d > (a.radius + b.radius) * min(W, H)
    # a corner far from every object shows the background (its pastel family, or white for patterns)
    if scene.relation is not None:
        a = [o for o in scene.objects if o.group == scene.relation.a]
        b = [o for o in scene.objects if o.group == scene.relation.b]
        ax, ay = np.mean([o.center[0] for o in a]), np.mean([o.center[1] for o in a])
        bx, by = np.mean([o.center[0] for o in b]), np.mean([o.center[1] for o in b])
        assert {"left of": ax < bx, "right of": ax > bx, "above": ay < by, "below": ay > by}[scene.relation.kind]


def test_plain_background_pixels_are_the_named_tint():
    for i in range(300):
        scene = make_scene(2, i)
        if scene.background.kind == "plain":
            img = np.asarray(render(scene)).astype(int)
            assert np.abs(img[0, 0] - np.array(pastel(scene.background.color))).max() <= 1
            break
    else:
        pytest.fail("no plain background in 300 scenes")


def test_captions_say_what_the_scene_holds():
    scene = Scene.from_json(make_scene(0, 0).to_json())
    for i in range(200):
        scene = make_scene(5, i)
        text = caption(scene)
        for g in scene.groups:
            assert g.color in text and (g.shape in text)
        if scene.relation:
            assert any(w in text for w in ("left", "right", "above", "below"))
        if scene.mention_background:
            assert scene.background.color in text and "background" in text
        para = make_caption(5, i, scene)
        for g in scene.groups:
            assert g.color in para
    assert caption(make_scene(0, 0)) == caption(Scene.from_json(make_scene(0, 0).to_json()))


def test_four_complexity_levels_read_as_promised():
    examples = {}
    for i in range(300):
        s = make_scene(9, i)
        examples.setdefault(s.complexity, caption(s))
    assert len(examples[1].split()) <= 4  # "a red circle"
    assert len(examples[4].split()) > len(examples[1].split())


def test_subject_is_never_in_base_data():
    """Base images never hold the subject (two palette colours meeting along a line inside one disc);
    every instance render does."""
    from backend.world.subject import subject_found

    for i in range(300):
        assert not subject_found(render(make_scene(0, i))), f"scene {i} reads as the subject"
    instances = subject_instances(0, 5)
    assert 4 <= len(instances) <= 6
    for img, _meta in instances:
        assert subject_found(img)
        arr = np.asarray(img).astype(int)
        assert all((np.abs(arr - np.array(c)).max(-1) <= 6).sum() > 20 for c in SUBJECT_COLORS)
    poses = {round(m["angle"]) for _, m in instances}
    backgrounds = {m["background"]["kind"] for _, m in instances}
    assert len(poses) == len(instances) and len(backgrounds) >= 3


def test_export_writes_an_ordinary_folder(tmp_path: Path):
    out = tmp_path / "world"
    proc = run_cli("world", "export", str(out), "--n", "30", "--seed", "2", check=True)
    summary = json.loads(proc.stdout)
    assert summary["images"] == 30
    pngs = sorted(out.glob("0*.png"))
    assert len(pngs) == 30 and all(p.with_suffix(".txt").exists() for p in pngs)
    lines = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(lines) == 30
    first = lines[0]
    assert (out / first["file"]).exists()
    assert (out / first["file"]).with_suffix(".txt").read_text().strip() == first["caption"]
    spec = Scene.from_json(first["spec"])
    assert spec == make_scene(2, 0)
    assert len(list((tmp_path / "world-subject").glob("*.png"))) == 5
    assert not any("subject" in p.name for p in out.iterdir())
    # same seed, same bytes
    again = tmp_path / "again"
    run_cli("world", "export", str(again), "--n", "3", "--seed", "2", "--no-subject", check=True)
    assert (again / "000002.png").read_bytes() == (out / "000002.png").read_bytes()
    assert not (tmp_path / "again-subject").exists()
