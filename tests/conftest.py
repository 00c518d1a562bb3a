import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_env(monkeypatch):
    """Every test starts from the same seed and without a process-wide backend choice."""
    monkeypatch.delenv("BPMT_ATTN_BACKEND", raising=False)
    torch.manual_seed(0)
