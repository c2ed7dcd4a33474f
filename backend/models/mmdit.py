"""The embedded MMDiT family: diffusers' ``SD3Transformer2DModel`` sized for ShapesWorld.

It shares every code path with SD3/3.5 (joint attention over image and text tokens, adaLN
modulation from the timestep and the pooled prompt). Two things diffusers leaves out because it
builds SD3 to load trained weights are added here: DiT's adaLN-Zero initialisation for fresh
networks, and a key mask in joint attention so padded text tokens are never attended to
(diffusers' ``JointAttnProcessor2_0`` accepts a mask and ignores it).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers import SD3Transformer2DModel
from diffusers.models.attention_processor import Attention, JointAttnProcessor2_0

from .protocol import Family, PromptEmbeds, net_config, register_family

POS_GRID = 64  # tokens per side the positional table covers (1024 px at patch 4, 512 px at patch 2)

PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"layers": 2, "heads": 2, "head_dim": 32},
    "small": {"layers": 4, "heads": 4, "head_dim": 32},
    "base": {"layers": 6, "heads": 6, "head_dim": 32},
}


def build_transformer(preset: str = "small", *, text_dim: int = 384, pooled_dim: int = 384, latent_channels: int = 4,
                      layers: int | None = None, heads: int | None = None, head_dim: int | None = None, patch: int = 2) -> SD3Transformer2DModel:
    """An MMDiT from diffusers' ``SD3Transformer2DModel`` config, sized for the embedded world."""
    p = dict(PRESETS[preset])
    p.update({k: v for k, v in {"layers": layers, "heads": heads, "head_dim": head_dim}.items() if v})
    hidden = p["heads"] * p["head_dim"]
    # SD3's sin-cos positions advance (sample_size / patch) / pos_embed_max_size per token. With
    # sample_size = pos_embed_max_size * patch they advance 1 per token, as in DiT; a small
    # sample_size (16 used to be set here) packs a whole 8x8 grid into half a radian, so every
    # token got nearly the same position (cosine > 0.99) and samples came out as scattered blobs.
    net = SD3Transformer2DModel(
        sample_size=POS_GRID * patch,
        patch_size=patch,
        in_channels=latent_channels,
        out_channels=latent_channels,
        num_layers=p["layers"],
        attention_head_dim=p["head_dim"],
        num_attention_heads=p["heads"],
        joint_attention_dim=text_dim,
        caption_projection_dim=hidden,
        pooled_projection_dim=pooled_dim,
        pos_embed_max_size=POS_GRID,
        qk_norm="rms_norm",
    )
    return adaln_zero_init(net)


def adaln_zero_init(net: SD3Transformer2DModel) -> SD3Transformer2DModel:
    """DiT's initialisation, which diffusers leaves out (it builds SD3 to load trained weights):
    Xavier-uniform linear layers, N(0, 0.02) timestep MLP, and zeros for every adaLN modulation
    and the output projection, so each block starts as the identity and the network as v = 0.
    The DiT paper (Peebles & Xie, 2023) found adaLN-Zero trains markedly faster
    than adaLN with ordinary init; only freshly built networks get it, loaded weights are kept."""
    for m in net.modules():
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)
    patch = net.pos_embed.proj.weight
    torch.nn.init.xavier_uniform_(patch.view(patch.shape[0], -1))
    torch.nn.init.zeros_(net.pos_embed.proj.bias)
    for lin in (net.time_text_embed.timestep_embedder.linear_1, net.time_text_embed.timestep_embedder.linear_2):
        torch.nn.init.normal_(lin.weight, std=0.02)
    modulations = [b.norm1.linear for b in net.transformer_blocks] + [b.norm1_context.linear for b in net.transformer_blocks]
    for lin in modulations + [net.norm_out.linear, net.proj_out]:
        torch.nn.init.zeros_(lin.weight)
        torch.nn.init.zeros_(lin.bias)
    return net


