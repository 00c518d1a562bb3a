import os

import pytest
import torch

# Triton kernels run on CPU only in the interpreter; triton.jit reads this when a kernel module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seed_and_env(monkeypatch):
    """Every test starts from the same seed and without a process-wide backend choice."""
    monkeypatch.delenv("BPMT_ATTN_BACKEND", raising=False)
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for a module of tiny tensors: on a small, shared CPU box threads cost more than they
    save. Use with `pytestmark = pytest.mark.usefixtures("single_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
