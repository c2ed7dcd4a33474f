"""The pretraining wizard: data and mixture -> model size -> signal allocation (with the
effective timestep density plotted live per bucket) -> curriculum -> REPA -> compute ->
the TOML recipe to review, save, load or edit -> start.

The wizard edits a recipe as plain data; the backend renders, validates and estimates it,
so the Studio never holds its own copy of the recipe rules.
"""

from __future__ import annotations

import copy
import html
from pathlib import Path
from typing import Any

import tomllib
from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
    QWizard,
    QWizardPage,
)

from ..recipe_schema import RecipeSchema
from ..widgets import duration_text, hint, memory_text, show_error, themed_plot

SIZES = {
    "mmdit": {"tiny": "2 blocks, width 64 (~0.3M parameters): seconds per hundred steps", "small": "4 blocks, width 128 (~2.4M)",
              "base": "6 blocks, width 192 (~7.9M): better, slower"},
    "unet": {"tiny": "2 levels, widths 32/64 (~1.2M parameters)", "small": "3 levels, widths 32/64/128 (~4.7M): the shipped base",
             "base": "3 levels, widths 64/128/128 (~7.3M): better, slower"},
}
FAMILIES = {
    "unet": "UNet — convolutional, SD 1.x / SDXL structure: sees every latent pixel with the same kernels; "
            "draws small objects sooner on a CPU. Choose it for ShapesWorld-sized images and short budgets.",
    "mmdit": "MMDiT — SD3-style transformer: the architecture of today's large models; scales with tokens and data. "
             "Choose it to study what real models do; at patch 4 a small one paints each tile on its own.",
    "sd3": "SD3 / SD3.5 (your folder) — continue a real Stable Diffusion 3 or 3.5 from its local diffusers folder (transformer, VAE, "
           "CLIP-L, CLIP-G and T5): needs a GPU; the result loads in stock diffusers (StableDiffusion3Pipeline).",
    "flux": "FLUX.1 (your folder) — continue FLUX.1-dev or -schnell from its local diffusers folder (transformer, VAE, CLIP and T5): "
            "needs a large GPU; the result loads in stock diffusers (FluxPipeline).",
}
STOCK = ("sd3", "flux")
PALETTE = [(40, 120, 230), (230, 120, 40), (60, 170, 90), (200, 60, 160), (120, 90, 200), (30, 170, 190)]


def buckets_text(buckets: list) -> str:
    return ", ".join(f"{w}x{h}" for w, h in buckets)


def parse_buckets(text: str) -> list[list[int]]:
    out = []
    for part in text.replace(";", ",").split(","):
        part = part.strip().lower()
        if part:
            w, h = part.split("x")
            out.append([int(w), int(h)])
    return out


def spin(lo: float, hi: float, value: float, step: float = 0.1, decimals: int = 2) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setRange(lo, hi)
    box.setDecimals(decimals)
    box.setSingleStep(step)
    box.setValue(value)
    return box


def ispin(lo: int, hi: int, value: int, step: int = 1) -> QSpinBox:
    box = QSpinBox()
    box.setRange(lo, hi)
    box.setSingleStep(step)
    box.setValue(value)
    return box