class MaskedJointAttnProcessor(JointAttnProcessor2_0):
    """SD3's joint attention with a key mask: ``attention_mask`` (B, N_image + N_text), True where a
    token may be attended to. Without it the image tokens attend to a caption's padding in
    training (captions are padded to the longest of the batch) but never in sampling (prompts are
    batched by length), so training and sampling would condition on different things. With no
    mask it is diffusers' own processor, so sampling keeps the fast attention kernels. Written
    here because diffusers' processor accepts a mask and ignores it."""

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> Any:
        if attention_mask is None or encoder_hidden_states is None:
            return super().__call__(attn, hidden_states, encoder_hidden_states, None, *args, **kwargs)
        b, n_image = hidden_states.shape[:2]

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

        q, k, v = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
        cq, ck, cv = heads(attn.add_q_proj(encoder_hidden_states)), heads(attn.add_k_proj(encoder_hidden_states)), heads(attn.add_v_proj(encoder_hidden_states))
        if attn.norm_q is not None:
            q, k = attn.norm_q(q), attn.norm_k(k)
        if attn.norm_added_q is not None:
            cq, ck = attn.norm_added_q(cq), attn.norm_added_k(ck)
        out = F.scaled_dot_product_attention(torch.cat([q, cq], 2), torch.cat([k, ck], 2), torch.cat([v, cv], 2),
                                             attn_mask=attention_mask[:, None, None, :].to(q.device))
        out = out.transpose(1, 2).reshape(b, -1, out.shape[1] * out.shape[-1]).to(q.dtype)
        image, text = out[:, :n_image], out[:, n_image:]
        if not attn.context_pre_only:
            text = attn.to_add_out(text)
        image = attn.to_out[1](attn.to_out[0](image))
        return image, text


def use_masked_attention(net: SD3Transformer2DModel) -> SD3Transformer2DModel:
    net.set_attn_processor(MaskedJointAttnProcessor())
    return net


class EmbeddedMMDiT(Family):
    name = "mmdit"
    subfolder = "transformer"
    model_class = SD3Transformer2DModel
    label = "MMDiT (SD3-style transformer)"

    def build(self, *, preset: str, text_dim: int, latent_channels: int, layers: int | None = None, heads: int | None = None,
              head_dim: int | None = None, patch: int = 2, **_: Any) -> torch.nn.Module:
        return use_masked_attention(build_transformer(preset, text_dim=text_dim, pooled_dim=text_dim, latent_channels=latent_channels,
                                                      layers=layers, heads=heads, head_dim=head_dim, patch=patch))

    def prepare_loaded(self, net: torch.nn.Module) -> torch.nn.Module:
        return use_masked_attention(net)

    def velocity(self, net: torch.nn.Module, x_t: torch.Tensor, t: torch.Tensor, prompt: PromptEmbeds) -> torch.Tensor:
        prompt = prompt.trimmed()
        kwargs = {}
        text_mask = prompt.key_mask()
        if text_mask is not None:  # some captions of the batch are shorter than others
            p = self.patch(net)
            n_image = (x_t.shape[-2] // p) * (x_t.shape[-1] // p)
            image = torch.ones(x_t.shape[0], n_image, dtype=torch.bool, device=x_t.device)
            kwargs["joint_attention_kwargs"] = {"attention_mask": torch.cat([image, text_mask.to(x_t.device)], 1)}
        return net(hidden_states=x_t, encoder_hidden_states=prompt.states, pooled_projections=prompt.pooled, timestep=t * 1000.0,
                   return_dict=False, **kwargs)[0]

    def patch(self, net: torch.nn.Module) -> int:
        return int(net_config(net).patch_size)

    def blocks(self, net: torch.nn.Module) -> list[torch.nn.Module]:
        return list(net.transformer_blocks)

    def repa_point(self, net: torch.nn.Module, block: int) -> tuple[torch.nn.Module, int]:
        blocks = self.blocks(net)
        if not 0 <= block < len(blocks):
            raise ValueError(f"repa.block {block} is out of range: the network has {len(blocks)} blocks")
        cfg = net_config(net)
        return blocks[block], int(cfg.num_attention_heads * cfg.attention_head_dim)

    def repa_tokens(self, output: Any) -> torch.Tensor:
        return output[1]  # (encoder_hidden_states, hidden_states): the image tokens

    def repa_grid(self, net: torch.nn.Module, block: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
        p = self.patch(net)
        return latent_hw[0] // p, latent_hw[1] // p

    def lora_targets(self) -> list[str]:
        return ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]


register_family(EmbeddedMMDiT())
