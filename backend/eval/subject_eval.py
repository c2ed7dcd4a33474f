"""What a personalization did: subject fidelity, prompt fidelity in new contexts, class preservation, leakage.

- **Subject fidelity** (the DreamBooth paper's DINO score, in our encoder's space): mean cosine
  similarity of the world encoder's pooled features between images drawn for the instance prompt
  and the subject's reference images. Its scale is set by two controls measured beside it: the
  references against each other (the ceiling) and the base model's images for the same prompt.
- **Subject shown**: share of instance-prompt images holding the subject. The ShapesWorld subject
  is a quartered orange/blue disc no base image holds, so ``subject_found`` is an exact test.
- **Prompt fidelity**: the context prompts ("a sks circle left of a red square") checked the strict
  way ShapesEval checks a prompt, with the subject's pixel test standing in for the detector on
  the subject's group: the other objects present in their counts, the relation between the
  subject's and the other group's centres, the background, and the subject's own count.
- **Class preservation**: strict ShapesEval on the eval prompts naming the class noun, the
  personalized model against its base (same seeds); **leakage**: share of class-prompt images
  showing the subject.

Written here because no library scores a subject in this world; the encoder and detector are the
world's own (``backend/world``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from backend.sample.euler import SampleSettings, generate
from backend.world.spec import SHAPES


def subject_count(img: Image.Image) -> int:
    """Separate subjects in the image."""
    from backend.world.subject import subject_regions

    return len(subject_regions(img))


def context_checks(text: str, token: str, class_noun: str) -> Any:
    """The checks of one context prompt: a function of (image, detection) -> {check: passed}.
    The subject's group is the one written with the identifier; the others are read as ShapesWorld
    groups. A prompt the world's grammar cannot read checks only that the subject is shown."""
    from backend.world.rewriter import NotUnderstood, parse
    from backend.world.subject import subject_center, subject_found

    if token not in text.split():
        subject_group = None
        try:
            parsed = parse(text)
        except NotUnderstood:
            parsed = None
    else:
        try:
            parsed = parse(text.replace(f"{token} ", ""))
        except NotUnderstood:
            parsed = None
        subject_group = next((i for i, g in enumerate(parsed.groups) if g["shape"] == class_noun and g["color"] is None), None) if parsed else None

    def check(img: Image.Image, det: Any) -> dict[str, bool]:
        if subject_group is None:
            if token in text.split():
                return {"subject": subject_found(img)}
            return {"no_subject": not subject_found(img)}  # the class alone: the subject must not appear
        res: dict[str, bool] = {}
        g = parsed.groups[subject_group]
        res["subject"] = subject_count(img) == (g["count"] or 1) if (g["count"] or 1) > 1 else subject_found(img)
        others = [o for i, o in enumerate(parsed.groups) if i != subject_group]
        for o in others:
            found = [d for d in det.objects if d.shape == o["shape"] and (o["color"] is None or d.color == o["color"])]
            res[f"{o['color'] or ''} {o['shape']}".strip()] = len(found) == (o["count"] or 1)
        if parsed.relation is not None and others:
            o = others[0]
            found = [d for d in det.objects if d.shape == o["shape"] and (o["color"] is None or d.color == o["color"])]
            c = subject_center(img)
            ok = bool(found) and c is not None
            if ok:
                ox = sum(d.center[0] for d in found) / len(found)
                oy = sum(d.center[1] for d in found) / len(found)
                subject_first = subject_group == 0
                dx, dy = (c[0] - ox, c[1] - oy) if subject_first else (ox - c[0], oy - c[1])  # first group minus second
                ok = {"left of": dx < -0.05, "right of": dx > 0.05, "above": dy < -0.05, "below": dy > 0.05}[parsed.relation]
            res["relation"] = ok
        if parsed.background:
            bg = parsed.background
            res["background"] = (bg["kind"] is None or det.background.get("kind") == bg["kind"]) and (
                bg["color"] is None or det.background.get("color") == bg["color"])
        return res

    return check


