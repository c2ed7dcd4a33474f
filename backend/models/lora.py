"""LoRA adapters on any family, through peft (diffusers' ``add_adapter``), and the frozen reference
that comes free with them: the same network with its adapters switched off.

A LoRA run trains and checkpoints only the adapter weights (``Trainer`` saves modules declared
``saved="trainable"`` through ``TrainableOnly``), keeps its EMA of those weights only
(``AdapterEma``), and writes the adapter in the diffusers LoRA format (``save_lora_adapter``), so
``load_lora_adapter`` on a stock diffusers model of the family reads it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from .family import Family

ADAPTER = "default"
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"


def base_dtype_for(choice: str, family: Family) -> torch.dtype | None:
    """The dtype a LoRA run keeps its frozen network in: 'bfloat16' halves the frozen weights (a real
    model's 12 B FLUX transformer is 48 GB in float32, 24 GB in bf16); 'auto' takes it for a real
    family on a CUDA device with bf16, float32 everywhere else. None = leave the network as it is."""
    if choice == "bfloat16":
        return torch.bfloat16
    if choice == "auto" and family.stock and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def add_lora(net: torch.nn.Module, family: Family, rank: int = 8, alpha: float | None = None, dropout: float = 0.0,
             targets: list[str] | None = None, base_dtype: torch.dtype | None = None) -> torch.nn.Module:
    """Freeze ``net`` and add a LoRA adapter (W = W0 + alpha / r B A, B = 0 at start) on the family's
    declared targets; only the adapter trains. With ``base_dtype`` the frozen weights are cast to it
    and the adapter stays in float32 (its updates are too small for bf16); such a network runs under
    bf16 autocast (the run's precision is bf16, and the sampler autocasts a bf16 network)."""
    from peft import LoraConfig

    net.requires_grad_(False)
    if base_dtype is not None:
        net.to(base_dtype)
    config = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, lora_dropout=dropout, init_lora_weights=True,
                        target_modules=targets or family.lora_targets())
    net.add_adapter(config, adapter_name=ADAPTER)
    trainable = [n for n, p in net.named_parameters() if p.requires_grad]
    if base_dtype is not None:
        for p in net.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    if not trainable:
        raise ValueError(f"LoRA found none of {config.target_modules} in the {family.name} network")
    return net


def adapter_parameters(net: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in net.named_parameters() if "lora_" in n}


@contextmanager
def adapters_disabled(net: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The frozen reference of a LoRA run: the base network, adapters off (no second copy in memory)."""
    inner = getattr(net, "module", net)
    inner.disable_adapters()
    try:
        yield net
    finally:
        inner.enable_adapters()


def save_lora(net: torch.nn.Module, folder: Path, family: Family | None = None) -> Path:
    """The adapter in the diffusers LoRA format (``pytorch_lora_weights.safetensors`` with its config in
    the metadata). A stock family's adapter is written by its pipeline's ``save_lora_weights`` (keys
    under ``transformer.``), the file ``pipe.load_lora_weights`` and other diffusers-based tools read;
    an embedded family's by the network's ``save_lora_adapter``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    inner = getattr(net, "module", net)
    if family is not None and family.stock:
        from peft.utils import get_peft_model_state_dict

        family.pipeline_class.save_lora_weights(str(folder), transformer_lora_layers=get_peft_model_state_dict(inner, adapter_name=ADAPTER),
                                                transformer_lora_adapter_metadata=inner.peft_config[ADAPTER].to_dict(), safe_serialization=True)
    else:
        inner.save_lora_adapter(str(folder), adapter_name=ADAPTER, safe_serialization=True)
    return folder / LORA_WEIGHTS


def is_adapter_folder(folder: Path) -> bool:
    """A folder holding a LoRA adapter in the diffusers format (a personalization, an align run's ``lora/``)."""
    return (Path(folder) / LORA_WEIGHTS).exists()


def load_adapters(net: torch.nn.Module, folders: list[Path], scales: list[float] | float = 1.0) -> list[str]:
    """Load diffusers-format adapters onto ``net`` with stock diffusers calls (``load_lora_adapter``,
    alpha from the file's metadata) and activate them all at ``scales``; returns their adapter names.
    Safetensors only: nothing is unpickled."""
    names = []
    for i, folder in enumerate(folders):
        folder = Path(folder)
        if not is_adapter_folder(folder):
            raise FileNotFoundError(f"{folder} holds no LoRA adapter ({LORA_WEIGHTS} missing)")
        name = f"adapter_{i}"
        net.load_lora_adapter(str(folder), weight_name=LORA_WEIGHTS, adapter_name=name, prefix=_key_prefix(folder / LORA_WEIGHTS),
                              use_safetensors=True)
        names.append(name)
    if names:
        set_adapter_scales(net, names, scales)
    return names


def _key_prefix(weights: Path) -> str | None:
    """'transformer' when the file's keys sit under it (a pipeline-format adapter), else None."""
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        keys = list(f.keys())
    return "transformer" if keys and all(k.startswith("transformer.") for k in keys) else None


def set_adapter_scales(net: torch.nn.Module, names: list[str], scales: list[float] | float) -> None:
    """Activate ``names`` with their LoRA scales (0 = the base, 1 = as trained)."""
    weights = [float(scales)] * len(names) if isinstance(scales, (int, float)) else [float(s) for s in scales]
    net.set_adapters(names, weights=weights)


def merge_adapters(net: torch.nn.Module) -> torch.nn.Module:
    """Fold every loaded adapter into the weights at its current scale and remove the adapter layers."""
    net.fuse_lora()
    net.unload_lora()
    return net
