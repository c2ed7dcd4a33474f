"""The ``reward`` stage: a reward model from the project's judgements, trained by the one loop.

Bradley-Terry on reward differences, ``-log σ(r_w − r_l)`` (or its robust form with ``label_noise``,
see ``bt_loss``), with a tie counted half to each side;
"both bad" and skips say nothing about which is better and are left out (and counted). The split
is by prompt, so the held-out accuracy measures judging prompts the head has not seen. Images are
read through the frozen backbone once; the head then trains on those features (exact resume,
pause and stop come from the loop like every other run). Held-out pairwise accuracy on decisive
pairs, the held-out loss and the calibration error (ECE over ten bins of predicted probability)
are logged as it trains; the head is saved as a model with a card.
"""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import torch

from backend.recipes.reward import RewardRecipe
from backend.store import Project, ratings
from backend.store.ratings import heldout_prompt
from backend.train.method import Method

LABEL = {"a": 1.0, "b": 0.0, "tie": 0.5}




def bt_loss(diff: torch.Tensor, label: torch.Tensor, noise: float = 0.0) -> torch.Tensor:
    """Bradley-Terry with soft labels: label 1 = a preferred, 0 = b, 0.5 = a tie (the mean of ``bt_losses``)."""
    return bt_losses(diff, label, noise).mean()


def bt_losses(diff: torch.Tensor, label: torch.Tensor, noise: float = 0.0) -> torch.Tensor:
    """Each pair's Bradley-Terry loss.

    With ``noise`` = ε the judgement is taken to be flipped by mistake with probability ε, so
    P(a judged better) = ε + (1 − 2ε)·σ(diff) (a robust Bradley-Terry): a pair the head ranks
    confidently against its judgement costs at most −log ε instead of growing without bound, so
    a few such pairs (mistakes, or what the head's terms cannot express) no longer decide the fit."""
    logsig = torch.nn.functional.logsigmoid
    if noise <= 0:
        return -(label * logsig(diff) + (1 - label) * logsig(-diff))
    log_eps, log_keep = torch.log(torch.tensor(noise)), torch.log(torch.tensor(1 - 2 * noise))
    log_a = torch.logaddexp(log_eps, log_keep + logsig(diff))
    log_b = torch.logaddexp(log_eps, log_keep + logsig(-diff))
    return -(label * log_a + (1 - label) * log_b)


def pair_metrics(diff: torch.Tensor, label: torch.Tensor, bins: int = 10, noise: float = 0.0) -> dict[str, float]:
    """Accuracy on decisive pairs, BT loss (robust with ``noise``, as trained), and expected calibration error
    of the predicted probability against the labels."""
    p = noise + (1 - 2 * noise) * torch.sigmoid(diff)
    decisive = label != 0.5
    acc = float(((p > 0.5) == (label > 0.5))[decisive].float().mean()) if bool(decisive.any()) else float("nan")
    ece = 0.0
    for b in range(bins):
        inside = (p >= b / bins) & (p < (b + 1) / bins if b < bins - 1 else p <= 1)
        if bool(inside.any()):
            ece += float(inside.float().mean()) * abs(float(p[inside].mean()) - float(label[inside].mean()))
    return {"accuracy": acc, "loss": float(bt_loss(diff, label, noise)), "ece": ece}


