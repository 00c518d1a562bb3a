"""The public attention API around the kernels: input validation, backend selection (names, env var, `auto`),
the declarative capability checks, the thin flash-attn / xformers wrappers (driven through fake modules, so
the layout conversions are tested without the packages or a GPU) and the layout helpers.

Everything here runs on CPU with small shapes."""
from __future__ import annotations

import dataclasses
import importlib.util
import re
import sys
import types

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpmt_fast.attention import (AUTO_PRIORITY, BACKENDS, ENV_VAR, AttentionBackend, AttentionInputs, AutoBackend,
                                 BackendError, attention, attention_varlen, backend_names, check_backend_name,
                                 default_backend_name, get_backend, layout, register)
from bpmt_fast.attention import base as attention_base
from bpmt_fast.attention.flash_attn import FlashAttnBackend
from bpmt_fast.attention.flex import FlexBackend
from bpmt_fast.attention.flow import FlowBackend
from bpmt_fast.attention.math import MathBackend
from bpmt_fast.attention.sdpa import SdpaBackend, SdpaEfficientBackend
from bpmt_fast.attention.xformers import XformersBackend
from bpmt_fast.reference.softmax import softmax_attention_reference

ATOL, RTOL = 2e-5, 2e-4
HAS_FLASH_ATTN = importlib.util.find_spec("flash_attn") is not None
HAS_XFORMERS = importlib.util.find_spec("xformers") is not None
needs_no_flash_attn = pytest.mark.skipif(HAS_FLASH_ATTN, reason="flash-attn is installed here")
needs_no_xformers = pytest.mark.skipif(HAS_XFORMERS, reason="xformers is installed here")