@dataclass
class SubjectReport:
    fidelity: float  # mean cosine similarity to the references
    fidelity_sd: float
    shown: float  # share of instance-prompt images with the subject
    context: float  # share of context images passing every check
    context_per_prompt: dict[str, float]
    leakage: float  # share of class-prompt images with the subject
    class_strict: float  # strict ShapesEval on the class's eval prompts
    class_strict_se: float
    images: int
    per_check: dict[str, dict[str, float]] = field(default_factory=dict)

    def metrics(self, prefix: str = "subject") -> dict[str, float]:
        return {f"{prefix}/fidelity": self.fidelity, f"{prefix}/shown": self.shown, f"{prefix}/context": self.context,
                f"{prefix}/leakage": self.leakage, f"{prefix}/class_strict": self.class_strict}

    def to_json(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def cosine_to(features: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Per image: mean cosine similarity to every reference."""
    a = torch.nn.functional.normalize(features.float(), dim=-1)
    b = torch.nn.functional.normalize(references.float(), dim=-1)
    return (a @ b.T).mean(dim=1)


def reference_ceiling(encoder: Any, references: list[Image.Image]) -> float:
    """The references' mean similarity to each other (self-pairs left out): what a perfect copy scores."""
    f = torch.nn.functional.normalize(encoder.pooled(references).float(), dim=-1)
    sim = f @ f.T
    n = len(references)
    return float((sim.sum() - sim.diagonal().sum()) / max(1, n * (n - 1)))


class SubjectEval:
    """The figures above for a network, on fixed seeds (the same at every evaluation and for the base)."""

    def __init__(self, bundle: Any, settings: SampleSettings, references: list[Image.Image], instance_prompt: str, context_prompts: list[str],
                 class_prompt: str, token: str, class_noun: str, images: int, class_eval_images: int = 64, seed: int = 5000):
        from backend.world.pretrained import load_detector, load_encoder

        self.bundle, self.settings, self.images = bundle, settings, images
        self.instance_prompt, self.class_prompt = instance_prompt, class_prompt
        self.context_prompts = [p for p in context_prompts if token in p.split()]
        self.checks = {p: context_checks(p, token, class_noun) for p in self.context_prompts}
        self.class_noun = class_noun
        self.seeds = [seed + k for k in range(images)]
        self.detector, self.encoder = load_detector(), load_encoder()
        self.references = self.encoder.pooled(references)
        self.ceiling = reference_ceiling(self.encoder, references)
        from backend.eval.model_eval import eval_pairs

        self.class_pairs = [pair for pair in eval_pairs() if class_noun in {g.shape for g in pair[0].scene.groups}][:class_eval_images]
        self.last: SubjectReport | None = None
        self.grid: Image.Image | None = None

    def measure(self, net: torch.nn.Module | None = None) -> SubjectReport:
        from backend.eval.model_eval import labelled_grid, sample_pairs
        from backend.eval.shapes_eval import shapes_eval, stderr
        from backend.world.subject import subject_found

        n = self.images
        inst = generate(self.bundle, [self.instance_prompt] * n, self.seeds, self.settings, net=net)
        sims = cosine_to(self.encoder.pooled(inst), self.references)
        ctx_prompts = [p for p in self.context_prompts for _ in self.seeds]
        ctx_images = generate(self.bundle, ctx_prompts, self.seeds * len(self.context_prompts), self.settings, net=net) if ctx_prompts else []
        dets = self.detector(ctx_images) if ctx_images else []
        per_prompt: dict[str, float] = {}
        per_check: dict[str, dict[str, float]] = {}
        passed: list[bool] = []
        for k, p in enumerate(self.context_prompts):
            results = [self.checks[p](ctx_images[k * n + i], dets[k * n + i]) for i in range(n)]
            ok = [all(r.values()) for r in results]
            passed += ok
            per_prompt[p] = float(np.mean(ok))
            per_check[p] = {c: float(np.mean([r[c] for r in results])) for c in results[0]}
        cls_images = generate(self.bundle, [self.class_prompt] * n, self.seeds, self.settings, net=net)
        eval_images = sample_pairs(self.bundle, self.class_pairs, self.settings, net) if self.class_pairs else []
        report = shapes_eval(eval_images, [p.scene for p, _ in self.class_pairs], self.detector) if eval_images else None
        leaks = [subject_found(im) for im in cls_images + eval_images]
        k = min(8, n)  # the grid shows the first 8 of each prompt
        shown_ctx = [i for j in range(len(self.context_prompts)) for i in range(j * n, j * n + k)]
        # a class picture passes when it shows one object of the class and not the subject (an empty picture for
        # "a circle" was framed green while only leakage was checked)
        one = [self.class_noun not in SHAPES or [o.shape for o in d.objects] == [self.class_noun] for d in self.detector(cls_images[:k])]
        self.grid = labelled_grid(inst[:k] + [ctx_images[i] for i in shown_ctx] + cls_images[:k],
                                  [self.instance_prompt] * k + [ctx_prompts[i] for i in shown_ctx] + [self.class_prompt] * k,
                                  [subject_found(im) for im in inst[:k]] + [passed[i] for i in shown_ctx]
                                  + [ok and not subject_found(im) for ok, im in zip(one, cls_images[:k])], cols=8)
        strict = report.overall if report is not None else float("nan")
        self.last = SubjectReport(
            fidelity=float(sims.mean()), fidelity_sd=float(sims.std()) if n > 1 else 0.0, shown=float(np.mean([subject_found(im) for im in inst])),
            context=float(np.mean(passed)) if passed else float("nan"), context_per_prompt=per_prompt, leakage=float(np.mean(leaks)),
            class_strict=strict, class_strict_se=stderr(strict, len(eval_images)) if report is not None else float("nan"),
            images=len(inst) + len(ctx_images) + len(cls_images) + len(eval_images), per_check=per_check)
        return self.last

    def __call__(self, step: int, net: torch.nn.Module) -> dict[str, float]:
        """The loop's evaluation hook."""
        return self.measure(net).metrics()
