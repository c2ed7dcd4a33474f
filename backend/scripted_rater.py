"""A scripted rater: judges queued pairs through the public API as a person with a fixed, hidden
preference would, so tests, benches and the demo exercise the same path a real person's ratings
take (``GET /api/comparisons/queue``, the images, ``POST .../choice``).

Its taste is the detector's reading of each image against the prompt's ShapesEval spec, kept to
what a person sees: an image that holds exactly the promised objects beats one that does not;
between two that are equally faithful, more of the prompt's checks kept wins, then the nearer
miss (per promised group: an object of the promised shape and colour, else of its colour, else of
its shape; the count closer). Images a person could not tell apart by these are a tie when they
are faithful and "both bad" when neither is. The ``confidence`` taste also weighs the near miss
by the detector's confidence in it, which breaks almost every such tie by something no person
sees ("which of two right circles is rounder"; the default before 2026-12-04: it decided half the
base's pairs, and no reward model learns it from a few hundred judgements); with the ``larger``
taste, larger objects also count. With probability ``noise`` a decisive judgement is flipped, as a
tired person's would be. Pairs whose prompt has no spec are skipped: there is nothing to judge them by.
"""

from __future__ import annotations

import argparse
import io
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backend.cli import command, fail

TASTES = ("faithful", "larger", "confidence")


@dataclass
class RaterReport:
    rated: int = 0
    skipped: int = 0
    choices: dict[str, int] = field(default_factory=dict)
    flipped: int = 0

    def summary(self) -> str:
        tally = ", ".join(f"{k} {v}" for k, v in sorted(self.choices.items()))
        return f"rated {self.rated} pair(s) ({tally}); {self.flipped} flipped by noise; {self.skipped} skipped (no spec to judge by)"


class ScriptedRater:
    def __init__(self, client: Any, name: str = "scripted", tastes: tuple[str, ...] = ("faithful",), noise: float = 0.1, seed: int = 0,
                 detector: Any = None):
        bad = [t for t in tastes if t not in TASTES]
        if bad:
            raise ValueError(f"unknown taste(s) {bad}; one of {TASTES}")
        self.client = client
        self.name = name
        self.tastes = tastes
        self.noise = noise
        self.rng = random.Random(seed)
        if detector is None:
            from backend.world.pretrained import load_detector

            detector = load_detector()
        self.detector = detector

    def utility(self, spec: dict[str, Any], image, det: Any = None) -> tuple[float, bool]:
        """(how much this rater likes the image, whether it is faithful to the prompt); ``det`` is the
        detector's reading when already made."""
        from backend.eval.shapes_eval import check_image, exact_objects, strict_pass
        from backend.world.spec import Scene

        scene = Scene.from_json(spec)
        det = det if det is not None else self.detector([image])[0]
        checks = check_image(scene, det)
        faithful = strict_pass(scene, det)
        value = 4.0 * faithful + 1.0 * exact_objects(scene, det) + sum(checks.values()) / max(1, len(checks))
        # partial credit, as a person gives it to a near miss: per promised group the best object found
        # (right shape and colour 1, right colour 0.5, right shape 0.3; weighted by the detector's
        # confidence with the ``confidence`` taste), less a little for every object too many or too few
        credit = 0.0
        weigh = "confidence" in self.tastes
        for g in scene.groups:
            credit += max(((o.score if weigh else 1.0) * (1.0 if (o.shape, o.color) == (g.shape, g.color) else 0.5 if o.color == g.color else 0.3 if o.shape == g.shape else 0.0)
                           for o in det.objects), default=0.0)
        value += 0.5 * credit / max(1, len(scene.groups)) - 0.1 * abs(len(det.objects) - sum(g.count for g in scene.groups))
        if "larger" in self.tastes and det.objects:
            value += 0.5 * sum(o.size == "large" for o in det.objects) / len(det.objects)
        return value, faithful

    def judge(self, pair: dict[str, Any]) -> tuple[str, bool]:
        """(choice, whether noise flipped it)."""
        from PIL import Image

        spec = (pair["meta"].get("a") or {}).get("spec")
        if not spec:
            return "skip", False
        images = [Image.open(io.BytesIO(self.client.image(pair[key]))).convert("RGB") for key in ("image_a", "image_b")]
        (ua, fa), (ub, _) = (self.utility(spec, im, det) for im, det in zip(images, self.detector(images)))  # both read in one call
        if abs(ua - ub) < 1e-9:
            return ("tie" if fa else "both_bad"), False
        choice = "a" if ua > ub else "b"
        if self.rng.random() < self.noise:
            return ("b" if choice == "a" else "a"), True
        return choice, False

    def rate(self, count: int, repeat_rate: float = 0.0) -> RaterReport:
        """Judge up to ``count`` pairs of this rater's queue."""
        report = RaterReport()
        while report.rated + report.skipped < count:
            pairs = self.client.pair_queue(self.name, count=min(16, count - report.rated - report.skipped), repeat_rate=repeat_rate)
            if not pairs:
                break
            for pair in pairs:
                t0 = time.perf_counter()
                choice, flipped = self.judge(pair)
                self.client.submit(pair["id"], choice, shown_left=pair["left"], rater=self.name,
                                   decision_ms=int(1000 * (time.perf_counter() - t0)), repeat=pair["repeat"])
                report.choices[choice] = report.choices.get(choice, 0) + 1
                report.flipped += int(flipped)
                if choice == "skip":
                    report.skipped += 1
                else:
                    report.rated += 1
        return report


def _rate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--project", type=Path, required=True, help="project whose running service queues the pairs")
    p.add_argument("--count", type=int, default=100, help="pairs to judge")
    p.add_argument("--name", default="scripted", help="rater name the judgements are stored under")
    p.add_argument("--taste", default="faithful", help="comma-separated: faithful (always), larger (also prefers larger objects), "
                                                       "confidence (near misses weighed by the detector's confidence)")
    p.add_argument("--noise", type=float, default=0.1, help="probability of flipping a decisive judgement")
    p.add_argument("--repeats", type=float, default=0.0, help="share of repeated pairs slipped in (rater consistency)")
    p.add_argument("--seed", type=int, default=0)


@command("rate scripted", "judge queued pairs as a person with a fixed hidden taste would, through the service's API", _rate_args)
def _rate(args: argparse.Namespace) -> int:
    from backend.service.client import Client

    client = Client.discover(args.project)
    if client is None:
        return fail(f"no service is running for {args.project}; start one with: signal-backend serve --project {args.project}")
    tastes = tuple(t.strip() for t in args.taste.split(",") if t.strip())
    rater = ScriptedRater(client, args.name, tastes, args.noise, args.seed)
    print(rater.rate(args.count, args.repeats).summary())
    print(client.rating_stats(args.name))
    return 0
