"""Tests for the naive Flowformer flow-attention reference (bpmt_fast.reference.flow).

The reference is checked against an independent restatement written here: one unpadded sequence and one head
at a time, float64, with the explicit Nq x Nk weight matrix W_ij = phi(q_i)·phi(k_j), so that
out = diag(sink_incoming * sink_allocation) W diag(source_competition) V (the causal one masks W to j <= i and
spells its prefix sums as loops). Plus a case computed by hand with `math`, padding, causality, validation and
low-precision dtypes.
"""
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bpmt_fast.reference.flow import flow_attention_reference

EPS = 1e-6


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: threads cost more than they save


# ---------------------------------------------------------------- independent quadratic restatement (float64)

def flow_quadratic(q, k, v, eps=EPS):
    """Non-causal flow attention of one sequence and head: q (Nq, D), k (Nk, D), v (Nk, Dv), all valid."""
    pq, pk = torch.sigmoid(q), torch.sigmoid(k)
    n_q, n_k = q.shape[0], k.shape[0]
    sink_incoming = 1.0 / ((pq + eps) @ (pk.sum(0) + eps))  # (Nq,)
    source_outgoing = 1.0 / ((pk + eps) @ (pq.sum(0) + eps))  # (Nk,)
    conserved_sink = (pq + eps) @ ((pk * source_outgoing[:, None]).sum(0) + eps)  # (Nq,)
    conserved_source = ((pk + eps) @ ((pq * sink_incoming[:, None]).sum(0) + eps)).clamp(-1.0, 1.0)  # (Nk,)
    sink_allocation = torch.sigmoid(conserved_sink * n_q / n_k)
    source_competition = torch.softmax(conserved_source, dim=0) * n_k
    weights = pq @ pk.T  # (Nq, Nk)
    return torch.diag(sink_incoming * sink_allocation) @ weights @ torch.diag(source_competition) @ v


def flow_causal_quadratic(q, k, v, eps=EPS):
    """Causal flow attention of one sequence and head, prefix sums spelt out as loops: q, k (N, D), v (N, Dv)."""
    pq, pk = torch.sigmoid(q), torch.sigmoid(k)
    n = q.shape[0]
    sink_incoming = torch.stack([(i + 1) / ((pq[i] + eps) @ (pk[: i + 1].sum(0) + eps)) for i in range(n)])
    source_outgoing = torch.stack([(i + 1) / ((pk[i] + eps) @ (pq[: i + 1].sum(0) + eps)) for i in range(n)])
    conserved_sink, conserved_source = [], []
    for i in range(n):
        prefix_k = (pk[: i + 1] * source_outgoing[: i + 1, None]).sum(0)
        prefix_q = (pq[: i + 1] * sink_incoming[: i + 1, None]).sum(0)
        conserved_sink.append((pq[i] + eps) @ (prefix_k + eps) / (i + 1))
        conserved_source.append(((pk[i] + eps) @ (prefix_q + eps) / (i + 1)).clamp(-1.0, 1.0))
    sink_allocation = torch.sigmoid(torch.stack(conserved_sink))
    conserved_source = torch.stack(conserved_source)
    source_competition = torch.stack([torch.softmax(conserved_source[: i + 1], 0)[i] * (i + 1) for i in range(n)])
    counts = torch.arange(1, n + 1, dtype=q.dtype)
    weights = (pq @ pk.T) * torch.ones(n, n, dtype=torch.bool).tril()  # (N, N), j <= i
    return torch.diag(sink_incoming / counts * sink_allocation) @ weights @ torch.diag(source_competition) @ v


def restate(q, k, v, q_lengths, kv_lengths, causal=False):
    """Padded batch `(B, N, H, D)` -> `(B, Nq, H, Dv)`, one valid sequence and head at a time, zeros at padding."""
    batch, n_q, heads, _ = q.shape
    out = torch.zeros(batch, n_q, heads, v.shape[-1], dtype=q.dtype)
    fn = flow_causal_quadratic if causal else flow_quadratic
    for b in range(batch):
        lq = n_q if q_lengths is None else int(q_lengths[b])
        lk = k.shape[1] if kv_lengths is None else int(kv_lengths[b])
        for h in range(heads):
            out[b, :lq, h] = fn(q[b, :lq, h], k[b, :lk, h], v[b, :lk, h])
    return out


def random_qkv(batch, n_q, n_k, heads, d, dv, dtype=torch.float64, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    # scale 2: phi = sigmoid spans most of (0, 1) instead of hugging 0.5
    q = (2 * torch.randn(batch, n_q, heads, d, generator=g, dtype=dtype)).requires_grad_(requires_grad)
    k = (2 * torch.randn(batch, n_k, heads, d, generator=g, dtype=dtype)).requires_grad_(requires_grad)
    v = torch.randn(batch, n_k, heads, dv, generator=g, dtype=dtype).requires_grad_(requires_grad)
    return q, k, v


def outputs_and_grads(fn, q, k, v, seed=1):
    out = fn(q, k, v)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    grads = torch.autograd.grad((out * g).sum(), (q, k, v))
    return out, grads


def assert_matches_restatement(q, k, v, q_lengths, kv_lengths, causal, **kwargs):
    ref_out, ref_grads = outputs_and_grads(
        lambda q, k, v: flow_attention_reference(
            q, k, v, q_lengths=q_lengths, kv_lengths=kv_lengths, causal=causal, **kwargs
        ), q, k, v)
    exp_out, exp_grads = outputs_and_grads(lambda q, k, v: restate(q, k, v, q_lengths, kv_lengths, causal), q, k, v)
    torch.testing.assert_close(ref_out, exp_out, rtol=1e-9, atol=1e-11)
    for name, got, want in zip("qkv", ref_grads, exp_grads):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-11, msg=lambda m: f"grad {name}: {m}")


# ---------------------------------------------------------------- against the restatement

@pytest.mark.parametrize("d", [16, 32, 64])
def test_noncausal_matches_quadratic_restatement(d):
    q_lengths = torch.tensor([1, 7, 59, 61, 129])
    kv_lengths = torch.tensor([61, 129, 1, 7, 59])
    q, k, v = random_qkv(5, 129, 133, 2, d, 24, seed=d, requires_grad=True)  # Nq != Nk, both padded
    assert_matches_restatement(q, k, v, q_lengths, kv_lengths, causal=False)


@pytest.mark.parametrize("d", [16, 32, 64])
def test_causal_matches_quadratic_restatement(d):
    lengths = torch.tensor([1, 7, 59, 61, 129])
    q, k, v = random_qkv(5, 129, 129, 2, d, 24, seed=d, requires_grad=True)  # N = 2 chunks of 64 + 1
    assert_matches_restatement(q, k, v, lengths, lengths, causal=True)


@pytest.mark.parametrize("chunk_size", [1, 5, 64, 128, 129, 500])
def test_causal_chunk_size_does_not_change_result(chunk_size):
    lengths = torch.tensor([129, 70])
    q, k, v = random_qkv(2, 129, 129, 1, 8, 6, seed=3, requires_grad=True)
    assert_matches_restatement(q, k, v, lengths, lengths, causal=True, chunk_size=chunk_size)


def test_unpadded_inputs_without_lengths():
    q, k, v = random_qkv(2, 9, 13, 3, 16, 5, seed=4, requires_grad=True)
    full_q, full_k = torch.tensor([9, 9]), torch.tensor([13, 13])
    assert_matches_restatement(q, k, v, None, None, causal=False)
    torch.testing.assert_close(flow_attention_reference(q, k, v), restate(q, k, v, full_q, full_k))
    q, k, v = random_qkv(2, 9, 9, 3, 16, 5, seed=5)
    torch.testing.assert_close(flow_attention_reference(q, k, v, causal=True),
                               restate(q, k, v, full_q, full_q, causal=True))


# ---------------------------------------------------------------- by hand

def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def test_hand_computed_noncausal():
    """B=1, H=1, N=2, D=1, Dv=1; raw q = [0, ln 3] -> phi_q = [1/2, 3/4], raw k = [ln 3, 0] -> phi_k = [3/4, 1/2].

    Without eps: sum phi_k = sum phi_q = 5/4, sink_incoming = [1.6, 16/15], source_outgoing = [16/15, 1.6];
    both conservation sums are 1.6, so conserved_sink = [0.8, 1.2] and conserved_source = [1.2, 0.8], which the
    clamp turns into [1.0, 0.8]; source_competition = 2 * softmax([1.0, 0.8]).
    """
    pq, pk, vals = [0.5, 0.75], [0.75, 0.5], [1.0, -2.0]
    eps = EPS
    # 1. flows
    sink_in = [1 / ((pq[i] + eps) * (sum(pk) + eps)) for i in range(2)]
    src_out = [1 / ((pk[j] + eps) * (sum(pq) + eps)) for j in range(2)]
    # 2. conservation (+ clamp)
    cons_sink = [(pq[i] + eps) * (pk[0] * src_out[0] + pk[1] * src_out[1] + eps) for i in range(2)]
    cons_src = [(pk[j] + eps) * (pq[0] * sink_in[0] + pq[1] * sink_in[1] + eps) for j in range(2)]
    assert cons_src[0] > 1.0  # the clamp is exercised
    cons_src = [min(max(c, -1.0), 1.0) for c in cons_src]
    # 3. allocation (Nq/Nk = 1) and competition (softmax * Nk)
    alloc = [_sigmoid(c * 2 / 2) for c in cons_sink]
    z = math.exp(cons_src[0]) + math.exp(cons_src[1])
    comp = [math.exp(c) / z * 2 for c in cons_src]
    # 4. output
    kv = sum(pk[j] * vals[j] * comp[j] for j in range(2))
    expected = [pq[i] * sink_in[i] * kv * alloc[i] for i in range(2)]
    assert abs(sink_in[0] - 1.6) < 1e-5 and abs(cons_sink[1] - 1.2) < 1e-5  # matches the docstring

    q = torch.tensor([0.0, math.log(3)], dtype=torch.float64).view(1, 2, 1, 1)
    k = torch.tensor([math.log(3), 0.0], dtype=torch.float64).view(1, 2, 1, 1)
    v = torch.tensor(vals, dtype=torch.float64).view(1, 2, 1, 1)
    out = flow_attention_reference(q, k, v)
    torch.testing.assert_close(out.flatten(), torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_hand_computed_causal():
    """Same numbers, causal: every sum runs over j <= i and n_i = i + 1 rescales the flows."""
    pq, pk, vals = [0.5, 0.75], [0.75, 0.5], [1.0, -2.0]
    eps = EPS
    n = [1, 2]
    sink_in = [n[i] / ((pq[i] + eps) * (sum(pk[: i + 1]) + eps)) for i in range(2)]
    src_out = [n[i] / ((pk[i] + eps) * (sum(pq[: i + 1]) + eps)) for i in range(2)]
    cons_sink = [(pq[i] + eps) * (sum(pk[j] * src_out[j] for j in range(i + 1)) + eps) / n[i] for i in range(2)]
    cons_src = [(pk[i] + eps) * (sum(pq[j] * sink_in[j] for j in range(i + 1)) + eps) / n[i] for i in range(2)]
    cons_src = [min(max(c, -1.0), 1.0) for c in cons_src]
    alloc = [_sigmoid(c) for c in cons_sink]
    comp = [math.exp(cons_src[i]) / sum(math.exp(cons_src[j]) for j in range(i + 1)) * n[i] for i in range(2)]
    expected = [
        pq[i] * sink_in[i] / n[i] * sum(pk[j] * vals[j] * comp[j] for j in range(i + 1)) * alloc[i] for i in range(2)
    ]
    q = torch.tensor([0.0, math.log(3)], dtype=torch.float64).view(1, 2, 1, 1)
    k = torch.tensor([math.log(3), 0.0], dtype=torch.float64).view(1, 2, 1, 1)
    v = torch.tensor(vals, dtype=torch.float64).view(1, 2, 1, 1)
    out = flow_attention_reference(q, k, v, causal=True)
    torch.testing.assert_close(out.flatten(), torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- padding

@pytest.mark.parametrize("causal", [False, True])
def test_padded_equals_alone(causal):
    n_q, n_k = (37, 37) if causal else (37, 23)
    q, k, v = random_qkv(1, n_q, n_k, 2, 16, 8, seed=6)
    # put the sequence in slot 1 of a padded batch, next to a longer sequence
    pq, pk, pv = random_qkv(2, 50, 50, 2, 16, 8, seed=7)
    pq[1, :n_q], pk[1, :n_k], pv[1, :n_k] = q[0], k[0], v[0]
    q_lengths, kv_lengths = torch.tensor([50, n_q]), torch.tensor([50, n_k])
    alone = flow_attention_reference(q, k, v, causal=causal)
    padded = flow_attention_reference(pq, pk, pv, q_lengths=q_lengths, kv_lengths=kv_lengths, causal=causal)
    torch.testing.assert_close(padded[1, :n_q], alone[0], rtol=1e-12, atol=1e-13)
    assert torch.all(padded[1, n_q:] == 0)


@pytest.mark.parametrize("causal", [False, True])
def test_nan_padding_is_ignored(causal):
    lengths = torch.tensor([5, 17, 30])
    q, k, v = random_qkv(3, 30, 30, 2, 8, 4, dtype=torch.float32, seed=8)
    pad = torch.arange(30)[None, :] >= lengths[:, None]  # (B, N)
    clean = [torch.where(pad[:, :, None, None], 0.0, t) for t in (q, k, v)]
    dirty = [torch.where(pad[:, :, None, None], float("nan"), t).requires_grad_() for t in (q, k, v)]
    kwargs = dict(q_lengths=lengths, kv_lengths=lengths, causal=causal)
    out = flow_attention_reference(*dirty, **kwargs)
    torch.testing.assert_close(out, flow_attention_reference(*clean, **kwargs), rtol=0, atol=0)
    assert torch.all(out[pad] == 0)
    grads = torch.autograd.grad(out.square().sum() + out.sum(), dirty)
    for name, g in zip("qkv", grads):
        assert torch.isfinite(g).all(), name
        assert torch.all(g[pad] == 0), name


# ---------------------------------------------------------------- causality

@pytest.mark.parametrize("position", [0, 15, 16, 40, 99])
def test_causal_output_ignores_later_tokens(position):
    q, k, v = random_qkv(2, 100, 100, 2, 8, 4, seed=9)
    later = slice(position + 1, None)
    q2, k2, v2 = random_qkv(2, 100, 100, 2, 8, 4, seed=10)  # same prefix, different later tokens
    q2[:, : position + 1], k2[:, : position + 1], v2[:, : position + 1] = (t[:, : position + 1] for t in (q, k, v))
    a = flow_attention_reference(q, k, v, causal=True, chunk_size=16)
    b = flow_attention_reference(q2, k2, v2, causal=True, chunk_size=16)
    torch.testing.assert_close(a[:, : position + 1], b[:, : position + 1], rtol=1e-13, atol=1e-14)
    # and no gradient flows from position i back to any later token
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    out = flow_attention_reference(qg, kg, vg, causal=True, chunk_size=16)
    grads = torch.autograd.grad(out[:, position].sum(), (qg, kg, vg))
    for name, g in zip("qkv", grads):
        assert torch.all(g[:, later] == 0), name


# ---------------------------------------------------------------- no quadratic / per-token-state tensors

class _RecordShapes(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


def test_noncausal_never_builds_nq_by_nk():
    q, k, v = random_qkv(2, 37, 41, 3, 8, 12, seed=11)
    with _RecordShapes() as rec:
        flow_attention_reference(q, k, v)
    assert rec.shapes
    assert not [s for s in rec.shapes if 37 in s and 41 in s]


def test_causal_never_builds_per_token_states():
    batch, n, heads, d, dv = 2, 150, 3, 8, 12
    q, k, v = random_qkv(batch, n, n, heads, d, dv, seed=12)
    with _RecordShapes() as rec:
        flow_attention_reference(q, k, v, causal=True, chunk_size=16)
    biggest = max(math.prod(s) for s in rec.shapes)
    assert biggest <= batch * n * heads * max(d, dv)  # a (B, N, H, D, Dv) tensor would be 8x larger


# ---------------------------------------------------------------- dtypes

@pytest.mark.parametrize("causal", [False, True])
def test_float32_close_to_float64(causal):
    lengths = torch.tensor([1, 59, 129])
    q, k, v = random_qkv(3, 129, 129, 2, 32, 16, seed=13)
    kwargs = dict(q_lengths=lengths, kv_lengths=lengths, causal=causal)
    out32 = flow_attention_reference(q.float(), k.float(), v.float(), **kwargs)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), flow_attention_reference(q, k, v, **kwargs), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype, tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
def test_half_precision_inputs(dtype, tol, causal):
    lengths = torch.tensor([7, 61])
    q, k, v = random_qkv(2, 61, 61, 2, 16, 16, dtype=dtype, seed=14)
    kwargs = dict(q_lengths=lengths, kv_lengths=lengths, causal=causal)
    out = flow_attention_reference(q, k, v, **kwargs)
    assert out.dtype == dtype
    # same (already rounded) inputs in float32: only the output rounding differs
    want = flow_attention_reference(q.float(), k.float(), v.float(), **kwargs)
    torch.testing.assert_close(out.float(), want, rtol=tol, atol=tol)


# ---------------------------------------------------------------- validation

def _qkv(bq=2, nq=5, hq=3, dq=4, bk=2, nk=7, hk=3, dk=4, nv=7, dv=6, dtype=torch.float32):
    shapes = [(bq, nq, hq, dq), (bk, nk, hk, dk), (bk, nv, hk, dv)]
    return tuple(torch.randn(shape).to(dtype) for shape in shapes)


@pytest.mark.parametrize("make, kwargs, match", [
    (lambda: (torch.randn(2, 5, 4), *_qkv()[1:]), {}, r"q must have rank 4.*\(2, 5, 4\)"),
    (lambda: (_qkv()[0], torch.randn(2, 7, 3, 4, 1), _qkv()[2]), {}, r"k must have rank 4.*\(2, 7, 3, 4, 1\)"),
    (lambda: _qkv(dtype=torch.int64), {}, r"q must have a floating dtype.*torch.int64"),
    (lambda: (_qkv()[0].double(), *_qkv()[1:]), {}, r"dtypes differ.*float64"),
    (lambda: (_qkv()[0], _qkv()[1].to("meta"), _qkv()[2]), {}, r"devices differ.*meta"),
    (lambda: _qkv(bk=3), {}, r"batch size B differs: q 2, k 3"),
    (lambda: _qkv(hk=1), {}, r"head count H differs: q 3, k 1"),
    (lambda: _qkv(dk=8), {}, r"head dim D differs: q 4, k 8"),
    (lambda: _qkv(nv=6), {}, r"Nk differs: k 7, v 6"),
    (lambda: _qkv(), dict(q_lengths=torch.tensor([5, 5, 5])), r"q_lengths must have shape \(2,\), got \(3,\)"),
    (lambda: _qkv(), dict(q_lengths=torch.tensor([[5, 5]])), r"q_lengths must have shape \(2,\), got \(1, 2\)"),
    (lambda: _qkv(), dict(kv_lengths=torch.tensor([5.0, 5.0])), r"kv_lengths must have an integer dtype.*float32"),
    (lambda: _qkv(), dict(kv_lengths=[5, 5]), r"kv_lengths must be an integer tensor.*list"),
    (lambda: _qkv(), dict(q_lengths=torch.tensor([0, 5])), r"q_lengths must lie in \[1, 5\], got values in \[0, 5\]"),
    (lambda: _qkv(), dict(kv_lengths=torch.tensor([7, 8])),
     r"kv_lengths must lie in \[1, 7\], got values in \[7, 8\]"),
    (lambda: _qkv(), dict(causal=True), r"needs Nq == Nk, got Nq=5, Nk=7"),
    (lambda: _qkv(nk=5, nv=5), dict(causal=True, q_lengths=torch.tensor([5, 3]), kv_lengths=torch.tensor([5, 4])),
     r"equal q_lengths and kv_lengths, got \[5, 3\] and \[5, 4\]"),
    (lambda: _qkv(nk=5, nv=5), dict(causal=True, q_lengths=torch.tensor([5, 3])),
     r"equal q_lengths and kv_lengths, got \[5, 3\] and \[5, 5\]"),
    (lambda: _qkv(), dict(eps=0.0), r"eps must be > 0, got 0.0"),
    (lambda: _qkv(), dict(chunk_size=0), r"chunk_size must be a positive int, got 0"),
])
def test_validation_errors(make, kwargs, match):
    q, k, v = make()
    with pytest.raises(ValueError, match=match):
        flow_attention_reference(q, k, v, **kwargs)
