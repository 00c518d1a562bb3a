"""The fused Triton flow-attention kernels (bpmt_fast.kernels.flow_attention) and the `flow-triton` backend.

Outputs and dq/dk/dv are compared with torch.autograd through the naive reference (bpmt_fast.reference.flow) run
in float64 on the same (already rounded) inputs, on packed segments of odd, unequal lengths. Every buffer the
launchers allocate is NaN-filled first, so an element a kernel forgets to write fails the test. On CPU this runs
under the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1): shapes stay small. fp16 runs see the
TF32 rounding of the dot operands there too (the kernels round the operands themselves), and a forced small Dv
block runs the Dv split that D = 128 uses on GPU.
"""
import math

import pytest
import torch

from bpmt_fast.attention import attention_varlen, layout
from bpmt_fast.attention.base import AttentionInputs
from bpmt_fast.attention.flow import FlowBackend
from bpmt_fast.attention.flow_triton import FlowTritonBackend
from bpmt_fast.reference.flow import flow_attention_reference
from bpmt_fast.testing import assert_close

if FlowTritonBackend.why_unavailable() is not None:
    pytest.skip(f"flow-triton: {FlowTritonBackend.why_unavailable()}", allow_module_level=True)

from bpmt_fast.kernels import flow_attention as fa  # noqa: E402  (imports triton: only where it can run)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# bf16 only on a GPU: the interpreter's bf16 tl.dot is wrong (the backend refuses it on CPU, tested below)
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
Q_LENGTHS = [1, 7, 59, 61, 129]
KV_LENGTHS = [61, 129, 1, 7, 59]  # non-causal: every query segment has a key segment of another length


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: threads cost more than they save


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    """Outputs, gradients and workspaces start as NaN: whatever a kernel leaves unwritten shows up."""
    monkeypatch.setattr(fa, "_alloc", lambda shape, dtype, device: torch.full(shape, float("nan"), dtype=dtype,
                                                                              device=device))


