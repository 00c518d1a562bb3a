"""Our Triton varlen attention kernel and its `triton` backend against the fp32 reference: outputs and dq/dk/dv
on packed odd-length segments, shared key/value segments (`kv_index`), small tiles, the padded path, empty
segments, determinism and input validation; both ways of giving rows to programs (one segment per program, and
packed rows for many short segments), forced and automatic.

On CPU the kernels run in the Triton interpreter (conftest.py sets TRITON_INTERPRET=1), which is slow: shapes
stay small. Every buffer the kernels write is NaN-filled first, so an element a kernel forgets fails the test.
"""
from __future__ import annotations

import pytest
import torch

from bpmt_fast.attention import AttentionInputs, attention, attention_varlen, layout
from bpmt_fast.attention.math import MathBackend
from bpmt_fast.attention.triton import TritonBackend
from bpmt_fast.reference.softmax import softmax_attention_reference
from bpmt_fast.testing import assert_close, low_precision_softmax_attention, max_error

REASON = TritonBackend.why_unavailable()
if REASON is not None:
    pytest.skip(f"triton: {REASON}", allow_module_level=True)

from bpmt_fast.kernels import varlen_attention as kernels  # noqa: E402  (imports triton: only when available)
from bpmt_fast.kernels.varlen_attention import varlen_attention  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# bf16 only on a GPU: the interpreter's bf16 tl.dot is wrong (the backend says so in extra_reasons).
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
Q_LENGTHS = [1, 7, 59, 61, 129]
KV_LENGTHS = [129, 1, 61, 7, 59]  # unequal to the query lengths: every pair is a cross-length case
# Many short, unequal segments (gait parts): the packed-rows mode's case; key segment 2 is empty.
SHORT_Q_LENGTHS = [1, 7, 3, 15, 2, 9, 4, 11]
SHORT_KV_LENGTHS = [5, 2, 0, 11, 7, 9, 1, 13]


def dtype_id(dtype):
    return str(dtype).replace("torch.", "")


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    """Outputs, LSE, delta and gradients start as NaN: unwritten elements cannot pass."""
    monkeypatch.setattr(kernels, "_alloc",
                        lambda shape, dtype, device: torch.full(shape, float("nan"), dtype=dtype, device=device))


@pytest.fixture
def launched_modes(monkeypatch):
    """How every launch ran, in call order: ("fwd", pack_rows) for forwards, ("bwd", pack_rows) for three-kernel
    backwards and ("bwd", "fused" | "segment") for the one-launch backwards."""
    modes = []
    fwd, split, unit = (kernels.varlen_attention_fwd, kernels._split_backward, kernels._unit_backward)

    def spy(launcher, mode):
        def launch(*args, **kwargs):
            modes.append(mode(args))
            return launcher(*args, **kwargs)
        return launch

    monkeypatch.setattr(kernels, "varlen_attention_fwd", spy(fwd, lambda args: ("fwd", args[9])))  # pack_rows
    monkeypatch.setattr(kernels, "_split_backward", spy(split, lambda args: ("bwd", args[-1])))
    monkeypatch.setattr(kernels, "_unit_backward", spy(unit, lambda args: ("bwd", args[0])))
    return modes


def cu(lengths):
    return layout.cu_seqlens_from_lengths(torch.tensor(lengths)).to(DEVICE)


def packed(lengths, heads, dim, dtype):
    return torch.randn(sum(lengths), heads, dim, device=DEVICE).to(dtype).requires_grad_()


def per_pair(fn, q, k, v, q_lengths, kv_lengths, kv_index, scale):
    """`fn` (a padded-layout attention) called once per (query segment, key/value segment) pair, re-packed."""
    cu_q, cu_k = cu(q_lengths), cu(kv_lengths)
    pieces = []
    for i, j in enumerate(kv_index):
        qs, ks = slice(cu_q[i], cu_q[i + 1]), slice(cu_k[j], cu_k[j + 1])
        pieces.append(fn(q[None, qs], k[None, ks], v[None, ks], scale=scale)[0])
    return torch.cat(pieces)


def reference(q, k, v, scale=None):
    return softmax_attention_reference(q, k, v, scale=scale)


def low_precision(q, k, v, scale=None):
    return low_precision_softmax_attention(q, k, v, scale=scale)


