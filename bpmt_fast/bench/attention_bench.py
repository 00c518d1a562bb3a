"""Attention suite: every backend on every attention shape set, forward and forward + backward.

Per (case, backend): capability check, then a correctness gate on the same inputs (exact backends against
`math`, inexact ones against their own reference), and only then timing. A failed gate is a "wrong" row with
NaN times; exceptions and CUDA OOM become NaN rows with the error text. Backends are called the way the model
calls them (`backend.padded` / `backend.varlen`), not through the public `attention()`, whose input validation
reads tensors back to the host on every call and would dominate small GPU kernels.

Derived numbers use analytic counts over valid tokens only (padding is not useful work):
  FLOPs  = 4 * H * D * sum_i(Nq_i * Nk_i) forward, x3.5 forward + backward;
  bytes  = q, k, v, o once forward; plus dq, dk, dv, do for forward + backward (x2): a lower bound no kernel
           beats, so `bandwidth_fraction` = (bytes / time) / measured copy bandwidth is at most ~1.
"""
from __future__ import annotations

import math
import os
from typing import Iterator

import torch

from bpmt_fast.attention import BACKENDS, AttentionInputs, layout
from bpmt_fast.testing import LOW_PRECISION_FLOOR, allowed_error, low_precision_softmax_attention, max_error

from .common import (ERROR, NAN, OK, OOM, SKIPPED, TIME_BUDGET_REASON, UNSUPPORTED, WRONG, Settings, error_text, say,
                     select_backends, skip_reason)
from .shapes import AttentionCase, select_shape_sets
from .timing import free_memory, is_out_of_memory, measure

DIRECTIONS = ("fwd", "fwd+bwd")
BACKWARD_FLOP_FACTOR = 3.5  # fwd+bwd / fwd FLOPs: backward recomputes the scores and does 2.5x the matmuls
# Inexact backends and the backend they must equal.
INEXACT_REFERENCES = {"flow-triton": "flow"}
NOT_GATED = "inexact, not gated against math"
# The gate's fp32 reference covers at most this many score elements (256 MiB); bigger cases are checked on
# their first sequences (and heads): attention is independent per sequence and head.
GATE_SCORE_ELEMENTS = 2**26
# These build the full (B, H, Nq, Nk) score matrix. On CUDA an OOM is caught and becomes a row; on CPU the
# operating system kills the process instead, so cases that would not fit are skipped up front.
MATERIALISES_SCORES_ON_CPU = frozenset({"math", "sdpa-math", "flex"})


