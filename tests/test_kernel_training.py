"""Our Triton backends train every BPMT stage and follow their references step for step, on CPU (in the Triton
interpreter) and, where there is one, on the GPU.

`triton` is exact softmax attention: its losses must follow `math` within float32 rounding; `flow-triton` must
follow the naive `flow` reference the same way. Under the Triton
interpreter (CPU) the model and batch (two short sequences) are tiny: the interpreter runs every kernel program in Python.
"""
import pytest
import torch

from bpmt_fast.attention import BACKENDS, AttentionInputs
from bpmt_fast.demo import synthetic_batch, train_steps
from bpmt_fast.model import BPMT, ModelConfig
from bpmt_fast.testing import TEST_DEVICES

TINY = ModelConfig(dim=16, heads=1, part_layers=1, pair_layers=1, embedding_dim=8, num_classes=2)
# backend under test -> the reference it must follow
REFERENCES = {"triton": "math", "flow-triton": "flow"}


def losses_per_step(backend: str, device: str) -> list[float]:
    batch = synthetic_batch(batch=2, frames=6, num_classes=2)
    losses = []
    for stage in ("part", "pair", "finetune"):
        train_steps(BPMT, backend, stage, 2, batch, config=TINY, losses=losses, device=device)
    return losses


# CPU ids stay "[triton]"; a GPU adds "[triton-cuda]".
@pytest.mark.parametrize("backend, device", [pytest.param(b, d, id=b if d == "cpu" else f"{b}-{d}")
                                             for d in TEST_DEVICES for b in REFERENCES])
def test_backend_follows_its_reference_step_for_step(backend, device):
    probe = torch.zeros(1, 1, 1, 16, device=device, requires_grad=True)
    reasons = BACKENDS[backend].not_supported_reasons(AttentionInputs.describe(probe, probe, probe, masked=True))
    if reasons:
        pytest.skip(f"{backend}: " + "; ".join(reasons))
    expected, got = losses_per_step(REFERENCES[backend], device), losses_per_step(backend, device)
    assert len(got) == 6 and got == pytest.approx(expected, rel=1e-4, abs=1e-5)