def check_against_reference(q_lengths, kv_lengths, heads, dim, dtype, dim_v=None, kv_index=None, scale=None,
                            pack_rows=None, backward=None):
    """Kernel output and dq/dk/dv vs the fp32 reference per pair, with the '2x the low-precision error' rule."""
    q, k, v = packed(q_lengths, heads, dim, dtype), packed(kv_lengths, heads, dim, dtype), \
        packed(kv_lengths, heads, dim_v or dim, dtype)
    pairs = list(range(len(q_lengths))) if kv_index is None else kv_index
    index = None if kv_index is None else torch.tensor(kv_index, dtype=torch.int32, device=DEVICE)
    grad_out = torch.randn(q.shape[0], heads, dim_v or dim, device=DEVICE).to(dtype)

    out = varlen_attention(q, k, v, cu(q_lengths), cu(kv_lengths), kv_index=index, scale=scale,
                           pack_rows=pack_rows, backward=backward)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    fp32 = [x.detach().float().requires_grad_() for x in (q, k, v)]  # same values, no extra rounding
    ref = per_pair(reference, *fp32, q_lengths, kv_lengths, pairs, scale)
    ref_grads = torch.autograd.grad(ref, fp32, grad_out.float())
    base = per_pair(low_precision, q, k, v, q_lengths, kv_lengths, pairs, scale)
    base_grads = torch.autograd.grad(base, (q, k, v), grad_out)

    assert out.dtype == dtype and out.shape == (q.shape[0], heads, dim_v or dim)
    assert_close("output", out, ref, dtype, max_error(base, ref))
    for label, grad, ref_grad, base_grad in zip("qkv", grads, ref_grads, base_grads):
        assert_close(f"d{label}", grad, ref_grad, dtype, max_error(base_grad, ref_grad))
    return grads


@pytest.mark.parametrize("head_dim", [16, 32, 64])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_matches_reference(dtype, head_dim):
    check_against_reference(Q_LENGTHS, KV_LENGTHS, heads=2, dim=head_dim, dtype=dtype)