def randn(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


def with_nan_padding(x, lengths):
    """x with NaN in every padded token (valid tokens untouched)."""
    mask = layout.padding_mask(lengths, x.shape[1]).view(x.shape[0], x.shape[1], *([1] * (x.dim() - 2)))
    return torch.where(mask, x, float("nan"))


# ---------------------------------------------------------------------------------------------------------------
# 1. Input validation: every problem is a ValueError naming it
# ---------------------------------------------------------------------------------------------------------------

B, N, H, D = 2, 4, 2, 8


def padded_args():
    return dict(q=randn(B, N, H, D), k=randn(B, N, H, D), v=randn(B, N, H, D), q_lengths=None, kv_lengths=None,
                causal=False, backend="math")


def _set(**values):
    def mutate(args):
        args.update(values)
    return mutate


def _poison(name, index, value, **extra):
    def mutate(args):
        args.update(extra)
        x = args[name].clone()
        x[index] = value
        args[name] = x
    return mutate


PADDED_CASES = [
    ("q-rank3", _set(q=randn(B, N, D)), r"q must have rank 4 \(B, N, H, D\), got shape \(2, 4, 8\)"),
    ("k-rank5", _set(k=randn(B, N, H, D, 1)), r"k must have rank 4"),
    ("v-rank2", _set(v=randn(B, N)), r"v must have rank 4"),
    ("q-list", _set(q=[[1.0]]), r"q must be a torch\.Tensor, got list"),
    ("v-float", _set(v=1.0), r"v must be a torch\.Tensor, got float"),
    ("k-int", _set(k=torch.ones(B, N, H, D, dtype=torch.int64)), r"k must be a floating-point tensor.*int64"),
    ("q-bool", _set(q=torch.ones(B, N, H, D, dtype=torch.bool)), r"q must be a floating-point tensor.*bool"),
    ("dtype-mismatch", _set(v=randn(B, N, H, D, dtype=torch.float64)),
     r"q, k, v must share one dtype, got torch\.float32, torch\.float32, torch\.float64"),
    ("device-mismatch", _set(k=torch.empty(B, N, H, D, device="meta")),
     r"q, k, v must be on one device, got cpu, meta, cpu"),
    ("batch-mismatch", _set(k=randn(B + 1, N, H, D), v=randn(B + 1, N, H, D)), r"batch sizes differ: q 2, k 3, v 3"),
    ("heads-mismatch", _set(v=randn(B, N, H + 1, D)), r"head counts differ: q 2, k 2, v 3"),
    ("head-dim-mismatch", _set(k=randn(B, N, H, D // 2)), r"q and k head dims differ: 8 and 4"),
    ("head-dim-zero", _set(q=randn(B, N, H, 0), k=randn(B, N, H, 0)), r"head_dim must be positive"),
    ("kv-length-mismatch", _set(v=randn(B, N + 1, H, D)), r"k and v must have the same length, got 4 and 5"),
    ("lengths-shape", _set(q_lengths=torch.tensor([1, 2, 3])), r"q_lengths must have shape \(2,\), got \(3,\)"),
    ("lengths-2d", _set(kv_lengths=torch.tensor([[1, 2]])), r"kv_lengths must have shape \(2,\), got \(1, 2\)"),
    ("lengths-float", _set(kv_lengths=torch.tensor([1.0, 2.0])), r"kv_lengths must be an integer tensor"),
    ("lengths-bool", _set(q_lengths=torch.tensor([True, True])), r"q_lengths must be an integer tensor"),
    ("lengths-list", _set(q_lengths=[1, 2]), r"q_lengths must be an integer tensor"),
    ("lengths-zero", _set(q_lengths=torch.tensor([0, 4])), r"q_lengths must lie in \[1, 4\], got values from 0 to 4"),
    ("lengths-too-long", _set(kv_lengths=torch.tensor([1, N + 1])),
     r"kv_lengths must lie in \[1, 4\], got values from 1 to 5"),
    ("nan-q", _poison("q", (1, 2, 0, 3), float("nan")),
     r"q contains NaN or inf in valid tokens \(first at index \(1, 2, 0, 3\)\)"),
    ("inf-k", _poison("k", (0, 0, 1, 0), float("inf")), r"k contains NaN or inf in valid tokens"),
    ("neg-inf-v", _poison("v", (0, 3, 0, 0), float("-inf")), r"v contains NaN or inf in valid tokens"),
    ("nan-v-valid-with-lengths", _poison("v", (0, 1, 0, 0), float("nan"), kv_lengths=torch.tensor([2, 4])),
     r"v contains NaN or inf in valid tokens"),
    ("causal-nq-nk", _set(q=randn(B, N - 1, H, D), causal=True), r"causal attention needs Nq == Nk, got 3 and 4"),
    ("causal-lengths", _set(causal=True, q_lengths=torch.tensor([4, 2]), kv_lengths=torch.tensor([4, 3])),
     r"causal attention needs q_lengths == kv_lengths"),
]


@pytest.mark.parametrize("mutate, match", [c[1:] for c in PADDED_CASES], ids=[c[0] for c in PADDED_CASES])
def test_attention_rejects_bad_input(mutate, match):
    args = padded_args()
    mutate(args)
    with pytest.raises(ValueError, match=match):
        attention(**args)


TQ, TK = 5, 7  # packed: q segments [2, 3], k segments [3, 4]


def varlen_args():
    return dict(q=randn(TQ, H, D), k=randn(TK, H, D), v=randn(TK, H, D), cu_seqlens_q=torch.tensor([0, 2, 5]),
                cu_seqlens_k=torch.tensor([0, 3, 7]), causal=False, backend="math")


VARLEN_CASES = [
    ("q-rank4", _set(q=randn(1, TQ, H, D)), r"q must have rank 3 \(total, H, D\), got shape \(1, 5, 2, 8\)"),
    ("v-rank2", _set(v=randn(TK, D)), r"v must have rank 3"),
    ("k-tuple", _set(k=(1.0,)), r"k must be a torch\.Tensor, got tuple"),
    ("q-int", _set(q=torch.ones(TQ, H, D, dtype=torch.int32)), r"q must be a floating-point tensor.*int32"),
    ("dtype-mismatch", _set(k=randn(TK, H, D, dtype=torch.float16)), r"must share one dtype"),
    ("device-mismatch", _set(v=torch.empty(TK, H, D, device="meta")), r"must be on one device, got cpu, cpu, meta"),
    ("token-mismatch", _set(v=randn(TK + 1, H, D)), r"k and v must have the same number of tokens, got 7 and 8"),
    ("heads-mismatch", _set(k=randn(TK, H + 1, D)), r"head counts differ: q 2, k 3, v 2"),
    ("head-dim-mismatch", _set(q=randn(TQ, H, D + 1)), r"q and k head dims differ: 9 and 8"),
    ("cu-float", _set(cu_seqlens_q=torch.tensor([0.0, 2.0, 5.0])), r"cu_seqlens_q must be a 1-D integer tensor"),
    ("cu-2d", _set(cu_seqlens_k=torch.tensor([[0, 3, 7]])), r"cu_seqlens_k must be a 1-D integer tensor"),
    ("cu-one-entry", _set(cu_seqlens_q=torch.tensor([5])), r"cu_seqlens_q must be a 1-D integer tensor .* at least 2"),
    ("cu-list", _set(cu_seqlens_q=[0, 2, 5]), r"cu_seqlens_q must be a 1-D integer tensor"),
    ("cu-not-from-0", _set(cu_seqlens_q=torch.tensor([1, 2, 5])),
     r"cu_seqlens_q must start at 0 and end at the token count 5, got 1 \.\.\. 5"),
    ("cu-not-to-total", _set(cu_seqlens_k=torch.tensor([0, 3, 6])),
     r"cu_seqlens_k must start at 0 and end at the token count 7, got 0 \.\.\. 6"),
    ("cu-decreasing", _set(cu_seqlens_q=torch.tensor([0, 3, 2, 5]), cu_seqlens_k=torch.tensor([0, 3, 5, 7])),
     r"cu_seqlens_q must be strictly increasing.*\[0, 3, 2, 5\]"),
    ("cu-empty-segment", _set(cu_seqlens_q=torch.tensor([0, 2, 5]), cu_seqlens_k=torch.tensor([0, 7, 7])),
     r"cu_seqlens_k must be strictly increasing \(every segment at least 1 token\)"),
    ("segment-count", _set(cu_seqlens_q=torch.tensor([0, 5])),
     r"cu_seqlens_q and cu_seqlens_k must have the same number of segments, got 1 and 2"),
    ("max-seqlen-q", _set(max_seqlen_q=2), r"max_seqlen 2 is smaller than the longest segment 3 in cu_seqlens_q"),
    ("max-seqlen-k", _set(max_seqlen_k=3), r"max_seqlen 3 is smaller than the longest segment 4 in cu_seqlens_k"),
    ("nan-q", _poison("q", (4, 1, 7), float("nan")),
     r"q contains NaN or inf in valid tokens \(first at index \(4, 1, 7\)\)"),
    ("inf-k", _poison("k", (0, 0, 0), float("inf")), r"k contains NaN or inf"),
    ("nan-v", _poison("v", (6, 1, 0), float("nan")), r"v contains NaN or inf"),
    ("causal-different-segments", _set(causal=True, k=randn(TQ, H, D), v=randn(TQ, H, D),
                                       cu_seqlens_k=torch.tensor([0, 3, 5])),
     r"causal attention needs cu_seqlens_q == cu_seqlens_k"),
]


@pytest.mark.parametrize("mutate, match", [c[1:] for c in VARLEN_CASES], ids=[c[0] for c in VARLEN_CASES])
def test_attention_varlen_rejects_bad_input(mutate, match):
    args = varlen_args()
    mutate(args)
    with pytest.raises(ValueError, match=match):
        attention_varlen(**args)


def test_valid_inputs_pass_validation():
    """The base arguments of both case tables are valid: each case fails only because of its mutation."""
    assert attention(**padded_args()).shape == (B, N, H, D)
    assert attention_varlen(**varlen_args()).shape == (TQ, H, D)
    args = varlen_args()
    assert attention_varlen(**args, max_seqlen_q=3, max_seqlen_k=4).shape == (TQ, H, D)  # exact max is fine


@pytest.mark.parametrize("backend", ["math", "sdpa", None])
def test_nan_only_in_padding_is_accepted(backend):
    q_lengths, kv_lengths = torch.tensor([1, 3]), torch.tensor([2, 4])
    q, k, v = randn(B, 3, H, D), randn(B, N, H, D), randn(B, N, H, D)
    clean = attention(q, k, v, backend=backend, q_lengths=q_lengths, kv_lengths=kv_lengths)
    out = attention(with_nan_padding(q, q_lengths), with_nan_padding(k, kv_lengths), with_nan_padding(v, kv_lengths),
                    backend=backend, q_lengths=q_lengths, kv_lengths=kv_lengths)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, clean)
    assert (out[0, 1:] == 0).all()  # padded queries give zeros


def test_lengths_at_bounds_are_accepted():
    """1 and N are the inclusive bounds of a length."""
    q, k, v = randn(B, N, H, D), randn(B, N, H, D), randn(B, N, H, D)
    out = attention(q, k, v, backend="math", q_lengths=torch.tensor([1, N], dtype=torch.int32),
                    kv_lengths=torch.tensor([N, 1]))
    assert torch.isfinite(out).all()


def test_causal_with_equal_lengths_is_accepted():
    q, k, v = randn(B, N, H, D), randn(B, N, H, D), randn(B, N, H, D)
    lengths = torch.tensor([2, 4])
    out = attention(q, k, v, backend="math", causal=True, q_lengths=lengths, kv_lengths=lengths)
    assert torch.isfinite(out).all()


def test_causal_rejects_short_kv_lengths_when_q_lengths_is_none():
    q, k, v = randn(B, N, H, D), randn(B, N, H, D), randn(B, N, H, D)
    kv_lengths = torch.tensor([2, 4])
    # The explicit form of the same call is rejected ...
    with pytest.raises(ValueError, match="causal attention needs q_lengths == kv_lengths"):
        attention(q, k, v, backend="math", causal=True, q_lengths=torch.tensor([N, N]), kv_lengths=kv_lengths)
    # ... so the implicit one (q_lengths=None means every query is valid) must be too.
    with pytest.raises(ValueError, match="causal attention needs q_lengths == kv_lengths"):
        attention(q, k, v, backend="math", causal=True, kv_lengths=kv_lengths)


# ---------------------------------------------------------------------------------------------------------------
# 2. Backend selection by name and env var; no silent fallback
# ---------------------------------------------------------------------------------------------------------------

def test_backend_error_is_a_value_error():
    assert issubclass(BackendError, ValueError)


def test_backend_names_lists_auto_and_every_backend():
    names = backend_names()
    assert names[0] == "auto"
    assert set(names[1:]) == set(BACKENDS)
    assert {"math", "sdpa", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "sdpa-math", "flex", "flash-attn",
            "xformers", "flow"} <= set(names)
    assert all(BACKENDS[name].NAME == name for name in BACKENDS)


@pytest.mark.parametrize("name", ["nope", "Math", "", "sdpa_flash"])
def test_unknown_backend_name_lists_valid_names(name):
    with pytest.raises(ValueError, match=r"unknown attention backend .*valid names: auto, math, sdpa") as info:
        get_backend(name)
    assert isinstance(info.value, BackendError)
    for valid in ("flash-attn", "xformers", "flow", "flex"):
        assert valid in str(info.value)
    with pytest.raises(ValueError, match=re.escape(f"unknown attention backend {name!r}")):
        check_backend_name(name)


def test_unknown_backend_name_in_attention():
    q = randn(1, 3, 1, 4)
    with pytest.raises(ValueError, match=r"unknown attention backend 'bogus'; valid names: .*math.*sdpa"):
        attention(q, q, q, backend="bogus")


def test_default_is_auto_without_env():
    assert default_backend_name() == "auto"
    assert isinstance(get_backend(), AutoBackend)
    assert isinstance(get_backend("auto"), AutoBackend)


@pytest.mark.parametrize("value, cls", [("math", MathBackend), ("sdpa", SdpaBackend), (" flow ", FlowBackend),
                                        ("flex", FlexBackend)], ids=["math", "sdpa", "flow-with-spaces", "flex"])
def test_env_var_selects_default_backend(monkeypatch, value, cls):
    monkeypatch.setenv(ENV_VAR, value)
    assert ENV_VAR == "BPMT_ATTN_BACKEND"
    backend = get_backend()
    assert type(backend) is cls
    assert default_backend_name() == value.strip()


def test_empty_env_var_means_auto(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "  ")
    assert default_backend_name() == "auto"
    assert isinstance(get_backend(), AutoBackend)


def test_nonsense_env_var_fails_with_valid_names(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "fastest-please")
    with pytest.raises(BackendError, match=r"unknown attention backend 'fastest-please'; valid names: auto, math"):
        get_backend()
    q = randn(1, 3, 1, 4)
    with pytest.raises(ValueError, match=r"valid names: .*sdpa"):
        attention(q, q, q)


def test_env_var_is_used_by_attention(monkeypatch):
    """The env var reaches attention(): with `flow` the result is flow attention, not softmax attention."""
    q, k, v = randn(1, 5, 2, 4), randn(1, 5, 2, 4), randn(1, 5, 2, 4)
    flow = FlowBackend().padded(q, k, v)
    softmax = attention(q, k, v, backend="math")
    assert not torch.allclose(flow, softmax, atol=1e-3)
    monkeypatch.setenv(ENV_VAR, "flow")
    torch.testing.assert_close(attention(q, k, v), flow)


def test_explicit_backend_wins_over_env_var(monkeypatch):
    q, k, v = randn(1, 5, 2, 4), randn(1, 5, 2, 4), randn(1, 5, 2, 4)
    monkeypatch.setenv(ENV_VAR, "flow")
    torch.testing.assert_close(attention(q, k, v, backend="sdpa"), softmax_attention_reference(q, k, v),
                               atol=ATOL, rtol=RTOL)
    assert type(get_backend("math")) is MathBackend
    # Even an env value that could not run here (or is nonsense) does not matter once a backend is named.
    for value in ("flash-attn", "nonsense"):
        monkeypatch.setenv(ENV_VAR, value)
        torch.testing.assert_close(attention(q, k, v, backend="math"), softmax_attention_reference(q, k, v))


@pytest.fixture
def fresh_availability_cache():
    """`why_unavailable` is cached per process; tests that fake a package must not leak their answer."""
    attention_base._cached_unavailable_reason.cache_clear()
    yield
    attention_base._cached_unavailable_reason.cache_clear()


@pytest.mark.usefixtures("fresh_availability_cache")
@pytest.mark.parametrize("name, package", [
    pytest.param("flash-attn", "flash-attn", marks=needs_no_flash_attn),
    pytest.param("xformers", "xformers", marks=needs_no_xformers),
])
def test_uninstalled_backend_raises_not_installed(monkeypatch, name, package):
    with pytest.raises(BackendError, match=rf"attention backend '{name}' is not available here: "
                                           rf"package {package} is not installed"):
        get_backend(name)
    assert not BACKENDS[name].is_available()
    assert BACKENDS[name].version() is None
    q = randn(1, 3, 1, 8)
    with pytest.raises(ValueError, match="not installed"):
        attention(q, q, q, backend=name)
    with pytest.raises(ValueError, match="not installed"):
        attention_varlen(q[0], q[0], q[0], torch.tensor([0, 3]), torch.tensor([0, 3]), backend=name)
    monkeypatch.setenv(ENV_VAR, name)
    with pytest.raises(BackendError, match="not installed"):
        attention(q, q, q)


@pytest.fixture
def entry_point_calls(monkeypatch):
    """Records every backend entry-point call (no library backend overrides padded / varlen)."""
    calls = []
    original_padded, original_varlen = AttentionBackend.padded, AttentionBackend.varlen

    def padded(self, *args, **kwargs):
        calls.append((self.NAME, "padded"))
        return original_padded(self, *args, **kwargs)

    def varlen(self, *args, **kwargs):
        calls.append((self.NAME, "varlen"))
        return original_varlen(self, *args, **kwargs)

    monkeypatch.setattr(AttentionBackend, "padded", padded)
    monkeypatch.setattr(AttentionBackend, "varlen", varlen)
    return calls


def test_entry_point_recorder_sees_calls(entry_point_calls):
    q = randn(1, 3, 1, 4)
    attention(q, q, q, backend="math")
    attention_varlen(q[0], q[0], q[0], torch.tensor([0, 3]), torch.tensor([0, 3]), backend="sdpa")
    assert entry_point_calls == [("math", "padded"), ("sdpa", "varlen")]


def test_sdpa_efficient_on_cpu_raises_with_inputs_and_reasons(entry_point_calls):
    """A CUDA-only backend given CPU inputs: the error lists the inputs and every reason, nothing runs."""
    q = randn(2, 3, 2, 8)
    with pytest.raises(BackendError) as info:
        attention(q, q, q, backend=SdpaEfficientBackend(), q_lengths=torch.tensor([3, 1]))
    message = str(info.value)
    assert message.startswith("attention backend 'sdpa-efficient' cannot run inputs (device=cpu, dtype=float32, "
                              "heads=2, head_dim=8, head_dim_v=8, masked=True, causal=False, custom_scale=False, "
                              "requires_grad=False):\n  - ")
    assert "\n  - device 'cpu' not in ['cuda']" in message
    assert entry_point_calls == []  # raised, not run by another backend


def test_sdpa_efficient_by_name_on_cpu_raises(entry_point_calls):
    """By name, a CUDA-only backend on CPU inputs fails with one error listing the inputs and every reason
    (availability included); never by running another backend."""
    q = randn(2, 3, 2, 8)
    with pytest.raises(BackendError, match=r"(?s)attention backend 'sdpa-efficient' cannot run inputs "
                                           r"\(device=cpu, dtype=float32.*device 'cpu' not in"):
        attention(q, q, q, backend="sdpa-efficient")
    with pytest.raises(BackendError, match="sdpa-efficient"):
        attention_varlen(q[0], q[0], q[0], torch.tensor([0, 3]), torch.tensor([0, 3]), backend="sdpa-efficient")
    assert entry_point_calls == []


def test_sdpa_efficient_rejects_float64_too():
    q = randn(1, 3, 1, 8, dtype=torch.float64)
    with pytest.raises(BackendError, match=r"'sdpa-efficient' cannot run inputs \(device=cpu, dtype=float64") as info:
        attention(q, q, q, backend=SdpaEfficientBackend())
    assert "\n  - device 'cpu' not in ['cuda']" in str(info.value)
    assert "\n  - dtype float64 not in ['bfloat16', 'float16', 'float32']" in str(info.value)


def test_flow_with_custom_scale_raises(entry_point_calls):
    q = randn(1, 4, 2, 8)
    with pytest.raises(BackendError, match=r"'flow' cannot run inputs \(device=cpu, dtype=float32.*custom_scale=True"
                                           r"[^\n]*\n  - a custom softmax scale is not supported"):
        attention(q, q, q, backend="flow", scale=0.5)
    with pytest.raises(BackendError, match="custom softmax scale"):
        attention_varlen(q[0], q[0], q[0], torch.tensor([0, 4]), torch.tensor([0, 4]), backend="flow", scale=0.5)
    assert entry_point_calls == []
    attention(q, q, q, backend="flow")  # without a scale it runs
    assert entry_point_calls == [("flow", "padded")]


def test_causal_on_backend_without_causal_raises(entry_point_calls):
    q = randn(1, 4, 2, 8)
    with pytest.raises(BackendError, match=r"'sdpa' cannot run inputs.*causal=True.*\n  - causal attention is not "
                                           r"supported"):
        attention(q, q, q, backend="sdpa", causal=True)
    assert entry_point_calls == []


def test_flex_with_grad_on_cpu_raises(entry_point_calls):
    q = randn(1, 4, 2, 16).requires_grad_()
    with pytest.raises(BackendError, match=r"(?s)'flex' cannot run inputs.*requires_grad=True.*no backward on CPU"):
        attention(q, q.detach(), q.detach(), backend="flex")
    assert entry_point_calls == []
    lengths = torch.tensor([3])
    with torch.no_grad():  # forward only is fine
        out = attention(q, q.detach(), q.detach(), backend="flex", q_lengths=lengths, kv_lengths=lengths)
    ref = attention(q.detach(), q.detach(), q.detach(), backend="math", q_lengths=lengths, kv_lengths=lengths)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("layout_kind", ["padded", "varlen"])
def test_flex_inference_on_cpu_with_grad_requiring_leaves(layout_kind):
    q = randn(1, 4, 2, 16).requires_grad_()
    k, v = randn(1, 4, 2, 16), randn(1, 4, 2, 16)
    with torch.no_grad():
        if layout_kind == "padded":
            out = attention(q, k, v, backend="flex")
            ref = attention(q, k, v, backend="math")
        else:
            cu = torch.tensor([0, 1, 4])
            out = attention_varlen(q[0], k[0], v[0], cu, cu, backend="flex")
            ref = attention_varlen(q[0], k[0], v[0], cu, cu, backend="math")
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)


def test_backend_object_can_be_passed():
    q = randn(1, 4, 2, 8)
    torch.testing.assert_close(attention(q, q, q, backend=MathBackend()), softmax_attention_reference(q, q, q))
    auto = AutoBackend()
    attention(q, q, q, backend=auto)
    assert len(auto._chosen) == 1


def test_register_adds_backend_and_auto_position(monkeypatch):
    class Doubling(MathBackend):
        NAME = "test-doubling"
        DESCRIPTION = "math times two"

        def _padded(self, *args):
            return 2 * super()._padded(*args)

    monkeypatch.setitem(BACKENDS, Doubling.NAME, Doubling)  # undone after the test
    monkeypatch.setitem(AUTO_PRIORITY, "cpu", AUTO_PRIORITY["cpu"])
    register(Doubling, auto_priority={"cpu": 0})
    assert AUTO_PRIORITY["cpu"][0] == "test-doubling"
    assert "test-doubling" in backend_names()
    q = randn(1, 3, 1, 4)
    torch.testing.assert_close(attention(q, q, q), 2 * softmax_attention_reference(q, q, q))
    register(Doubling, auto_priority={"cpu": 1})  # re-registering moves it, no duplicates
    assert AUTO_PRIORITY["cpu"].count("test-doubling") == 1 and AUTO_PRIORITY["cpu"][1] == "test-doubling"


# ---------------------------------------------------------------------------------------------------------------
# 3. auto
# ---------------------------------------------------------------------------------------------------------------

def cpu_inputs(**changes):
    return dataclasses.replace(AttentionInputs("cpu", torch.float32, 8, 8, 2, masked=False), **changes)


def cuda_inputs(**changes):
    return dataclasses.replace(AttentionInputs("cuda", torch.float16, 64, 64, 4, masked=True), **changes)


def test_auto_priority_holds_only_exact_backends():
    for device, names in AUTO_PRIORITY.items():
        assert names[-1] == "math", device
        assert all(BACKENDS[name].IS_EXACT for name in names), device
        assert "flow" not in names


@pytest.mark.parametrize("changes, expected", [
    ({}, "sdpa"),
    ({"masked": True}, "sdpa"),
    ({"custom_scale": True}, "sdpa"),
    ({"requires_grad": True}, "sdpa"),
    ({"dtype": torch.float64}, "sdpa"),
    ({"dtype": torch.bfloat16, "head_dim": 300, "head_dim_v": 3}, "sdpa"),
    ({"causal": True}, "math"),
    ({"causal": True, "custom_scale": True, "masked": True}, "math"),
], ids=lambda x: x if isinstance(x, str) else "-".join(f"{k}={v}" for k, v in x.items()) or "plain")
def test_auto_on_cpu_picks_an_exact_backend(changes, expected):
    chosen = AutoBackend().choose(cpu_inputs(**changes))
    assert chosen.NAME == expected
    assert chosen.IS_EXACT and not isinstance(chosen, FlowBackend)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_auto_attention_on_cpu_equals_math(dtype, causal):
    q, k, v = randn(2, 5, 2, 8, dtype=dtype), randn(2, 5, 2, 8, dtype=dtype), randn(2, 5, 2, 8, dtype=dtype)
    auto = AutoBackend()
    out = attention(q, k, v, backend=auto, causal=causal)
    torch.testing.assert_close(out, attention(q, k, v, backend="math", causal=causal))
    (chosen,) = auto._chosen.values()
    assert chosen.NAME == ("math" if causal else "sdpa")


def test_auto_is_chosen_for_float32_cpu_through_attention(entry_point_calls):
    q = randn(2, 5, 2, 8)
    attention(q, q, q)
    attention(q, q, q, q_lengths=torch.tensor([5, 2]), kv_lengths=torch.tensor([1, 5]))
    attention_varlen(q[0], q[0], q[0], torch.tensor([0, 2, 5]), torch.tensor([0, 3, 5]))
    assert entry_point_calls == [("sdpa", "padded"), ("sdpa", "padded"), ("sdpa", "varlen")]


@needs_no_flash_attn
@needs_no_xformers
@pytest.mark.usefixtures("fresh_availability_cache")
@pytest.mark.parametrize("changes, expected", [({}, "sdpa"), ({"dtype": torch.float32}, "sdpa"),
                                               ({"causal": True}, "math")],
                         ids=["fp16-masked", "fp32-masked", "causal"])
def test_auto_on_cuda_description_without_packages(changes, expected):
    """Declarative: the CUDA choice is made from the description alone, no GPU needed."""
    assert AutoBackend().choose(cuda_inputs(**changes)).NAME == expected


def test_auto_on_unknown_device_raises():
    with pytest.raises(BackendError, match=r"no attention backend supports inputs \(device=meta"):
        AutoBackend().choose(cpu_inputs(device_type="meta"))


def test_auto_choose_is_cached_per_description(monkeypatch):
    asked = []
    original = SdpaBackend.supports.__func__

    def counting(cls, inputs):
        asked.append(inputs)
        return original(cls, inputs)

    monkeypatch.setattr(SdpaBackend, "supports", classmethod(counting))
    auto = AutoBackend()
    first = auto.choose(cpu_inputs())
    assert auto.choose(cpu_inputs()) is first  # an equal (not identical) description hits the cache
    assert auto.choose(dataclasses.replace(cpu_inputs())) is first
    assert len(asked) == 1
    other = auto.choose(cpu_inputs(masked=True))
    assert other is not first and other.NAME == "sdpa"
    assert len(asked) == 2
    causal = auto.choose(cpu_inputs(causal=True))
    assert causal.NAME == "math" and len(asked) == 3
    auto.choose(cpu_inputs(causal=True))
    assert len(asked) == 3
    assert len(auto._chosen) == 3
    # Instances do not share a cache.
    AutoBackend().choose(cpu_inputs())
    assert len(asked) == 4


def test_auto_padded_calls_reuse_the_cache(monkeypatch):
    auto = AutoBackend()
    q = randn(1, 3, 2, 4)
    attention(q, q, q, backend=auto)
    chosen = auto._chosen[AttentionInputs.describe(q, q, q, masked=False)]
    monkeypatch.setattr(SdpaBackend, "supports", classmethod(lambda cls, inputs: pytest.fail("not cached")))
    attention(q, q, q, backend=auto)
    auto.padded(q, q, q)
    assert list(auto._chosen.values()) == [chosen]


# ---------------------------------------------------------------------------------------------------------------
# 4. Declarative capability checks (no GPU needed)
# ---------------------------------------------------------------------------------------------------------------

def reasons(name, inputs):
    """not_supported_reasons minus this machine's availability reason (package not installed, no GPU): the
    checks below are about the description, and must hold on any machine."""
    unavailable = BACKENDS[name].why_unavailable()
    return [r for r in BACKENDS[name].not_supported_reasons(inputs) if r != unavailable]


def test_describe_reads_shapes_and_grad():
    q, k, v = randn(2, 3, 4, 8), randn(2, 5, 4, 8), randn(2, 5, 4, 16)
    inputs = AttentionInputs.describe(q, k, v, masked=True, causal=False, scale=0.3)
    assert inputs == AttentionInputs("cpu", torch.float32, 8, 16, 4, True, False, True, False)
    assert AttentionInputs.describe(q.requires_grad_(), k, v, masked=False).requires_grad
    with torch.no_grad():
        assert not AttentionInputs.describe(q, k, v, masked=False).requires_grad
    assert str(inputs) == ("device=cpu, dtype=float32, heads=4, head_dim=8, head_dim_v=16, masked=True, "
                           "causal=False, custom_scale=True, requires_grad=False")


def test_flash_attn_reasons():
    assert reasons("flash-attn", cuda_inputs()) == []
    assert reasons("flash-attn", cuda_inputs(dtype=torch.bfloat16, head_dim=256, head_dim_v=256)) == []
    assert reasons("flash-attn", cuda_inputs(dtype=torch.float32)) == [
        "dtype float32 not in ['bfloat16', 'float16']"]
    assert "head_dim 300 > 256" in reasons("flash-attn", cuda_inputs(head_dim=300))
    assert "head_dim 304 > 256" in reasons("flash-attn", cuda_inputs(head_dim_v=304))
    assert reasons("flash-attn", cuda_inputs(head_dim=20)) == ["head_dim must be a multiple of 8"]
    assert reasons("flash-attn", cuda_inputs(head_dim_v=12)) == ["head_dim must be a multiple of 8"]
    assert reasons("flash-attn", cuda_inputs(causal=True)) == ["causal attention is not supported"]
    assert "device 'cpu' not in ['cuda']" in reasons("flash-attn", cuda_inputs(device_type="cpu"))


@needs_no_flash_attn
@pytest.mark.usefixtures("fresh_availability_cache")
def test_flash_attn_reasons_include_not_installed():
    all_reasons = FlashAttnBackend.not_supported_reasons(cuda_inputs(dtype=torch.float32))
    assert all_reasons[0].startswith("package flash-attn is not installed")
    assert any("dtype float32" in r for r in all_reasons)
    assert not FlashAttnBackend.supports(cuda_inputs())


def test_sdpa_flash_reasons():
    assert reasons("sdpa-flash", cuda_inputs(masked=False)) == []
    masked = reasons("sdpa-flash", cuda_inputs(masked=True))
    assert len(masked) == 1 and "no attention mask" in masked[0]
    assert "on CUDA needs float16 or bfloat16" in reasons("sdpa-flash", cuda_inputs(masked=False, dtype=torch.float32))
    assert "on CUDA needs head_dim <= 256" in reasons("sdpa-flash", cuda_inputs(masked=False, head_dim=264))
    # On CPU, torch's flash kernel takes the mask and any float dtype.
    assert reasons("sdpa-flash", cpu_inputs(masked=True, dtype=torch.float64)) == []


def test_sdpa_cudnn_reasons():
    assert reasons("sdpa-cudnn", cuda_inputs(head_dim=128, head_dim_v=128)) == []
    assert reasons("sdpa-cudnn", cuda_inputs(head_dim=256, head_dim_v=256)) == ["head_dim 256 > 128"]
    assert reasons("sdpa-cudnn", cuda_inputs(dtype=torch.float32)) == [
        "dtype float32 not in ['bfloat16', 'float16']"]
    assert reasons("sdpa-cudnn", cpu_inputs(dtype=torch.float16)) == ["device 'cpu' not in ['cuda']"]


def test_sdpa_efficient_reasons():
    assert reasons("sdpa-efficient", cuda_inputs(dtype=torch.float32)) == []
    assert reasons("sdpa-efficient", cpu_inputs()) == ["device 'cpu' not in ['cuda']"]


def test_flex_reasons():
    assert reasons("flex", cuda_inputs(head_dim=32, head_dim_v=32)) == []
    assert reasons("flex", cuda_inputs(head_dim=24)) == ["compiled FlexAttention needs a power-of-two head_dim >= 16"]
    assert reasons("flex", cuda_inputs(head_dim=8)) == ["compiled FlexAttention needs a power-of-two head_dim >= 16"]
    assert reasons("flex", cpu_inputs(head_dim=24)) == []  # eager on CPU: any head_dim
    assert reasons("flex", cpu_inputs(requires_grad=True)) == [
        "FlexAttention has no backward on CPU (forward / inference only there)"]
    assert reasons("flex", cuda_inputs(head_dim=64, requires_grad=True)) == []
    assert reasons("flex", cpu_inputs(dtype=torch.float64)) == [
        "dtype float64 not in ['bfloat16', 'float16', 'float32']"]


def test_math_and_flow_reasons():
    assert reasons("math", cuda_inputs(causal=True, custom_scale=True, dtype=torch.float64, head_dim=999)) == []
    assert reasons("flow", cpu_inputs(causal=True)) == []
    assert reasons("flow", cpu_inputs(custom_scale=True)) == ["a custom softmax scale is not supported"]
    assert reasons("math", cpu_inputs(device_type="mps")) == ["device 'mps' not in ['cpu', 'cuda']"]


def test_check_message_lists_inputs_and_every_reason():
    inputs = cuda_inputs(dtype=torch.float32, head_dim=264, causal=True)
    with pytest.raises(BackendError) as info:
        BACKENDS["sdpa-flash"].check(inputs)
    lines = str(info.value).split("\n")
    assert lines[0] == f"attention backend 'sdpa-flash' cannot run inputs ({inputs}):"
    assert lines[1:] == ["  - causal attention is not supported", "  - on CUDA needs float16 or bfloat16",
                         "  - on CUDA needs head_dim <= 256",
                         "  - on CUDA takes no attention mask: needs full-length sequences (no padding)"]


def test_reasons_read_no_tensor_values():
    """The description is all a backend sees: building it from meta tensors (no data) works."""
    q = torch.empty(2, 7, 4, 24, device="meta", dtype=torch.float16)
    inputs = AttentionInputs.describe(q, q, q, masked=True)
    assert inputs.device_type == "meta" and inputs.head_dim == 24
    for cls in BACKENDS.values():
        assert isinstance(cls.not_supported_reasons(inputs), list)


# ---------------------------------------------------------------------------------------------------------------
# 5. flash-attn and xformers wrappers, driven through fake packages
# ---------------------------------------------------------------------------------------------------------------

def per_segment_reference(q, k, v, q_lengths, kv_lengths, scale):
    """Packed `(T, H, D)` attention, segment i of q on segment i of k/v, with the math reference."""
    outs, q_start, k_start = [], 0, 0
    for lq, lk in zip(q_lengths, kv_lengths):
        outs.append(softmax_attention_reference(q[None, q_start:q_start + lq], k[None, k_start:k_start + lk],
                                                v[None, k_start:k_start + lk], scale=scale)[0])
        q_start, k_start = q_start + lq, k_start + lk
    assert q_start == q.shape[0] and k_start == k.shape[0]
    return torch.cat(outs)


@pytest.fixture
def fake_flash_attn(monkeypatch, fresh_availability_cache):
    calls = []

    def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale=None,
                               causal=False):
        calls.append(dict(q_shape=tuple(q.shape), k_shape=tuple(k.shape), cu_seqlens_q=cu_seqlens_q.clone(),
                          cu_seqlens_k=cu_seqlens_k.clone(), max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k,
                          softmax_scale=softmax_scale, causal=causal))
        return per_segment_reference(q, k, v, layout.lengths_from_cu_seqlens(cu_seqlens_q).tolist(),
                                     layout.lengths_from_cu_seqlens(cu_seqlens_k).tolist(), softmax_scale)

    module = types.ModuleType("flash_attn")
    module.flash_attn_varlen_func = flash_attn_varlen_func
    module.__version__ = "0.0.fake"
    monkeypatch.setitem(sys.modules, "flash_attn", module)
    return calls


class FakeBlockDiagonalMask:
    def __init__(self, q_seqlen, kv_seqlen):
        self.q_seqlen, self.kv_seqlen = q_seqlen, kv_seqlen

    @classmethod
    def from_seqlens(cls, q_seqlen, kv_seqlen=None):
        return cls(list(q_seqlen), list(q_seqlen if kv_seqlen is None else kv_seqlen))


@pytest.fixture
def fake_xformers(monkeypatch, fresh_availability_cache):
    calls = []

    def memory_efficient_attention(q, k, v, attn_bias=None, scale=None):
        calls.append(dict(q_shape=tuple(q.shape), k_shape=tuple(k.shape), v_shape=tuple(v.shape), bias=attn_bias,
                          scale=scale))
        assert q.dim() == 4 and q.shape[0] == k.shape[0] == v.shape[0] == 1, "batch-1 packed layout expected"
        assert isinstance(attn_bias, FakeBlockDiagonalMask)
        return per_segment_reference(q[0], k[0], v[0], attn_bias.q_seqlen, attn_bias.kv_seqlen, scale)[None]

    ops = types.ModuleType("xformers.ops")
    ops.memory_efficient_attention = memory_efficient_attention
    ops.fmha = types.SimpleNamespace(attn_bias=types.SimpleNamespace(BlockDiagonalMask=FakeBlockDiagonalMask))
    package = types.ModuleType("xformers")
    package.ops = ops
    package.__version__ = "0.0.fake"
    monkeypatch.setitem(sys.modules, "xformers", package)
    monkeypatch.setitem(sys.modules, "xformers.ops", ops)
    return calls


Q_LENGTHS, KV_LENGTHS = [6, 1, 4], [2, 5, 3]  # cross attention, unequal lengths
NQ, NK, DV = 7, 5, 4


def padded_wrapper_case(dtype=torch.float32):
    """Padded q/k/v with NaN in the padding (the wrappers must drop it) and their lengths."""
    q_lengths, kv_lengths = torch.tensor(Q_LENGTHS), torch.tensor(KV_LENGTHS)
    q = with_nan_padding(randn(3, NQ, H, D, dtype=dtype), q_lengths)
    k = with_nan_padding(randn(3, NK, H, D, dtype=dtype), kv_lengths)
    v = with_nan_padding(randn(3, NK, H, DV, dtype=dtype), kv_lengths)
    return q, k, v, q_lengths, kv_lengths


def packed_wrapper_case():
    q, k, v = randn(sum(Q_LENGTHS), H, D), randn(sum(KV_LENGTHS), H, D), randn(sum(KV_LENGTHS), H, DV)
    cu_q = torch.tensor([0, *torch.tensor(Q_LENGTHS).cumsum(0).tolist()])  # int64 on purpose
    cu_k = torch.tensor([0, *torch.tensor(KV_LENGTHS).cumsum(0).tolist()])
    return q, k, v, cu_q, cu_k


@pytest.mark.parametrize("scale", [None, 0.3])
def test_flash_attn_padded_via_fake(fake_flash_attn, scale):
    q, k, v, q_lengths, kv_lengths = padded_wrapper_case()
    ref = attention(q, k, v, backend="math", q_lengths=q_lengths, kv_lengths=kv_lengths, scale=scale)
    out = FlashAttnBackend().padded(q, k, v, q_lengths, kv_lengths, scale)
    assert out.shape == (3, NQ, H, DV)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)
    (call,) = fake_flash_attn
    assert call["q_shape"] == (sum(Q_LENGTHS), H, D) and call["k_shape"] == (sum(KV_LENGTHS), H, D)
    for key, lengths in (("cu_seqlens_q", Q_LENGTHS), ("cu_seqlens_k", KV_LENGTHS)):
        assert call[key].dtype == torch.int32
        assert call[key].tolist() == [0, *torch.tensor(lengths).cumsum(0).tolist()]
        assert layout.lengths_from_cu_seqlens(call[key]).tolist() == lengths
    # max_seqlen is a Python int bounding every segment (the padded length is a valid bound).
    for key, lengths, n in (("max_seqlen_q", Q_LENGTHS, NQ), ("max_seqlen_k", KV_LENGTHS, NK)):
        assert type(call[key]) is int and max(lengths) <= call[key] <= n
    assert call["softmax_scale"] == scale and call["causal"] is False


def test_flash_attn_private_padded_via_fake(fake_flash_attn):
    """`_padded` alone (no zeroing around it) already ignores the NaN padding and zeros padded outputs."""
    q, k, v, q_lengths, kv_lengths = padded_wrapper_case()
    out = FlashAttnBackend()._padded(q, k, v, q_lengths, kv_lengths, None, False)
    torch.testing.assert_close(out, attention(q, k, v, backend="math", q_lengths=q_lengths, kv_lengths=kv_lengths),
                               atol=ATOL, rtol=RTOL)
    assert (out[0, 6:] == 0).all() and (out[1, 1:] == 0).all()
    assert len(fake_flash_attn) == 1


def test_flash_attn_padded_without_lengths_via_fake(fake_flash_attn):
    q, k, v = randn(2, 3, H, D), randn(2, 5, H, D), randn(2, 5, H, D)
    out = FlashAttnBackend().padded(q, k, v)
    torch.testing.assert_close(out, attention(q, k, v, backend="math"), atol=ATOL, rtol=RTOL)
    (call,) = fake_flash_attn
    assert call["cu_seqlens_q"].tolist() == [0, 3, 6] and call["cu_seqlens_k"].tolist() == [0, 5, 10]
    assert call["cu_seqlens_q"].dtype == call["cu_seqlens_k"].dtype == torch.int32
    assert (call["max_seqlen_q"], call["max_seqlen_k"]) == (3, 5)


@pytest.mark.parametrize("scale", [None, 0.7])
def test_flash_attn_varlen_via_fake(fake_flash_attn, scale):
    q, k, v, cu_q, cu_k = packed_wrapper_case()
    ref = attention_varlen(q, k, v, cu_q, cu_k, backend="math", scale=scale)
    out = FlashAttnBackend().varlen(q, k, v, cu_q, cu_k, torch.tensor(6), 5, scale)
    assert out.shape == (sum(Q_LENGTHS), H, DV)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)
    (call,) = fake_flash_attn
    assert call["cu_seqlens_q"].dtype == call["cu_seqlens_k"].dtype == torch.int32  # int64 in, int32 out
    assert call["cu_seqlens_q"].tolist() == cu_q.tolist() and call["cu_seqlens_k"].tolist() == cu_k.tolist()
    assert (call["max_seqlen_q"], call["max_seqlen_k"]) == (6, 5)
    assert type(call["max_seqlen_q"]) is int and type(call["max_seqlen_k"]) is int
    assert call["softmax_scale"] == scale


@pytest.mark.usefixtures("fake_flash_attn")
def test_flash_attn_fake_passes_the_import_probe_but_cpu_is_still_refused(entry_point_calls):
    """With the package importable the import probe passes; CPU inputs are still refused, not run elsewhere."""
    assert FlashAttnBackend.unavailable_reason() is None
    assert "not installed" not in str(FlashAttnBackend.why_unavailable())
    if torch.cuda.is_available():
        assert type(get_backend("flash-attn")) is FlashAttnBackend
        assert FlashAttnBackend.version() == "0.0.fake"
    q = randn(1, 3, 2, 8, dtype=torch.float16)
    with pytest.raises(BackendError, match=r"'flash-attn' cannot run inputs \(device=cpu, dtype=float16") as info:
        attention(q, q, q, backend=FlashAttnBackend())
    assert "\n  - device 'cpu' not in ['cuda']" in str(info.value)
    with pytest.raises(BackendError, match="flash-attn"):
        attention(q, q, q, backend="flash-attn")
    assert entry_point_calls == []


@pytest.mark.parametrize("scale", [None, 0.3])
def test_xformers_padded_via_fake(fake_xformers, scale):
    q, k, v, q_lengths, kv_lengths = padded_wrapper_case()
    ref = attention(q, k, v, backend="math", q_lengths=q_lengths, kv_lengths=kv_lengths, scale=scale)
    out = XformersBackend().padded(q, k, v, q_lengths, kv_lengths, scale)
    assert out.shape == (3, NQ, H, DV)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)
    (call,) = fake_xformers
    assert call["q_shape"] == (1, sum(Q_LENGTHS), H, D) and call["v_shape"] == (1, sum(KV_LENGTHS), H, DV)
    assert call["bias"].q_seqlen == Q_LENGTHS and call["bias"].kv_seqlen == KV_LENGTHS
    assert all(type(n) is int for n in call["bias"].q_seqlen + call["bias"].kv_seqlen)
    assert call["scale"] == scale


def test_xformers_private_padded_via_fake(fake_xformers):
    q, k, v, q_lengths, kv_lengths = padded_wrapper_case()
    out = XformersBackend()._padded(q, k, v, q_lengths, kv_lengths, None, False)
    torch.testing.assert_close(out, attention(q, k, v, backend="math", q_lengths=q_lengths, kv_lengths=kv_lengths),
                               atol=ATOL, rtol=RTOL)
    assert len(fake_xformers) == 1


@pytest.mark.parametrize("scale", [None, 0.7])
def test_xformers_varlen_via_fake(fake_xformers, scale):
    q, k, v, cu_q, cu_k = packed_wrapper_case()
    ref = attention_varlen(q, k, v, cu_q, cu_k, backend="math", scale=scale)
    out = XformersBackend().varlen(q, k, v, cu_q, cu_k, 6, 5, scale)
    assert out.shape == (sum(Q_LENGTHS), H, DV)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)
    (call,) = fake_xformers
    assert call["bias"].q_seqlen == Q_LENGTHS and call["bias"].kv_seqlen == KV_LENGTHS
    assert call["scale"] == scale


def test_xformers_repeated_key_segments_via_fake(fake_xformers):
    """Part pairs: two query segments on copies of one key segment, as the model packs them."""
    key = randn(4, H, D), randn(4, H, D)
    q = randn(5, H, D)
    k, v = torch.cat([key[0], key[0]]), torch.cat([key[1], key[1]])
    cu_q, cu_k = torch.tensor([0, 2, 5], dtype=torch.int32), torch.tensor([0, 4, 8], dtype=torch.int32)
    out = XformersBackend().varlen(q, k, v, cu_q, cu_k, 3, 4)
    torch.testing.assert_close(out, attention_varlen(q, k, v, cu_q, cu_k, backend="math"), atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(out[:2], softmax_attention_reference(q[None, :2], key[0][None], key[1][None])[0])


@pytest.mark.usefixtures("fake_xformers")
def test_xformers_fake_passes_the_import_probe_but_cpu_is_still_refused(entry_point_calls):
    assert XformersBackend.unavailable_reason() is None
    assert "not installed" not in str(XformersBackend.why_unavailable())
    if torch.cuda.is_available():
        assert type(get_backend("xformers")) is XformersBackend
        assert XformersBackend.version() == "0.0.fake"
    q = randn(1, 3, 2, 8)
    with pytest.raises(BackendError, match=r"'xformers' cannot run inputs \(device=cpu.*\n(.*\n)*"
                                           r"  - device 'cpu' not in"):
        attention_varlen(q[0], q[0], q[0], torch.tensor([0, 3]), torch.tensor([0, 3]), backend=XformersBackend())
    with pytest.raises(BackendError, match="xformers"):
        attention_varlen(q[0], q[0], q[0], torch.tensor([0, 3]), torch.tensor([0, 3]), backend="xformers")
    assert entry_point_calls == []


# ---------------------------------------------------------------------------------------------------------------
# 6. layout helpers
# ---------------------------------------------------------------------------------------------------------------

def test_cu_seqlens_from_lengths():
    cu = layout.cu_seqlens_from_lengths(torch.tensor([3, 1, 2]))
    assert cu.dtype == torch.int32 and cu.tolist() == [0, 3, 4, 6]
    assert layout.cu_seqlens_from_lengths(torch.tensor([5], dtype=torch.int32)).tolist() == [0, 5]
    back = layout.lengths_from_cu_seqlens(cu)
    assert back.dtype == torch.long and back.tolist() == [3, 1, 2]


def test_full_lengths_and_padding_mask():
    assert layout.full_lengths(3, 4, "cpu").tolist() == [4, 4, 4]
    mask = layout.padding_mask(torch.tensor([1, 3]), 4)
    assert mask.dtype == torch.bool
    assert mask.tolist() == [[True, False, False, False], [True, True, True, False]]


def test_pack_unpack_round_trip():
    lengths = torch.tensor([2, 4, 1])
    x = randn(3, 4, 2, 3)
    packed = layout.pack(x, lengths)
    assert packed.shape == (7, 2, 3)
    torch.testing.assert_close(packed[:2], x[0, :2], rtol=0, atol=0)
    torch.testing.assert_close(packed[2:6], x[1], rtol=0, atol=0)
    torch.testing.assert_close(packed[6:], x[2, :1], rtol=0, atol=0)
    unpacked = layout.unpack(packed, lengths, 4)
    torch.testing.assert_close(unpacked, layout.zero_padding(x, lengths), rtol=0, atol=0)
    torch.testing.assert_close(layout.pack(unpacked, lengths), packed, rtol=0, atol=0)
    assert layout.unpack(packed, lengths, 6).shape == (3, 6, 2, 3)  # longer padding than needed


def test_zero_padding_zeroes_nan_padding():
    lengths = torch.tensor([1, 3])
    x = with_nan_padding(randn(2, 3, 2, 4), lengths)
    x[1, 2] = float("inf")  # still valid token (length 3) : kept
    out = layout.zero_padding(x, lengths)
    assert torch.isnan(x).any() and not torch.isnan(out).any()
    assert (out[0, 1:] == 0).all()
    assert torch.equal(out[0, :1], x[0, :1]) and torch.equal(out[1], x[1])
    assert layout.zero_padding(x, None) is x
    assert out.dtype == x.dtype


def test_zero_padding_other_ranks_and_dtypes():
    lengths = torch.tensor([2, 1])
    x2 = torch.full((2, 3), float("nan"), dtype=torch.float16)
    x2[0, :2], x2[1, 0] = 1.0, 2.0
    assert layout.zero_padding(x2, lengths).tolist() == [[1.0, 1.0, 0.0], [2.0, 0.0, 0.0]]
    assert layout.zero_padding(x2, lengths).dtype == torch.float16
    x3 = torch.full((2, 3, 5), float("nan"))
    assert torch.isnan(layout.zero_padding(x3, lengths)).sum() == 3 * 5


# ---------------------------------------------------------------------------------------------------------------
# Property tests
# ---------------------------------------------------------------------------------------------------------------

PROPERTY_SETTINGS = settings(max_examples=25, deadline=None,
                             suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def lengths_and_n(draw, max_batch=4, max_n=7):
    n = draw(st.integers(1, max_n))
    lengths = draw(st.lists(st.integers(1, n), min_size=1, max_size=max_batch))
    return lengths, n


@PROPERTY_SETTINGS
@given(case=lengths_and_n(), heads=st.integers(1, 3), dim=st.integers(1, 5), seed=st.integers(0, 2**31 - 1))
def test_pack_then_unpack_is_zero_padding(case, heads, dim, seed):
    lengths_list, n = case
    lengths = torch.tensor(lengths_list)
    g = torch.Generator().manual_seed(seed)
    x = with_nan_padding(torch.randn(len(lengths_list), n, heads, dim, generator=g), lengths)
    packed = layout.pack(x, lengths)
    assert packed.shape == (sum(lengths_list), heads, dim)
    assert torch.isfinite(packed).all()
    torch.testing.assert_close(layout.unpack(packed, lengths, n), layout.zero_padding(x, lengths), rtol=0, atol=0)
    cu = layout.cu_seqlens_from_lengths(lengths)
    assert cu[0] == 0 and cu[-1] == packed.shape[0]
    assert layout.lengths_from_cu_seqlens(cu).tolist() == lengths_list


@st.composite
def attention_case(draw):
    batch = draw(st.integers(1, 3))
    n_q, n_k = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    heads, dim, dim_v = draw(st.integers(1, 3)), draw(st.integers(1, 8)), draw(st.integers(1, 8))
    q_lengths = draw(st.none() | st.lists(st.integers(1, n_q), min_size=batch, max_size=batch))
    kv_lengths = draw(st.none() | st.lists(st.integers(1, n_k), min_size=batch, max_size=batch))
    scale = draw(st.none() | st.floats(0.05, 2.0))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    seed = draw(st.integers(0, 2**31 - 1))
    return batch, n_q, n_k, heads, dim, dim_v, q_lengths, kv_lengths, scale, dtype, seed


@PROPERTY_SETTINGS
@given(case=attention_case())
def test_sdpa_equals_math_on_random_shapes(case):
    batch, n_q, n_k, heads, dim, dim_v, q_lengths, kv_lengths, scale, dtype, seed = case
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, n_q, heads, dim, generator=g, dtype=dtype)
    k = torch.randn(batch, n_k, heads, dim, generator=g, dtype=dtype)
    v = torch.randn(batch, n_k, heads, dim_v, generator=g, dtype=dtype)
    q_lengths = None if q_lengths is None else torch.tensor(q_lengths)
    kv_lengths = None if kv_lengths is None else torch.tensor(kv_lengths)
    if q_lengths is not None:
        q = with_nan_padding(q, q_lengths)
    if kv_lengths is not None:
        k, v = with_nan_padding(k, kv_lengths), with_nan_padding(v, kv_lengths)
    kwargs = dict(q_lengths=q_lengths, kv_lengths=kv_lengths, scale=scale)
    out = attention(q, k, v, backend="sdpa", **kwargs)
    ref = attention(q, k, v, backend="math", **kwargs)
    assert out.shape == (batch, n_q, heads, dim_v) and out.dtype == dtype
    atol, rtol = (1e-10, 1e-8) if dtype == torch.float64 else (ATOL, RTOL)
    torch.testing.assert_close(out, ref, atol=atol, rtol=rtol)


@PROPERTY_SETTINGS
@given(q_case=lengths_and_n(max_batch=3, max_n=5), extra=st.lists(st.integers(1, 5), min_size=3, max_size=3),
       seed=st.integers(0, 2**31 - 1))
def test_varlen_equals_padded_math(q_case, extra, seed):
    """attention_varlen on packed tokens equals attention on the same sequences padded (sdpa and math)."""
    q_lengths_list, _ = q_case
    kv_lengths_list = extra[:len(q_lengths_list)]
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(sum(q_lengths_list), 2, 4, generator=g)
    k = torch.randn(sum(kv_lengths_list), 2, 4, generator=g)
    v = torch.randn(sum(kv_lengths_list), 2, 3, generator=g)
    q_lengths, kv_lengths = torch.tensor(q_lengths_list), torch.tensor(kv_lengths_list)
    cu_q, cu_k = layout.cu_seqlens_from_lengths(q_lengths), layout.cu_seqlens_from_lengths(kv_lengths)
    n_q, n_k = max(q_lengths_list), max(kv_lengths_list)
    padded = attention(layout.unpack(q, q_lengths, n_q), layout.unpack(k, kv_lengths, n_k),
                       layout.unpack(v, kv_lengths, n_k), backend="math", q_lengths=q_lengths, kv_lengths=kv_lengths)
    expected = layout.pack(padded, q_lengths)
    for name in ("math", "sdpa"):
        torch.testing.assert_close(attention_varlen(q, k, v, cu_q, cu_k, backend=name), expected, atol=ATOL,
                                   rtol=RTOL)
