"""Import every kind of bad file, normalise the odd ones, resume an interrupted import, and curate:
duplicate clusters, filters with reasons, keeper choice, caption edits, categories, mixture."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

from backend.data.curate import CurationSettings, choose_keeper, curate, mixture
from backend.data.edit import caption_history, categorise, edit_caption, replace_captions, undo_batch
from backend.data.importer import import_sources
from backend.data.view import load_view
from backend.store import Project
from backend.world import make_scene, render


def _patched_tiff() -> bytes:
    b = io.BytesIO()
    Image.new("L", (16, 16), 128).save(b, "TIFF")
    data = bytearray(b.getvalue())
    off = struct.unpack("<I", data[4:8])[0]
    for i in range(struct.unpack("<H", data[off : off + 2])[0]):
        e = off + 2 + 12 * i
        if struct.unpack("<H", data[e : e + 2])[0] == 258:  # BitsPerSample -> 5: a mode Pillow cannot read
            data[e + 8 : e + 10] = struct.pack("<H", 5)
    return bytes(data)


@pytest.fixture
def messy_folder(tmp_path: Path) -> Path:
    src = tmp_path / "mess"
    (src / "animals").mkdir(parents=True)
    (src / "ünïcødé dir").mkdir()
    good = []
    for i in range(12):
        img = render(make_scene(4, i, resolution=(64, 64)))
        path = src / f"good_{i:02d}.png"
        img.save(path)
        path.with_suffix(".txt").write_text(f"good image {i}")
        good.append(path)
    # planted duplicates
    (src / "copy_of_00.png").write_bytes(good[0].read_bytes())
    (src / "copy_of_00.txt").write_text("a copy")
    buf = io.BytesIO()
    Image.open(good[1]).convert("RGB").save(buf, "JPEG", quality=85)
    (src / "reencoded_01.jpg").write_bytes(buf.getvalue())
    Image.open(good[2]).resize((128, 128), Image.BICUBIC).save(src / "upscaled_02.png")  # near duplicate at higher resolution
    (src / "upscaled_02.txt").write_text("good image 2, larger")
    # bad files
    data = good[3].read_bytes()
    (src / "truncated.png").write_bytes(data[: len(data) // 3])
    (src / "empty.png").write_bytes(b"")
    (src / "not_image.jpg").write_text("hello, I am text")
    Image.new("L", (3000, 3000), 7).save(src / "bomb.png")
    (src / "odd_mode.tif").write_bytes(_patched_tiff())
    (src / "readme.pdf").write_bytes(b"%PDF-1.4")
    # odd but valid
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(src / "cmyk.jpg")
    Image.fromarray((np.arange(48 * 48).reshape(48, 48) * 28).astype(np.uint16)).save(src / "sixteen.png")
    pal = Image.new("P", (32, 32), 1)
    pal.putpalette([255, 255, 255, 200, 30, 30] + [0] * 762)
    pal.info["transparency"] = 0
    pal.save(src / "palette.png", transparency=0)
    Image.new("RGBA", (32, 32), (10, 200, 10, 0)).save(src / "alpha.png")
    rot = Image.new("RGB", (40, 20), (30, 160, 60))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 on display
    rot.save(src / "rotated.jpg", exif=exif)
    Image.new("RGB", (33, 33), (1, 2, 3)).save(src / "ünïcødé dir" / "naïve.png")
    Image.new("RGB", (20, 20), (30, 120, 200)).save(src / "animals" / "cat.png")
    (src / "metadata.jsonl").write_text(json.dumps({"file": "cmyk.jpg", "caption": "cyan block", "category": "blocks"}) + "\n")
    (src / "animals" / "captions.csv").write_text("file,caption\ncat.png,a small dark cat\n")
    return src


def test_import_reports_every_bad_file_and_normalises_the_rest(messy_folder: Path, tmp_path: Path):
    with Project.init(tmp_path / "p") as project:
        report = import_sources(project, "mess", [messy_folder], category_from="folder", max_pixels=4_000_000)
        assert report.rejected == {"corrupt": 1, "empty_file": 1, "not_an_image": 1, "too_many_pixels": 1, "unsupported_mode": 1, "unsupported_type": 1}
        reasons = {Path(p).name: r for p, r, _ in report.rejects}
        assert reasons["truncated.png"] == "corrupt" and reasons["bomb.png"] == "too_many_pixels" and reasons["odd_mode.tif"] == "unsupported_mode"
        assert report.imported == 12 + 3 + 7
        assert report.normalised["cmyk_to_rgb"] == 1 and report.normalised["16bit_to_8bit"] == 1
        assert report.normalised["palette_to_rgb"] == 1 and report.normalised["alpha_over_white"] >= 2
        assert report.normalised["exif_rotated"] == 1
        rows = {Path(r["source_path"]).name: r for r in project.db["items"].rows}
        assert rows["rotated.jpg"]["width"] == 20 and rows["rotated.jpg"]["height"] == 40
        assert rows["naïve.png"]["width"] == 33
        assert rows["cmyk.jpg"]["caption"] == "cyan block" and rows["cmyk.jpg"]["category"] == "blocks"
        assert rows["cat.png"]["caption"] == "a small dark cat" and rows["cat.png"]["category"] == "animals"
        alpha = Image.open(project.blob_path(rows["alpha.png"]["hash"], rows["alpha.png"]["ext"]))
        assert alpha.mode == "RGB" and alpha.getpixel((0, 0)) == (255, 255, 255)  # documented: alpha over white
        for name, row in rows.items():
            assert project.blob_path(row["hash"], row["ext"]).exists(), name
        assert project.db["rejects"].count == 6
        again = import_sources(project, "mess", [messy_folder], category_from="folder", max_pixels=4_000_000)
        assert again.imported == 0 and again.already_present == report.imported + 5
        assert project.db["items"].count == report.imported and project.db["rejects"].count == 6


def test_interrupted_import_resumes_without_duplicates(tmp_path: Path):
    from backend.world.export import export_world

    export_world(tmp_path / "w", 600, 1, subject=False, resolution=(32, 32))
    with Project.init(tmp_path / "p") as project:
        def boom(i: int, n: int) -> None:
            if i >= 300:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            import_sources(project, "w", [tmp_path / "w"], progress=boom, workers=1)
        partial = project.db["items"].count
        assert 0 < partial < 600
        report = import_sources(project, "w", [tmp_path / "w"])
        assert report.already_present == partial and report.imported == 600 - partial
        assert project.db["items"].count == 600
        assert project.db.execute("SELECT count(DISTINCT source_path) FROM items").fetchone()[0] == 600


def test_curation_clusters_filters_and_keeper(messy_folder: Path, tmp_path: Path):
    with Project.init(tmp_path / "p") as project:
        import_sources(project, "mess", [messy_folder], category_from="folder", max_pixels=4_000_000)
        report = curate(project, "mess", CurationSettings(min_side=24, max_caption_words=4))
        ids = {Path(r["source_path"]).name: r["id"] for r in project.db["items"].rows}
        exact = [c for c in report.exact_clusters if ids["good_00.png"] in c]
        assert exact and set(exact[0]) == {ids["good_00.png"], ids["copy_of_00.png"]}
        near = {frozenset(c) for c in report.near_clusters}
        assert frozenset({ids["good_01.png"], ids["reencoded_01.jpg"]}) in near
        up = next(c for c in report.near_clusters if ids["upscaled_02.png"] in c)
        assert up[0] == ids["upscaled_02.png"], "the highest resolution is the default keeper"
        # distinct scenes are never merged
        assert all(len(c) == 2 for c in report.near_clusters) and len(report.near_clusters) == 2
        flags = {Path(r["source_path"]).name: json.loads(r["flags"]) for r in project.db["items"].rows}
        assert "low_resolution:20x20" in flags["cat.png"]
        assert any(f.startswith("caption_long") for f in flags["good_05.png"]) is False
        assert flags["palette.png"] == ["caption_empty"]
        curated = {it.id for it in load_view(project, "mess")}
        assert ids["good_02.png"] not in curated and ids["upscaled_02.png"] in curated
        choose_keeper(project, ids["good_02.png"])
        curated = {it.id for it in load_view(project, "mess")}
        assert ids["good_02.png"] in curated and ids["upscaled_02.png"] not in curated
        # a recompute with other settings keeps the keeper choice
        curate(project, "mess", CurationSettings(min_side=8))
        assert ids["good_02.png"] in {it.id for it in load_view(project, "mess")}


def test_captions_edit_history_bulk_replace_undo_and_categories(messy_folder: Path, tmp_path: Path):
    with Project.init(tmp_path / "p") as project:
        import_sources(project, "mess", [messy_folder], max_pixels=4_000_000)
        item = project.db.execute("SELECT id FROM items WHERE caption = 'good image 3'").fetchone()[0]
        edit_caption(project, item, "a fine image 3")
        assert [h["old"] for h in caption_history(project, item)] == ["good image 3"]
        res = replace_captions(project, "mess", "good", "nice")
        assert res["changed"] == 12
        assert project.db.execute("SELECT count(*) FROM items WHERE caption LIKE 'nice image%'").fetchone()[0] == 12
        assert undo_batch(project, res["batch"]) == 12
        assert project.db.execute("SELECT count(*) FROM items WHERE caption LIKE 'good image%'").fetchone()[0] == 12
        with pytest.raises(ValueError):
            replace_captions(project, "mess", "(", "x", regex=True)
        counts = categorise(project, "mess", {"pictures": ["image"], "cats": ["cat"]})
        assert counts == {"pictures": 13, "cats": 1}
        mix = mixture(project, "mess", {"pictures": 3, "cats": 1}, view="all")
        assert mix["pictures"]["target"] == 0.75 and mix["pictures"]["items"] == 13


def test_cli_curate_on_the_demo_style_export(tmp_path: Path):
    run_cli("world", "export", str(tmp_path / "w"), "--n", "40", "--defects", check=True)
    run_cli("project", "init", str(tmp_path / "p"), check=True)
    out = run_cli("import", str(tmp_path / "w"), "--project", str(tmp_path / "p"), "--dataset", "w", "--json", check=True)
    report = json.loads(out.stdout)
    assert report["rejected"] == {"corrupt": 1, "empty_file": 1, "not_an_image": 1} and report["imported"] == 42
    cur = json.loads(run_cli("curate", "--project", str(tmp_path / "p"), "--dataset", "w", "--json", check=True).stdout)
    assert len(cur["exact_clusters"]) == 1 and len(cur["near_clusters"]) == 1
    assert cur["curated"] == 40
