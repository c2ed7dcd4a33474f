"""The embedded convolutional family: diffusers' ``UNet2DConditionModel`` (the SD 1.x / SDXL block
structure) trained as a flow-matching velocity network.

Why it is here: a patch-4 MMDiT paints each 16 px tile on its own and an undertrained one draws
fragments; a UNet sees every latent pixel with the same kernels at several scales, which suits a
world of small shapes. The text reaches it twice, as in SDXL: cross-attention to the MiniLM token
states (with the padding masked) and the pooled vector added to the timestep embedding.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import UNet2DConditionModel

from .protocol import Family, PromptEmbeds, net_config, register_family

# block widths, which levels have cross-attention, ResNet layers per level
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"channels": (32, 64), "attention": (False, True), "layers": 1},
    "small": {"channels": (32, 64, 128), "attention": (False, True, True), "layers": 1},
    "base": {"channels": (64, 128, 128), "attention": (False, True, True), "layers": 1},
}
HEAD_DIM = 32


def build_unet(preset: str = "small", *, text_dim: int = 384, latent_channels: int = 4, channels: list[int] | None = None,
               layers: int | None = None, head_dim: int | None = None) -> UNet2DConditionModel:
    p = PRESETS[preset]
    widths = list(channels or p["channels"])
    attention = list(p["attention"])
    attention = (attention + [True] * len(widths))[: len(widths)] if len(widths) >= len(attention) else attention[: len(widths)]
    hd = head_dim or HEAD_DIM
    if any(w % hd for w in widths) or any(w % 8 for w in widths):
        raise ValueError(f"UNet widths {widths} must be multiples of the head width {hd} and of 8 (group norm)")
    down = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention]
    up = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)]
    return UNet2DConditionModel(
        sample_size=16, in_channels=latent_channels, out_channels=latent_channels,
        block_out_channels=widths, down_block_types=down, up_block_types=up, layers_per_block=layers or p["layers"],
        cross_attention_dim=text_dim, attention_head_dim=[w // hd for w in widths],  # diffusers' name: heads per level
        norm_num_groups=8, class_embed_type="projection", projection_class_embeddings_input_dim=text_dim,
    )


class EmbeddedUNet(Family):
    name = "unet"
    subfolder = "unet"
    model_class = UNet2DConditionModel
    label = "UNet (SD 1.x / SDXL-style convolutional)"

    def build(self, *, preset: str, text_dim: int, latent_channels: int, layers: int | None = None, head_dim: int | None = None,
              channels: list[int] | None = None, **_: Any) -> torch.nn.Module:
        return build_unet(preset, text_dim=text_dim, latent_channels=latent_channels, channels=channels, layers=layers, head_dim=head_dim)

    def velocity(self, net: torch.nn.Module, x_t: torch.Tensor, t: torch.Tensor, prompt: PromptEmbeds) -> torch.Tensor:
        prompt = prompt.trimmed()
        mask = prompt.key_mask()
        return net(x_t, t * 1000.0, encoder_hidden_states=prompt.states, class_labels=prompt.pooled,
                   encoder_attention_mask=None if mask is None else mask.to(x_t.device), return_dict=False)[0]

    def patch(self, net: torch.nn.Module) -> int:
        return 1

    def blocks(self, net: torch.nn.Module) -> list[torch.nn.Module]:
        return [*net.down_blocks, net.mid_block, *net.up_blocks]

    def repa_point(self, net: torch.nn.Module, block: int) -> tuple[torch.nn.Module, int]:
        downs = getattr(net, "module", net).down_blocks
        if not 0 <= block < len(downs):
            raise ValueError(f"repa.block {block} is out of range: the UNet has {len(downs)} down blocks")
        return downs[block], int(net_config(net).block_out_channels[block])

    def repa_tokens(self, output: Any) -> torch.Tensor:
        features = output[0]  # (hidden_states, residuals): the block's output map (B, C, h, w)
        return features.flatten(2).transpose(1, 2)

    def repa_grid(self, net: torch.nn.Module, block: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
        levels = len(net_config(net).block_out_channels)
        down = 2 ** min(block + 1, levels - 1)  # every down block but the last halves the grid
        return latent_hw[0] // down, latent_hw[1] // down

    def lora_targets(self) -> list[str]:
        return ["to_q", "to_k", "to_v", "to_out.0"]


register_family(EmbeddedUNet())