class CaseInputs:
    """One case's random inputs on the device: padded `(B, N, H, D)` tensors, which the gate compares, and the
    call's own layout (padded, or packed `(total, H, D)` + cu_seqlens)."""

    def __init__(self, case: AttentionCase, device: torch.device, dtype: torch.dtype, seed: int = 0):
        self.case, self.packed = case, case.layout == "packed"
        generator = torch.Generator(device=device).manual_seed(seed)
        self.q_len, self.kv_len = case.lengths("q").to(device), case.lengths("kv").to(device)  # (B,) each
        # Padded calls of full-length sequences pass no lengths at all: mask-free kernels can run them.
        self.q_lengths = self.q_len if self.packed or case.q_lengths is not None else None
        self.kv_lengths = self.kv_len if self.packed or case.kv_lengths is not None else None

        def randn(n, lengths):
            x = torch.randn(case.batch, n, case.heads, case.head_dim, generator=generator, device=device)
            return layout.zero_padding(x, lengths).to(dtype)  # (B, N, H, D)

        self.q = randn(case.n_q, self.q_lengths)
        self.k, self.v = randn(case.n_k, self.kv_lengths), randn(case.n_k, self.kv_lengths)
        self.grad_out = randn(case.n_q, self.q_lengths)  # (B, Nq, H, D), zero at padded queries
        if self.packed:
            self.cu_q = layout.cu_seqlens_from_lengths(self.q_len)  # (B + 1,) int32
            self.cu_k = layout.cu_seqlens_from_lengths(self.kv_len)

    def to_call(self, x: torch.Tensor, side: str) -> torch.Tensor:
        return layout.pack(x, self.q_len if side == "q" else self.kv_len) if self.packed else x

    def to_padded(self, x: torch.Tensor, side: str) -> torch.Tensor:
        if not self.packed:
            return x
        return layout.unpack(x, *((self.q_len, self.case.n_q) if side == "q" else (self.kv_len, self.case.n_k)))

    def leaves(self, requires_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fresh q, k, v in the call's layout (leaf tensors, so gradients are w.r.t. exactly these)."""
        return tuple(self.to_call(x, side).detach().requires_grad_(requires_grad)
                     for x, side in ((self.q, "q"), (self.k, "kv"), (self.v, "kv")))

    def call(self, backend, q, k, v) -> torch.Tensor:
        if self.packed:
            return backend.varlen(q, k, v, self.cu_q, self.cu_k, self.case.n_q, self.case.n_k)
        return backend.padded(q, k, v, self.q_lengths, self.kv_lengths)


def describe(case: AttentionCase, device: torch.device, dtype: torch.dtype, direction: str) -> AttentionInputs:
    return AttentionInputs(device.type, dtype, case.head_dim, case.head_dim, case.heads, masked=case.masked,
                           requires_grad=direction == "fwd+bwd")


def analytic_cost(case: AttentionCase, direction: str, element_size: int) -> tuple[float, float]:
    """(FLOPs, minimum bytes moved) of one call, counting valid tokens only."""
    flops = 4.0 * case.heads * case.head_dim * case.token_pairs()
    moved = 2.0 * (case.tokens("q") + case.tokens("kv")) * case.heads * case.head_dim * element_size  # q,o + k,v
    if direction == "fwd+bwd":
        return flops * BACKWARD_FLOP_FACTOR, moved * 2
    return flops, moved


def gate_reference(name: str) -> str | None:
    """The backend `name` must equal: math for exact backends, its own reference for inexact ones, or None."""
    cls = BACKENDS[name]
    if cls.IS_EXACT:
        return "math"
    return INEXACT_REFERENCES.get(name)


def gate_slice(case: AttentionCase) -> tuple[int, int]:
    """(sequences, heads) the gate compares: all of them unless the fp32 reference would be too large."""
    per_sequence = case.heads * case.n_q * case.n_k
    if per_sequence <= GATE_SCORE_ELEMENTS:
        return min(case.batch, GATE_SCORE_ELEMENTS // per_sequence), case.heads
    return 1, max(1, GATE_SCORE_ELEMENTS // (case.n_q * case.n_k))


def _forward_backward(fn, leaves, grad_out, with_grad: bool):
    with torch.set_grad_enabled(with_grad):
        out = fn(*leaves)
    # An input the backend ignores gets a zero gradient (and then fails the gate), not an autograd error.
    grads = torch.autograd.grad(out, leaves, grad_out, materialize_grads=True) if with_grad else ()
    return out, grads


def run_gate(name: str, data: CaseInputs, with_grad: bool) -> dict:
    """Compare the backend's output (and input gradients) with its reference on the same inputs.

    Returns the gate fields of a row; `passed` False means the backend is wrong here. The tolerance rule is the
    tests' one (`bpmt_fast.testing`): in fp16 / bf16 an exact backend may err at most twice as much as plain
    PyTorch attention run in that dtype, both measured against the fp32 reference.
    """
    reference = gate_reference(name)
    if reference is None:
        return {"gate": NOT_GATED, "passed": True}
    sequences, heads = gate_slice(data.case)
    got = _backend_tensors(name, data, with_grad, sequences, heads)
    expected, baseline = _reference_tensors(reference, data, with_grad, sequences, heads)
    whole = (sequences, heads) == (data.case.batch, data.case.heads)
    label = reference if whole else f"{reference} (first {sequences} sequences, {heads} heads)"
    return _compare(got, expected, baseline, data.q.dtype, reference, label)


def _backend_tensors(name, data: CaseInputs, with_grad: bool, sequences: int, heads: int) -> dict:
    """{"output", "dq", "dk", "dv"}: the backend's results at full size, cut to the gated slice, padded layout."""
    leaves = data.leaves(with_grad)
    out, grads = _forward_backward(lambda *t: data.call(BACKENDS[name](), *t), leaves,
                                   data.to_call(data.grad_out, "q"), with_grad)

    def cut(x, side):
        return data.to_padded(x.detach(), side)[:sequences, :, :heads]  # (s, Nq or Nk, h, D)
    return {"output": cut(out, "q"), **{f"d{x}": cut(g, s) for x, g, s in zip("qkv", grads, ("q", "kv", "kv"))}}


def _reference_tensors(reference: str, data: CaseInputs, with_grad: bool, sequences: int, heads: int):
    """(expected, baseline errors): the reference in fp32 on the slice, and for exact backends in half
    precision the error plain low-precision PyTorch attention makes against it."""
    q_len = None if data.q_lengths is None else data.q_lengths[:sequences]
    kv_len = None if data.kv_lengths is None else data.kv_lengths[:sequences]
    sliced = [x[:sequences, :, :heads].detach() for x in (data.q, data.k, data.v)]  # (s, N, h, D) each
    grad_out = data.grad_out[:sequences, :, :heads]
    # fp32 copies of the same values: the reference adds no rounding of its own.
    fp32 = [x.to(torch.float32, copy=True).requires_grad_(with_grad) for x in sliced]
    ref, ref_grads = _forward_backward(lambda *t: BACKENDS[reference]().padded(*t, q_len, kv_len), fp32,
                                       grad_out.float(), with_grad)
    expected = {"output": ref, **{f"d{x}": g for x, g in zip("qkv", ref_grads)}}
    baseline = {}
    if reference == "math" and data.q.dtype in LOW_PRECISION_FLOOR:
        low = [x.requires_grad_(with_grad) for x in sliced]
        base, base_grads = _forward_backward(lambda *t: low_precision_softmax_attention(*t, q_len, kv_len), low,
                                             grad_out, with_grad)
        baseline = {key: max_error(x, expected[key]) for key, x in zip(expected, (base, *base_grads))}
    return expected, baseline


def _compare(got: dict, expected: dict, baseline: dict, dtype, reference: str, label: str) -> dict:
    """Gate fields: the worst error relative to its allowance, and a reason at the first failing tensor."""
    fields = {"gate": label, "passed": True, "gate_error": 0.0, "gate_allowed": NAN, "gate_ratio": 0.0}
    for key, value in got.items():
        if not bool(torch.isfinite(value).all()):
            return {**fields, "passed": False, "gate_error": NAN, "reason": f"gate vs {reference}: {key} has NaN/inf"}
        error = max_error(value, expected[key])
        allowed = allowed_error(expected[key], dtype, baseline.get(key))
        ratio = error / allowed if allowed > 0 else math.inf
        if ratio >= fields["gate_ratio"]:
            fields.update(gate_error=error, gate_allowed=allowed, gate_ratio=ratio)
        if error > allowed:
            return {**fields, "passed": False,
                    "reason": f"gate vs {reference}: {key} max error {error:.3g} > allowed {allowed:.3g}"}
    return fields


def cpu_memory_guard(name: str, case: AttentionCase, device: torch.device, with_grad: bool) -> str | None:
    """Why a score-materialising backend must not run this case on CPU, or None."""
    if device.type != "cpu" or name not in MATERIALISES_SCORES_ON_CPU:
        return None
    need = case.batch * case.heads * case.n_q * case.n_k * 4 * (4 if with_grad else 2)  # fp32 scores + probs (+ grads)
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > total / 2:
        return f"would materialise ~{need / 2**30:.1f} GiB of scores; this machine has {total / 2**30:.0f} GiB"
    return None


def timed_function(name: str, data: CaseInputs, direction: str):
    backend = BACKENDS[name]()
    if direction == "fwd":
        q, k, v = data.leaves(False)

        def forward():
            with torch.no_grad():
                return data.call(backend, q, k, v)
        return forward
    leaves, grad_out = data.leaves(True), data.to_call(data.grad_out, "q")

    def forward_backward():
        # autograd.grad, not .backward(): nothing accumulates into .grad between runs.
        return torch.autograd.grad(data.call(backend, *leaves), leaves, grad_out, materialize_grads=True)
    return forward_backward


def _failure(error: BaseException, device: torch.device) -> tuple[str, str]:
    status = OOM if is_out_of_memory(error) else ERROR
    free_memory(device)
    return status, error_text(error)


def empty_rows(name: str, shape_set: str, case: AttentionCase, settings: Settings) -> dict[str, dict]:
    """The fwd and fwd+bwd rows of one backend on one case, before anything ran (numbers NaN)."""
    element_size = torch.empty((), dtype=settings.dtype).element_size()
    rows = {}
    for direction in DIRECTIONS:
        flops, moved = analytic_cost(case, direction, element_size)
        rows[direction] = {
            "suite": "attention", "shape_set": shape_set, "case": case.name, "backend": name, "direction": direction,
            "exact": BACKENDS[name].IS_EXACT, "layout": case.layout, "dtype": settings.dtype_name,
            "batch": case.batch, "n_q": case.n_q, "n_k": case.n_k, "heads": case.heads, "head_dim": case.head_dim,
            "tokens_q": case.tokens("q"), "tokens_k": case.tokens("kv"), "flops": flops, "bytes": moved,
            "status": None, "reason": "", "gate": "", "gate_error": NAN, "gate_allowed": NAN,
            "median_ms": NAN, "peak_mib": NAN, "tflop_s": NAN, "bandwidth_fraction": NAN, "matmul_fraction": NAN}
    return rows


def bench_backend(name: str, shape_set: str, case: AttentionCase, data: CaseInputs, settings: Settings,
                  hardware: dict) -> list[dict]:
    """The fwd and fwd+bwd rows of one backend on one case."""
    device, dtype = settings.device, settings.dtype
    rows = empty_rows(name, shape_set, case, settings)

    def mark(directions, status, reason=""):
        for direction in directions:
            rows[direction].update(status=status, reason=reason)

    skip = skip_reason(name, device)
    if skip:
        mark(DIRECTIONS, *skip)
        return list(rows.values())
    runnable = []
    for direction in DIRECTIONS:
        reasons = BACKENDS[name].not_supported_reasons(describe(case, device, dtype, direction))
        guard = cpu_memory_guard(name, case, device, direction == "fwd+bwd")
        if reasons:
            mark([direction], UNSUPPORTED, "; ".join(reasons))
        elif guard:
            mark([direction], SKIPPED, guard)
        else:
            runnable.append(direction)
    if not runnable:
        return list(rows.values())

    try:
        gate = run_gate(name, data, with_grad="fwd+bwd" in runnable)
    except Exception as error:  # noqa: BLE001 - any failure is a row, never a crash
        mark(runnable, *_failure(error, device))
        return list(rows.values())
    free_memory(device)
    for direction in runnable:
        rows[direction].update(gate=gate["gate"], gate_error=gate.get("gate_error", NAN),
                               gate_allowed=gate.get("gate_allowed", NAN))
    if not gate["passed"]:
        mark(runnable, WRONG, gate["reason"])
        return list(rows.values())

    for direction in runnable:
        row = rows[direction]
        try:
            result = measure(timed_function(name, data, direction), device, quick=settings.quick)
        except Exception as error:  # noqa: BLE001
            row["status"], row["reason"] = _failure(error, device)
            continue
        seconds = result.median_ms * 1e-3
        row.update(status=OK, median_ms=result.median_ms, peak_mib=result.peak_mib,
                   tflop_s=row["flops"] / seconds / 1e12,
                   bandwidth_fraction=row["bytes"] / seconds / (hardware["bandwidth_gb_s"] * 1e9),
                   matmul_fraction=row["flops"] / seconds / 1e12 / hardware["matmul_tflop_s"])
        free_memory(device)
    return list(rows.values())


def marked_rows(name: str, shape_set: str, case: AttentionCase, settings: Settings, status: str,
                reason: str) -> list[dict]:
    return [{**row, "status": status, "reason": reason} for row in empty_rows(name, shape_set, case, settings).values()]


def run_attention(settings: Settings, hardware: dict) -> Iterator[dict]:
    """Rows one by one (the runner saves each): per case, per backend, fwd then fwd+bwd. Once the suite's time
    budget is spent, the remaining rows are `skipped` with reason "time budget"."""
    backends = settings.backends or select_backends(None)
    for shape_set in select_shape_sets(settings.shapes, "attention"):
        for case in shape_set.cases(settings.quick):
            if settings.out_of_time():
                say(f"attention | {case.name}: skipped, {TIME_BUDGET_REASON}")
                for name in backends:
                    yield from marked_rows(name, shape_set.name, case, settings, SKIPPED, TIME_BUDGET_REASON)
                continue
            try:
                data = CaseInputs(case, settings.device, settings.dtype)
            except Exception as error:  # noqa: BLE001 - e.g. the inputs alone do not fit
                status, reason = _failure(error, settings.device)
                say(f"attention | {case.name}: inputs failed: {reason}")
                for name in backends:
                    yield from marked_rows(name, shape_set.name, case, settings, status, f"inputs: {reason}")
                continue
            for name in backends:
                if settings.out_of_time():
                    rows = marked_rows(name, shape_set.name, case, settings, SKIPPED, TIME_BUDGET_REASON)
                else:
                    rows = bench_backend(name, shape_set.name, case, data, settings, hardware)
                for row in rows:
                    timing = f"{row['median_ms']:.4f} ms" if row["status"] == OK else row["reason"][:90]
                    say(f"attention | {case.name} | {name} {row['direction']}: {row['status']} {timing}")
                    yield row
            del data
            free_memory(settings.device)
