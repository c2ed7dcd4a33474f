"""Tiny random SD3 and FLUX.1 folders in the stock diffusers layout, built offline.

Real SD3.5 / FLUX.1 weights are gigabytes and come from the user's disk; the tests, CI and a
CPU dry run of the GPU bench need folders with the same parts (a transformer, a 16- or 4-channel
VAE, two CLIP encoders and a T5, their tokenizers, a flow-matching scheduler, ``model_index.json``)
that the stock pipelines load, only a few layers wide. diffusers' own tests fetch such folders
from the hub; nothing may be fetched here, so they are built from configs with random weights,
and the tokenizers from a vocabulary written here (byte-level CLIP BPE without merges, a T5
unigram over ShapesWorld's words), through transformers' own tokenizer classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

WORDS = ("a an the one two three four five six seven eight nine ten small medium large big tiny red green blue yellow purple orange white "
         "black grey gray pink brown circle circles square squares triangle triangles star stars hexagon hexagons cross crosses diamond "
         "diamonds on in of and with above below left right of background striped dotted plain gradient top bottom middle corner "
         "sks dog photo picture shape shapes").split()


def _clip_tokenizer():
    """CLIP's byte-level BPE with no merges: every character is a token (enough for random weights)."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    chars = ByteLevel.alphabet()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _t5_tokenizer():
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + w, -1.0 - i * 1e-3) for i, w in enumerate(dict.fromkeys(WORDS))]
    pieces += [(c, -20.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    return T5TokenizerFast(vocab=pieces, extra_ids=0)


def _clip_encoder(vocab: int, hidden: int, projection: bool, seed: int, layers: int = 2):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=2,
                            max_position_embeddings=77, projection_dim=hidden, bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def _t5_encoder(vocab: int, d_model: int, seed: int, layers: int = 2):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(vocab_size=vocab, d_model=d_model, d_kv=16, d_ff=2 * d_model, num_layers=layers, num_heads=2, relative_attention_num_buckets=8,
                      is_encoder_decoder=False, use_cache=False)
    return T5EncoderModel(config).eval()


def _vae(latent_channels: int, levels: int, seed: int, widths: tuple[int, ...] | None = None):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    widths = widths or tuple([8] + [16] * (levels - 1))
    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=widths, down_block_types=("DownEncoderBlock2D",) * levels,
                         up_block_types=("UpDecoderBlock2D",) * levels, layers_per_block=1, latent_channels=latent_channels,
                         norm_num_groups=4 if widths[0] < 32 else 32, sample_size=32, use_quant_conv=False, use_post_quant_conv=False,
                         shift_factor=0.06, scaling_factor=1.5).eval()


def build_tiny_folder(folder: str | Path, family: Literal["sd3", "flux"], *, seed: int = 0, layers: int = 2,
                      dtype: torch.dtype = torch.float32, shape: Literal["tiny", "sd35m"] = "tiny") -> Path:
    """Write a random ``family`` model (a few layers wide) that the stock pipeline loads; returns the folder.
    The VAE halves twice (4 px per latent pixel) so 32-64 px images make a handful of tokens.
    ``shape="sd35m"`` (SD3 only, for the GPU bench) builds the transformer at SD3.5-Medium's size
    (2.2 B parameters, 24 blocks of width 1536, 13 dual-attention blocks), SD3's 8x VAE and text
    encoders of the real widths (CLIP-L 768, CLIP-G 1280, T5 4096) with one layer each."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    clip_tok, t5_tok = _clip_tokenizer(), _t5_tokenizer()
    clip_vocab, t5_vocab = len(clip_tok), len(t5_tok)
    if family == "sd3" and shape == "sd35m":
        from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
                                            num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                                            pooled_projection_dim=2048, pos_embed_max_size=384, qk_norm="rms_norm", dual_attention_layers=tuple(range(13)))
        pipe = StableDiffusion3Pipeline(
            transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_vae(16, 4, seed + 1, (128, 256, 512, 512)),
            text_encoder=_clip_encoder(clip_vocab, 768, True, seed + 2, layers=1), tokenizer=clip_tok,
            text_encoder_2=_clip_encoder(clip_vocab, 1280, True, seed + 3, layers=1), tokenizer_2=_clip_tokenizer(),
            text_encoder_3=_t5_encoder(t5_vocab, 4096, seed + 4, layers=1), tokenizer_3=t5_tok,
        )
    elif family == "sd3":
        from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

        clip_hidden, t5_dim = 32, 64  # CLIP-L and CLIP-G states are joined (64) and padded to T5's width, as in SD3
        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=16, out_channels=16, num_layers=layers, attention_head_dim=16,
                                            num_attention_heads=2, joint_attention_dim=t5_dim, caption_projection_dim=32,
                                            pooled_projection_dim=2 * clip_hidden, pos_embed_max_size=32, qk_norm="rms_norm")
        pipe = StableDiffusion3Pipeline(
            transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_vae(16, 3, seed + 1),
            text_encoder=_clip_encoder(clip_vocab, clip_hidden, True, seed + 2), tokenizer=clip_tok,
            text_encoder_2=_clip_encoder(clip_vocab, clip_hidden, True, seed + 3), tokenizer_2=_clip_tokenizer(),
            text_encoder_3=_t5_encoder(t5_vocab, t5_dim, seed + 4), tokenizer_3=t5_tok,
        )
    elif family == "flux":
        from diffusers import FluxPipeline, FluxTransformer2DModel

        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, out_channels=16, num_layers=layers, num_single_layers=layers,
                                             attention_head_dim=16, num_attention_heads=2, joint_attention_dim=64, pooled_projection_dim=32,
                                             guidance_embeds=True, axes_dims_rope=(4, 6, 6))
        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                    base_image_seq_len=256, max_image_seq_len=4096)
        pipe = FluxPipeline(transformer=transformer, scheduler=scheduler, vae=_vae(4, 3, seed + 1),
                            text_encoder=_clip_encoder(clip_vocab, 32, False, seed + 2), tokenizer=clip_tok,
                            text_encoder_2=_t5_encoder(t5_vocab, 64, seed + 4), tokenizer_2=t5_tok)
    else:
        raise ValueError(f"no tiny folder for family {family!r}; one of 'sd3', 'flux'")
    pipe.to(dtype)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder
