"""Every backend available here equals the `math` reference: outputs and gradients of q, k, v, on random
odd shapes with padding, cross-attention lengths and packed varlen segments; on CPU and, where there is one, on
the GPU (`TEST_DEVICES`)."""
import dataclasses

import pytest
import torch

from bpmt_fast.attention import BACKENDS, AttentionInputs, attention, attention_varlen, layout
from bpmt_fast.testing import TEST_DEVICES, assert_close, low_precision_softmax_attention, max_error

EXACT_BACKENDS = [name for name, cls in BACKENDS.items() if cls.IS_EXACT and name != "math"]
LENGTHS = [1, 7, 59, 61, 129]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
HEAD_DIMS = [16, 32, 64]
CASES = ["padded-self", "padded-cross", "varlen"]
# On CUDA also full-length sequences without lengths: the only inputs sdpa-flash takes there (its kernel has no
# mask), so without them sdpa-flash would never run on a GPU.
CUDA_CASES = CASES + ["full"]
# Compiled FlexAttention compiles once per shape and dtype on CUDA (seconds each, and torch stops recompiling
# after a few shapes): there one head dim, with both mask kinds (key lengths, packed segments), every dtype.
CUDA_FLEX = {(32, "padded-cross"), (32, "varlen")}


def dtype_id(dtype):
    return str(dtype).replace("torch.", "")


def grid(devices):
    """(name, dtype, head_dim, case, device) parameters; CPU ids stay those of the CPU-only grid."""
    params = []
    for device in devices:
        for name in EXACT_BACKENDS:
            for dtype in DTYPES:
                for head_dim in HEAD_DIMS:
                    for case in CUDA_CASES if device == "cuda" else CASES:
                        if device == "cuda" and name == "flex" and (head_dim, case) not in CUDA_FLEX:
                            continue
                        suffix = "" if device == "cpu" else f"-{device}"
                        params.append(pytest.param(name, dtype, head_dim, case, device,
                                                   id=f"{name}-{dtype_id(dtype)}-{head_dim}-{case}{suffix}"))
    return params


def skip_unless_supported(name, inputs):
    """Skip with the backend's own reasons; returns False when it can run forward only (no backward here)."""
    reasons = BACKENDS[name].not_supported_reasons(inputs)
    if reasons and not BACKENDS[name].supports(dataclasses.replace(inputs, requires_grad=False)):
        pytest.skip(f"{name}: " + "; ".join(reasons))
    return not reasons


def make_case(case, head_dim, dtype, heads=2, device="cpu"):
    """Padded q/k/v in `dtype` (leaf tensors) with their lengths, for one of the layouts under test ("full":
    every sequence full length, no lengths)."""
    q_lengths = torch.tensor(LENGTHS)
    kv_lengths = q_lengths if case != "padded-cross" else torch.tensor([61, 129, 1, 7, 59])
    n_q, n_k = int(q_lengths.max()), int(kv_lengths.max())
    if case == "padded-cross":
        n_q = 64  # queries padded to a length that is not any sequence's
        q_lengths = torch.tensor([3, 64, 59, 1, 33])
    q = torch.randn(len(LENGTHS), n_q, heads, head_dim).to(device, dtype).requires_grad_()
    k = torch.randn(len(LENGTHS), n_k, heads, head_dim).to(device, dtype).requires_grad_()
    v = torch.randn(len(LENGTHS), n_k, heads, head_dim).to(device, dtype).requires_grad_()
    if case == "full":
        return q, k, v, None, None
    return q, k, v, q_lengths.to(device), kv_lengths.to(device)


def run(name, case, q, k, v, q_lengths, kv_lengths):
    """Output in padded layout, whatever layout the case calls the backend with."""
    if case != "varlen":
        return attention(q, k, v, backend=name, q_lengths=q_lengths, kv_lengths=kv_lengths)
    packed = attention_varlen(layout.pack(q, q_lengths), layout.pack(k, kv_lengths), layout.pack(v, kv_lengths),
                              layout.cu_seqlens_from_lengths(q_lengths), layout.cu_seqlens_from_lengths(kv_lengths),
                              backend=name)
    return layout.unpack(packed, q_lengths, q.shape[1])


def forward_backward(fn, inputs, grad_out):
    out = fn(*inputs)
    grads = torch.autograd.grad(out, inputs, grad_out)
    return out, grads


@pytest.mark.parametrize("name, dtype, head_dim, case, device", grid(TEST_DEVICES))
def test_backend_matches_math(name, dtype, head_dim, case, device):
    q, k, v, q_lengths, kv_lengths = make_case(case, head_dim, dtype, device=device)
    with_grad = skip_unless_supported(name, AttentionInputs.describe(q, k, v, masked=case != "full"))
    grad_out = layout.zero_padding(torch.randn(q.shape[:3] + (head_dim,)).to(device), q_lengths).to(dtype)
    q32, k32, v32 = (x.detach().float().requires_grad_() for x in (q, k, v))  # same values, no extra rounding

    if with_grad:
        out, grads = forward_backward(lambda *t: run(name, case, *t, q_lengths, kv_lengths), (q, k, v), grad_out)
    else:
        with torch.no_grad():
            out, grads = run(name, case, q, k, v, q_lengths, kv_lengths), None
    ref, ref_grads = forward_backward(
        lambda *t: attention(*t, backend="math", q_lengths=q_lengths, kv_lengths=kv_lengths), (q32, k32, v32),
        grad_out.float())
    base, base_grads = forward_backward(
        lambda *t: low_precision_softmax_attention(*t, q_lengths, kv_lengths), (q, k, v), grad_out)

    assert out.dtype == dtype and out.shape == ref.shape
    assert_close("output", out, ref, dtype, max_error(base, ref))
    if not with_grad:
        return
    for label, grad, ref_grad, base_grad in zip("qkv", grads, ref_grads, base_grads):
        assert_close(f"d{label}", grad, ref_grad, dtype, max_error(base_grad, ref_grad))