def overlay(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over the complete default ``base`` (tables merged; each curriculum stage filled from the default stage)."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        if key == "curriculum":
            stage = base["curriculum"][0]
            out["curriculum"] = [{**copy.deepcopy(stage), **st} for st in value]
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = overlay(out[key], value)
        else:
            out[key] = value
    return out


class DataPage(QWizardPage):
    def __init__(self, wiz: PretrainWizard):
        super().__init__()
        self.wiz = wiz
        self.setTitle("Data and mixture")
        self.setSubTitle("Which dataset the run sees, and how often each category is drawn.")
        form = QFormLayout(self)
        self.dataset = QComboBox()
        for ds in wiz.datasets:
            self.dataset.addItem(f"{ds['name']} ({ds['items'] - ds['flagged']} curated items)", ds["name"])
        self.dataset.currentIndexChanged.connect(self._fill_mixture)
        form.addRow("Dataset", self.dataset)
        self.view = QComboBox()
        self.view.addItem("Curated view (flagged items left out)", "curated")
        self.view.addItem("All items", "all")
        form.addRow("View", self.view)
        self.dropout = wiz.spin("data.caption_dropout", wiz.recipe["data"]["caption_dropout"], 0.05)
        self.dropout.setToolTip("Captions replaced by the empty prompt, so classifier-free guidance works")
        form.addRow("Caption dropout", self.dropout)
        # the lowest value stands for "no limit" (a recipe without data.max_upscale)
        self.max_upscale = wiz.spin("data.max_upscale", wiz.recipe["data"].get("max_upscale") or 0.9, 0.1, none_below=True)
        self.max_upscale.setSpecialValueText("no limit")
        self.max_upscale.setSuffix("x")
        self.max_upscale.setToolTip("Largest factor an image may be enlarged by to fill its bucket; smaller images are left out. "
                                    "1.00x trains only on images at least as large as their bucket, so upscaling blur is never learned.")
        form.addRow("Enlarge images at most", self.max_upscale)
        self.mix = QTableWidget(0, 3)
        self.mix.setHorizontalHeaderLabels(["Category", "Items", "Weight"])
        self.mix.horizontalHeader().setSectionResizeMode(0, QHeaderView.Stretch)
        form.addRow("Mixture", self.mix)
        form.addRow("", hint("Weights are relative: the loop samples categories by weight, not by raw counts, and logs the realised mix. "
                             "Leave all at 1 with <i>uniform over items</i> unchecked to draw by weight, or check it to draw items uniformly."))
        self.uniform = QCheckBox("Uniform over items (ignore weights)")
        self.uniform.setChecked(not wiz.recipe["curriculum"][0].get("mixture"))
        form.addRow("", self.uniform)
        if wiz.recipe["data"]["dataset"] in [d["name"] for d in wiz.datasets]:
            self.dataset.setCurrentIndex([d["name"] for d in wiz.datasets].index(wiz.recipe["data"]["dataset"]))
        self._fill_mixture()

    def _fill_mixture(self) -> None:
        name = self.dataset.currentData()
        ds = next((d for d in self.wiz.datasets if d["name"] == name), None)
        cats = (ds or {}).get("categories", {})
        current = self.wiz.recipe["curriculum"][0].get("mixture") or {}
        self.mix.setRowCount(len(cats))
        for r, (cat, n) in enumerate(sorted(cats.items())):
            self.mix.setItem(r, 0, QTableWidgetItem(cat))
            self.mix.setItem(r, 1, QTableWidgetItem(str(n)))
            self.mix.setCellWidget(r, 2, spin(0, 100, float(current.get(cat, 1.0)), 0.5))

    def weights(self) -> dict[str, float]:
        if self.uniform.isChecked():
            return {}
        return {self.mix.item(r, 0).text(): self.mix.cellWidget(r, 2).value() for r in range(self.mix.rowCount())}

    def validatePage(self) -> bool:  # noqa: N802
        r = self.wiz.recipe
        r["data"].update(dataset=self.dataset.currentData() or r["data"]["dataset"], view=self.view.currentData(), caption_dropout=self.dropout.value())
        if self.max_upscale.value() < 1.0:
            r["data"].pop("max_upscale", None)
        else:
            r["data"]["max_upscale"] = round(self.max_upscale.value(), 2)
        w = self.weights()
        for st in r["curriculum"]:
            st["mixture"] = dict(w)
        return True


class ModelPage(QWizardPage):
    def __init__(self, wiz: PretrainWizard):
        super().__init__()
        self.wiz = wiz
        self.setTitle("Model")
        self.setSubTitle("A velocity network from diffusers (UNet or SD3 transformer), the ShapesWorld VAE and MiniLM.")
        lay = QVBoxLayout(self)
        m = wiz.recipe["model"]
        form = QFormLayout()
        self.family = QComboBox()
        for key in FAMILIES:
            self.family.addItem(FAMILIES[key].split(" — ")[0], key)
        self.family.setCurrentIndex(max(0, self.family.findData({"embedded": "mmdit"}.get(m.get("family"), m.get("family", "mmdit")))))
        form.addRow("Family", self.family)
        lay.addLayout(form)
        self.family_hint = hint("")
        lay.addWidget(self.family_hint)
        self.radios: dict[str, QRadioButton] = {}
        for size in SIZES["mmdit"]:
            rb = QRadioButton()
            rb.setChecked(size == m["size"])
            self.radios[size] = rb
            lay.addWidget(rb)
        form = QFormLayout()
        self.init = QLineEdit(m.get("init", ""))
        self.init.setPlaceholderText("optional: continue from a model folder (diffusers layout)")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.init, 1)
        row.addWidget(browse)
        form.addRow("Start from", row)
        self.patch = QComboBox()
        for k, text in ((1, "1 — finest, 4x the tokens of 2"), (2, "2 — SD3's choice"), (4, "4 — a quarter of the tokens of 2 (a 64 px image costs what 32 px does with 2)")):
            self.patch.addItem(text, k)
        self.patch.setCurrentIndex(max(0, self.patch.findData(int(m.get("patch", 2)))))
        self.patch.setToolTip("MMDiT only: latent pixels per token side; buckets must be multiples of VAE factor x patch")
        form.addRow("Token patch", self.patch)
        lay.addLayout(form)
        lay.addStretch(1)
        self.family.currentIndexChanged.connect(self._family_changed)
        self._family_changed()

    def _browse(self) -> None:
        from PySide6.QtWidgets import QFileDialog

        folder = QFileDialog.getExistingDirectory(self, "Model folder (diffusers layout)", self.init.text())
        if folder:
            self.init.setText(folder)

    def _family_changed(self, *_: object) -> None:
        fam = self.family.currentData()
        stock = fam in STOCK
        self.family_hint.setText(FAMILIES[fam].split(" — ", 1)[1])
        self.setSubTitle("Your model's own network, VAE and text encoders, from its local folder." if stock else
                         "A velocity network from diffusers (UNet or SD3 transformer), the ShapesWorld VAE and MiniLM.")
        for size, rb in self.radios.items():
            rb.setText(f"{size} — {SIZES[fam][size]}" if not stock else f"{size} — (the folder's own network)")
            rb.setEnabled(not stock)
        self.patch.setEnabled(fam == "mmdit")
        self.init.setPlaceholderText(f"required: the local {FAMILIES[fam].split(' (')[0]} folder (nothing is downloaded)" if stock
                                     else "optional: continue from a model folder (diffusers layout)")

    def validatePage(self) -> bool:  # noqa: N802
        m = self.wiz.recipe["model"]
        m["family"] = self.family.currentData()
        m["size"] = next(s for s, rb in self.radios.items() if rb.isChecked())
        m["init"] = self.init.text().strip()
        m["patch"] = int(self.patch.currentData())
        if m["family"] == "unet":
            m.pop("heads", None)
        else:
            m.pop("channels", None)
        if m["family"] in STOCK:
            if not m["init"]:
                show_error(self, "Model folder needed", f"{self.family.currentText()} continues a real model: choose its local diffusers folder.")
                return False
            for k in ("layers", "heads", "head_dim", "channels", "text_encoder", "vae"):
                m.pop(k, None)
            shift = self.wiz.recipe["allocation"]["shift"]
            if shift.get("kind") == "per_bucket":  # the stock scheduler's own rule: SD3 ships alpha = 3, FLUX a dynamic one
                shift.update({"kind": "fixed", "alpha": 3.0} if m["family"] == "sd3" else {"kind": "dynamic"})
        return True


class AllocationPage(QWizardPage):
    def __init__(self, wiz: PretrainWizard):
        super().__init__()
        self.wiz = wiz
        self.setTitle("Signal allocation")
        self.setSubTitle("Where along t the training signal goes, per resolution bucket (t = 0 clean, 1 noise).")
        lay = QHBoxLayout(self)
        form = QFormLayout()
        a = wiz.recipe["allocation"]
        self.kind = QComboBox()
        for k, label in (("uniform", "uniform"), ("logit_normal", "logit-normal (m, s)"), ("mode", "mode (s)"), ("cosmap", "cosmap")):
            self.kind.addItem(label, k)
        self.kind.setCurrentIndex(max(0, self.kind.findData(a["timesteps"]["kind"])))
        self.m = wiz.spin("allocation.timesteps.m", a["timesteps"]["m"], 0.1)
        self.s = wiz.spin("allocation.timesteps.s", a["timesteps"]["s"], 0.1)
        self.mode_scale = wiz.spin("allocation.timesteps.mode_scale", a["timesteps"]["mode_scale"], 0.05)
        self.shift = QComboBox()
        for k, label in (("none", "none"), ("fixed", "fixed alpha"), ("per_bucket", "per bucket: alpha = sqrt(m/n)"), ("dynamic", "dynamic (FLUX rule)")):
            self.shift.addItem(label, k)
        self.shift.setCurrentIndex(max(0, self.shift.findData(a["shift"]["kind"])))
        self.alpha = wiz.spin("allocation.shift.alpha", a["shift"]["alpha"], 0.25)
        self.base = wiz.ispin("allocation.shift.base_resolution", a["shift"]["base_resolution"], 8)
        self.bins = wiz.ispin("allocation.loss_bins", a["loss_bins"])
        form.addRow("Timestep density", self.kind)
        form.addRow("  m (location)", self.m)
        form.addRow("  s (scale)", self.s)
        form.addRow("  mode scale", self.mode_scale)
        form.addRow("Resolution shift", self.shift)
        form.addRow("  alpha (fixed)", self.alpha)
        form.addRow("  base resolution", self.base)
        form.addRow("Loss bins", self.bins)
        form.addRow(hint("The plot shows the density the run will actually train on: the chosen density, then the shift of each "
                         "bucket of the curriculum. Larger images keep more signal at the same t, so the shift moves their mass toward noise."))
        left = QWidget()
        left.setLayout(form)
        left.setMaximumWidth(420)
        lay.addWidget(left)
        self.plot = themed_plot("Effective training density", "density", "t")
        self.plot.addLegend()
        lay.addWidget(self.plot, 1)
        self._timer = QTimer(self, singleShot=True, interval=120)
        self._timer.timeout.connect(self.refresh)
        for w in (self.m, self.s, self.mode_scale, self.alpha):
            w.valueChanged.connect(lambda *_: self._timer.start())
        self.base.valueChanged.connect(lambda *_: self._timer.start())
        for w in (self.kind, self.shift):
            w.currentIndexChanged.connect(lambda *_: self._timer.start())
        self.curves: dict[str, Any] = {}

    def initializePage(self) -> None:  # noqa: N802
        shift = self.wiz.recipe["allocation"]["shift"]  # the model page sets a real family's own rule
        self.shift.setCurrentIndex(max(0, self.shift.findData(shift["kind"])))
        self.alpha.setValue(float(shift.get("alpha", self.alpha.value())))
        stock = self.wiz.recipe["model"].get("family") in STOCK
        item = self.shift.model().item(self.shift.findData("per_bucket"))
        item.setEnabled(not stock)
        item.setToolTip("a stock scheduler (SD3, FLUX) knows a fixed or a dynamic shift only" if stock else "")
        self.refresh()

    def allocation(self) -> dict[str, Any]:
        a = copy.deepcopy(self.wiz.recipe["allocation"])
        a["timesteps"].update(kind=self.kind.currentData(), m=self.m.value(), s=self.s.value(), mode_scale=self.mode_scale.value())
        a["shift"].update(kind=self.shift.currentData(), alpha=self.alpha.value(), base_resolution=self.base.value())
        a["loss_bins"] = self.bins.value()
        return a

    def refresh(self) -> None:
        a = self.allocation()
        buckets = []
        for st in self.wiz.recipe["curriculum"]:
            for b in st["buckets"]:
                if list(b) not in buckets:
                    buckets.append(list(b))
        body = {"timesteps": a["timesteps"], "shift": a["shift"], "buckets": buckets, "model": self.wiz.recipe["model"]}
        self.wiz.link.call("density", body, done=self._draw, failed=lambda e, d: None)

    def _draw(self, res: dict) -> None:
        self.plot.clear()
        self.curves = res["curves"]
        for i, (name, c) in enumerate(res["curves"].items()):
            color = PALETTE[i % len(PALETTE)]
            self.plot.plot(res["t"], c["density"], pen={"color": color, "width": 2}, name=f"{name} (alpha {c['alpha']:.2f}, mean t {c['mean_t']:.2f})")

    def validatePage(self) -> bool:  # noqa: N802
        self.wiz.recipe["allocation"] = self.allocation()
        return True