@pytest.mark.parametrize("head_dim, head_dim_v", [(128, 128), (12, 12), (12, 20), (1, 3)])
def test_large_odd_and_unequal_head_dims(head_dim, head_dim_v):
    """Tiles pad D to a power of two >= 16 and mask it; v may have its own head dim."""
    check_against_reference([1, 59, 129], [7, 61, 33], heads=1, dim=head_dim, dim_v=head_dim_v,
                            dtype=torch.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_shared_kv_segments(dtype):
    """kv_index [0, 1, 0, 2]: one launch for all pairs; kv segment 0 collects gradients from two query segments,
    and kv segment 3, read by nobody, must get zero (written) gradients."""
    dk, dv = check_against_reference([7, 61, 1, 59], [59, 129, 7, 33], heads=2, dim=16, dtype=dtype,
                                     kv_index=[0, 1, 0, 2], scale=0.3)[1:]
    unused = slice(59 + 129 + 7, None)
    assert (dk[unused] == 0).all() and (dv[unused] == 0).all()


def test_small_tiles(monkeypatch):
    """The GPU-sized tiles (16 x 32) under the interpreter: many blocks per segment, partial last blocks, and the
    dK/dV loop over several query segments and blocks."""
    monkeypatch.setattr(kernels, "_config", lambda *args: kernels._Config(16, 32, 4, 1))
    check_against_reference([7, 59, 33], [59, 40], heads=2, dim=16, dtype=torch.float32, kv_index=[1, 0, 1])


@pytest.mark.parametrize("head_dim", [16, 12])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_packed_rows_match_reference(dtype, head_dim, launched_modes):
    """Many short, unequal segments with unequal key lengths and an empty key segment: the automatic choice packs
    the rows, and outputs and dq/dk/dv match the reference (the three-kernel backward forced: the one-pass
    backward would take these lengths, tested below)."""
    check_against_reference(SHORT_Q_LENGTHS, SHORT_KV_LENGTHS, heads=2, dim=head_dim, dtype=dtype,
                            backward="split")
    assert launched_modes == [("fwd", True), ("bwd", True)]


def test_packed_rows_small_tiles(monkeypatch):
    """16 x 16 packed tiles: segments straddle blocks, a block's key (query) range takes several loop trips, rows
    meet key blocks with none of their keys (the -inf running-max guard), and one 40-token segment spans three
    blocks (forced: packed rows are correct for any lengths)."""
    monkeypatch.setattr(kernels, "_packed_config", lambda *args: kernels._Config(16, 16, 4, 1))
    check_against_reference(SHORT_Q_LENGTHS + [40, 6], SHORT_KV_LENGTHS + [37, 0], heads=2, dim=12, dim_v=20,
                            dtype=torch.float32, scale=0.4, pack_rows=True, backward="split")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_forced_modes_agree(dtype):
    """Forced packed rows and forced one-segment-per-program on the same inputs (short and long segments, empty
    query and key segments): the same outputs and gradients up to rounding order."""
    q_lengths, kv_lengths = [1, 7, 59, 3, 0, 15, 2], [5, 61, 2, 0, 9, 33, 1]
    q, k, v = packed(q_lengths, 2, 16, dtype), packed(kv_lengths, 2, 16, dtype), packed(kv_lengths, 2, 16, dtype)
    grad_out = torch.randn(q.shape[0], 2, 16, device=DEVICE).to(dtype)
    results = {}
    for pack_rows in (False, True):
        out = varlen_attention(q, k, v, cu(q_lengths), cu(kv_lengths), pack_rows=pack_rows, backward="split")
        results[pack_rows] = (out, *torch.autograd.grad(out, (q, k, v), grad_out))
    for name, per_segment, packed_rows in zip(["output", "dq", "dk", "dv"], results[False], results[True]):
        assert_close(name, packed_rows, per_segment.float(), dtype)


def test_automatic_mode_choice(launched_modes):
    """Packed rows for an identity kv_index (None, or an explicit 0, 1, ... read back by the value checks) and
    segments up to half the packed tile (128 tokens under the interpreter, 32 on a GPU), queries and keys alike;
    one segment per program for longer segments, any other kv_index, or an explicit kv_index not read back."""
    limit = 128 if kernels.INTERPRET else 32
    assert kernels._auto_pack_rows(16, 16, limit, limit)
    assert not kernels._auto_pack_rows(16, 16, limit + 1, 1) and not kernels._auto_pack_rows(16, 16, 1, limit + 1)
    short, longer = [3, 9, 1], [5, 2, limit + 1]
    cases = [  # (q lengths, kv lengths, kv_index, extra arguments, packed?)
        (short, short[::-1], None, {}, True),
        (short, short, [0, 1, 2], {}, True),
        (short, short, [0, 1, 2], dict(check_values=False, max_seqlen_q=9, max_seqlen_k=9), False),
        (short, short, [1, 0, 2], {}, False),
        (short, short, [0, 0, 2], {}, False),
        (longer, short, None, {}, False),
        (short, longer, None, {}, False),
    ]
    for q_lengths, kv_lengths, kv_index, extra, expected in cases:
        q, k, v = (torch.randn(sum(n), 1, 16, device=DEVICE) for n in (q_lengths, kv_lengths, kv_lengths))
        index = None if kv_index is None else _int32(kv_index)
        varlen_attention(q, k, v, cu(q_lengths), cu(kv_lengths), kv_index=index, **extra)
        assert launched_modes.pop() == ("fwd", expected), (q_lengths, kv_lengths, kv_index, extra)


def test_padded_backend_matches_math():
    """The model's path: `padded(q, k, v, lengths, lengths)` on `(B*G, N, H, E)`, with NaN in the padding."""
    lengths = torch.tensor([61, 1, 30, 7], device=DEVICE)
    q, k, v = (torch.randn(4, 61, 2, 16, device=DEVICE) for _ in range(3))
    valid = layout.padding_mask(lengths, 61)[:, :, None, None]
    poisoned = [torch.where(valid, x, float("nan")).requires_grad_() for x in (q, k, v)]
    clean = [x.clone().requires_grad_() for x in (q, k, v)]
    grad_out = torch.randn(4, 61, 2, 16, device=DEVICE)

    out = TritonBackend().padded(*poisoned, lengths, lengths)
    ref = MathBackend().padded(*clean, lengths, lengths)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-4)
    assert (out[~valid.expand_as(out)] == 0).all()
    grads = torch.autograd.grad(out, poisoned, grad_out)
    ref_grads = torch.autograd.grad(ref, clean, grad_out)
    for grad, ref_grad in zip(grads, ref_grads):
        assert torch.isfinite(grad).all()
        torch.testing.assert_close(grad, ref_grad, atol=2e-5, rtol=2e-4)


def test_public_api_accepts_backend_object():
    """`attention_varlen(..., backend=TritonBackend())` runs the kernel through the validated public entry."""
    q_lengths = [7, 59]
    q, k, v = (torch.randn(66, 2, 32, device=DEVICE) for _ in range(3))
    out = attention_varlen(q, k, v, cu(q_lengths), cu(q_lengths), backend=TritonBackend())
    ref = attention_varlen(q, k, v, cu(q_lengths), cu(q_lengths), backend="math")
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-4)
    with pytest.raises(ValueError, match="causal"):
        attention(q[None], k[None], v[None], backend=TritonBackend(), causal=True)


@pytest.mark.parametrize("pack_rows", [False, True], ids=["per_segment", "packed"])
def test_empty_segments(pack_rows):
    """An empty query segment writes nothing; a query segment whose kv segment is empty gets zeros, not NaN."""
    q_lengths, kv_lengths = [5, 0, 9], [7, 3, 0]
    q, k, v = packed(q_lengths, 2, 16, torch.float32), packed(kv_lengths, 2, 16, torch.float32), \
        packed(kv_lengths, 2, 16, torch.float32)
    out = varlen_attention(q, k, v, cu(q_lengths), cu(kv_lengths), pack_rows=pack_rows, backward="split")
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    ref = reference(q[None, :5], k[None, :7], v[None, :7])[0]
    torch.testing.assert_close(out[:5], ref, atol=2e-5, rtol=2e-4)
    assert (out[5:] == 0).all() and (dq[5:] == 0).all()
    assert all(torch.isfinite(g).all() for g in (dq, dk, dv))
    assert (dk[7:] == 0).all() and (dv[7:] == 0).all()  # kv segment 1 is read by the empty query segment only