# CPU ids stay the CPU-only ones ("[math]"); a GPU adds "[math-cuda]".
BACKEND_DEVICE = [pytest.param(name, "cpu", id=name) for name in BACKENDS] + [
    pytest.param(name, device, id=f"{name}-{device}") for device in TEST_DEVICES if device != "cpu"
    for name in BACKENDS]


@pytest.mark.parametrize("name, device", BACKEND_DEVICE)
def test_padding_content_is_ignored(name, device):
    """NaN in padded tokens changes nothing: valid outputs are equal, padded outputs are zero, grads finite."""
    q, k, v, q_lengths, kv_lengths = make_case("padded-cross", 16, torch.float32, device=device)
    with_grad = skip_unless_supported(name, AttentionInputs.describe(q, k, v, masked=True))
    q_mask = layout.padding_mask(q_lengths, q.shape[1])[:, :, None, None]
    kv_mask = layout.padding_mask(kv_lengths, k.shape[1])[:, :, None, None]
    poisoned = [torch.where(mask, x.detach(), float("nan")).requires_grad_(with_grad)
                for x, mask in ((q, q_mask), (k, kv_mask), (v, kv_mask))]
    with torch.set_grad_enabled(with_grad):
        clean = attention(q, k, v, backend=name, q_lengths=q_lengths, kv_lengths=kv_lengths)
        out = attention(*poisoned, backend=name, q_lengths=q_lengths, kv_lengths=kv_lengths)
    torch.testing.assert_close(out, clean, atol=1e-6, rtol=1e-5)
    assert (out[~q_mask.expand_as(out)] == 0).all()
    if with_grad:
        out.sum().backward()
        assert all(torch.isfinite(x.grad).all() for x in poisoned)


# Not flex on CUDA: every per-segment call is a new shape, hence a new compile (test_backend_matches_math covers
# flex's packed path there).
@pytest.mark.parametrize("name, device", [p for p in BACKEND_DEVICE if p.values != ("flex", "cuda")])
def test_varlen_equals_per_segment_calls(name, device):
    """One packed call over unequal segments (some key segments repeated) equals one call per segment."""
    heads, head_dim = 2, 32
    q_lengths, kv_lengths = [7, 1, 61, 7], [59, 59, 1, 129]
    q = torch.randn(sum(q_lengths), heads, head_dim).to(device)
    k = torch.randn(sum(kv_lengths), heads, head_dim).to(device)
    v = torch.randn(sum(kv_lengths), heads, head_dim).to(device)
    skip_unless_supported(name, AttentionInputs.describe(q, k, v, masked=True))
    cu_q = layout.cu_seqlens_from_lengths(torch.tensor(q_lengths, device=device))
    cu_k = layout.cu_seqlens_from_lengths(torch.tensor(kv_lengths, device=device))
    packed = attention_varlen(q, k, v, cu_q, cu_k, backend=name)
    pieces = [attention(q[None, cu_q[i]:cu_q[i + 1]], k[None, cu_k[i]:cu_k[i + 1]], v[None, cu_k[i]:cu_k[i + 1]],
                        backend=name)[0] for i in range(len(q_lengths))]
    torch.testing.assert_close(packed, torch.cat(pieces), atol=2e-5, rtol=1e-4)


def cuda_reasons(name, dtype, head_dim, case):
    """What `name` declares it cannot do for this case on CUDA, availability on this machine aside."""
    cls = BACKENDS[name]
    inputs = AttentionInputs("cuda", dtype, head_dim, head_dim, 2, masked=case != "full", requires_grad=True)
    return [r for r in cls.not_supported_reasons(inputs) if r != cls.why_unavailable()]


def test_cuda_grid_runs_every_backend_in_every_dtype():
    """On a GPU, every exact backend runs (forward and backward) in every dtype it declares for CUDA on at least
    one case of the grid: checked here, on CPU, so a GPU run cannot silently leave a combination out."""
    cuda = [p.values for p in grid(["cuda"])]
    for name in EXACT_BACKENDS:
        for dtype in DTYPES:
            declared = any(not cuda_reasons(name, dtype, d, case) for d in HEAD_DIMS for case in CUDA_CASES)
            runs = [(d, case) for n, t, d, case, _ in cuda if (n, t) == (name, dtype)
                    and not cuda_reasons(name, dtype, d, case)]
            assert runs or not declared, f"{name} {dtype_id(dtype)} is never run on CUDA"
    assert {(n, t) for n, t, *_ in cuda} == {(n, t) for n in EXACT_BACKENDS for t in DTYPES}


def test_causal_math_masks_future_keys():
    q, k, v = (torch.randn(2, 9, 2, 16) for _ in range(3))
    out = attention(q, k, v, backend="math", causal=True)
    changed = attention(q, k, torch.cat([v[:, :5], torch.randn(2, 4, 2, 16)], 1), backend="math", causal=True)
    torch.testing.assert_close(out[:, :5], changed[:, :5])
    torch.testing.assert_close(out[:, 0], v[:, 0])  # the first query sees only the first key
