"""A real model's folder in the Align, Personalize and Distill pages, as a person picks it: Folder…
takes a local SD3 release (a tiny random one stands in), the estimate and the memory plan come back
for it, the choice survives the project's list refilling, a folder that is not a model says so,
and a transformer too big for this machine is called out with what to turn."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QFileDialog, QFormLayout

from backend.models.tiny_folders import build_tiny_folder
from backend.store import Project
from studio.main_window import MainWindow
from studio.widgets import NO_MODEL


def test_a_model_folder_in_the_align_personalize_and_distill_pages(qtbot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = tmp_path / "proj"
    with Project.init(root):
        pass
    folder = build_tiny_folder(tmp_path / "tiny-sd3", "sd3")
    chosen = {"path": str(folder)}
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", staticmethod(lambda *a, **k: chosen["path"]))
    w = MainWindow(QSettings(str(tmp_path / "studio.ini"), QSettings.IniFormat))
    qtbot.addWidget(w)
    w.show()
    try:
        w.open_project(str(root))
        qtbot.waitUntil(lambda: w.stack.currentIndex() == 1, timeout=120_000)
        for name, form in (("Align", w.align), ("Personalize", w.personalize), ("Distill", w.distill)):
            form.reload()  # a second request in flight before the first answer: the form is still built once
            w.show_stage(name)
            qtbot.waitUntil(lambda: form._built and form.estimate.text() == NO_MODEL, timeout=120_000)  # an empty project: nothing to start from
            labels = [form.form.itemAt(i, QFormLayout.LabelRole).widget().text() for i in range(form.form.rowCount())
                      if form.form.itemAt(i, QFormLayout.LabelRole) is not None]
            assert len(labels) == len(set(labels)), labels
            assert not form.start_btn.isEnabled()
            form.folder_btn.click()
            assert form.model.currentData() == str(folder.resolve()) and form.start_btn.isEnabled()
            try:
                qtbot.waitUntil(lambda: "GiB" in form.memory.text(), timeout=120_000)
            except Exception:
                raise AssertionError(f"{name}: {form.estimate.text()!r} {form.memory.text()!r}") from None
            assert "parameters" in form.estimate.text() and "fits any machine" not in form.memory.text()
            assert f'model = "{folder.resolve()}"' in form.recipe_text.toPlainText()
            form.reload()  # the project's list refills: the folder stays offered and chosen
            qtbot.waitUntil(lambda: form.model.count() == 1, timeout=30_000)
            assert form.model.currentData() == str(folder.resolve())

        # a folder that holds no model: the estimate says which folder and why
        align = w.align
        w.show_stage("Align")
        chosen["path"] = str(tmp_path)
        align.folder_btn.click()
        qtbot.waitUntil(lambda: "no estimate" in align.estimate.text(), timeout=120_000)
        assert "not a model folder" in align.estimate.text() and align.memory.text() == ""

        # the same release with an 8 G-parameter transformer (its safetensors header on a sparse file): does not fit
        weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
        header = json.dumps({"w": {"dtype": "BF16", "shape": [8_000_000_000], "data_offsets": [0, 16_000_000_000]}}).encode()
        with open(weights, "wb") as fh:
            fh.write(struct.pack("<Q", len(header)) + header)
            fh.truncate(8 + len(header) + 16_000_000_000)
        align.model.setCurrentIndex(align.model.findData(str(folder.resolve())))
        align.knobs["lora_rank"][0].setValue(0)  # every weight trains, beside a frozen reference
        qtbot.waitUntil(lambda: "does not fit" in align.memory.text(), timeout=120_000)
        assert "reference" in align.memory.text() and "Turn:" in align.memory.text()
    finally:
        w.link.disconnect_backend(stop_process=True)
