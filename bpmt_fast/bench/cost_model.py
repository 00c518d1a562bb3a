"""`bpmt-fast bench model`: a cost MODEL of our Triton softmax attention at the benchmark's shapes, run on CPU.

Nothing here is measured. For each attention case of a shape set, the launchers are called the way the `triton`
backend calls them (automatic row mode and backward, identity kv_index, one offsets tensor for q and k) on
"meta" tensors, with every kernel launch recorded instead of run (`kernels.specializations.recording_launches`):
the grids, tiles and modes below are the launchers' own (padded calls, as the model makes them when sequences
have lengths, go through the kernels' padded mode, which reads the fused projections in place). The torch ops
the launchers run around the kernels (index tables, sorts) are counted with a dispatch mode. Then, from the
cases' real segment lengths:

  programs  launched, and idle ones (a program with no work unit: the model's target is zero);
  HBM bytes moved by our design: each kernel reads its inputs and writes its outputs from HBM once per launch,
            assuming the programs of one (segment, head), which run side by side, share K / V (and Q / dO in the
            backward) through L2; the bytes every program loads into the SM are reported as L2 bytes;
  FLOPs     of the padded matmul tiles (tl.dot on power-of-two tiles, masked lanes included);
  exps      exponentials computed (padded tiles);
  floor     max(HBM bytes / bandwidth, FLOPs / matmul peak, exps / exp rate) on a named GPU;
and the same for the ideal kernel: q, k, v read and o written once (forward; the backward reads q, k, v, o, dO
and writes dq, dk, dv once; padded calls read the valid rows and write every padded row, whose zeros the
model needs), FLOPs 4 * D * sum(Nq_i * Nk_i) per head forward and 2.5x that backward (the
FlashAttention convention, as the attention benchmark counts), one exponential per score forward and backward.
Launches are counted, not timed: each costs a few microseconds of launch latency unless CUDA graphs hide it.
"""
from __future__ import annotations

import bisect
import contextlib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .shapes import AttentionCase, select_shape_sets

DTYPE_BYTES = {torch.bfloat16: 2, torch.float16: 2, torch.float32: 4}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
MODEL_SHAPE_SETS = ("bpmt-fixed", "bpmt-varlen", "cross-pairs")


@dataclass(frozen=True)
class GpuSpec:
    """A GPU's ceilings as the model uses them."""
    name: str
    bandwidth_tb_s: float  # HBM bytes read + written per second
    half_tflop_s: float  # fp16 / bf16 dense tensor-core matmul
    fp32_tflop_s: float  # fp32 FMA (our fp32 dots use IEEE precision, no TF32)
    sms: int
    clock_ghz: float  # boost clock: exp2 runs on the special function units, 16 per SM per clock
    source: str

    @property
    def exp_per_s(self) -> float:
        return 16 * self.sms * self.clock_ghz * 1e9

    def matmul_flop_s(self, dtype: torch.dtype) -> float:
        return (self.fp32_tflop_s if dtype == torch.float32 else self.half_tflop_s) * 1e12


# H100 / H200: ceilings measured on the lent machines (../shared/GPU.md: device copy, bf16 8192^3 matmul);
# fp32 FMA peaks and clocks from NVIDIA's data sheets; A100 entirely from its data sheet (SXM 80 GB).
GPUS = {
    "h100": GpuSpec("H100 SXM", 2.97, 708.0, 67.0, 132, 1.98, "copy and bf16 matmul measured (GPU.md)"),
    "h200": GpuSpec("H200", 4.3, 790.0, 67.0, 132, 1.98, "copy and bf16 matmul measured (GPU.md)"),
    "a100": GpuSpec("A100 SXM 80GB", 2.04, 312.0, 19.5, 108, 1.41, "data sheet"),
}


