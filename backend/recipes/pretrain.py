"""Recipe for flow-matching pretraining with deliberate signal allocation (METHODS.md §1)."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, model_validator

from .base import RecipeBase, Section
from .sampling import SamplerSettings


class DataSection(Section):
    dataset: str = Field("shapesworld", min_length=1, description="Dataset name inside the project")
    view: str = Field("curated", description="'curated' (flagged items left out) or 'all'")
    caption_dropout: float = Field(0.1, ge=0.0, le=1.0, description="Fraction of captions replaced by the empty prompt (for CFG)")
    max_upscale: float | None = Field(
        None, ge=1.0, description="Largest factor an image may be enlarged by to fill a bucket (1 = never enlarge; empty = no limit). "
        "An image too small for every bucket is left out, so the model does not learn blur from upscaled images"
    )


# UNet presets' level count (backend/models/unet.py): sides must halve that many times less one
UNET_LEVELS = {"tiny": 2, "small": 3, "base": 3}


STOCK_FAMILIES = ("sd3", "flux")


class ModelSection(Section):
    family: Literal["mmdit", "unet", "sd3", "flux"] = Field(
        "mmdit", description="Network family: 'mmdit' is an SD3-style transformer (scales to real models; at patch 4 a small one paints "
        "16 px tiles on its own), 'unet' the SD 1.x/SDXL convolutional structure (sees every latent pixel with the same kernels; "
        "draws small shapes sooner on a CPU); 'sd3' (SD3/SD3.5) and 'flux' (FLUX.1) continue training a real model from its local "
        "diffusers folder (model.init), on a GPU"
    )
    init: str = Field("", validation_alias=AliasChoices("init", "path"),
                      description="Start from this model folder (diffusers layout; for 'sd3'/'flux' the stock release folder); empty = random init")
    size: Literal["tiny", "small", "base"] = Field("small", description="Preset of the family's size (ignored when init is set)")
    layers: int | None = Field(None, ge=1, le=64, description="Override the preset: MMDiT blocks, or UNet ResNet layers per level")
    heads: int | None = Field(None, ge=1, le=64, description="Override the preset's attention heads (MMDiT)")
    head_dim: int | None = Field(None, ge=8, le=256, description="Override the preset's head width")
    patch: Literal[1, 2, 4] = Field(2, description="MMDiT: latent pixels per token side (1 = four times the tokens of 2)")
    channels: list[int] | None = Field(None, min_length=1, max_length=5, description="UNet: widths of its levels, e.g. [32, 64, 128]")
    text_encoder: str = Field("", description="Local text-encoder folder; empty = the embedded MiniLM")
    vae: str = Field("", description="Local VAE folder; empty = the embedded ShapesWorld VAE")

    @model_validator(mode="before")
    @classmethod
    def _family_names(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("family") == "embedded":  # recipes written before the UNet family
            data = {**data, "family": "mmdit"}
        return data

    @model_validator(mode="after")
    def _family_fields(self) -> ModelSection:
        if self.family in STOCK_FAMILIES:
            if not self.init:
                raise ValueError(f"family '{self.family}' continues a real model: set model.init to its local diffusers folder "
                                 "(nothing is downloaded)")
            sized = [k for k in ("layers", "heads", "head_dim", "channels") if getattr(self, k) is not None]
            sized += [k for k in ("text_encoder", "vae") if getattr(self, k)]
            if sized:
                raise ValueError(f"{', '.join(sized)} cannot be set for family '{self.family}': the folder in model.init holds its network, "
                                 "VAE and text encoders")
            return self
        if self.family == "unet" and self.heads is not None:
            raise ValueError("'heads' applies to the MMDiT family; a UNet's heads follow its widths (channels / head_dim)")
        if self.family == "mmdit" and self.channels is not None:
            raise ValueError("'channels' applies to the UNet family; size an MMDiT with layers, heads and head_dim")
        return self

    @property
    def latent_unit(self) -> int:
        """Latent pixels a side must be a multiple of: the MMDiT's patch, or 2^(levels-1) for a UNet."""
        if self.family == "unet":
            return 2 ** ((len(self.channels) if self.channels else UNET_LEVELS[self.size]) - 1)
        return self.patch


class TimestepDensity(Section):
    kind: Literal["uniform", "logit_normal", "mode", "cosmap"] = Field("logit_normal", description="Density of training t")
    m: float = Field(0.0, ge=-5, le=5, description="logit-normal location (m > 0 moves mass toward noise)")
    s: float = Field(1.0, gt=0, le=5, description="logit-normal scale")
    mode_scale: float = Field(1.29, ge=-1, le=1.81, description="'mode' density scale s")