@pytest.mark.parametrize("mode", ["shared_kv", "packed"])
def test_backward_is_deterministic(mode):
    """dK/dV of a shared kv segment are summed in a fixed order by one program, and a packed block's keys are
    visited in a fixed order too: bitwise equal on reruns."""
    if mode == "shared_kv":
        q_lengths, kv_lengths, index = [7, 61, 33], [59, 40], _int32([0, 1, 0])
    else:
        q_lengths, kv_lengths, index = SHORT_Q_LENGTHS, SHORT_KV_LENGTHS, None
    q, k, v = packed(q_lengths, 2, 32, torch.float32), packed(kv_lengths, 2, 32, torch.float32), \
        packed(kv_lengths, 2, 32, torch.float32)
    grad_out = torch.randn(q.shape[0], 2, 32, device=DEVICE)
    runs = [torch.autograd.grad(varlen_attention(q, k, v, cu(q_lengths), cu(kv_lengths), kv_index=index,
                                                 pack_rows=mode == "packed", backward="split"), (q, k, v),
                                grad_out)
            for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_poisoning_catches_unwritten_rows():
    """The check behind every test here: rows no program covers (max_seqlen_q too small, unchecked) stay NaN.
    Per segment, max_seqlen_q = 7 sizes the work table for 2 blocks of 16 rows (interpreter tile), which go to the
    longest segment first: rows 7-38 of segment 1 are written, segment 0 and the rest of segment 1 are not.
    Packed rows cover every row whatever the max lengths say."""
    q, k, v = (torch.randn(66, 1, 16, device=DEVICE) for _ in range(3))
    out = varlen_attention(q, k, v, cu([7, 59]), cu([7, 59]), 7, 59, check_values=False, pack_rows=False)
    assert kernels._config("fwd", 16, 7, 59).block_m == 16
    assert torch.isfinite(out[7:7 + 32]).all() and torch.isnan(out[:7]).all() and torch.isnan(out[7 + 32:]).all()
    out = varlen_attention(q, k, v, cu([7, 59]), cu([7, 59]), 7, 59, check_values=False, pack_rows=True)
    assert torch.isfinite(out).all()


def _good_args():
    q, k, v = (torch.randn(10, 2, 16, device=DEVICE) for _ in range(3))
    return dict(q=q, k=k, v=v, cu_seqlens_q=cu([3, 7]), cu_seqlens_k=cu([4, 6]))


def _int32(values):
    return torch.tensor(values, dtype=torch.int32, device=DEVICE)


BAD_INPUTS = {
    "rank": (lambda a: a.update(q=a["q"][None]), "q must have rank 3"),
    "heads": (lambda a: a.update(k=a["k"][:, :1], v=a["v"][:, :1]), "head counts differ"),
    "head dims": (lambda a: a.update(k=torch.randn(10, 2, 8, device=DEVICE)), "head dims differ"),
    "head dim too big": (lambda a: a.update(v=torch.randn(10, 2, 129, device=DEVICE)), r"head_dim_v must lie"),
    "dtype": (lambda a: a.update(q=a["q"].double(), k=a["k"].double(), v=a["v"].double()), "dtype torch.float64"),
    "mixed dtypes": (lambda a: a.update(k=a["k"].half()), "share one dtype"),
    "kv tokens": (lambda a: a.update(v=a["v"][:9]), "same number of tokens"),
    "cu int64": (lambda a: a.update(cu_seqlens_q=a["cu_seqlens_q"].long()), "cu_seqlens_q must be a 1-D int32"),
    "cu start": (lambda a: a.update(cu_seqlens_q=_int32([1, 3, 10])), "cu_seqlens_q must start at 0"),
    "cu decreasing": (lambda a: a.update(cu_seqlens_k=_int32([0, 6, 4, 10]), kv_index=_int32([0, 2])),
                      "non-decreasing"),
    "cu end": (lambda a: a.update(cu_seqlens_k=_int32([0, 4, 9])), "end at the token count 10"),
    "cu short": (lambda a: a.update(cu_seqlens_k=_int32([0])), "at least 2 entries"),
    "segment counts": (lambda a: a.update(cu_seqlens_k=_int32([0, 4, 6, 10])), "same number of segments"),
    "max_seqlen": (lambda a: a.update(max_seqlen_q=5), "max_seqlen 5 is smaller than the longest segment 7"),
    "kv_index range": (lambda a: a.update(kv_index=_int32([0, 2])), r"kv_index values must lie in \[0, 1\]"),
    "kv_index count": (lambda a: a.update(kv_index=_int32([0])), "one entry per query segment"),
    "kv_index dtype": (lambda a: a.update(kv_index=_int32([0, 1]).long()), "kv_index must be a 1-D int32"),
    "cu device": (lambda a: a.update(cu_seqlens_q=a["cu_seqlens_q"].to("meta")), "cu_seqlens_q is on meta"),
    "qkv device": (lambda a: a.update(k=a["k"].to("meta")), "must be on one device"),
    "scale": (lambda a: a.update(scale=float("inf")), "scale must be finite"),
    "nondeterministic": (lambda a: a.update(deterministic=False), "deterministic=False"),
    "unchecked without max": (lambda a: a.update(check_values=False), "needs max_seqlen_q and max_seqlen_k"),
    "pack_rows type": (lambda a: a.update(pack_rows="yes"), "pack_rows must be None"),
    "pack_rows kv_index": (lambda a: a.update(pack_rows=True, kv_index=_int32([1, 0])),
                           "pack_rows=True needs kv_index to be the identity"),
    "pack_rows kv_index unchecked": (lambda a: a.update(pack_rows=True, kv_index=_int32([1, 0]), check_values=False,
                                                        max_seqlen_q=7, max_seqlen_k=6),
                                     "pack_rows=True needs kv_index to be the identity"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_invalid_inputs_raise(case):
    args = _good_args()
    mutate, message = BAD_INPUTS[case]
    mutate(args)
    with pytest.raises(ValueError, match=message):
        varlen_attention(**args)


def test_backend_capabilities():
    assert TritonBackend.NAME == "triton" and TritonBackend.IS_EXACT and TritonBackend.version()

    def reasons(**changes):
        fields = dict(device_type=DEVICE, dtype=torch.float32, head_dim=32, head_dim_v=32, num_heads=2,
                      masked=True)
        return TritonBackend.not_supported_reasons(AttentionInputs(**{**fields, **changes}))

    assert reasons() == []
    assert reasons(head_dim=12, head_dim_v=20, custom_scale=True, requires_grad=True) == []
    assert any("head_dim 160" in r for r in reasons(head_dim=160))
    assert any("causal" in r for r in reasons(causal=True))
    assert any("float64" in r for r in reasons(dtype=torch.float64))
    cpu_bf16 = reasons(device_type="cpu", dtype=torch.bfloat16)
    assert any("bfloat16 on CPU" in r for r in cpu_bf16)


# ---- one-launch backwards, work items, persistent grids ----
FUSED_Q_LENGTHS = [7, 59, 1, 0, 33, 61]  # an empty segment; identity kv_index pairs segment i with segment i
FUSED_KV_LENGTHS = [5, 61, 0, 9, 33, 1]  # an empty key segment, keys longer and shorter than queries
LONG_Q_LENGTHS = [130, 7, 0, 61, 200]  # longer than the interpreter's one-pass tile (128)
LONG_KV_LENGTHS = [129, 150, 3, 0, 64]


@pytest.mark.parametrize("head_dim, head_dim_v", [(16, 16), (32, 32), (12, 20)])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_fused_backward_matches_reference(dtype, head_dim, head_dim_v, launched_modes):
    """The one-pass backward (chosen automatically here: identity kv_index, segments within its tile) against the
    fp32 reference: odd lengths, empty query and key segments, unequal head dims."""
    check_against_reference(FUSED_Q_LENGTHS, FUSED_KV_LENGTHS, heads=2, dim=head_dim, dim_v=head_dim_v,
                            dtype=dtype, scale=0.3)
    assert launched_modes[-1] == ("bwd", "fused")


@pytest.mark.parametrize("tiles", [None, (16, 32)], ids=["interpreter_tiles", "small_tiles"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_segment_backward_matches_reference(dtype, tiles, monkeypatch):
    """One launch per (segment, head), any length: segments over the one-pass tile, empty query and key segments,
    and (small tiles) several key and query blocks in both phases, partial last blocks."""
    if tiles:
        monkeypatch.setattr(kernels, "_segment_config", lambda *args: kernels._Config(*tiles, 4, 1))
    check_against_reference(LONG_Q_LENGTHS, LONG_KV_LENGTHS, heads=2, dim=12, dim_v=20, dtype=dtype, scale=0.4,
                            backward="segment")


@pytest.mark.parametrize("backward", ["fused", "segment"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_one_launch_and_split_backward_agree(dtype, backward):
    """The one-launch backwards and the three-kernel one on the same forward: equal gradients up to rounding."""
    q, k, v = (packed(n, 2, 16, dtype) for n in (FUSED_Q_LENGTHS, FUSED_KV_LENGTHS, FUSED_KV_LENGTHS))
    grad_out = torch.randn(q.shape[0], 2, 16, device=DEVICE).to(dtype)
    results = {}
    for choice in (backward, "split"):
        out = varlen_attention(q, k, v, cu(FUSED_Q_LENGTHS), cu(FUSED_KV_LENGTHS), backward=choice)
        results[choice] = torch.autograd.grad(out, (q, k, v), grad_out)
    for name, one, split in zip(["dq", "dk", "dv"], results[backward], results["split"]):
        assert_close(name, one, split.float(), dtype)


@pytest.mark.parametrize("backward", ["fused", "segment"])
def test_one_launch_backward_few_programs(backward, monkeypatch):
    """Two persistent programs: each runs many (segment, head) units in its loop, the most work first."""
    monkeypatch.setattr(kernels, "INTERPRET_PROGRAMS", 2)
    check_against_reference(FUSED_Q_LENGTHS, FUSED_KV_LENGTHS, heads=3, dim=16, dtype=torch.float32,
                            backward=backward)


@pytest.mark.parametrize("backward", ["fused", "segment"])
def test_one_launch_backward_is_deterministic(backward):
    q, k, v = (packed(n, 2, 32, torch.float32) for n in (FUSED_Q_LENGTHS, FUSED_KV_LENGTHS, FUSED_KV_LENGTHS))
    grad_out = torch.randn(q.shape[0], 2, 32, device=DEVICE)
    runs = [torch.autograd.grad(varlen_attention(q, k, v, cu(FUSED_Q_LENGTHS), cu(FUSED_KV_LENGTHS),
                                                 backward=backward), (q, k, v), grad_out) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_automatic_backward_choice(launched_modes, monkeypatch):
    """"fused" for an identity kv_index with every segment within the one-pass tile (128 under the interpreter;
    64 on a GPU in fp16 / bf16 up to head dim 64, 32 in fp32 up to head dim 32); longer segments "segment" when
    the (segment, head) units fill the persistent grid (here: 2 programs), else "split"; any other kv_index
    "split"."""
    tile = kernels._fused_tile(16, torch.float32)
    assert tile == (128 if kernels.INTERPRET else 32)
    if not kernels.INTERPRET:
        assert kernels._fused_tile(64, torch.float16) == 64 and kernels._fused_tile(128, torch.float16) == 0
    monkeypatch.setattr(kernels, "INTERPRET_PROGRAMS", 2)
    cases = [  # (q lengths, kv lengths, kv_index, heads, backward)
        ([3, 9, tile], [tile, 2, 5], None, 1, "fused"),
        ([3, 9, 1], [5, 2, 7], [0, 1, 2], 1, "fused"),  # read back as the identity
        ([3, 9, 1], [5, 2, 7], [1, 0, 2], 1, False),  # split, per segment
        ([3, tile + 1], [5, 2], None, 1, "segment"),  # 2 units >= 2 programs
        ([tile + 1], [5], None, 1, False),  # 1 unit < 2 programs: split, per segment
        ([3, 2], [5, tile + 1], None, 1, "segment"),
    ]
    for q_lengths, kv_lengths, kv_index, heads, expected in cases:
        q, k, v = (packed(n, heads, 16, torch.float32) for n in (q_lengths, kv_lengths, kv_lengths))
        index = None if kv_index is None else _int32(kv_index)
        out = varlen_attention(q, k, v, cu(q_lengths), cu(kv_lengths), kv_index=index, pack_rows=False)
        out.sum().backward()
        got = launched_modes.pop()[1]
        assert got == expected, (q_lengths, kv_lengths, kv_index, got)  # False: split, per segment


def _restated_work(lengths, block):
    """Independent restatement: every segment's row blocks, segments by length descending (ties: index order)."""
    order = sorted(range(len(lengths)), key=lambda s: -lengths[s])
    return [(s, b) for s in order for b in range(-(-lengths[s] // block))]


@pytest.mark.parametrize("lengths", [[7, 59, 1, 0, 33, 61], [60] * 5, [0, 0, 5], [1], [130, 2, 129, 64, 63]])
@pytest.mark.parametrize("block", [16, 64])
def test_work_items(lengths, block):
    """The device-built work table holds exactly each segment's blocks, longest segment first; the count is exact;
    a grid sized from the lower bound never has an idle program (programs <= real units)."""
    offsets = cu(lengths)
    work = kernels._work_items(offsets, sum(lengths), max(lengths), block)
    expected = _restated_work(lengths, block)
    if work.uniform:
        items = [(i // work.blocks_per_segment, i % work.blocks_per_segment) for i in range(work.items)]
        assert work.items == len(expected)
    else:
        count = int(work.count)
        assert count == len(expected) <= work.items
        items = [tuple(row) for row in work.table[:count].tolist()]
    assert items == expected  # uniform: equal lengths, so longest first is index order
    assert work.lower <= len(expected)
    for heads in (1, 8):
        assert kernels._num_programs(work.lower * heads, "meta") <= len(expected) * heads


def test_longest_first_order():
    order, is_sorted = kernels._longest_first(cu([3, 9, 1, 9]), cu([2, 1, 5, 4]), 22, 12, 9, 5)
    assert is_sorted and order.tolist() == [3, 1, 0, 2]  # q_len * k_len: 6, 9, 5, 36
    _, is_sorted = kernels._longest_first(cu([4, 4]), cu([6, 6]), 8, 12, 4, 6)
    assert not is_sorted  # all full length: nothing to sort


BACKWARD_BAD_INPUTS = {
    "backward name": (dict(backward="fast"), "backward must be None"),
    "fused kv_index": (dict(backward="fused", kv_index=_int32([1, 0])),
                       "backward='fused' needs kv_index to be the identity"),
    "segment kv_index": (dict(backward="segment", kv_index=_int32([1, 0])),
                         "backward='segment' needs kv_index to be the identity"),
}


@pytest.mark.parametrize("case", list(BACKWARD_BAD_INPUTS))
def test_backward_choice_invalid(case):
    args = _good_args()
    changes, message = BACKWARD_BAD_INPUTS[case]
    args.update(changes)
    with pytest.raises(ValueError, match=message):
        varlen_attention(**args)


def test_fused_backward_too_long():
    tile = kernels._fused_tile(16, torch.float32)
    q, k, v = (torch.randn(tile + 1, 1, 16, device=DEVICE) for _ in range(3))
    with pytest.raises(ValueError, match=f"max lengths {tile + 1} / {tile + 1} > {tile}"):
        varlen_attention(q, k, v, cu([tile + 1]), cu([tile + 1]), backward="fused")


# ---- the model's padded calls, read in place ----
@pytest.mark.parametrize("lengths, n", [([61, 1, 30, 7], 64), ([5, 130, 1, 77], 140)], ids=["fused", "segment"])
@pytest.mark.parametrize("fused_qkv", [True, False], ids=["qkv", "q_kv"])
def test_padded_attend_reads_in_place(lengths, n, fused_qkv, monkeypatch):
    """`attend` with a padded layout: the kernels read the fused projections in place (packing is never called),
    padding is NaN on input and exactly zero in the output and every gradient; the N padded rows exceed the
    longest sequence (bucketed batches); the backward is one pass (N <= 128 here) or one launch per (segment,
    head). Outputs and gradients match `math`."""
    def no_packing(*args):
        raise AssertionError("the triton backend packed a padded call")

    monkeypatch.setattr(layout.PackedLayout, "pack", no_packing)
    heads, dim = 2, 16
    lay = layout.PackedLayout.from_lengths(torch.tensor(lengths, device=DEVICE), 1, n)
    valid = lay.valid[:, :, None, None]  # (S, N, 1, 1)
    kv = torch.randn(len(lengths), n, 3 if fused_qkv else 2, heads, dim, device=DEVICE)
    kv = torch.where(valid[:, :, None], kv, float("nan")).requires_grad_()
    q = None if fused_qkv else torch.where(valid, torch.randn(len(lengths), n, heads, dim, device=DEVICE),
                                           float("nan")).requires_grad_()
    inputs = [x for x in (q, kv) if x is not None]
    clean = [torch.nan_to_num(x.detach()).requires_grad_() for x in inputs]
    out = TritonBackend().attend(q, kv, lay)
    ref = MathBackend().attend(None if fused_qkv else clean[0], clean[-1], lay)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, inputs, grad_out)
    ref_grads = torch.autograd.grad(ref, clean, grad_out)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-4)
    assert (out[~valid.expand_as(out)] == 0).all()
    for grad, ref_grad in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref_grad, atol=2e-5, rtol=2e-4)
        padding = ~lay.valid.view(*lay.valid.shape, *([1] * (grad.dim() - 2))).expand_as(grad)
        assert (grad[padding] == 0).all()


def test_tuned_entries_apply_to_their_own_mode_only(monkeypatch):
    """A tuned "segment" entry sets per-segment tiles only: packed rows (whose fp32 tiles reuse the per-segment
    defaults) and the automatic packed / per-segment choice keep the defaults (GPU rules: no interpreter)."""
    monkeypatch.setattr(kernels, "INTERPRET", False)
    entry = dict(block_m=16, block_n=16, num_warps=2, num_stages=3)
    defaults = {dtype: kernels._packed_config("fwd", 32, dtype) for dtype in (torch.float32, torch.float16)}
    auto = [kernels._auto_pack_rows(32, 32, n, n, torch.float32) for n in (8, 16, 32)]
    monkeypatch.setattr(kernels, "tuned_config", lambda kernel, mode, *args: entry if mode == "segment" else None)
    assert kernels._config("fwd", 32, 60, 60, torch.float32) == kernels._Config(**entry)
    for dtype, default in defaults.items():
        assert kernels._packed_config("fwd", 32, dtype) == default, dtype
    assert [kernels._auto_pack_rows(32, 32, n, n, torch.float32) for n in (8, 16, 32)] == auto
