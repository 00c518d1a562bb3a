"""pytest-benchmark timings of the key attention calls: one call per important backend at the bpmt-fixed shape
(B256 sequences x 5 parts, N60, H8, D32, bf16), forward and forward + backward.

    pytest benchmarks/ --benchmark-only                     # on a CUDA machine
    BPMT_BENCH_CPU=1 pytest benchmarks/ --benchmark-only    # CPU, tiny shape: checks this file, not the kernels

Each test first passes the same correctness gate as `bpmt-fast bench` (so a fast wrong kernel fails instead of
winning), then times the call with the GPU synchronised inside the timed callable: pytest-benchmark reads the
host clock, which would otherwise stop when the launch returns. `make test` does not collect this folder.
"""
import os

import pytest
import torch

from bpmt_fast.attention import BACKENDS
from bpmt_fast.bench.attention_bench import CaseInputs, analytic_cost, describe, run_gate, timed_function
from bpmt_fast.attention.triton import runs_interpreted
from bpmt_fast.bench.shapes import AttentionCase
from bpmt_fast.bench.timing import synchronize

IMPORTANT = ["math", "sdpa", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "flex", "flash-attn", "xformers", "triton",
             "flow", "flow-triton"]
CPU_OPT_IN = "BPMT_BENCH_CPU"


@pytest.fixture(scope="module")
def setup():
    """(device, dtype, case): the real shape on CUDA; on CPU a tiny one, and only when asked for."""
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16, AttentionCase("B256x5 N60 H8 D32", 256 * 5, 60, 60, 8, 32)
    if os.environ.get(CPU_OPT_IN) != "1":
        pytest.skip(f"CPU: GPU kernel timings are meaningless here (set {CPU_OPT_IN}=1 to run at a tiny shape)")
    return torch.device("cpu"), torch.float32, AttentionCase("B2x5 N60 H8 D32", 2 * 5, 60, 60, 8, 32)


@pytest.mark.parametrize("direction", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("name", IMPORTANT)
def test_attention_call(benchmark, setup, name, direction):
    device, dtype, case = setup
    if runs_interpreted(BACKENDS[name], device.type):
        pytest.skip(f"{name}: runs only in the Triton interpreter on CPU")
    reasons = BACKENDS[name].not_supported_reasons(describe(case, device, dtype, direction))
    if reasons:
        pytest.skip(f"{name}: " + "; ".join(reasons))

    data = CaseInputs(case, device, dtype)
    gate = run_gate(name, data, with_grad=direction == "fwd+bwd")
    assert gate["passed"], gate["reason"]
    call = timed_function(name, data, direction)

    def synchronised_call():
        call()
        synchronize(device)

    flops, moved = analytic_cost(case, direction, data.q.element_size())
    benchmark.group = f"{case.name} {direction}"
    benchmark.extra_info.update(backend=name, direction=direction, case=case.name, dtype=str(dtype), flops=flops,
                                min_bytes=moved, gate=gate["gate"])
    benchmark.pedantic(synchronised_call, warmup_rounds=5, rounds=100 if device.type == "cuda" else 10, iterations=1)
