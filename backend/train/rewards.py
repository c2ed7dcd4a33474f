"""Black-box rewards for reward tuning (Flow-GRPO), by name, weighted and summed.

- ``rule``: the detector-based rule, "exactly the promised objects" with partial credit: the share
  of the prompt's promises the detector finds kept (every ShapesEval check that applies, plus
  "nothing else in the picture"), so 1.0 exactly when the image passes strict ShapesEval. Partial
  credit matters on a weak base: with a 0/1 rule most groups of a hard prompt score all zeros and
  their advantages collapse.
- ``strict``: the same rule without partial credit (1 on a strict pass, else 0).
- one promise by its check's name (``relation``, ``count``, ``color``, ``size``, ``object``, ``background``,
  ``exact``): 1 where the detector finds it kept, and 1 where the prompt does not make it, so it adds
  a constant there that group-normalised advantages cancel. ``"rule=1, relation=2"`` makes a kept
  relation worth more than every other promise together: the rule alone counts it as one promise of
  four to seven, and groups then improve on the others first.
- anything else names a reward model folder (``models/reward-…`` in the project, or a path),
  trained from the project's ratings by the ``reward`` stage.

``"rule=1, models/reward-3=0.5"`` (or a dict) weighs several. The rule rewards need each prompt's
spec (what it promises); a reward model only needs the prompt text.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

from backend.eval.shapes_eval import CHECKS
from backend.world.spec import Scene

PROMISES = (*CHECKS, "exact")  # ShapesEval's checks, and "nothing else in the picture"
RULES = ("rule", "strict", *PROMISES)


def parse_rewards(spec: str | dict[str, float]) -> dict[str, float]:
    """``"rule=1, models/reward=0.5"`` or a dict -> {name: weight}; a bare name weighs 1."""
    if isinstance(spec, dict):
        out = {str(k): float(v) for k, v in spec.items()}
    else:
        out = {}
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            name, _, weight = part.partition("=")
            try:
                out[name.strip()] = float(weight) if weight.strip() else 1.0
            except ValueError:
                raise ValueError(f"reward {part!r}: the weight after '=' must be a number") from None
    if not out:
        raise ValueError(f"no reward named: give 'rule', 'strict', a promise ({', '.join(PROMISES)}) or a reward model folder")
    if not any(w != 0 for w in out.values()):
        raise ValueError("every reward weighs 0")
    return out


def rule_scores(specs: list[Scene], detections: list[Any], rule: str = "rule") -> list[float]:
    """Share of promises kept (``rule``), 1/0 on a strict pass (``strict``), or one promise kept (1 where not made)."""
    from backend.eval.shapes_eval import check_image, exact_objects

    out = []
    for spec, det in zip(specs, detections):
        checks = {**check_image(spec, det), "exact": exact_objects(spec, det)}
        kept = list(checks.values())
        out.append(sum(kept) / len(kept) if rule == "rule" else float(all(kept)) if rule == "strict" else float(checks.get(rule, True)))
    return out


class Rewards:
    """The weighted sum of named rewards, called on decoded images with their prompts and specs."""

    def __init__(self, spec: str | dict[str, float], locate: Callable[[str], Any] | None = None):
        self.weights = parse_rewards(spec)
        self._detector = None
        self._models: dict[str, Any] = {}
        for name in self.weights:
            if name not in RULES:
                from backend.models.reward import load_reward

                path = locate(name) if locate is not None else name
                try:
                    self._models[name] = load_reward(path)
                except FileNotFoundError as e:
                    raise ValueError(f"reward {name!r} is neither a rule ({', '.join(RULES)}) nor a reward model: {e}") from None

    @property
    def needs_specs(self) -> bool:
        return any(name in RULES for name in self.weights)

    def components(self, images: list[Image.Image], prompts: list[str], specs: list[Scene | None]) -> dict[str, torch.Tensor]:
        """Each named reward of every image (unweighted)."""
        out: dict[str, torch.Tensor] = {}
        if self.needs_specs:
            if any(s is None for s in specs):
                raise ValueError("the rule rewards need each prompt's spec: train on the world's prompts, or use a reward model")
            if self._detector is None:
                from backend.world.pretrained import load_detector

                self._detector = load_detector()
            detections = self._detector(images)
        for name in self.weights:
            if name in RULES:
                out[name] = torch.tensor(rule_scores(specs, detections, name))  # type: ignore[arg-type]
            else:
                out[name] = torch.tensor(self._models[name].score(images, prompts))
        return out

    def __call__(self, images: list[Image.Image], prompts: list[str], specs: list[Scene | None]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = self.components(images, prompts, specs)
        total = sum(self.weights[name] * value for name, value in parts.items())
        return total, parts  # type: ignore[return-value]
