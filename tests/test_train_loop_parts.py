"""Loop parts that the end-to-end runs cannot isolate: the EMA rule and regional compilation."""

from __future__ import annotations

import torch

from backend.models.mmdit import build_transformer
from backend.train.loop import Ema, compile_blocks


def test_ema_follows_the_warmup_rule_and_rereads_its_count_after_a_load():
    net = torch.nn.Linear(3, 2)
    ema = Ema(net, decay=0.9)
    expected = net.weight.detach().clone()
    for n in range(6):
        with torch.no_grad():
            net.weight.add_(1.0)
        ema.update_parameters(net)
        if n == 0:
            expected = net.weight.detach().clone()  # the first update copies
        else:
            d = min(0.9, (1 + n) / (10 + n))
            expected = d * expected + (1 - d) * net.weight.detach()
        assert torch.allclose(ema.module.weight, expected, atol=1e-6), n
    assert int(ema.n_averaged) == 6
    saved = {k: v.clone() for k, v in ema.state_dict().items()}

    other = Ema(torch.nn.Linear(3, 2), decay=0.9)
    other.update_parameters(net)  # its host count is now 1
    other.load_state_dict(saved)  # ... and must follow the loaded n_averaged (6), not its own
    with torch.no_grad():
        net.weight.add_(1.0)
    other.update_parameters(net)
    d = min(0.9, 7 / 16)
    assert torch.allclose(other.module.weight, d * saved["module.weight"] + (1 - d) * net.weight.detach(), atol=1e-6)


def test_compiled_blocks_keep_names_and_outputs():
    torch.manual_seed(0)
    net = build_transformer("tiny", latent_channels=4, patch=2)
    with torch.no_grad():  # a fresh network outputs zeros (adaLN-Zero); give it weights to compare
        for p in net.parameters():
            p.normal_(0, 0.05)
    keys = list(net.state_dict())
    x = torch.randn(2, 4, 8, 8)
    text = torch.randn(2, 5, 384)
    pooled = torch.randn(2, 384)
    t = torch.tensor([100.0, 900.0])
    with torch.no_grad():
        eager = net(hidden_states=x, encoder_hidden_states=text, pooled_projections=pooled, timestep=t, return_dict=False)[0]
    assert compile_blocks(net, backend="eager") == len(net.transformer_blocks) == 2
    assert all(b._compiled_call_impl is not None for b in net.transformer_blocks)
    assert list(net.state_dict()) == keys  # checkpoints and EMA see the same parameter names
    with torch.no_grad():
        compiled = net(hidden_states=x, encoder_hidden_states=text, pooled_projections=pooled, timestep=t, return_dict=False)[0]
    assert torch.allclose(eager, compiled, atol=1e-5)
    assert eager.abs().max() > 0
