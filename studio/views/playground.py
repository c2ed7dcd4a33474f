"""Playground: generate from any saved model or run checkpoint; compare two side by side on
the same prompts and seeds; score every image with a reward model (the reward column); save the images.

Generation runs as a ``sample`` job in a worker process like every other job (the service
never runs models itself), writing into the project's ``exports/playground/``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..widgets import NO_MODEL, TileGrid, alive, heading, hint, pixmap_from_bytes, show_error


class ModelPicker(QComboBox):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.sizes: dict[str, str] = {}  # model or run path -> "WxH" it was trained at (card or recipe)
        self.samplers: dict[str, dict] = {}  # model path -> the sampler its card asks for (a distilled student's steps and cfg)

    def fill(self, models: list[dict], jobs: list[dict]) -> None:
        current = self.currentData()
        self.clear()
        # before the items: adding the first one already selects it and signals the change
        self.sizes = {m["path"]: "{}x{}".format(*m["card"]["size"]) for m in models if (m.get("card") or {}).get("size")}
        self.samplers = {m["path"]: m["card"]["sampler"] for m in models if m.get("kind") == "distilled" and (m.get("card") or {}).get("sampler")}
        self.sizes.update({j["run_dir"]: "{}x{}".format(*j["size"]) for j in jobs if j.get("run_dir") and j.get("size")})
        for m in reversed([m for m in models if m.get("kind") != "reward"]):  # reward models score images, they do not draw them
            se = (m.get("card") or {}).get("shapes_eval") or {}
            score = f" · ShapesEval strict {se['overall']:.2f}" if se else ""
            self.addItem(f"model #{m['id']} {m['name']}{score}", m["path"])
        for j in jobs:
            if j.get("kind") == "pretrain" and j.get("run_dir") and (j.get("step") or 0) > 0:
                self.addItem(f"run #{j['id']} {j.get('name')} (latest checkpoint, step {j.get('step')})", j["run_dir"])
        idx = self.findData(current)
        if idx >= 0:
            self.setCurrentIndex(idx)


class Playground(QWidget):
    def __init__(self, link, parent: QWidget | None = None):
        super().__init__(parent)
        self.link = link
        # job -> column, folder, files, captions, scored, enhanced, images per prompt
        self.pending: dict[int, tuple[str, str, list[str], list[str], bool, bool, int]] = {}
        self.results: dict[str, list[tuple[str, bytes]]] = {}
        self.rewards: dict[str, list[float | None]] = {}
        self.latency: dict[str, float | None] = {}  # column -> seconds per image of its last generation (decode included)
        self.enhanced: dict[str, list[str | None]] = {}  # column -> the prompt each image was sampled from, when enhanced
        root = QHBoxLayout(self)
        left = QVBoxLayout()
        left.addWidget(heading("Playground"))
        form = QFormLayout()
        self.model_a = ModelPicker()
        self.model_b = ModelPicker()
        self.compare = QCheckBox("Compare with")
        self.compare.toggled.connect(self.model_b.setEnabled)
        self.model_b.setEnabled(False)
        form.addRow("Model", self.model_a)
        form.addRow(self.compare, self.model_b)
        self.scorer = QComboBox()
        self.scorer.setToolTip("Score every image with a reward model: the shipped prior, or one trained on your ratings (Rate page)")
        self.scorer.addItem("— no reward column —", "")
        form.addRow("Score with", self.scorer)
        self.adapters = QListWidget()
        self.adapters.setMaximumHeight(70)
        self.adapters.setToolTip("Personalizations (LoRA adapters) to add to Model; several can be on at once.\n"
                                 "A personalization picked as Model carries its own adapter already.")
        form.addRow("Adapters on Model", self.adapters)
        scale_row = QHBoxLayout()
        self.lora_scale = QSlider(Qt.Horizontal)
        self.lora_scale.setRange(0, 100)
        self.lora_scale.setValue(100)
        self.lora_scale.setToolTip("How strongly Model's adapters act: 0 = the base alone, 1 = as trained")
        self.lora_scale_label = QLabel("1.00")
        self.lora_scale.valueChanged.connect(lambda v: self.lora_scale_label.setText(f"{v / 100:.2f}"))
        scale_row.addWidget(self.lora_scale, 1)
        scale_row.addWidget(self.lora_scale_label)
        form.addRow("LoRA scale", scale_row)
        self.enhance = QCheckBox("Enhance prompts")
        self.enhance.setToolTip("Rewrite each prompt into the caption style the model was trained on before sampling (the embedded\n"
                                "ShapesWorld rewriter: every stated attribute kept, unstated sizes and colours filled from the\n"
                                "dataset's captions). Each image shows the prompt as written and as the sampler got it.")
        form.addRow("", self.enhance)
        self.prompts = QPlainTextEdit("a red circle\na blue square\ntwo green triangles\na yellow star on a striped purple background")
        self.prompts.setToolTip("One prompt per line")
        self.prompts.setMaximumHeight(110)
        form.addRow("Prompts", self.prompts)
        self.seeds = QLineEdit("0, 1")
        form.addRow("Seeds", self.seeds)
        self.steps = QSpinBox()
        self.steps.setRange(1, 500)
        self.steps.setValue(20)
        self.cfg = QDoubleSpinBox()
        self.cfg.setRange(0, 30)
        self.cfg.setValue(3.0)
        self.cfg.setSingleStep(0.5)
        self.shift = QDoubleSpinBox()
        self.shift.setRange(0, 20)
        self.shift.setSingleStep(0.25)
        self.shift.setSpecialValueText("model's rule")
        self.size = QComboBox()
        for s in ("32x32", "48x48", "64x64", "64x48", "48x64", "96x96", "128x128"):
            self.size.addItem(s)
        self.size.setCurrentText("64x64")  # until a model says otherwise; at 32 px the VAE loses colours
        self.size.setToolTip("Image size; picking a saved model selects the size it trained at")
        self._sized_for: str | None = None  # the model A whose trained size was last applied
        self.model_a.currentIndexChanged.connect(self._size_of_model)
        for label, w in (("Steps", self.steps), ("Guidance (CFG)", self.cfg), ("Shift", self.shift), ("Size", self.size)):
            form.addRow(label, w)
        left.addLayout(form)
        row = QHBoxLayout()
        self.generate_btn = QPushButton("Generate")
        self.generate_btn.setShortcut("Ctrl+Return")
        self.generate_btn.setToolTip("Generate (Ctrl+Enter)")
        self.generate_btn.clicked.connect(self.generate)
        self.save_btn = QPushButton("Save images…")
        self.save_btn.clicked.connect(self._save)
        row.addWidget(self.generate_btn)
        row.addWidget(self.save_btn)
        left.addLayout(row)
        self.status = hint("Pick a model (a saved model or a run's latest checkpoint) and generate.")
        left.addWidget(self.status)
        left.addStretch(1)
        lw = QWidget()
        lw.setLayout(left)
        lw.setMaximumWidth(430)
        root.addWidget(lw)
        self.columns = QHBoxLayout()
        self.grids: dict[str, TileGrid] = {}
        self.titles: dict[str, QLabel] = {}
        for key in ("A", "B"):
            col = QVBoxLayout()
            title = QLabel("")
            title.setWordWrap(True)
            col.addWidget(title)
            grid = TileGrid(cols=2, side=128)
            scroll = QScrollArea()
            scroll.setWidgetResizable(True)
            scroll.setWidget(grid)
            col.addWidget(scroll, 1)
            self.columns.addLayout(col, 1)
            self.grids[key] = grid
            self.titles[key] = title
        root.addLayout(self.columns, 1)

    def reload(self) -> None:
        self.link.call("models", done=lambda models: self.link.call("jobs", done=lambda jobs: self._fill(models, jobs)))

    def _fill(self, models: list[dict], jobs: list[dict]) -> None:
        current = self.scorer.currentData()
        self.scorer.clear()
        self.scorer.addItem("— no reward column —", "")
        for m in reversed([m for m in models if m.get("kind") == "reward"]):
            card = m.get("card") or {}
            acc = (card.get("heldout") or {}).get("accuracy") or (card.get("zero_shot") or {}).get("accuracy")
            self.scorer.addItem(f"reward #{m['id']} {m['name']}" + (f" · accuracy {acc:.2f}" if acc is not None else ""), m["path"])
        self.scorer.setCurrentIndex(max(0, self.scorer.findData(current)))
        self.personalized = {m["path"] for m in models if m.get("kind") == "personalized"}
        checked = set(self.checked_adapters())
        self.adapters.clear()
        for m in reversed([m for m in models if m.get("kind") == "personalized" and (m.get("card") or {}).get("lora")]):
            card = m["card"]
            item = QListWidgetItem(f"#{m['id']} {m['name']} · '{card.get('instance_prompt', '')}'")
            item.setData(Qt.UserRole, m["path"])
            item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
            item.setCheckState(Qt.Checked if m["path"] in checked else Qt.Unchecked)
            item.setToolTip(f"on {card.get('parent')}; subject fidelity {(card.get('subject_eval') or {}).get('fidelity', float('nan')):.2f}")
            self.adapters.addItem(item)
        self.model_a.fill(models, jobs)
        self.model_b.fill(models, jobs)
        empty = self.model_a.count() == 0
        self.model_a.setPlaceholderText("no model yet" if empty else "")
        if empty:
            self.generate_btn.setEnabled(False)
            self.status.setText(NO_MODEL)
        elif self.status.text() == NO_MODEL:  # the first model arrived
            self.generate_btn.setEnabled(True)
            self.status.setText("Pick a model (a saved model or a run's latest checkpoint) and generate.")
        if self.model_b.count() > 1 and self.model_b.currentIndex() == 0:
            self.model_b.setCurrentIndex(1)

    def _size_of_model(self) -> None:
        """Sample at the size model A trained at: a model's card says, a run's recipe says."""
        path = self.model_a.currentData()
        if path is None or path == self._sized_for:
            return  # cleared, or refilled with the same model: keep a size the user picked
        self._sized_for = path
        size = self.model_a.sizes.get(path)
        if size:
            if self.size.findText(size) < 0:
                self.size.addItem(size)
            self.size.setCurrentText(size)

    def checked_adapters(self) -> list[str]:
        return [self.adapters.item(i).data(Qt.UserRole) for i in range(self.adapters.count())
                if self.adapters.item(i).checkState() == Qt.Checked]

    def _lora_lines(self, key: str, model: str) -> tuple[str, str]:
        """Recipe lines for column ``key``'s adapters and scale, and the words for its title."""
        if key != "A":
            return "", ""
        extra = [a for a in self.checked_adapters() if a != model]
        if not extra and model not in getattr(self, "personalized", set()):
            return "", ""
        scale = self.lora_scale.value() / 100
        lines = (f"adapters = {json.dumps(extra)}\n" if extra else "") + f"lora_scale = {scale}\n"
        words = (" + " + ", ".join(Path(a).name for a in extra) if extra else "") + f" · LoRA scale {scale:.2f}"
        return lines, words

    def _seeds(self) -> list[int]:
        return [int(s) for s in self.seeds.text().replace(",", " ").split() if s.strip().lstrip("-").isdigit()] or [0]

    def generate(self) -> None:
        prompts = [p.strip() for p in self.prompts.toPlainText().splitlines() if p.strip()]
        if not prompts:
            show_error(self, "Nothing to generate.", "Write at least one prompt, one per line.")
            return
        targets = [("A", self.model_a)] + ([("B", self.model_b)] if self.compare.isChecked() else [])
        if any(box.currentData() is None for _, box in targets):
            show_error(self, "No model to generate from.", "Train a model first (Pretrain), or pick one in the list.")
            return
        seeds = self._seeds()
        w, h = (int(v) for v in self.size.currentText().split("x"))
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for key in ("A", "B"):
            self.grids[key].reset([])
            self.titles[key].setText("")
        for key, box in targets:
            out = f"exports/playground/{stamp}-{key}"
            shift = f"shift = {self.shift.value()}\n" if self.shift.value() > 0 else ""
            reward = f"reward = {json.dumps(self.scorer.currentData())}\n" if self.scorer.currentData() else ""
            enhance = 'enhance = "shapes"\n' if self.enhance.isChecked() else ""
            lora, lora_words = self._lora_lines(key, box.currentData())
            own = box.samplers.get(box.currentData())  # a distilled student samples at its own steps, without guidance
            steps, cfg = (int(own["steps"]), float(own["cfg"])) if own else (self.steps.value(), self.cfg.value())
            if own:
                lora_words += f" · its own sampler: {steps} step{'s' if steps != 1 else ''}, cfg {cfg:g}"
            recipe = (f'kind = "sample"\nmodel = {json.dumps(box.currentData())}\nprompts = {json.dumps(prompts)}\nseeds = {json.dumps(seeds)}\n'
                      f'out = "{out}"\n{reward}{enhance}{lora}[sampler]\nsteps = {steps}\ncfg = {cfg}\nwidth = {w}\nheight = {h}\n{shift}')
            names = [f"{i:04d}_s{sd}.png" for i, sd in enumerate(sd for _ in prompts for sd in seeds)]
            labels = [f"{p} · seed {sd}" for p in prompts for sd in seeds]
            self.titles[key].setText(f"<b>{key}</b>: {box.currentText()}{lora_words}")
            self.grids[key].reset(labels)

            def started(job: dict, key=key, out=out, names=names, labels=labels, scored=bool(reward), enhanced=bool(enhance),
                        per_prompt=len(seeds)) -> None:
                self.pending[job["id"]] = (key, out, names, labels, scored, enhanced, per_prompt)
                self.status.setText(f"Generating in job #{job['id']}… (a worker loads the model, then samples)")

            self.link.call("create_job", recipe, f"playground {key}", done=started,
                           failed=lambda e, d: show_error(self, "Generation did not start.", str(e), details=d))
        self.generate_btn.setEnabled(False)

    def on_event(self, ev: dict) -> None:
        if ev.get("type") != "job":
            return
        j = ev["job"]
        if j["id"] not in self.pending or j["state"] in ("queued", "running"):
            return
        key, out, names, labels, scored, enhanced, per_prompt = self.pending.pop(j["id"])
        if j["state"] != "done":
            show_error(self, "Generation failed.", j.get("error") or j["state"], "See the run's log in Runs for details.")
        else:
            self.results[key] = []
            for tile, name in zip(self.grids[key].tiles, names):
                def got(data: bytes, tile=tile, name=name, key=key) -> None:
                    self.results[key].append((name, data))
                    if alive(tile):
                        tile.set_pixmap(pixmap_from_bytes(data))

                self.link.call("file", f"{out}/{name}", done=got)
            # the metadata carries the latency, and the rewards and enhanced prompts when asked for
            self.link.call("file", f"{out}/metadata.jsonl",
                           done=lambda data, key=key, labels=labels, n=per_prompt: self._captions(key, names, labels, data, n))
            self.status.setText(f"Done: {len(names)} image(s) in {out}")
        if not self.pending:
            self.generate_btn.setEnabled(True)

    def _captions(self, key: str, names: list[str], labels: list[str], data: bytes, per_prompt: int) -> None:
        """Each tile's caption from the run's metadata: the prompt as the sampler got it when enhancement
        rewrote it, and the reward column with the best image of each prompt starred."""
        records = {}
        for line in data.decode().splitlines():
            rec = json.loads(line)
            records[rec["file"]] = rec
        scores = {n: r["reward"] for n, r in records.items() if "reward" in r}
        per_image = next((r["s_per_image"] for r in records.values() if r.get("s_per_image")), None)
        if per_image and "per image" not in self.titles[key].text():
            self.titles[key].setText(self.titles[key].text() + f" · {per_image * 1000:.0f} ms per image")
        self.latency[key] = per_image
        self.rewards[key] = [scores.get(n) for n in names]
        self.enhanced[key] = [records.get(n, {}).get("enhanced") for n in names]
        for i, (tile, name, label) in enumerate(zip(self.grids[key].tiles, names, labels)):
            rec = records.get(name)
            if rec is None or not alive(tile):
                continue
            text = label
            if rec.get("enhanced") and rec["enhanced"] != rec.get("prompt"):
                text += f"\n→ {rec['enhanced']}"
            r = scores.get(name)
            if r is not None:
                group = [scores.get(n) for n in names[i - i % per_prompt: i - i % per_prompt + per_prompt]]
                best = per_prompt > 1 and r == max(x for x in group if x is not None)
                text += f"\nreward {r:+.2f}" + ("  ★" if best else "")
            tile.set_caption(text)

    def _save(self) -> None:
        if not any(self.results.values()):
            show_error(self, "No images to save yet.", "Generate first.")
            return
        folder = QFileDialog.getExistingDirectory(self, "Save images to")
        if folder:
            for key, items in self.results.items():
                for name, data in items:
                    (Path(folder) / f"{key}_{name}").write_bytes(data)
            self.status.setText(f"Saved to {folder}")

    def shown_images(self) -> int:
        return sum(1 for g in self.grids.values() for t in g.tiles if t._pix is not None)