class Features:
    """The judgements as tensors: per pair the two images' grids, the prompt's token states and its label; with
    ``mirrored``, the same four for the mirror images under the mirrored prompts (a head with ``mirror`` set)."""

    def __init__(self, grid_a: torch.Tensor, grid_b: torch.Tensor, states: torch.Tensor, mask: torch.Tensor, label: torch.Tensor,
                 mirrored: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None):
        self.grid_a, self.grid_b, self.states, self.mask, self.label = grid_a, grid_b, states, mask, label
        self.mirrored = mirrored

    def __len__(self) -> int:
        return len(self.label)

    def diff(self, head: torch.nn.Module, idx: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The head's reward differences r(a) − r(b) on the pairs ``idx``, each reward the mean over the views
        (as ``RewardModel.score`` reads the head), and their labels."""
        views = [(self.grid_a, self.grid_b, self.states, self.mask)] + ([self.mirrored] if self.mirrored is not None else [])
        diffs = []
        for view in views:
            grid_a, grid_b, states, mask = (t[idx].to(device) for t in view)
            diffs.append(head(grid_a, states, mask) - head(grid_b, states, mask))
        return torch.stack(diffs).mean(0), self.label[idx].to(device)


def gather(project: Project, recipe: RewardRecipe, model: Any, log=print) -> tuple[Features, Features, dict[str, Any], Features | None]:
    """Read the judgements, split them by prompt (train, validation, held out) and turn them into features."""
    from PIL import Image

    rows = [r for r in ratings.history(project.db, rater=recipe.rater, limit=10_000_000) if not r["is_repeat"]]
    left_out = {c: sum(1 for r in rows if r["choice"] == c) for c in ("both_bad", "skip")}
    if recipe.ties == "ignore":
        left_out["tie"] = sum(1 for r in rows if r["choice"] == "tie")
    rows = [r for r in rows if r["choice"] in LABEL and not (recipe.ties == "ignore" and r["choice"] == "tie")]
    decisive = sum(1 for r in rows if r["choice"] != "tie")
    if decisive < recipe.min_pairs:
        raise ValueError(f"only {decisive} decisive judgements (a or b) to learn from; rate at least {recipe.min_pairs} pairs first")
    hashes = sorted({h for r in rows for h in (r["image_a"], r["image_b"])})
    images = [Image.open(io.BytesIO(project.blob_path(h, "png").read_bytes())).convert("RGB") for h in hashes]
    prompts = sorted({r["prompt"] for r in rows})
    by_prompt = {p: i for i, p in enumerate(prompts)}
    views = []  # per view (as given, then mirrored with a mirror head): each image's grid and each prompt's states
    for view_images, view_prompts in model.views(images, prompts):
        states, mask = model.prompt_states(view_prompts)
        views.append((dict(zip(hashes, model.grids(view_images))), states, mask))

    def build(subset: list[dict]) -> Features:
        idx = torch.tensor([by_prompt[r["prompt"]] for r in subset], dtype=torch.long)
        parts = [(torch.stack([grids[r["image_a"]] for r in subset]) if subset else torch.zeros(0),
                  torch.stack([grids[r["image_b"]] for r in subset]) if subset else torch.zeros(0),
                  states[idx], mask[idx]) for grids, states, mask in views]
        return Features(*parts[0], torch.tensor([LABEL[r["choice"]] for r in subset]), mirrored=parts[1] if len(parts) > 1 else None)

    held = [r for r in rows if heldout_prompt(r["prompt"], recipe.heldout, recipe.seed)]
    rest = [r for r in rows if not heldout_prompt(r["prompt"], recipe.heldout, recipe.seed)]
    # the head is chosen on prompts of its own (validation), so the held-out figure stays unbiased
    val = [r for r in rest if recipe.validation > 0 and heldout_prompt(r["prompt"], recipe.validation, recipe.seed + 1)]
    train = [r for r in rest if not (recipe.validation > 0 and heldout_prompt(r["prompt"], recipe.validation, recipe.seed + 1))]
    if not train or not held or (recipe.validation > 0 and not val):
        raise ValueError(f"the split by prompt left {len(train)} training, {len(val)} validation and {len(held)} held-out judgements; "
                         "rate more prompts")
    info = {"judgements": len(rows), "train_judgements": len(train), "validation_judgements": len(val), "heldout_judgements": len(held),
            "prompts": len(prompts), "left_out": left_out, "ties": sum(1 for r in rows if r["choice"] == "tie")}
    log(f"{len(rows)} judgements on {len(prompts)} prompts: {len(train)} to train on, {len(val)} to choose the head by, {len(held)} held out "
        f"({info['ties']} ties counted half; left out: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in left_out.items()) + ")")
    return build(train), build(held), info, (build(val) if val else None)


class BradleyTerry(Method):
    """One step: a batch of judged pairs, the head's reward difference, the BT loss; at each
    evaluation, accuracy, loss and calibration on the held-out prompts.

    With validation pairs the method also keeps the best head so far (lowest validation loss,
    the starting head included) as a frozen module of the run: a few hundred noisy judgements are
    memorised within a few hundred steps (train accuracy past the noise ceiling while held-out
    accuracy falls), and the head saved is the one before that happened. It lives in checkpoints,
    so a resumed run keeps the same choice."""

    name = "bradley-terry"

    def __init__(self, train: Features, held: Features, batch_size: int, seed: int, anchor: float = 0.0, start: dict[str, torch.Tensor] | None = None,
                 val: Features | None = None, noise: float = 0.0):
        self.train, self.held, self.batch_size, self.seed, self.noise = train, held, batch_size, seed, noise
        self.anchor, self.start = anchor, start or {}
        self.val = val
        self.last: dict[str, float] = {}
        self.best: dict[str, Any] = {}  # step and validation figures of the head kept
        self.start_validation: dict[str, Any] = {}  # the starting head's (a candidate like any other)

    def setup(self, run) -> None:
        super().setup(run)
        if self.val is not None:
            head = _unwrapped(run.module("model"))
            run.add_module("best", copy.deepcopy(head), trainable=False)
            self.best = {"step": 0, **evaluate_head(head, self.val, run.device, self.noise)}
            self.start_validation = dict(self.best)

    def state(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state(self, state: dict[str, Any]) -> None:
        self.best = state.get("best", self.best)

    def step(self, run) -> None:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + run.step)  # the batch depends only on the step: exact resume
        idx = torch.randint(len(self.train), (min(self.batch_size, len(self.train)),), generator=gen)
        head = run.model
        diff, label = self.train.diff(head, idx, run.device)
        loss = bt_loss(diff, label, self.noise)
        run.log("loss", loss)
        if self.anchor > 0 and self.start:  # L2-SP: stay near the starting head where the judgements do not say otherwise
            drift = sum(((p - self.start[n].to(p.device)) ** 2).sum() for n, p in _unwrapped(head).named_parameters())
            run.log("reward/drift", drift)
            loss = loss + self.anchor * drift
        run.update("main", loss)
        decisive = label != 0.5
        if bool(decisive.any()):
            run.log("reward/train_accuracy", ((diff > 0) == (label > 0.5))[decisive].float().mean())

    def evaluate(self, run, step: int, net: torch.nn.Module) -> dict[str, float]:
        self.last = evaluate_head(net, self.held, run.device, self.noise)
        out = {f"reward/heldout_{k}": v for k, v in self.last.items()}
        if self.val is not None:
            val = evaluate_head(net, self.val, run.device, self.noise)
            if val["loss"] < self.best["loss"]:
                run.module("best").load_state_dict(_unwrapped(net).state_dict())
                self.best = {"step": step, **val}
            out.update({f"reward/validation_{k}": v for k, v in val.items()})
            out["reward/kept_step"] = float(self.best["step"])
        return out


def _unwrapped(net: torch.nn.Module) -> torch.nn.Module:
    return getattr(net, "module", net)


def starting_head(recipe: RewardRecipe, project: Project) -> tuple[Any, str]:
    """The head a reward run starts from: the shipped prior, a fresh one, or a reward model folder."""
    from backend.models.reward import RewardHead, load_reward
    from backend.paths import shipped_reward_prior_dir
    from backend.train.resolve import locate

    if recipe.init == "none":
        return RewardHead(width=recipe.width, trunk=recipe.trunk, mix=recipe.mix, where=recipe.where, bind=recipe.bind), "a fresh head"
    folder = shipped_reward_prior_dir() if recipe.init == "prior" else locate(project, recipe.init)
    try:
        return load_reward(folder).head, ("the shipped reward prior" if recipe.init == "prior" else f"reward model {recipe.init}")
    except FileNotFoundError as exc:
        hint = " (rebuild it with 'signal-backend reward pretrain', or set init = \"none\")" if recipe.init == "prior" else ""
        raise FileNotFoundError(f"{exc}{hint}") from None


@torch.no_grad()
def calibrate(head: torch.nn.Module, data: Features, noise: float = 0.0) -> float:
    """Fit one temperature on the training pairs and fold it into the head's output (every term's last
    layer, ``RewardHead.scale_output``): the ranking (every accuracy) is unchanged, but a prior trained
    contrastively is far too confident for Bradley-Terry, and its validation loss then says little about
    its ranking: the first steps would only shrink the scale, and the head kept by validation loss would be
    chosen on that. (Until 2026-12-06 only the judge term was scaled: on the shipped prior, whose where and
    bind terms add to it, x0.1 re-ranked the pairs before any rating was learned.)"""
    diff, label = data.diff(head, torch.arange(len(data)), torch.device("cpu"))
    scales = torch.logspace(-2, 1, 61)
    losses = torch.stack([bt_loss(s * diff, label, noise) for s in scales])
    scale = float(scales[int(losses.argmin())])
    head.scale_output(scale)
    return scale


@torch.no_grad()
def evaluate_head(head: torch.nn.Module, data: Features, device: torch.device, noise: float = 0.0) -> dict[str, float]:
    diff, label = data.diff(head, torch.arange(len(data)), device)
    return pair_metrics(diff.float().cpu(), label.float().cpu(), noise=noise)


@torch.no_grad()
def paired_gain(head: torch.nn.Module, start: torch.nn.Module, data: Features, noise: float = 0.0) -> dict[str, float]:
    """How much better ``head`` ranks the decisive judgements than ``start`` does (share of pairs, paired: each pair
    counts +1 where only ``head`` orders it as judged, −1 where only ``start`` does), in standard errors of that mean
    (``z``); beside it the paired gain in loss. Ranking decides: a reward is read by its order (Flow-GRPO
    normalises it within each group), and on the bench's base pairs heads that lowered the validation loss by 2.2
    standard errors at the same validation accuracy, a better calibration, ranked held-out pairs worse."""
    idx, cpu = torch.arange(len(data)), torch.device("cpu")
    (d_start, label), (d_head, _) = data.diff(start, idx, cpu), data.diff(head, idx, cpu)
    decisive = label != 0.5
    judged_a = label[decisive] > 0.5
    right = ((d_head[decisive] > 0) == judged_a).float() - ((d_start[decisive] > 0) == judged_a).float()
    loss_gain = bt_losses(d_start, label, noise) - bt_losses(d_head, label, noise)
    n = len(right)
    mean = float(right.mean()) if n else 0.0
    se = max(float(right.std() / n ** 0.5) if n > 1 else 0.0, 1.0 / max(n, 1))  # at least one pair's worth: z stays finite
    z = mean / se
    return {"accuracy_gain": mean, "se": se, "z": z, "pairs": n, "loss_gain": float(loss_gain.mean())}


def run(project: Project, recipe: RewardRecipe, run_dir: Path, reporter: Any, resume: bool) -> dict[str, Any]:
    from backend.models.reward import RewardModel, TermWeights, save_reward
    from backend.train.loop import LoopConfig, Trainer

    torch.manual_seed(recipe.seed)
    head, origin = starting_head(recipe, project)
    head.config["mirror"] = recipe.mirror  # trained and read as the mean over the picture and its mirror image
    reporter.log(f"the head starts from {origin}" + (f", pulled back towards it with weight {recipe.anchor:g}" if recipe.anchor else ""))
    model = RewardModel(head)
    train, held, info, val = gather(project, recipe, model, log=reporter.log)
    scale = 1.0
    if recipe.init != "none":  # a fresh head ranks at random: there is no confidence to fit
        scale = calibrate(head, train, recipe.label_noise or 0.0)
        reporter.log(f"reward scale fitted to the training judgements: x{scale:.3g} (the ranking is unchanged)")
    noise = recipe.label_noise or 0.0
    start_metrics = evaluate_head(head, held, torch.device("cpu"), noise)
    reporter.log(f"before training: held-out accuracy {start_metrics['accuracy']:.3f}, loss {start_metrics['loss']:.3f}")
    trainable = TermWeights(head) if recipe.tune == "terms" else head
    if recipe.tune == "terms":
        reporter.log(f"only the weights of its terms train ({', '.join(trainable.names)}); the rest of the head stays as it starts")
    start = {n: p.detach().clone() for n, p in trainable.named_parameters()}
    # the starting prior or model as it is now (rescaled): a trained head must rank validation clearly better to replace
    # it (a fresh head knows nothing to protect: it is only a candidate of the validation loss like any step)
    start_head = copy.deepcopy(trainable).eval() if val is not None and recipe.keep_start > 0 and recipe.init != "none" else None
    lr = recipe.lr if recipe.lr is not None else (3e-2 if recipe.tune == "terms" else 1e-3)
    cfg = LoopConfig(steps=recipe.steps, lr=lr, weight_decay=recipe.weight_decay, warmup=min(50, recipe.steps // 10), ema=0.0,
                     seed=recipe.seed, log_every=10, checkpoint_every=max(50, recipe.eval_every), sample_every=0, eval_every=recipe.eval_every,
                     loss_bins=1, device="cpu")
    method = BradleyTerry(train, held, recipe.batch_size, recipe.seed, recipe.anchor, start, val, noise)
    trainer = Trainer(None, method, lambda *a: None, cfg, run_dir, reporter, trainable=trainable)
    result = trainer.run(resume=resume)
    if result.state != "done":
        return {"state": result.state, "step": result.step}
    final = trainer.accelerator.unwrap_model(trainer.model).cpu().eval()
    kept = trainer.module("best").cpu().eval() if val is not None else final
    kept_step, by, paired = (method.best["step"], "lowest validation loss", None) if val is not None else (result.step, "last step", None)
    if start_head is not None and kept_step != 0:
        paired = paired_gain(kept, start_head, val, noise)
        if not paired["z"] >= recipe.keep_start:
            kept, kept_step = start_head, 0
            by = (f"the starting head: the head of step {method.best['step']} (lowest validation loss) ranked the validation judgements "
                  f"{paired['z']:+.2f} standard errors better, fewer than keep_start = {recipe.keep_start:g}")
    weights = kept.weights() if isinstance(kept, TermWeights) else None
    head = kept.folded().eval() if isinstance(kept, TermWeights) else kept
    last = evaluate_head(head, held, torch.device("cpu"), noise)
    chance = pair_metrics(torch.zeros(len(held)), held.label.float(), noise=noise)
    card = {"kind": "reward", "backbone": "ShapesWorld encoder + MiniLM (frozen)", "init": recipe.init, "anchor": recipe.anchor, "start_scale": scale,
            "tune": recipe.tune, "term_weights": weights, "lr": lr, "label_noise": noise,
            "heldout": last, "heldout_before": start_metrics, "chance": {"accuracy": 0.5, "loss": chance["loss"]},
            "kept": ({"step": kept_step, "by": by, "validation": (evaluate_head(head, val, torch.device("cpu"), noise) if kept_step == 0 else
                                                                   {k: v for k, v in method.best.items() if k != "step"}),
                      "start_validation": {k: v for k, v in method.start_validation.items() if k != "step"}, "paired_gain_over_start": paired,
                      "heldout_of_last_step": evaluate_head(final, held, torch.device("cpu"), noise)} if val is not None else {"step": result.step, "by": "last step"}),
            "data": info, "rater": recipe.rater, "steps": recipe.steps, "job": getattr(reporter, "job_id", None)}
    if val is not None:
        kept_val = card["kept"]["validation"]
        reporter.log(f"kept the head of step {kept_step} ({by}; validation loss {kept_val['loss']:.3f}, accuracy {kept_val['accuracy']:.3f}); "
                     f"the last step's held-out accuracy was {card['kept']['heldout_of_last_step']['accuracy']:.3f}")
    name = recipe.name or f"reward-{getattr(reporter, 'job_id', 0)}"
    folder = save_reward(head, project.root / "models" / name, card)
    with project.transaction():
        model_id = int(project.db["models"].insert({"kind": "reward", "name": name, "path": str(folder.relative_to(project.root)), "parent_id": None,
                                                    "job_id": getattr(reporter, "job_id", None), "card": json.dumps(card)}).last_pk)
    reporter.log(f"saved reward model #{model_id} to {folder.relative_to(project.root)}: held-out accuracy {last.get('accuracy', float('nan')):.3f} "
                 f"on {info['heldout_judgements']} judgements (chance 0.5)")
    return {"state": "done", "step": result.step, "model_id": model_id, "path": str(folder.relative_to(project.root)), "heldout": last, **info}