def packed_qkv(q_lengths, kv_lengths, heads, d, dv, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    # scale 2: phi = sigmoid spans most of (0, 1), and about half of the conserved sources hit the clamp
    q = 2 * torch.randn(sum(q_lengths), heads, d, generator=g)
    k = 2 * torch.randn(sum(kv_lengths), heads, d, generator=g)
    v = torch.randn(sum(kv_lengths), heads, dv, generator=g)
    return tuple(x.to(device=DEVICE, dtype=dtype) for x in (q, k, v))


def cu_seqlens(lengths):
    return layout.cu_seqlens_from_lengths(torch.tensor(lengths, device=DEVICE))


def reference_varlen(q, k, v, q_lengths, kv_lengths, causal):
    """The reference in float64 on packed inputs (unpacked to padded and back), differentiable."""
    ql, kl = torch.tensor(q_lengths, device=DEVICE), torch.tensor(kv_lengths, device=DEVICE)
    padded = [layout.unpack(x, lengths, max(lengths)) for x, lengths in ((q, ql), (k, kl), (v, kl))]
    out = flow_attention_reference(*padded, q_lengths=ql, kv_lengths=kl, causal=causal)
    return layout.pack(out, ql)


def outputs_and_grads(fn, q, k, v, grad_out):
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    out = fn(q, k, v)
    return out, torch.autograd.grad(out, (q, k, v), grad_out)


def assert_matches_reference(q_lengths, kv_lengths, heads, d, dv, dtype, causal, seed=0, chunked=None):
    q, k, v = packed_qkv(q_lengths, kv_lengths, heads, d, dv, dtype, seed)
    grad_out = torch.randn(q.shape[0], heads, dv, generator=torch.Generator().manual_seed(seed + 1)).to(q)
    out, grads = outputs_and_grads(
        lambda q, k, v: fa.flow_attention_varlen(q, k, v, cu_seqlens(q_lengths), cu_seqlens(kv_lengths),
                                                 causal=causal, chunked=chunked), q, k, v, grad_out)
    ref, ref_grads = outputs_and_grads(
        lambda q, k, v: reference_varlen(q, k, v, q_lengths, kv_lengths, causal),
        q.double(), k.double(), v.double(), grad_out.double())
    assert out.dtype == dtype and out.shape == ref.shape
    assert_close("output", out, ref, dtype)
    for name, grad, ref_grad, x in zip("qkv", grads, ref_grads, (q, k, v)):
        assert grad.dtype == dtype and grad.shape == x.shape
        assert_close(f"d{name}", grad, ref_grad, dtype)


# ---------------------------------------------------------------- against the reference

@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("d, dv", [(16, 16), (32, 32), (12, 20)])  # (12, 20): odd D and Dv != D
def test_matches_reference(d, dv, dtype, causal):
    kv_lengths = Q_LENGTHS if causal else KV_LENGTHS
    assert_matches_reference(Q_LENGTHS, kv_lengths, 2, d, dv, dtype, causal)


@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
def test_matches_reference_wide_and_tiny_heads(causal):
    """Head dims at both ends: 1 (a 16-wide tile, 15 dims masked) and 128 (MAX_HEAD_DIM), several token blocks."""
    assert_matches_reference([3, 150], [3, 150] if causal else [150, 2], 1, 1, 128, torch.float32, causal, seed=3)
    assert_matches_reference([2, 67], [2, 67] if causal else [9, 67], 1, 128, 8, torch.float32, causal, seed=4)


@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
@pytest.mark.parametrize("d, dv, block_dv, dtype", [(48, 48, 16, torch.float32), (20, 40, 32, torch.float16)],
                         ids=["48x48-dv16-float32", "20x40-dv32-float16"])
def test_dv_split_matches_reference(d, dv, block_dv, dtype, causal, monkeypatch):
    """The D x Dv state split into Dv blocks of one program each (what D = 128 does on GPU), forced here with a
    small block: 48 = 3 x 16 columns, 40 = 32 + a masked 8 of 32. Output and every gradient sum the blocks'
    partials; the launches must really run several blocks."""
    config = fa._config
    monkeypatch.setattr(fa, "_config", lambda *args: config(*args)._replace(block_dv=block_dv))
    grids = []
    for name in ("flow_attention_fwd_kernel", "flow_attention_causal_fwd_kernel"):
        kernel = getattr(fa, name)
        monkeypatch.setattr(fa, name, _GridSpy(kernel, grids))
    q_lengths = [1, 7, 61, 129]  # one head and four segments: the interpreter runs S x H x blocks programs
    kv_lengths = q_lengths if causal else [61, 129, 1, 7]
    assert_matches_reference(q_lengths, kv_lengths, 1, d, dv, dtype, causal, seed=8)
    assert grids and all(grid[2] == -(-dv // block_dv) > 1 for grid in grids)


class _GridSpy:
    """A kernel whose launches record their grid, then run."""
    def __init__(self, kernel, grids):
        self.kernel, self.grids = kernel, grids

    def __getitem__(self, grid):
        self.grids.append(grid)
        return self.kernel[grid]


def test_dot_precision_and_tf32_rounding():
    """fp32 keeps IEEE dots; fp16 / bf16 take TF32 dots whose operands `_tf32` rounds to nearest (ties away from
    zero) on 10 mantissa bits, the same in the interpreter as on GPU (so the fp16 tests above see TF32 operands)."""
    import triton
    import triton.language as tl

    assert fa._dot_precision(torch.float32) == "ieee"
    assert fa._dot_precision(torch.float16) == fa._dot_precision(torch.bfloat16) == "tf32"

    @triton.jit
    def round_kernel(X, Y, N: tl.constexpr):
        offs = tl.arange(0, N)
        tl.store(Y + offs, fa._tf32(tl.load(X + offs)))

    ulp = 2.0 ** -10  # TF32's spacing in [1, 2)
    x = torch.tensor([1 + ulp / 2, 1 + ulp / 4, -(1 + 3 * ulp / 4), 1 + ulp, 0.1, -3e-5, 0.0, 6e4] + [1.0] * 8,
                     device=DEVICE)
    y = torch.full_like(x, float("nan"))
    round_kernel[(1,)](x, y, N=16)
    expected = ((x.view(torch.int32) + 4096) & -8192).view(torch.float32)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    assert y[:4].tolist() == [1 + ulp, 1.0, -(1 + ulp), 1 + ulp]
    assert ((y - x).abs() <= x.abs() * 2.0 ** -11).all()


@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
def test_packed_call_equals_one_call_per_segment(causal):
    """Segments do not interact: one packed call gives exactly the per-segment results, gradients too."""
    q_lengths, kv_lengths = [7, 1, 66], ([7, 1, 66] if causal else [3, 70, 1])
    q, k, v = packed_qkv(q_lengths, kv_lengths, 2, 8, 8, torch.float32, seed=5)
    grad_out = torch.randn(q.shape[0], 2, 8, generator=torch.Generator().manual_seed(6)).to(q)
    out, grads = outputs_and_grads(
        lambda q, k, v: fa.flow_attention_varlen(q, k, v, cu_seqlens(q_lengths), cu_seqlens(kv_lengths),
                                                 causal=causal), q, k, v, grad_out)
    cq, ck = cu_seqlens(q_lengths).tolist(), cu_seqlens(kv_lengths).tolist()
    for i in range(len(q_lengths)):
        qs, ks = slice(cq[i], cq[i + 1]), slice(ck[i], ck[i + 1])
        alone, alone_grads = outputs_and_grads(
            lambda q, k, v: fa.flow_attention_varlen(q, k, v, cu_seqlens([q_lengths[i]]), cu_seqlens([kv_lengths[i]]),
                                                     causal=causal), q[qs], k[ks], v[ks], grad_out[qs])
        torch.testing.assert_close(out[qs], alone, rtol=0, atol=0)
        for grad, alone_grad, rows in zip(grads, alone_grads, (qs, ks, ks)):
            torch.testing.assert_close(grad[rows], alone_grad, rtol=0, atol=0)


def test_strided_inputs():
    """q, k, v as views into one fused projection (token and head strides not those of a contiguous tensor)."""
    lengths = [5, 40]
    qkv = 2 * torch.randn(sum(lengths), 3, 2, 16, device=DEVICE)  # (T, 3, H, D)
    q, k, v = qkv.unbind(1)
    assert not q.is_contiguous()
    for causal in (False, True):
        strided = fa.flow_attention_varlen(q, k, v, cu_seqlens(lengths), cu_seqlens(lengths), causal=causal)
        dense = fa.flow_attention_varlen(q.contiguous(), k.contiguous(), v.contiguous(), cu_seqlens(lengths),
                                         cu_seqlens(lengths), causal=causal)
        torch.testing.assert_close(strided, dense, rtol=0, atol=0)


# ---------------------------------------------------------------- the backend

@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
def test_backend_padded_ignores_nan_padding(causal):
    """Through the base class's padded path: NaN in padding changes nothing, padded outputs are zero, the
    valid outputs equal the `flow` reference backend and every gradient is finite (zero at padding)."""
    q_lengths = torch.tensor([4, 33, 1])
    kv_lengths = q_lengths if causal else torch.tensor([20, 2, 33])
    g = torch.Generator().manual_seed(7)
    q, k = (2 * torch.randn(3, 33, 2, 16, generator=g) for _ in range(2))
    v = torch.randn(3, 33, 2, 16, generator=g)
    q_pad = ~layout.padding_mask(q_lengths, 33)[:, :, None, None]
    kv_pad = ~layout.padding_mask(kv_lengths, 33)[:, :, None, None]
    clean = [x.to(DEVICE) for x in (q, k, v)]
    dirty = [torch.where(pad, float("nan"), x).to(DEVICE).requires_grad_()
             for x, pad in ((q, q_pad), (k, kv_pad), (v, kv_pad))]
    lengths = (q_lengths.to(DEVICE), kv_lengths.to(DEVICE))
    out = FlowTritonBackend().padded(*dirty, *lengths, causal=causal)
    want = FlowBackend().padded(*clean, *lengths, causal=causal)
    assert_close("output", out, want, torch.float32)
    assert (out[q_pad.expand_as(out).to(DEVICE)] == 0).all()
    out.square().sum().backward()
    for name, x, pad in zip("qkv", dirty, (q_pad, kv_pad, kv_pad)):
        assert torch.isfinite(x.grad).all(), name
        assert (x.grad[pad.expand_as(x).to(DEVICE)] == 0).all(), name


def test_backend_declarations():
    backend = FlowTritonBackend
    assert backend.NAME == "flow-triton" and not backend.IS_EXACT and backend.SUPPORTS_CAUSAL
    assert backend.version() not in (None, "")
    ok = AttentionInputs(DEVICE, torch.float32, 16, 16, 2, masked=True, causal=True, requires_grad=True)
    assert backend.supports(ok)
    scaled = AttentionInputs(DEVICE, torch.float32, 16, 16, 2, masked=True, custom_scale=True)
    assert any("scale" in reason for reason in backend.not_supported_reasons(scaled))
    too_wide = AttentionInputs(DEVICE, torch.float32, 16, 129, 2, masked=True)
    assert any("129" in reason for reason in backend.not_supported_reasons(too_wide))
    assert backend.not_supported_reasons(AttentionInputs(DEVICE, torch.float64, 16, 16, 2, masked=True))
    cpu_bf16 = backend.not_supported_reasons(AttentionInputs("cpu", torch.bfloat16, 16, 16, 2, masked=True))
    assert any("bfloat16" in reason for reason in cpu_bf16)


def test_backend_refuses_causal_with_unequal_lengths_and_a_scale():
    q, k, v = packed_qkv([3, 5], [5, 3], 1, 8, 8, torch.float32)
    with pytest.raises(ValueError, match="causal attention needs cu_seqlens_q == cu_seqlens_k"):
        attention_varlen(q, k, v, cu_seqlens([3, 5]), cu_seqlens([5, 3]), backend="flow-triton", causal=True)
    with pytest.raises(ValueError, match="a custom softmax scale is not supported"):
        attention_varlen(q, k, v, cu_seqlens([3, 5]), cu_seqlens([5, 3]), backend="flow-triton", scale=0.5)


# ---------------------------------------------------------------- memory: no per-token D x Dv state

@pytest.mark.parametrize("causal, chunked", [(False, None), (True, None), (False, True)],
                         ids=["noncausal", "causal", "noncausal-chunked"])
def test_memory_is_linear(causal, chunked, monkeypatch):
    """Every buffer the launchers allocate and everything saved for backward is O(N (D + Dv) + D Dv) per head;
    a per-token D x Dv tensor would be D = 8 times larger than the largest allowed here."""
    lengths, heads, d, dv = [150, 3, 70], 3, 8, 12
    total = sum(lengths)
    allocated = []

    def recording_alloc(shape, dtype, device):
        allocated.append(math.prod(shape))
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(fa, "_alloc", recording_alloc)
    q, k, v = (x.requires_grad_() for x in packed_qkv(lengths, lengths, heads, d, dv, torch.float32))
    out = fa.flow_attention_varlen(q, k, v, cu_seqlens(lengths), cu_seqlens(lengths), causal=causal,
                                   chunked=chunked)
    saved = [t for t in out.grad_fn.saved_tensors if not any(t is x for x in (q, k, v))]
    per_segment_head = len(lengths) * heads * (4 * d + d * dv + 1)  # the non-causal state
    assert sum(t.numel() for t in saved) <= per_segment_head + 2 * (len(lengths) + 1)  # + the offsets
    out.sum().backward()
    assert allocated
    assert max(allocated) <= total * heads * max(d, dv)
    assert sum(allocated) <= 8 * total * heads * max(d, dv)  # outputs, gradients, workspaces, small state


# ---------------------------------------------------------------- validation

def _bad(**changes):
    """Valid arguments of a small packed call, with some replaced."""
    q, k, v = packed_qkv([3, 4], [2, 5], 2, 8, 6, torch.float32)
    args = dict(q=q, k=k, v=v, cu_seqlens_q=cu_seqlens([3, 4]), cu_seqlens_k=cu_seqlens([2, 5]))
    args.update(changes)
    return args


@pytest.mark.parametrize("args, kwargs, match", [
    (_bad(q=torch.randn(7, 2, 8, 1)), {}, r"q must have rank 3 \(total, H, D\), got shape \(7, 2, 8, 1\)"),
    (_bad(k=torch.randn(7, 2, 8).double()), {}, r"k has dtype torch.float64; supported: float16, bfloat16, float32"),
    (_bad(v=torch.ones(7, 2, 6, dtype=torch.int32)), {}, r"v has dtype torch.int32; supported"),
    (_bad(q=torch.randn(7, 2, 8).half()), {}, r"must share one dtype, got torch.float16, torch.float32"),
    (_bad(k=torch.randn(7, 3, 8)), {}, r"head counts differ: q 2, k 3, v 2"),
    (_bad(k=torch.randn(7, 2, 4)), {}, r"q and k head dims differ: 8 and 4"),
    (_bad(v=torch.randn(6, 2, 6)), {}, r"k and v must have the same number of tokens, got 7 and 6"),
    (_bad(q=torch.randn(7, 2, 129), k=torch.randn(7, 2, 129)), {}, r"head_dim must lie in \[1, 128\], got 129"),
    (_bad(cu_seqlens_q=torch.tensor([0, 3, 7])), {}, r"cu_seqlens_q must have dtype torch.int32, got torch.int64"),
    (_bad(cu_seqlens_k=torch.tensor([[0, 2, 7]], dtype=torch.int32)), {}, r"cu_seqlens_k must have shape"),
    (_bad(cu_seqlens_k=torch.tensor([0, 7], dtype=torch.int32)), {}, r"different segment counts: 2 and 1"),
    (_bad(cu_seqlens_q=torch.tensor([0, 3, 6], dtype=torch.int32)), {},
     r"cu_seqlens_q must start at 0 and end at the token count 7, got 0 .. 6"),
    (_bad(cu_seqlens_k=torch.tensor([0, 0, 7], dtype=torch.int32)), {}, r"segments of length >= 1, got a length 0"),
    (_bad(), dict(eps=0.0), r"eps must be a float > 0, got 0.0"),
    (_bad(), dict(causal=True), r"causal flow attention needs equal q/kv segment lengths, got \[3, 4\] and \[2, 5\]"),
    (_bad(), dict(causal=True, chunked=True), r"chunked=True: the causal flow attention has no chunked path"),
    (_bad(), dict(chunked=1), r"chunked must be None, True or False, got 1"),
    (_bad(k=torch.randn(8, 2, 8), v=torch.randn(8, 2, 6), cu_seqlens_k=torch.tensor([0, 3, 8], dtype=torch.int32)),
     dict(causal=True), r"needs equal q/kv segments, got 7 query and 8 key tokens"),
])
def test_validation_errors(args, kwargs, match):
    args = {name: x.to(DEVICE) for name, x in args.items()}
    with pytest.raises(ValueError, match=match):
        fa.flow_attention_varlen(**args, **kwargs)


# ---------------------------------------------------------------- the chunked non-causal path

CHUNKED_KERNELS = ("flow_attention_chunk_vecs_kernel", "flow_attention_chunk_reduce_kernel",
                   "flow_attention_chunk_fwd_kernel", "flow_attention_chunk_state_reduce_kernel",
                   "flow_attention_chunk_bwd_state_kernel", "flow_attention_chunk_bwd_chain_kernel")
SINGLE_PASS_KERNELS = ("flow_attention_fwd_kernel", "flow_attention_bwd_state_kernel",
                       "flow_attention_bwd_chain_kernel")


def spy_launches(monkeypatch, names):
    """Replace the named kernels by spies; returns {name: [grids]} filled as they launch."""
    launches = {name: [] for name in names}
    for name in names:
        monkeypatch.setattr(fa, name, _GridSpy(getattr(fa, name), launches[name]))
    return launches


# Under the interpreter a chunk is 64 tokens: 200 queries span 4 chunks (the last two without keys: 97 keys),
# 150 keys 3 chunks for a single query, 37 + 45 fit in one chunk, and a length-1 segment.
CHUNK_Q_LENGTHS = [200, 1, 37, 1, 131]
CHUNK_KV_LENGTHS = [97, 150, 45, 1, 66]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_chunked_matches_reference(dtype, monkeypatch):
    """chunked=True (forced at these sizes): outputs and dq/dk/dv against the float64 reference on odd, unequal
    segments spanning several chunks, shorter than a chunk and of length 1, with odd D and Dv != D. The chunk
    kernels must really run several chunks of one segment (more items than segments)."""
    launches = spy_launches(monkeypatch, CHUNKED_KERNELS + SINGLE_PASS_KERNELS)
    assert_matches_reference(CHUNK_Q_LENGTHS, CHUNK_KV_LENGTHS, 1, 12, 20, dtype, False, seed=11, chunked=True)
    assert not any(launches[name] for name in SINGLE_PASS_KERNELS)
    assert all(launches[name] for name in CHUNKED_KERNELS)
    chunk = fa._config(False, 16, 32, dtype).chunk_tokens
    real_items = sum(-(-max(a, b) // chunk) for a, b in zip(CHUNK_Q_LENGTHS, CHUNK_KV_LENGTHS))
    assert real_items > len(CHUNK_Q_LENGTHS) + 2  # several chunks per long segment
    assert all(grid[0] >= real_items for grid in launches["flow_attention_chunk_fwd_kernel"])


def test_chunked_blocks_and_dv_split_match_reference(monkeypatch):
    """The chunked path with GPU-like tiles: several token blocks per chunk, a chunk (40) that is no multiple of
    the block (16), and the D x Dv state split into Dv blocks (48 = 3 x 16)."""
    config = fa._config
    monkeypatch.setattr(fa, "_config", lambda *args: config(*args)._replace(
        block_n=16, chain_n=16, block_dv=16, chunk_tokens=40))
    launches = spy_launches(monkeypatch, ("flow_attention_chunk_fwd_kernel", "flow_attention_chunk_bwd_state_kernel"))
    assert_matches_reference([95, 1, 23], [41, 80, 1], 1, 24, 48, torch.float32, False, seed=12, chunked=True)
    assert all(grid[2] == 3 for grids in launches.values() for grid in grids)


def test_chunked_is_deterministic_and_close_to_single_pass():
    """Both paths compute the same function (up to summation order); the chunked one gives identical bits run to
    run (fixed-order reductions, no atomics)."""
    q, k, v = packed_qkv(CHUNK_Q_LENGTHS, CHUNK_KV_LENGTHS, 1, 8, 8, torch.float32, seed=13)
    cu_q, cu_k = cu_seqlens(CHUNK_Q_LENGTHS), cu_seqlens(CHUNK_KV_LENGTHS)
    runs = [fa.flow_attention_fwd(q, k, v, cu_q, cu_k, False, fa.DEFAULT_EPS, chunked=chunked)
            for chunked in (True, True, False)]
    for a, b in zip(runs[0][1], runs[1][1]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(runs[0][0], runs[1][0], rtol=0, atol=0)
    torch.testing.assert_close(runs[0][0], runs[2][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(runs[0][1], runs[2][1]):  # the backward's state: either path's backward can read it
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_automatic_choice(monkeypatch):
    """Chunked exactly when the longest segment exceeds `chunked_min_len` (the GPU's 1024, the interpreter's
    256): the exact longest when known (flow_attention_varlen with check_values), else the mean length (a lower
    bound, no sync); never for causal; `chunked=` forces either path."""
    gpu = fa._Config(32, 32, 8, 16, 4, 16)  # the GPU defaults: chunks of 1024, chunked past 1024 tokens
    assert (gpu.chunk_tokens, gpu.chunked_min_len) == (1024, 1024)
    # bench `long` (B2 N16384) and N4096: chunked; gait (1280 segments of ~60, Gait3D up to 489): single pass
    assert fa.use_chunked(False, 2 * 16384, 2 * 16384, 2, cfg=gpu)
    assert fa.use_chunked(False, 2 * 4096, 2 * 4096, 2, cfg=gpu)
    assert not fa.use_chunked(False, 2 * 1024, 2 * 1024, 2, cfg=gpu)
    assert not fa.use_chunked(False, 1280 * 60, 1280 * 60, 1280, max_seqlen=489, cfg=gpu)
    assert not fa.use_chunked(False, 1280 * 60 + 5000, 1280 * 60 + 5000, 1281, cfg=gpu)  # mean: one long hides
    assert fa.use_chunked(False, 1280 * 60 + 5000, 1280 * 60 + 5000, 1281, max_seqlen=5000, cfg=gpu)
    assert fa.use_chunked(False, 10, 3000, 2, cfg=gpu)  # the longer side counts (cross-attention)
    assert not fa.use_chunked(True, 2 * 16384, 2 * 16384, 2, cfg=gpu)
    assert not fa.use_chunked(False, 2 * 16384, 2 * 16384, 2, chunked=False, cfg=gpu)
    assert fa.use_chunked(False, 10, 10, 2, chunked=True, cfg=gpu)
    with pytest.raises(ValueError, match="no chunked path"):
        fa.use_chunked(True, 10, 10, 2, chunked=True, cfg=gpu)
    assert fa._config(False, 16, 16, torch.float32).chunked_min_len == 256  # the interpreter's threshold

    # the launches: tiny heads, one long segment among short ones
    names = ("flow_attention_chunk_fwd_kernel", "flow_attention_chunk_bwd_chain_kernel",
             "flow_attention_fwd_kernel", "flow_attention_bwd_chain_kernel")

    def paths(lengths, **kwargs):
        launches = spy_launches(monkeypatch, names)
        q, k, v = (x.requires_grad_() for x in packed_qkv(lengths, lengths, 1, 4, 4, torch.float32, seed=14))
        fa.flow_attention_varlen(q, k, v, cu_seqlens(lengths), cu_seqlens(lengths), **kwargs).sum().backward()
        for name in names:
            monkeypatch.setattr(fa, name, getattr(fa, name).kernel)
        chunked = bool(launches[names[0]]) and bool(launches[names[1]])
        single = bool(launches[names[2]]) and bool(launches[names[3]])
        assert not (chunked or single) or chunked != single
        return "chunked" if chunked else "single" if single else "causal"

    assert paths([257, 3, 2]) == "chunked"  # longest 257 > 256
    assert paths([256, 3, 2]) == "single"
    assert paths([257, 3, 2], check_values=False) == "single"  # mean 88 <= 256
    assert paths([300, 290], check_values=False) == "chunked"  # mean 295 > 256
    assert paths([20, 3], chunked=True) == "chunked"
    assert paths([257, 3], causal=True) == "causal"  # its own kernels, never the chunked ones

    # the backend (the model's path) passes its host max lengths: one long segment among short ones is chunked
    launches = spy_launches(monkeypatch, names)
    lengths = [257, 3, 2]
    q, k, v = (x.requires_grad_() for x in packed_qkv(lengths, lengths, 1, 4, 4, torch.float32, seed=15))
    cu = cu_seqlens(lengths)
    FlowTritonBackend().varlen(q, k, v, cu, cu, 257, 257).sum().backward()
    assert launches[names[0]] and launches[names[1]] and not launches[names[2]] and not launches[names[3]]