class CurriculumPage(QWizardPage):
    COLS = ["Stage", "Steps", "Buckets (WxH, …)", "Complexity from", "to"]

    def __init__(self, wiz: PretrainWizard):
        super().__init__()
        self.wiz = wiz
        self.setTitle("Curriculum")
        self.setSubTitle("Ordered stages: easy first (small, square, short prompts), harder later.")
        lay = QVBoxLayout(self)
        self.table = QTableWidget(0, len(self.COLS))
        self.table.setHorizontalHeaderLabels(self.COLS)
        self.table.horizontalHeader().setSectionResizeMode(2, QHeaderView.Stretch)
        lay.addWidget(self.table, 1)
        row = QHBoxLayout()
        for label, fn in (("Add stage", self._add), ("Remove stage", self._remove), ("Move up", lambda: self._move(-1)), ("Move down", lambda: self._move(1))):
            b = QPushButton(label)
            b.clicked.connect(fn)
            row.addWidget(b)
        row.addStretch(1)
        lay.addLayout(row)
        self.timeline = themed_plot("Timeline (steps)", "", "step")
        self.timeline.setMaximumHeight(140)
        self.timeline.getAxis("left").setTicks([[]])
        lay.addWidget(self.timeline)
        self.table.itemChanged.connect(lambda *_: self._draw_timeline())
        for st in wiz.recipe["curriculum"]:
            self._append(st)
        self._draw_timeline()

    def _append(self, st: dict) -> None:
        r = self.table.rowCount()
        self.table.insertRow(r)
        self.table.setItem(r, 0, QTableWidgetItem(st["name"]))
        self.table.setCellWidget(r, 1, self.wiz.ispin("curriculum.steps", st["steps"], 100))
        self.table.cellWidget(r, 1).valueChanged.connect(lambda *_: self._draw_timeline())
        self.table.setItem(r, 2, QTableWidgetItem(buckets_text(st["buckets"])))
        self.table.setCellWidget(r, 3, ispin(1, 4, st["complexity"][0]))
        self.table.setCellWidget(r, 4, ispin(1, 4, st["complexity"][1]))

    def _add(self) -> None:
        last = self.stages()[-1] if self.table.rowCount() else {"name": "stage", "steps": 500, "buckets": [[32, 32]], "complexity": [1, 4], "mixture": {}}
        self._append({**last, "name": f"stage {self.table.rowCount() + 1}"})
        self._draw_timeline()

    def _remove(self) -> None:
        if self.table.rowCount() > 1:
            self.table.removeRow(self.table.currentRow() if self.table.currentRow() >= 0 else self.table.rowCount() - 1)
            self._draw_timeline()

    def _move(self, delta: int) -> None:
        r = self.table.currentRow()
        stages = self.stages()
        j = r + delta
        if r < 0 or not 0 <= j < len(stages):
            return
        stages[r], stages[j] = stages[j], stages[r]
        self.table.setRowCount(0)
        for st in stages:
            self._append(st)
        self.table.selectRow(j)
        self._draw_timeline()

    def stages(self) -> list[dict[str, Any]]:
        out = []
        mixture = self.wiz.recipe["curriculum"][0].get("mixture", {})
        for r in range(self.table.rowCount()):
            out.append({
                "name": (self.table.item(r, 0).text() if self.table.item(r, 0) else f"stage {r + 1}"),
                "steps": self.table.cellWidget(r, 1).value(),
                "buckets": parse_buckets(self.table.item(r, 2).text() if self.table.item(r, 2) else "32x32"),
                "complexity": [self.table.cellWidget(r, 3).value(), self.table.cellWidget(r, 4).value()],
                "mixture": dict(mixture),
            })
        return out

    def _draw_timeline(self) -> None:
        import pyqtgraph as pg

        self.timeline.clear()
        try:
            stages = self.stages()
        except (ValueError, AttributeError):
            return
        start = 0
        for i, st in enumerate(stages):
            color = PALETTE[i % len(PALETTE)]
            bar = pg.BarGraphItem(x0=[start], x1=[start + st["steps"]], y0=[0], y1=[1], brush=QColor(*color, 160))
            self.timeline.addItem(bar)
            label = pg.TextItem(f"{st['name']}: {buckets_text(st['buckets'])}", anchor=(0, 0.5))
            label.setPos(start, 0.5)
            self.timeline.addItem(label)
            start += st["steps"]

    def validatePage(self) -> bool:  # noqa: N802
        try:
            stages = self.stages()
        except ValueError:
            show_error(self, "A bucket list cannot be read.", "Write buckets as WIDTHxHEIGHT separated by commas, e.g. 32x32, 64x48.")
            return False
        self.wiz.recipe["curriculum"] = stages
        return True


