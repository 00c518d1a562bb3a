"""Our Triton backends train every BPMT stage and follow their references step for step.

`triton` is exact softmax attention: its losses must follow `math` within float32 rounding. Under the Triton
interpreter (CPU) the model is tiny: the interpreter runs every kernel program in Python.
"""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from bpmt_fast.attention import BACKENDS, AttentionInputs
from bpmt_fast.model import BPMT, ModelConfig
from bpmt_fast.train.losses import masked_reconstruction_loss

TINY = ModelConfig(dim=16, heads=1, part_layers=1, pair_layers=1, embedding_dim=8, num_classes=2, dropout=0.0)
STEPS = 2
# backend under test -> the reference it must follow
PAIRS = {"triton": "math"}


def losses_per_step(backend: str) -> list[float]:
    generator = torch.Generator().manual_seed(0)
    poses = torch.randn(2, 9, 17, 3, generator=generator)
    lengths = torch.tensor([9, 5])
    frame_mask = torch.rand(2, 5, 9, generator=generator) < 0.4
    labels = torch.tensor([0, 1])
    torch.manual_seed(0)
    model = BPMT(dataclasses.replace(TINY, attn_backend=backend))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for stage in ("part", "pair", "finetune"):
        for _ in range(STEPS):
            out = model(poses, lengths, None if stage == "finetune" else frame_mask, stage=stage)
            if stage == "finetune":
                loss = F.cross_entropy(out["training_feat"]["logits"], labels)
            else:
                loss = masked_reconstruction_loss(out["training_feat"]["reconstruction"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return losses


@pytest.mark.parametrize("backend", list(PAIRS))
def test_backend_follows_its_reference_step_for_step(backend):
    probe = torch.zeros(1, 1, 1, 16, requires_grad=True)
    reasons = BACKENDS[backend].not_supported_reasons(AttentionInputs.describe(probe, probe, probe, masked=True))
    if reasons:
        pytest.skip(f"{backend}: " + "; ".join(reasons))
    expected, got = losses_per_step(PAIRS[backend]), losses_per_step(backend)
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-5)