@dataclass
class Cost:
    """Work of one kernel launch (or of the ops around the kernels, or of the ideal kernel)."""
    name: str
    launches: int = 0
    programs: int = 0
    idle_programs: int = 0
    hbm_bytes: float = 0.0
    l2_bytes: float = 0.0
    flops: float = 0.0
    exps: float = 0.0

    def add(self, other: "Cost") -> None:
        for name in ("launches", "programs", "idle_programs", "hbm_bytes", "l2_bytes", "flops", "exps"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def floor_us(self, gpu: GpuSpec, dtype: torch.dtype) -> float:
        return 1e6 * max(self.hbm_bytes / (gpu.bandwidth_tb_s * 1e12), self.flops / gpu.matmul_flop_s(dtype),
                         self.exps / gpu.exp_per_s)


@dataclass
class CallModel:
    """One attention call of a case in one direction ("fwd" or "fwd+bwd")."""
    case: str
    direction: str
    kernels: list[Cost]
    around: Cost
    ideal: Cost
    design: Cost = field(init=False)

    def __post_init__(self):
        self.design = Cost("design")
        for cost in (*self.kernels, self.around):
            self.design.add(cost)


# ---------------------------------------------------------------------------------------------------------------
# the calls, recorded on meta tensors
# ---------------------------------------------------------------------------------------------------------------
class _OpCounter(TorchDispatchMode):
    """Counts the torch ops that would launch a kernel (not views, not allocations) and their bytes."""

    FREE = ("empty", "empty_like", "new_empty", "empty_strided", "view", "_unsafe_view", "alias", "detach",
            "lift_fresh", "as_strided", "slice", "select", "unbind", "t", "transpose", "expand", "unsqueeze",
            "squeeze", "permute")

    def __init__(self):
        super().__init__()
        self.cost = Cost("around: index ops")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name not in self.FREE:
            tensors = [x for x in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(x, torch.Tensor)]
            outputs = [x for x in torch.utils._pytree.tree_leaves(out) if isinstance(x, torch.Tensor)]
            self.cost.launches += 1
            self.cost.hbm_bytes += sum(x.numel() * x.element_size() for x in tensors + outputs)
        return out


def padded_call(case: AttentionCase) -> bool:
    """The model's call of padded sequences with lengths: the `triton` backend reads them in place."""
    return case.layout == "padded" and (case.q_lengths is not None or case.kv_lengths is not None)


@contextlib.contextmanager
def _recording(sms: int):
    """Inside: kernel launches recorded, not run, with persistent grids sized for a GPU of `sms` SMs (meta tensors
    carry no device to ask), and the torch ops around them counted. Yields (launches, op counter)."""
    from bpmt_fast.kernels import varlen_attention as kernels
    from bpmt_fast.kernels.specializations import recording_launches

    counter = _OpCounter()
    default_sms, kernels.DEFAULT_SMS = kernels.DEFAULT_SMS, sms
    try:
        with recording_launches() as launches, counter:
            yield launches, counter
    finally:
        kernels.DEFAULT_SMS = default_sms


def _record(case: AttentionCase, dtype: torch.dtype, backward: bool, sms: int):
    """The launches and around-kernel ops of one call, as the `triton` backend makes it (nothing runs): padded
    calls through `padded_attention_fwd / bwd` (`TritonBackend._attend_packed`), others through the varlen
    launchers (`TritonBackend._varlen`: automatic row mode and backward, identity kv_index)."""
    from bpmt_fast.kernels import varlen_attention as kernels

    dim, scale = case.head_dim, case.head_dim ** -0.5
    meta = dict(dtype=dtype, device="meta")
    if padded_call(case):
        rows, longest = case.batch * case.n_q, int(case.lengths("q").max())
        q, k, v = (torch.empty(rows, case.heads, dim, **meta) for _ in range(3))
        with _recording(sms) as (launches, counter):
            lengths = torch.empty(case.batch, dtype=torch.long, device="meta").to(torch.int32)  # as the backend
            out, lse = kernels.padded_attention_fwd(q, k, v, lengths, case.n_q, longest, scale)
            if backward:
                grads = [torch.empty_like(q) for _ in range(3)]
                kernels.padded_attention_bwd(torch.empty_like(out), q, k, v, out, lse, lengths, case.n_q, longest,
                                             scale, *grads)
        return launches, counter.cost
    q_lengths, kv_lengths = case.lengths("q").tolist(), case.lengths("kv").tolist()
    q = torch.empty(sum(q_lengths), case.heads, dim, **meta)
    k, v = (torch.empty(sum(kv_lengths), case.heads, dim, **meta) for _ in range(2))
    cu_q = torch.empty(len(q_lengths) + 1, dtype=torch.int32, device="meta")
    cu_k = cu_q if q_lengths == kv_lengths else torch.empty_like(cu_q)  # self-attention: one offsets tensor
    max_q, max_k = max(q_lengths), max(kv_lengths)
    with _recording(sms) as (launches, counter):
        kv_index = torch.arange(len(q_lengths), dtype=torch.int32, device="meta")  # as the backend builds it
        pack_rows = kernels._auto_pack_rows(dim, dim, max_q, max_k, dtype)
        out, lse = kernels.varlen_attention_fwd(q, k, v, cu_q, cu_k, kv_index, max_q, max_k, scale, pack_rows, True)
        if backward:
            kernels.varlen_attention_bwd(torch.empty_like(out), q, k, v, out, lse, cu_q, cu_k, kv_index, max_q,
                                         max_k, scale, pack_rows, True)
    return launches, counter.cost


# ---------------------------------------------------------------------------------------------------------------
# per-kernel work from the recorded launch and the real lengths
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class _Shapes:
    q_lengths: list[int]
    kv_lengths: list[int]
    heads: int
    dim: int
    dim_v: int
    elt: int  # bytes per element of q, k, v, o and gradients
    padded_n: int = 0  # padded calls: rows per sequence (every one written), else 0

    @property
    def total_q(self) -> int:
        return sum(self.q_lengths)

    @property
    def total_k(self) -> int:
        return sum(self.kv_lengths)

    @property
    def written_q(self) -> int:
        """Query-side rows written (outputs, dq): every padded row of a padded call."""
        return len(self.q_lengths) * self.padded_n if self.padded_n else self.total_q

    @property
    def written_k(self) -> int:
        return len(self.kv_lengths) * self.padded_n if self.padded_n else self.total_k


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _offsets(lengths: list[int]) -> list[int]:
    return list(itertools.accumulate(lengths, initial=0))


def _segment_of(offsets: list[int], token: int) -> int:
    """Segment holding token: the last one whose start is <= token (an empty segment shares its start with the
    next one, so the last such start is the segment that owns the token)."""
    return bisect.bisect_right(offsets, token, hi=len(offsets) - 1) - 1


def _row_blocks(lengths: list[int], block: int, packed: bool) -> list[tuple[int, int, int]]:
    """(segment or first segment, rows, key side range) per row block of a launch: per segment, each segment's
    blocks; packed rows, blocks of the rows back to back. Returns (first segment, last segment, rows)."""
    if packed:
        offsets, total = _offsets(lengths), sum(lengths)
        return [(_segment_of(offsets, start), _segment_of(offsets, min(start + block, total) - 1),
                 min(block, total - start)) for start in range(0, total, block)]
    return [(s, s, min(block, n - b * block)) for s, n in enumerate(lengths) for b in range(_cdiv(n, block))]


def _launch_programs(launch, units: int) -> tuple[int, int]:
    programs = math.prod(launch.grid)
    return programs, max(0, programs - units)


def _forward_cost(launch, shapes: _Shapes) -> Cost:
    c = launch.constexprs()
    bm, bn, bd, bdv = c["BLOCK_M"], c["BLOCK_N"], c["BLOCK_D"], c["BLOCK_DV"]
    packed, one_block = c["PACK_ROWS"], c["ONE_KEY_BLOCK"]
    h, d, dv, e = shapes.heads, shapes.dim, shapes.dim_v, shapes.elt
    k_offsets = _offsets(shapes.kv_lengths)
    cost = Cost(launch.kernel_name, launches=1)
    if c["PADDED"]:  # every block of N rows: read the valid rows, write all (padding-only blocks skip the keys)
        blocks = [(s, s, min(bm, shapes.padded_n - b * bm), max(0, min(bm, n - b * bm)))
                  for s, n in enumerate(shapes.q_lengths) for b in range(_cdiv(shapes.padded_n, bm))]
    else:
        blocks = [(first, last, rows, rows) for first, last, rows in _row_blocks(shapes.q_lengths, bm, packed)]
    for first, last, written, rows in blocks:
        keys = k_offsets[last + 1] - k_offsets[first] if rows else 0
        trips = 1 if one_block else _cdiv(keys, bn)
        cost.l2_bytes += h * (rows * d * e + written * (dv * e + 4) + keys * (d + dv) * e
                              + (rows + keys) * 4 * packed)
        cost.flops += h * trips * 2 * bm * bn * (bd + bdv)
        cost.exps += h * trips * (bm * bn + (0 if one_block else bm))
    # HBM: q once, o and lse once per written row; k, v once per key segment (its programs share them through L2)
    cost.hbm_bytes = h * (shapes.total_q * d * e + shapes.written_q * (dv * e + 4) + shapes.total_k * (d + dv) * e
                          + (shapes.total_q + shapes.total_k) * 4 * packed)
    cost.programs, cost.idle_programs = _launch_programs(launch, len(blocks) * h)
    return cost


def _fused_backward_cost(launch, shapes: _Shapes) -> Cost:
    c = launch.constexprs()
    bm, bn, bd, bdv = c["BLOCK_M"], c["BLOCK_N"], c["BLOCK_D"], c["BLOCK_DV"]
    h, d, dv, e = shapes.heads, shapes.dim, shapes.dim_v, shapes.elt
    segments = len(shapes.q_lengths)
    bytes_ = h * (shapes.total_q * ((d + 2 * dv) * e + 4) + shapes.written_q * d * e
                  + shapes.total_k * (d + dv) * e + shapes.written_k * (d + dv) * e)
    cost = Cost(launch.kernel_name, launches=1, hbm_bytes=bytes_, l2_bytes=bytes_,
                flops=h * segments * 2 * bm * bn * (3 * bd + 2 * bdv), exps=h * segments * bm * bn)
    cost.programs, cost.idle_programs = _launch_programs(launch, segments * h)
    return cost


def _segment_backward_cost(launch, shapes: _Shapes) -> Cost:
    """One (segment, head) per unit: dK/dV per key block over the query blocks (4 matmuls per tile pair), then
    dQ per query block over the key blocks (3), delta from O / dO each time; HBM: each input once per unit."""
    c = launch.constexprs()
    bm, bn, bd, bdv = c["BLOCK_M"], c["BLOCK_N"], c["BLOCK_D"], c["BLOCK_DV"]
    h, d, dv, e = shapes.heads, shapes.dim, shapes.dim_v, shapes.elt
    segments = len(shapes.q_lengths)
    cost = Cost(launch.kernel_name, launches=1)
    for lq, lk in zip(shapes.q_lengths, shapes.kv_lengths):
        q_blocks, k_blocks = _cdiv(lq, bm), _cdiv(lk, bn)
        row_bytes = (d + 2 * dv) * e + 4  # q, o, dO, lse of one query row
        cost.l2_bytes += h * (lk * 2 * (d + dv) * e + k_blocks * lq * row_bytes  # dK/dV phase
                              + lq * (row_bytes + d * e) + q_blocks * lk * (d + dv) * e)  # dQ phase
        cost.flops += h * q_blocks * k_blocks * 2 * bm * bn * (4 * bd + 3 * bdv)
        cost.exps += h * 2 * q_blocks * k_blocks * bm * bn
    cost.hbm_bytes = h * (shapes.total_q * ((d + 2 * dv) * e + 4) + shapes.written_q * d * e
                          + shapes.total_k * (d + dv) * e + shapes.written_k * (d + dv) * e)
    cost.l2_bytes += h * ((shapes.written_q - shapes.total_q) * d + (shapes.written_k - shapes.total_k) * (d + dv)) * e
    cost.programs, cost.idle_programs = _launch_programs(launch, segments * h)
    return cost


def _preprocess_cost(launch, shapes: _Shapes) -> Cost:
    h, dv, e = shapes.heads, shapes.dim_v, shapes.elt
    bytes_ = h * shapes.total_q * (2 * dv * e + 4)  # o, dO in; delta out
    programs = math.prod(launch.grid)
    return Cost(launch.kernel_name, 1, programs, 0, bytes_, bytes_)


def _dkdv_cost(launch, shapes: _Shapes) -> Cost:
    c = launch.constexprs()
    bm, bn, bd, bdv, packed = c["BLOCK_M"], c["BLOCK_N"], c["BLOCK_D"], c["BLOCK_DV"], c["PACK_ROWS"]
    h, d, dv, e = shapes.heads, shapes.dim, shapes.dim_v, shapes.elt
    q_offsets = _offsets(shapes.q_lengths)
    cost = Cost(launch.kernel_name, launches=1)
    blocks = _row_blocks(shapes.kv_lengths, bn, packed)
    for first, last, keys in blocks:
        rows = q_offsets[last + 1] - q_offsets[first]  # identity kv_index: the queries of these key segments
        trips = _cdiv(rows, bm)
        cost.l2_bytes += h * (keys * 2 * (d + dv) * e + rows * ((d + dv) * e + 8) + (rows + keys) * 4 * packed)
        cost.flops += h * trips * 2 * bm * bn * (2 * bd + 2 * bdv)
        cost.exps += h * trips * bm * bn
    cost.hbm_bytes = h * (shapes.total_k * 2 * (d + dv) * e + shapes.total_q * ((d + dv) * e + 8)
                          + (shapes.total_q + shapes.total_k) * 4 * packed)
    cost.programs, cost.idle_programs = _launch_programs(launch, len(blocks) * h)
    return cost


def _dq_cost(launch, shapes: _Shapes) -> Cost:
    c = launch.constexprs()
    bm, bn, bd, bdv, packed = c["BLOCK_M"], c["BLOCK_N"], c["BLOCK_D"], c["BLOCK_DV"], c["PACK_ROWS"]
    h, d, dv, e = shapes.heads, shapes.dim, shapes.dim_v, shapes.elt
    k_offsets = _offsets(shapes.kv_lengths)
    cost = Cost(launch.kernel_name, launches=1)
    blocks = _row_blocks(shapes.q_lengths, bm, packed)
    for first, last, rows in blocks:
        keys = k_offsets[last + 1] - k_offsets[first]
        trips = _cdiv(keys, bn)
        cost.l2_bytes += h * (rows * ((2 * d + dv) * e + 8) + keys * (d + dv) * e + (rows + keys) * 4 * packed)
        cost.flops += h * trips * 2 * bm * bn * (2 * bd + bdv)
        cost.exps += h * trips * bm * bn
    cost.hbm_bytes = h * (shapes.total_q * ((2 * d + dv) * e + 8) + shapes.total_k * (d + dv) * e
                          + (shapes.total_q + shapes.total_k) * 4 * packed)
    cost.programs, cost.idle_programs = _launch_programs(launch, len(blocks) * h)
    return cost


KERNEL_COSTS = {
    "varlen_attention_fwd_kernel": _forward_cost,
    "varlen_attention_bwd_fused_kernel": _fused_backward_cost,
    "varlen_attention_bwd_segment_kernel": _segment_backward_cost,
    "varlen_attention_bwd_preprocess_kernel": _preprocess_cost,
    "varlen_attention_bwd_dkdv_kernel": _dkdv_cost,
    "varlen_attention_bwd_dq_kernel": _dq_cost,
}


def ideal_cost(case: AttentionCase, elt: int, backward: bool) -> Cost:
    h, d = case.heads, case.head_dim
    tq, tk, pairs = case.tokens("q"), case.tokens("kv"), case.token_pairs()
    wq, wk = (case.batch * case.n_q, case.batch * case.n_k) if padded_call(case) else (tq, tk)  # rows written
    cost = Cost("ideal", hbm_bytes=h * (tq * d + 2 * tk * d + wq * d) * elt, flops=h * 4 * d * pairs, exps=h * pairs)
    if backward:  # read q, k, v, o, dO; write dq, dk, dv
        cost.hbm_bytes += h * (3 * tq * d + 2 * tk * d + wq * d + 2 * wk * d) * elt
        cost.flops *= 3.5
        cost.exps *= 2
    return cost


def model_call(case: AttentionCase, dtype: torch.dtype, direction: str, gpu: GpuSpec) -> CallModel:
    backward = direction == "fwd+bwd"
    launches, index_ops = _record(case, dtype, backward, gpu.sms)
    shapes = _Shapes(case.lengths("q").tolist(), case.lengths("kv").tolist(), case.heads, case.head_dim,
                     case.head_dim, DTYPE_BYTES[dtype], case.n_q if padded_call(case) else 0)
    kernels = [KERNEL_COSTS[launch.kernel_name](launch, shapes) for launch in launches]
    around = Cost("around the kernels")
    around.add(index_ops)
    return CallModel(case.name, direction, kernels, around, ideal_cost(case, shapes.elt, backward))


# ---------------------------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------------------------
def model_rows(shape_sets: list[str], gpu: GpuSpec, dtype: torch.dtype, quick: bool = False) -> list[dict]:
    rows = []
    for shape_set in select_shape_sets(shape_sets, kind="attention"):
        for case in shape_set.cases(quick):
            for direction in ("fwd", "fwd+bwd"):
                call = model_call(case, dtype, direction, gpu)
                design_us, ideal_us = call.design.floor_us(gpu, dtype), call.ideal.floor_us(gpu, dtype)
                rows.append(dict(
                    shape_set=shape_set.name, case=case.name, direction=direction,
                    launches=call.design.launches, kernels=[k.name for k in call.kernels],
                    programs=sum(k.programs for k in call.kernels),
                    idle_programs=sum(k.idle_programs for k in call.kernels),
                    hbm_mb=call.design.hbm_bytes / 1e6, ideal_hbm_mb=call.ideal.hbm_bytes / 1e6,
                    around_mb=call.around.hbm_bytes / 1e6, l2_mb=sum(k.l2_bytes for k in call.kernels) / 1e6,
                    gflop=call.design.flops / 1e9, ideal_gflop=call.ideal.flops / 1e9,
                    mexp=call.design.exps / 1e6, ideal_mexp=call.ideal.exps / 1e6,
                    design_floor_us=design_us, ideal_floor_us=ideal_us, ratio=design_us / ideal_us))
    return rows


def format_table(rows: list[dict], gpu: GpuSpec, dtype_name: str) -> str:
    lines = [f"Cost MODEL (not a measurement) of the `triton` backend, {dtype_name}, on {gpu.name} "
             f"({gpu.bandwidth_tb_s} TB/s, {gpu.half_tflop_s if dtype_name != 'fp32' else gpu.fp32_tflop_s} "
             f"TFLOP/s, {gpu.exp_per_s / 1e12:.1f} T exp/s; {gpu.source}).",
             "",
             "| case | dir | launches | programs (idle) | HBM MB (ideal) | around MB | GFLOP (ideal) | M exp (ideal) "
             "| floor us (ideal) | design / ideal |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['direction']} | {r['launches']} | {r['programs']} ({r['idle_programs']}) "
                     f"| {r['hbm_mb']:.1f} ({r['ideal_hbm_mb']:.1f}) | {r['around_mb']:.1f} "
                     f"| {r['gflop']:.2f} ({r['ideal_gflop']:.2f}) | {r['mexp']:.1f} ({r['ideal_mexp']:.1f}) "
                     f"| {r['design_floor_us']:.1f} ({r['ideal_floor_us']:.1f}) | {r['ratio']:.2f}x |")
    return "\n".join(lines)


def gpu_key(device_name: str) -> str:
    """The model's GPU for a CUDA device name ("NVIDIA H200" -> "h200"); H100 for anything it does not know."""
    name = device_name.lower()
    return next((key for key in ("h200", "h100", "a100") if key in name), "h100")


def model_vs_measured(results: dict, gpu: str, backend: str = "triton") -> str:
    """Markdown: the model's design floor beside the time `bpmt-fast bench` measured for `backend`, per attention
    case and direction of a results.json, at its dtype (how far the kernels are from the model's floor, and
    where the model is wrong)."""
    dtype_name = results["settings"].get("dtype", "bf16")
    spec, dtype = GPUS[gpu], DTYPES.get(dtype_name, torch.bfloat16)
    measured = {(r["case"], r["direction"]): r for r in results["rows"]
                if r.get("suite") == "attention" and r.get("backend") == backend and r.get("status") == "ok"}
    names = sorted({r.get("shape_set") for r in results["rows"] if r.get("suite") == "attention"} & set(
        MODEL_SHAPE_SETS + ("long",)))
    lines = [f"Cost model ({spec.name}, {dtype_name}) beside `{backend}` as measured in this run.", "",
             "| case | dir | model floor us | ideal floor us | measured us | measured / model floor |",
             "|---|---|---:|---:|---:|---:|"]
    for row in model_rows(names, spec, dtype, quick=bool(results["settings"].get("quick"))):
        got = measured.get((row["case"], row["direction"]))
        time_us = got["median_ms"] * 1e3 if got else float("nan")
        lines.append(f"| {row['case']} | {row['direction']} | {row['design_floor_us']:.1f} | "
                     f"{row['ideal_floor_us']:.1f} | {time_us:.1f} | {time_us / row['design_floor_us']:.2f}x |")
    return "\n".join(lines)


README_START, README_END = "<!-- cost-model:start -->", "<!-- cost-model:end -->"


def update_readme(readme: str | Path, table: str) -> None:
    """Replace the text between the cost-model markers of `readme` with `table` (the default model only)."""
    from bpmt_fast.bench.readme import replace_section

    readme = Path(readme)
    readme.write_text(replace_section(readme.read_text(), table, readme, README_START, README_END,
                                      "the cost model's table goes between them"))


def run_model(shapes: list[str] | None, gpu: str, dtype: str, quick: bool = False, out: str | None = None) -> str:
    from bpmt_fast.kernels import common

    if common.INTERPRET:
        raise RuntimeError("the cost model records GPU launches: run it without TRITON_INTERPRET=1 (under the "
                           "interpreter the launchers choose the interpreter's tiles and grids)")
    spec, torch_dtype = GPUS[gpu], DTYPES[dtype]
    rows = model_rows(list(shapes or MODEL_SHAPE_SETS), spec, torch_dtype, quick)
    table = format_table(rows, spec, dtype)
    if out:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "cost-model.json").write_text(json.dumps(dict(gpu=spec.__dict__, dtype=dtype, model=True,
                                                                rows=rows), indent=1))
        (folder / "cost-model.md").write_text(table + "\n")
    return table