class RepaPage(QWizardPage):
    def __init__(self, wiz: PretrainWizard):
        super().__init__()
        self.wiz = wiz
        r = wiz.recipe["repa"]
        self.setTitle("Representation alignment (REPA)")
        self.setSubTitle("Align early image tokens with a frozen image encoder's features of the clean image.")
        form = QFormLayout(self)
        self.enabled = QCheckBox("Use REPA")
        self.enabled.setChecked(r["enabled"])
        self.block = wiz.ispin("repa.block", r["block"])
        self.weight = wiz.spin("repa.weight", r["weight"], 0.1)
        self.dim = wiz.ispin("repa.projector_dim", r["projector_dim"], 32)
        self.layers = wiz.ispin("repa.projector_layers", r["projector_layers"])
        self.until = wiz.ispin("repa.until_step", r.get("until_step") or 0, 100, none_below=True)
        self.until.setSpecialValueText("never")
        form.addRow(self.enabled)
        form.addRow("Aligned block", self.block)
        form.addRow("Weight lambda", self.weight)
        form.addRow("Projector width", self.dim)
        form.addRow("Projector layers", self.layers)
        form.addRow("Switch off after step", self.until)
        form.addRow(hint("The embedded encoder is the ShapesWorld representation encoder (self-supervised, not the detector). "
                         "REPA helps most early in training; the paper aligned block 8 of 28."))

    def validatePage(self) -> bool:  # noqa: N802
        self.wiz.recipe["repa"].update(enabled=self.enabled.isChecked(), block=self.block.value(), weight=self.weight.value(),
                                       projector_dim=self.dim.value(), projector_layers=self.layers.value())
        if self.until.value():
            self.wiz.recipe["repa"]["until_step"] = self.until.value()
        else:
            self.wiz.recipe["repa"].pop("until_step", None)
        return True


