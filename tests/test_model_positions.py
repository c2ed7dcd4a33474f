"""The embedded MMDiT must tell its tokens apart: SD3's sin-cos table is scaled by sample_size.

With the old config (sample_size 16) every token of an 8x8 grid had nearly the same position
(cosine > 0.99 between opposite corners), and the demo model drew scattered blobs."""

from __future__ import annotations

import pytest
import torch

from backend.models.family import build_transformer


@pytest.mark.parametrize("patch", [2, 4])
def test_positions_differ_across_the_token_grid(patch: int):
    net = build_transformer("tiny", latent_channels=4, patch=patch)
    side = 8 * patch  # latent pixels for an 8x8 token grid (128 px at patch 4)
    table = torch.nn.functional.normalize(net.pos_embed.cropped_pos_embed(side, side)[0], dim=-1)
    cos = table @ table.T
    assert table.shape[0] == 64
    assert cos[0, 1] < 0.99  # neighbours
    assert cos[0, 63] < 0.8  # opposite corners
    # one position per token whatever the patch: the table advances one unit per token
    other = build_transformer("tiny", latent_channels=4, patch=2 if patch == 4 else 4)
    other_side = 8 * other.config.patch_size
    assert torch.allclose(net.pos_embed.cropped_pos_embed(side, side), other.pos_embed.cropped_pos_embed(other_side, other_side))