class ShiftSection(Section):
    kind: Literal["none", "fixed", "per_bucket", "dynamic"] = Field(
        "per_bucket", description="none; fixed alpha; per bucket alpha = sqrt(m/n) vs base; FLUX-style dynamic"
    )
    alpha: float = Field(1.0, gt=0, le=20, description="Shift for kind = 'fixed'")
    base_resolution: int = Field(32, ge=8, description="Side (px) of the square image whose alpha is 1 for 'per_bucket'")
    base_shift: float = Field(0.5, description="'dynamic': mu at base_tokens")
    max_shift: float = Field(1.15, description="'dynamic': mu at max_tokens")
    base_tokens: int = Field(256, ge=1, description="'dynamic': token count for base_shift")
    max_tokens: int = Field(4096, ge=2, description="'dynamic': token count for max_shift")


class AllocationSection(Section):
    timesteps: TimestepDensity = Field(default_factory=TimestepDensity)
    shift: ShiftSection = Field(default_factory=ShiftSection)
    loss_bins: int = Field(10, ge=1, le=100, description="Loss is logged per bin of t, this many bins")


class StageSection(Section):
    name: str = Field("main", description="Stage name shown in the timeline")
    steps: int = Field(1000, ge=1, description="Optimizer steps spent in this stage")
    buckets: list[tuple[int, int]] = Field(
        default_factory=lambda: [(32, 32)], min_length=1, description="Allowed (width, height) buckets in pixels"
    )
    complexity: tuple[int, int] = Field((1, 4), description="Caption complexity range (1 = 'a red circle' ... 4)")
    mixture: dict[str, float] = Field(
        default_factory=dict, description="Category weights (empty = draw uniformly over items)"
    )

    @model_validator(mode="after")
    def _check(self) -> StageSection:
        lo, hi = self.complexity
        if not 1 <= lo <= hi <= 4:
            raise ValueError(f"complexity must satisfy 1 <= low <= high <= 4, got {self.complexity}")
        for w, h in self.buckets:
            if w % 8 or h % 8 or w < 16 or h < 16:
                raise ValueError(f"bucket {w}x{h}: sides must be multiples of 8 and at least 16")
        for cat, weight in self.mixture.items():
            if weight < 0:
                raise ValueError(f"mixture weight for {cat!r} is negative")
        if self.mixture and sum(self.mixture.values()) <= 0:
            raise ValueError("mixture weights sum to zero")
        return self


class RepaSection(Section):
    enabled: bool = Field(False, description="Align early image tokens to a frozen image encoder (REPA)")
    encoder: str = Field("", description="Encoder folder; empty = the embedded ShapesWorld encoder")
    block: int = Field(1, ge=0, description="Index of the MMDiT block whose image tokens are aligned")
    weight: float = Field(0.5, ge=0, description="lambda in L = L_v + lambda * L_REPA")
    projector_dim: int = Field(256, ge=8, description="Hidden width of the MLP projector")
    projector_layers: int = Field(3, ge=1, le=6, description="Layers of the MLP projector")
    until_step: int | None = Field(None, ge=1, description="Switch REPA off after this step (empty = never)")


class OptimSection(Section):
    batch_size: int = Field(32, ge=1, description="Images per optimizer step per process (before accumulation)")
    grad_accum: int = Field(1, ge=1, description="Micro-batches accumulated per optimizer step")
    lr: float = Field(1e-3, gt=0, le=1, description="Peak learning rate (AdamW)")
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = Field((0.9, 0.99))
    warmup: int = Field(100, ge=0, description="Linear warm-up steps")
    schedule: Literal["constant", "cosine", "linear"] = Field("cosine", description="Decay after warm-up")
    clip: float = Field(1.0, gt=0, description="Gradient norm clip")
    ema: float = Field(0.999, ge=0, lt=1, description="EMA decay of the weights used for sampling (0 = off)")
    precision: Literal["auto", "no", "bf16", "fp16"] = Field("auto", description="Mixed precision; auto = bf16 on capable GPUs")
    eight_bit: bool = Field(False, description="AdamW's two moments in 8 bits (bitsandbytes, CUDA): 2 bytes per trained parameter instead "
                            "of 8, for full fine-tuning of a real model on one GPU")
    seed: int = Field(0, description="Seed for weights, data order and noise")


class ScheduleSection(Section):
    log_every: int = Field(10, ge=1, description="Metrics every N steps")
    checkpoint_every: int = Field(500, ge=1, description="Resumable checkpoint every N steps")
    sample_every: int = Field(250, ge=1, description="Preview grid every N steps")
    eval_every: int = Field(0, ge=0, description="ShapesEval every N steps (0 = at the end only)")
    eval_images: int = Field(64, ge=1, description="Images per ShapesEval")


class PreviewSection(Section):
    prompts: list[str] = Field(
        default_factory=lambda: ["a red circle", "a blue square", "two green triangles", "a yellow star on a striped purple background"],
        description="Fixed prompts of the preview grid",
    )
    seeds: list[int] = Field(default_factory=lambda: [0, 1], description="Fixed seeds of the preview grid")
    sampler: SamplerSettings = Field(default_factory=lambda: SamplerSettings(steps=20, cfg=3.0, width=32, height=32))


class ComputeSection(Section):
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="Where the job runs")
    processes: int = Field(1, ge=1, description="Processes per machine through accelerate launch (data parallel, DDP): one per GPU")
    machines: int = Field(1, ge=1, le=1024, description="Machines taking part (each runs the same recipe with its own machine_rank)")
    machine_rank: int = Field(0, ge=0, description="This machine's rank among them (0 = the main one)")
    main_address: str = Field("", description="Address of the main machine (machine_rank 0) the others reach; needed when machines > 1")
    main_port: int = Field(29500, ge=1, le=65535, description="Port on the main machine for the processes' rendezvous")
    threads: int = Field(0, ge=0, description="CPU threads per process (0 = all cores / processes)")
    compile: bool = Field(False, description="torch.compile the network's blocks one by one (GPU)")
    gradient_checkpointing: bool = Field(False, description="Keep only each block's input and recompute the rest in the backward pass: "
                                         "activation memory falls to a fraction for about a third more compute")

    @model_validator(mode="after")
    def _machines(self) -> ComputeSection:
        if self.machines > 1 and not self.main_address.strip():
            raise ValueError(f"{self.machines} machines need main_address: the address of machine_rank 0 that the others reach")
        if self.machine_rank >= self.machines:
            raise ValueError(f"machine_rank {self.machine_rank} is not below machines = {self.machines}")
        return self


class PretrainRecipe(RecipeBase):
    """Train a flow-matching MMDiT, deciding where the training signal goes."""

    kind: Literal["pretrain"] = "pretrain"
    data: DataSection = Field(default_factory=DataSection)
    model: ModelSection = Field(default_factory=ModelSection)
    allocation: AllocationSection = Field(default_factory=AllocationSection)
    curriculum: list[StageSection] = Field(default_factory=lambda: [StageSection()], min_length=1)
    repa: RepaSection = Field(default_factory=RepaSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    schedule: ScheduleSection = Field(default_factory=ScheduleSection)
    preview: PreviewSection = Field(default_factory=PreviewSection)
    compute: ComputeSection = Field(default_factory=ComputeSection)

    @model_validator(mode="after")
    def _sizes_fit_the_tokens(self) -> PretrainRecipe:
        """With the embedded VAE (4x) a side must split into whole tokens (MMDiT: a multiple of 4 x
        patch) or halve down the UNet's levels (a multiple of 4 x 2^(levels-1)). Caught here, with
        the stage named, rather than as a shape error inside the network."""
        if self.model.vae or self.model.init:
            return self
        unit = 4 * self.model.latent_unit
        why = (f"with patch {self.model.patch} sides must be multiples of {unit}" if self.model.family == "mmdit"
               else f"a UNet of {self.model.latent_unit.bit_length()} levels needs sides that are multiples of {unit}")
        for k, stage in enumerate(self.curriculum):
            for w, h in stage.buckets:
                if w % unit or h % unit:
                    raise ValueError(f"curriculum[{k}] ({stage.name}): bucket {w}x{h} does not fit the network; {why}")
        sw, sh = self.preview.sampler.width, self.preview.sampler.height
        if sw % unit or sh % unit:
            raise ValueError(f"preview.sampler: {sw}x{sh} does not fit the network; {why}")
        return self

    @model_validator(mode="after")
    def _stock_shift(self) -> PretrainRecipe:
        """A stock pipeline's scheduler knows a fixed or a dynamic shift; a per-bucket rule could be
        trained but not saved where stock diffusers would sample with it."""
        if self.model.family in STOCK_FAMILIES and self.allocation.shift.kind == "per_bucket":
            raise ValueError(f"allocation.shift.kind = 'per_bucket' cannot be written into a stock {self.model.family.upper()} scheduler; "
                             "use 'fixed' (SD3/SD3.5 ship alpha = 3) or 'dynamic' (FLUX.1's rule)")
        return self

    @property
    def total_steps(self) -> int:
        return sum(stage.steps for stage in self.curriculum)

    @property
    def eval_size(self) -> tuple[int, int]:
        """Where ShapesEval renders and the Playground opens this run's checkpoints: the last
        stage's largest square bucket (or its first bucket)."""
        buckets = [(int(w), int(h)) for w, h in self.curriculum[-1].buckets]
        squares = [b for b in buckets if b[0] == b[1]]
        return max(squares) if squares else buckets[0]