class ComputePage(QWizardPage):
    def __init__(self, wiz: PretrainWizard):
        super().__init__()
        self.wiz = wiz
        o, c = wiz.recipe["optim"], wiz.recipe["compute"]
        self.setTitle("Compute")
        self.setSubTitle("Device, precision, batch and optimiser.")
        form = QFormLayout(self)
        self.device = QComboBox()
        self.device.addItem("auto", "auto")
        for d in wiz.devices:
            if d["kind"] not in [self.device.itemData(i) for i in range(self.device.count())]:
                self.device.addItem(d["name"], d["kind"])
        self.device.setCurrentIndex(max(0, self.device.findData(c["device"])))
        self.precision = QComboBox()
        for p in ("auto", "no", "bf16", "fp16"):
            self.precision.addItem(p, p)
        self.precision.setCurrentIndex(max(0, self.precision.findData(o["precision"])))
        self.batch = wiz.ispin("optim.batch_size", o["batch_size"])
        self.accum = wiz.ispin("optim.grad_accum", o["grad_accum"])
        self.lr = wiz.spin("optim.lr", o["lr"], 1e-4, decimals=6)
        self.ema = wiz.spin("optim.ema", o["ema"], 0.001, decimals=5)
        self.processes = wiz.ispin("compute.processes", c["processes"])
        self.checkpointing = QCheckBox("recompute activations in the backward pass (less memory, ~⅓ more time)")
        self.checkpointing.setChecked(bool(c.get("gradient_checkpointing", False)))
        self.eight_bit = QCheckBox("AdamW states in 8 bits (bitsandbytes, CUDA): a quarter of their memory")
        self.eight_bit.setChecked(bool(o.get("eight_bit", False)))
        for box in (self.checkpointing, self.eight_bit):
            box.toggled.connect(self.initializePage)
        self.processes.valueChanged.connect(self.initializePage)
        self.batch.valueChanged.connect(self.initializePage)
        self.seed = wiz.ispin("optim.seed", o["seed"])
        self.sample_every = wiz.ispin("schedule.sample_every", wiz.recipe["schedule"]["sample_every"], 50)
        self.ckpt_every = wiz.ispin("schedule.checkpoint_every", wiz.recipe["schedule"]["checkpoint_every"], 100)
        for label, w in (("Device", self.device), ("Precision", self.precision), ("Batch per process", self.batch), ("Gradient accumulation", self.accum),
                         ("Learning rate", self.lr), ("EMA decay", self.ema), ("Processes (data parallel)", self.processes),
                         ("Gradient checkpointing", self.checkpointing), ("8-bit optimizer", self.eight_bit), ("Seed", self.seed),
                         ("Preview every", self.sample_every), ("Checkpoint every", self.ckpt_every)):
            form.addRow(label, w)
        self.estimate = QLabel("")
        self.estimate.setWordWrap(True)
        form.addRow("Estimate", self.estimate)
        self.memory = QLabel("")
        self.memory.setWordWrap(True)
        form.addRow("Memory", self.memory)
        self.launch = QLabel("")
        self.launch.setWordWrap(True)
        self.launch.setTextInteractionFlags(self.launch.textInteractionFlags() | Qt.TextSelectableByMouse)
        form.addRow("Launches", self.launch)

    def initializePage(self, *_: object) -> None:  # noqa: N802
        self.validatePage()
        self.wiz.render(lambda text: self.wiz.link.call("estimate_recipe", text, done=self._show_estimate, failed=self._no_estimate))

    def _no_estimate(self, error: object, _trace: object = None) -> None:
        self.estimate.setText(f"<span style='color:#c0392b'>{html.escape(str(error))}</span>")
        self.memory.setText("")

    def _show_estimate(self, est: dict) -> None:
        params = est["params"] / 1e9 if est["params"] >= 1e9 else est["params"] / 1e6
        self.estimate.setText(f"{params:.2f}{'B' if est['params'] >= 1e9 else 'M'} parameters · {est['steps']} steps · about "
                              f"{duration_text(est['seconds'])} on this machine")
        self.memory.setText(memory_text(est.get("memory")))
        launch = est.get("launch") or {}
        self.launch.setText(f"{html.escape(launch.get('what', ''))}<br><code>{html.escape(launch.get('command', ''))}</code>" if launch else "")

    def validatePage(self) -> bool:  # noqa: N802
        r = self.wiz.recipe
        r["optim"].update(precision=self.precision.currentData(), batch_size=self.batch.value(), grad_accum=self.accum.value(),
                          lr=self.lr.value(), ema=self.ema.value(), seed=self.seed.value())
        r["compute"].update(device=self.device.currentData(), processes=self.processes.value(), gradient_checkpointing=self.checkpointing.isChecked())
        r["optim"]["eight_bit"] = self.eight_bit.isChecked()
        r["schedule"].update(sample_every=self.sample_every.value(), checkpoint_every=self.ckpt_every.value())
        return True


class ReviewPage(QWizardPage):
    def __init__(self, wiz: PretrainWizard):
        super().__init__()
        self.wiz = wiz
        self.setTitle("Review the recipe")
        self.setSubTitle("This TOML is what the run stores and what 'signal-backend run' takes. Edit it here if you like.")
        lay = QVBoxLayout(self)
        form = QFormLayout()
        self.name = QLineEdit(wiz.recipe.get("name") or "pretrain")
        form.addRow("Run name", self.name)
        lay.addLayout(form)
        self.text = QPlainTextEdit()
        self.text.setLineWrapMode(QPlainTextEdit.NoWrap)
        lay.addWidget(self.text, 1)
        self.issues = QLabel("")
        self.issues.setWordWrap(True)
        lay.addWidget(self.issues)
        row = QHBoxLayout()
        for label, fn in (("Validate", self.validate_text), ("Save recipe…", self._save), ("Load recipe…", self._load)):
            b = QPushButton(label)
            b.clicked.connect(fn)
            row.addWidget(b)
        row.addStretch(1)
        lay.addLayout(row)
        self.valid = False
        self.setButtonText(QWizard.FinishButton, "Start training")

    def initializePage(self) -> None:  # noqa: N802
        self.wiz.recipe["name"] = self.name.text().strip()
        self.wiz.render(self._show)

    def _show(self, text: str) -> None:
        self.text.setPlainText(text)
        self.valid = True
        self.issues.setText("<span style='color:#27ae60'>Valid pretrain recipe.</span>")
        self.completeChanged.emit()

    def validate_text(self) -> None:
        self.wiz.link.call("validate_recipe", self.text.toPlainText(), done=self._validated)

    def _validated(self, res: dict) -> None:
        self.valid = res["valid"]
        if res["valid"]:
            self.issues.setText("<span style='color:#27ae60'>Valid pretrain recipe.</span>")
        else:
            self.issues.setText("<span style='color:#c0392b'>" + "<br>".join(f"<b>{i['path'] or 'recipe'}</b>: {i['reason']}" for i in res["issues"]) + "</span>")
        self.completeChanged.emit()

    def _save(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save recipe", f"{self.name.text() or 'pretrain'}.toml", "TOML recipes (*.toml)")
        if path:
            Path(path).write_text(self.text.toPlainText(), encoding="utf-8")

    def _load(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load recipe", "", "TOML recipes (*.toml)")
        if path:
            self.text.setPlainText(Path(path).read_text(encoding="utf-8"))
            self.validate_text()

    def isComplete(self) -> bool:  # noqa: N802
        return self.valid

    def validatePage(self) -> bool:  # noqa: N802
        text = self.text.toPlainText()
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            show_error(self, "The recipe is not valid TOML.", str(exc))
            return False
        if data.get("kind") != "pretrain":
            show_error(self, "This wizard starts pretraining recipes.", f"The text says kind = {data.get('kind')!r}.")
            return False
        self.wiz.start(text, self.name.text().strip() or "pretrain")
        return True


class PretrainWizard(QWizard):
    """Builds a pretrain recipe page by page and starts it as a job."""

    def __init__(self, link, datasets: list[dict], default_recipe: str, devices: list[dict], schema: dict[str, Any], parent: QWidget | None = None,
                 on_started=None, start_from: str | None = None):
        super().__init__(parent)
        self.link = link
        self.schema = RecipeSchema(schema)
        self.datasets = datasets
        self.devices = devices
        self.on_started = on_started
        self.recipe: dict[str, Any] = tomllib.loads(default_recipe)
        if start_from:
            self.recipe = overlay(self.recipe, tomllib.loads(start_from))
        self.setWindowTitle("New pretraining run")
        self.setWizardStyle(QWizard.ModernStyle)
        self.setOption(QWizard.NoBackButtonOnLastPage, False)
        self.resize(980, 680)
        self.pages = [DataPage(self), ModelPage(self), AllocationPage(self), CurriculumPage(self), RepaPage(self), ComputePage(self), ReviewPage(self)]
        for p in self.pages:
            self.addPage(p)
        self.started_job: dict | None = None

    def spin(self, path: str, value: float, step: float = 0.1, decimals: int = 2, none_below: bool = False) -> QDoubleSpinBox:
        """A spin box for a float field: range and tooltip from the recipe schema the backend serves;
        with ``none_below`` one step under the field's minimum stands for leaving it empty."""
        lo, hi = self.schema.limits(path, step=10.0 ** -decimals)
        box = spin(lo - (step if none_below else 0), hi, value, step, decimals)
        box.setToolTip(self.schema.description(path))
        return box

    def ispin(self, path: str, value: int, step: int = 1, none_below: bool = False) -> QSpinBox:
        """A spin box for an integer field (range and tooltip from the schema); with ``none_below`` the
        value under the field's minimum stands for leaving it empty."""
        lo, hi = self.schema.limits(path)
        box = ispin(int(lo) - (1 if none_below else 0), int(hi), value, step)
        box.setToolTip(self.schema.description(path))
        return box

    def render(self, then) -> None:
        """Ask the backend for the commented TOML of the current recipe (validating it)."""
        def failed(exc, details) -> None:
            detail = getattr(exc, "detail", None)
            issues = detail.get("issues", []) if isinstance(detail, dict) else []
            text = "\n".join(f"{i['path']}: {i['reason']}" for i in issues) or str(exc)
            show_error(self, "The recipe has problems.", text, "Go back and correct the fields named above.", details)

        self.link.call("render_recipe", self.recipe, done=then, failed=failed)

    def start(self, text: str, name: str) -> None:
        def ok(job: dict) -> None:
            self.started_job = job
            if self.on_started:
                self.on_started(job)

        self.link.call("create_job", text, name, done=ok, failed=lambda e, d: show_error(self.parent() or self, "The run did not start.", str(e), details=d))

