"""`bpmt-fast bench tune`: measure launch configurations of our Triton kernels on this GPU and commit the winners.

For each key of the sweep (kernel x mode x padded head dim x length bucket x dtype; see kernels/tuning.py) the
tuner times the launcher's own default, then candidate configurations (tiles 16..128, warps 2/4/8, stages 1-3)
through `kernels.tuning.override_config`, and keeps the fastest candidate when it beats the default by at least
`MIN_GAIN` (else the default stays: no entry). A candidate is skipped, with the reason recorded, when it raises
(e.g. out of shared memory), when its output differs from the default's beyond rounding, or when the launcher
never asked `tuned_config` for the key being tuned (a launcher not wired to the tables: every candidate would
time the same, so the key stops there). Table lookups other than the override are disabled while sweeping.

GPU time is scarce: `budget_s` bounds the whole sweep. Each key gets an equal share of what is left (so a short
budget covers every key a little rather than a few keys fully), candidates nearest a typical configuration come
first, and the table is written after every key, so what was measured survives a machine that goes away.

Launch functions: `LAUNCHES[kernel](config, key) -> zero-arg callable` running that kernel's launcher once on a
representative gait-shaped input (B=256 sequences x 5 parts, every segment as long as the key's bucket, H=8,
D = the key's head block). `config` is None for the default run; the public launchers of
kernels/varlen_attention.py read candidates through the override the tuner holds while it builds, checks and
times the callable. "dkdv", "dq", "fused_bwd" and "segment_bwd" time the whole backward launcher forced into the
backward that runs the tuned kernel (`BACKWARD_OF`: three kernels for dkdv / dq; only the tuned kernel's
configuration varies), so their times are comparable within a key only.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch

from bpmt_fast.bench.common import error_text
from bpmt_fast.kernels import tuning

DEFAULT_BUDGET_S = 300.0
DEFAULT_KERNELS = ("fwd", "dkdv", "dq", "fused_bwd", "segment_bwd")
DEFAULT_HEAD_DIMS = (32, 16, 64, 128)  # the model's head dim first: the budget may end before the others
DEFAULT_DTYPES = ("bf16", "fp16")
DEFAULT_BUCKETS = (64, 128, 32, 256, 16, 512)  # Gait3D lengths: median ~100, 25..489
TILES = (16, 32, 64, 128)
WARPS = (2, 4, 8)
STAGES = (1, 2, 3)
PACKED_MAX_BUCKET = 64  # packed rows only pay when a 128-row tile holds >= 2 segments, as the launcher's rule asks
MIN_GAIN = 0.02  # a candidate replaces the default only when >= 2% faster (below that it is timing noise)
BATCH, PARTS, HEADS = 256, 5, 8  # the representative input: B=256 sequences x 5 body parts, 8 heads
DEVICE = "cuda"  # where the launch functions build their inputs (tests: "cpu" under the Triton interpreter)
# Largest |candidate - default| allowed, relative to max |default| (at least 1): tiling changes rounding order only.
TOLERANCE = {"fp16": 1e-2, "bf16": 5e-2, "fp32": 1e-4}
TORCH_DTYPES = {name: dtype for dtype, name in tuning.DTYPES.items()}


@dataclass(frozen=True)
class TuneKey:
    kernel: str
    mode: str  # "segment" | "packed"
    head_block: int
    bucket: int
    dtype: str  # "fp16" | "bf16" | "fp32"

    def table_key(self) -> tuple:
        return (self.kernel, self.mode, self.head_block, self.bucket, self.dtype)

    def __str__(self) -> str:
        return f"{self.kernel}/{self.mode}/D{self.head_block}/L{self.bucket}/{self.dtype}"


@dataclass
class KeyResult:
    key: TuneKey
    status: str  # "tuned" | "default fastest" | "not tuned: <why>"
    config: dict | None = None  # the winner, when tuned
    median_ms: float | None = None  # the winner's time (the best candidate's when the default stayed)
    default_ms: float | None = None
    measured: int = 0  # candidates timed
    skipped: list[tuple[dict, str]] = field(default_factory=list)  # (config, why)


# ---------------------------------------------------------------------------------------------------------------
# what to sweep
# ---------------------------------------------------------------------------------------------------------------
def sweep_keys(kernels: Iterable[str], head_dims: Iterable[int], dtypes: Iterable[str],
               buckets: Iterable[int] = DEFAULT_BUCKETS, modes: Iterable[str] = tuning.MODES) -> list[TuneKey]:
    """Keys in priority order: dtype, head dim, bucket, kernel, mode as given (packed only for short buckets)."""
    return [TuneKey(kernel, mode, head_dim, bucket, dtype)
            for dtype in dtypes for head_dim in head_dims for bucket in buckets for kernel in kernels
            for mode in modes if mode == "segment" or bucket <= PACKED_MAX_BUCKET]


def candidate_configs(key: TuneKey) -> list[dict]:
    """Tiles 16..128 (per segment: no wider than the bucket, the rest would be masked lanes), warps 2/4/8,
    stages 1-3; nearest to a typical 64 x 64, 4-warp, 2-stage choice first (what a short budget reaches)."""
    cap = 128 if key.mode == "packed" else max(16, min(128, key.bucket))
    tiles = [t for t in TILES if t <= cap]
    typical = min(64, cap)
    configs = [{"block_m": m, "block_n": n, "num_warps": w, "num_stages": s}
               for m in tiles for n in tiles for w in WARPS for s in STAGES]

    def distance(c):
        return (abs(math.log2(c["block_m"] / typical)) + abs(math.log2(c["block_n"] / typical))
                + abs(math.log2(c["num_warps"] / 4)) + abs(c["num_stages"] - 2))

    return sorted(configs, key=distance)  # stable: ties keep the loop order


def config_label(config: dict | None) -> str:
    if config is None:
        return "default"
    return f"{config['block_m']}x{config['block_n']}/w{config['num_warps']}/s{config['num_stages']}"


# ---------------------------------------------------------------------------------------------------------------
# the sweep
# ---------------------------------------------------------------------------------------------------------------
def _tensors(out) -> list[torch.Tensor]:
    items = out if isinstance(out, (tuple, list)) else (out,)
    return [x for x in items if isinstance(x, torch.Tensor)]


def output_mismatch(reference, out, dtype: str) -> str | None:
    """Why `out` is not the default's result up to rounding, or None (also None for outputs without tensors)."""
    ref, got = _tensors(reference), _tensors(out)
    if len(ref) != len(got):
        return f"wrong result: {len(got)} output tensors, the default gave {len(ref)}"
    for i, (a, b) in enumerate(zip(ref, got)):
        if a.shape != b.shape:
            return f"wrong result: output {i} has shape {tuple(b.shape)}, the default's {tuple(a.shape)}"
        a, b = a.float(), b.float()
        if not torch.isfinite(b).all():
            return f"wrong result: output {i} has non-finite values"
        scale = max(1.0, float(a.abs().max())) if a.numel() else 1.0
        diff = float((a - b).abs().max()) if a.numel() else 0.0
        if diff > TOLERANCE[dtype] * scale:
            return f"wrong result: output {i} differs from the default's by {diff:.3g} (max |default| {scale:.3g})"
    return None


def tune_key(key: TuneKey, run: Callable, measure: Callable[[Callable], float], deadline: float,
             clock: Callable[[], float] = time.monotonic, on_error: Callable[[], None] = lambda: None,
             ) -> KeyResult:
    """Time the default, then candidates until `deadline` (by `clock`); the fastest beating the default wins."""
    result = KeyResult(key, "not tuned: no candidate measured within this key's share of the time budget")
    try:
        default_fn = run(None, key)
        reference = default_fn()
        result.default_ms = measure(default_fn)
    except Exception as error:  # the launcher's own default fails: nothing to compare candidates with
        on_error()
        result.status = f"not tuned: the default failed ({error_text(error, 200)})"
        return result
    best_ms, best = math.inf, None
    for config in candidate_configs(key):
        if clock() >= deadline:
            break
        with tuning.override_config(key.kernel, config) as lookups:
            try:
                fn = run(config, key)
                out = fn()  # compiles this configuration
                if key.table_key() not in lookups:
                    seen = ", ".join(map(str, sorted(lookups))) or "none"
                    result.skipped.append((config, f"the launcher did not ask tuned_config for {key.table_key()} "
                                                   f"(it asked for: {seen})"))
                    result.status = "not tuned: the launcher does not read tuned_config for this key"
                    return result  # every candidate would time the default
                problem = output_mismatch(reference, out, key.dtype)
                if problem:
                    result.skipped.append((config, problem))
                    continue
                ms = measure(fn)
            except Exception as error:  # out of shared memory / registers, a launch the kernel refuses, ...
                on_error()
                result.skipped.append((config, error_text(error, 200)))
                continue
        result.measured += 1
        if ms < best_ms:
            best_ms, best = ms, config
    if best is None:
        if result.skipped:
            result.status = "not tuned: every candidate tried was skipped"
        return result
    result.median_ms = best_ms
    if best_ms <= result.default_ms * (1 - MIN_GAIN):
        result.status, result.config = "tuned", best
    else:
        result.status = "default fastest"
    return result


def sweep(keys: list[TuneKey], launches: dict[str, Callable], measure: Callable[[Callable], float],
          budget_s: float, clock: Callable[[], float] = time.monotonic,
          on_key: Callable[[KeyResult], None] = lambda result: None,
          on_error: Callable[[], None] = lambda: None) -> tuple[list[KeyResult], bool]:
    """Tune `keys` in order within `budget_s` seconds; each key gets an equal share of the time left.

    `launches[kernel](config, key)` builds the callable to time, `measure(fn)` its median in ms. Returns the
    results of the keys started and whether the budget stopped the sweep early. `on_key` sees each result as
    soon as it is known (the caller writes the table there)."""
    start = clock()
    end = start + budget_s
    results: list[KeyResult] = []
    with tuning.tables_disabled():  # the default is the launcher's own, not an older table's choice
        for i, key in enumerate(keys):
            now = clock()
            if now >= end:
                return results, True
            if key.kernel not in launches:
                result = KeyResult(key, f"not tuned: no launch function registered for kernel {key.kernel!r}")
            else:
                share = (end - now) / (len(keys) - i)
                result = tune_key(key, launches[key.kernel], measure, now + share, clock, on_error)
            results.append(result)
            on_key(result)
    return results, False


# ---------------------------------------------------------------------------------------------------------------
# the table file
# ---------------------------------------------------------------------------------------------------------------
def _entry(result: KeyResult, run_index: int) -> dict:
    skipped: dict[str, list[str]] = {}
    for config, reason in result.skipped:
        skipped.setdefault(reason, []).append(config_label(config))
    return {**{name: getattr(result.key, name) for name in tuning.KEY_FIELDS},
            "config": result.config, "median_ms": result.median_ms, "default_ms": result.default_ms,
            "run": run_index, "measured": result.measured,
            "skipped": [{"reason": reason, "configs": labels} for reason, labels in skipped.items()]}


def merged_table(existing: dict | None, arch: str, run: dict, results: list[KeyResult]) -> dict:
    """`existing` (a decoded table or None) plus this run: tuned keys replace their entries, keys where the
    default was fastest lose theirs, everything else is kept."""
    table = existing or {"format": tuning.FORMAT, "arch": arch, "runs": [], "entries": []}
    runs = list(table["runs"]) + [run]
    run_index = len(runs) - 1
    measured = {r.key.table_key(): r for r in results if r.status in ("tuned", "default fastest")}
    entries = [e for e in table["entries"] if tuple(e[f] for f in tuning.KEY_FIELDS) not in measured]
    entries += [_entry(r, run_index) for r in measured.values() if r.status == "tuned"]
    entries.sort(key=lambda e: tuple(e[f] for f in tuning.KEY_FIELDS))
    return {"format": tuning.FORMAT, "arch": arch, "runs": runs, "entries": entries}


def read_existing(path: Path, arch: str) -> dict | None:
    """The table already at `path` (validated: a broken one stops the run before any GPU time is spent)."""
    if not path.exists():
        return None
    tuning.load_table(path, arch)
    return json.loads(path.read_text(encoding="utf-8"))


def write_table(path: Path, table: dict) -> None:
    """Atomic write, then read back through the loader (a table it cannot read is never left behind)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")
    tuning.load_table(tmp, table["arch"])
    os.replace(tmp, path)
    tuning.clear_cache()


# ---------------------------------------------------------------------------------------------------------------
# launch functions for the current launchers of kernels/varlen_attention.py
# ---------------------------------------------------------------------------------------------------------------
LAUNCHES: dict[str, Callable] = {}


def register_launch(*kernels: str):
    """Decorator: `fn(config, key) -> zero-arg callable` tunes these kernel names."""
    def decorate(fn):
        for kernel in kernels:
            LAUNCHES[kernel] = fn
        return fn
    return decorate


_INPUTS: dict[tuple, dict] = {}  # one representative input at a time (the largest is several GB)


def gait_inputs(key: TuneKey) -> dict:
    """B x P segments of the bucket's length, packed `(total, H, D)`, with the forward's out / lse and a dO."""
    device = DEVICE
    shape = (key.head_block, key.bucket, key.dtype, device, BATCH, PARTS)
    if shape not in _INPUTS:
        from bpmt_fast.kernels.varlen_attention import varlen_attention_fwd

        _INPUTS.clear()
        dtype, length, segments = TORCH_DTYPES[key.dtype], key.bucket, BATCH * PARTS
        generator = torch.Generator(device).manual_seed(0)
        q, k, v, do = (torch.randn(segments * length, HEADS, key.head_block, dtype=dtype, device=device,
                                   generator=generator) for _ in range(4))
        cu = torch.arange(0, segments + 1, dtype=torch.int32, device=device) * length
        kv_index = torch.arange(segments, dtype=torch.int32, device=device)
        x = dict(q=q, k=k, v=v, do=do, cu=cu, kv_index=kv_index, length=length, scale=key.head_block ** -0.5)
        x["out"], x["lse"] = varlen_attention_fwd(q, k, v, cu, cu, kv_index, length, length, x["scale"],
                                                  pack_rows=False)
        _INPUTS[shape] = x
    return _INPUTS[shape]


@register_launch("fwd")
def launch_fwd(config: dict | None, key: TuneKey) -> Callable[[], object]:
    from bpmt_fast.kernels.varlen_attention import varlen_attention_fwd

    x = gait_inputs(key)
    return lambda: varlen_attention_fwd(x["q"], x["k"], x["v"], x["cu"], x["cu"], x["kv_index"], x["length"],
                                        x["length"], x["scale"], pack_rows=key.mode == "packed")


# The backward each tuned kernel runs in (the launcher would otherwise choose one, maybe not the tuned kernel's).
BACKWARD_OF = {"dkdv": "split", "dq": "split", "fused_bwd": "fused", "segment_bwd": "segment"}


@register_launch(*BACKWARD_OF)
def launch_bwd(config: dict | None, key: TuneKey) -> Callable[[], object]:
    from bpmt_fast.kernels.varlen_attention import varlen_attention_bwd

    x = gait_inputs(key)
    return lambda: varlen_attention_bwd(x["do"], x["q"], x["k"], x["v"], x["out"], x["lse"], x["cu"], x["cu"],
                                        x["kv_index"], x["length"], x["length"], x["scale"],
                                        pack_rows=key.mode == "packed", identity=True,
                                        backward=BACKWARD_OF[key.kernel])


# ---------------------------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------------------------
def _list_of(kind: Callable, allowed: Iterable | None = None):
    def parse(text: str) -> list:
        try:
            items = [kind(item.strip()) for item in text.split(",") if item.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}") from None
        bad = [item for item in items if allowed is not None and item not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"got {text!r}; choose from {', '.join(map(str, allowed))}")
        return items
    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"the budget must be > 0 seconds, got {text}")
    return value


def add_tune_parser(subparsers) -> argparse.ArgumentParser:
    """The `tune` sub-command (under `bpmt-fast bench`); its handler is `run_tune`, set as `run`."""
    parser = subparsers.add_parser(
        "tune", help="on a CUDA GPU: time launch configurations of our Triton kernels per (kernel, mode, head dim, "
                     "length bucket, dtype) and write the winners to kernels/tuned/<arch>.json")
    parser.add_argument("--budget-s", type=_seconds, default=DEFAULT_BUDGET_S, metavar="S",
                        help=f"total time for the sweep; keys not reached keep their entries (default "
                             f"{DEFAULT_BUDGET_S:.0f})")
    parser.add_argument("--out", help="table JSON, merged with what it holds (default: kernels/tuned/<arch>.json "
                                      "of this source tree)")
    parser.add_argument("--kernels", type=_list_of(str), default=list(DEFAULT_KERNELS), metavar="K,K",
                        help=f"kernel names (default {','.join(DEFAULT_KERNELS)})")
    parser.add_argument("--head-dims", type=_list_of(int, tuning.HEAD_BLOCKS), default=list(DEFAULT_HEAD_DIMS),
                        metavar="D,D", help=f"padded head dims, in priority order (default "
                                            f"{','.join(map(str, DEFAULT_HEAD_DIMS))})")
    parser.add_argument("--dtypes", type=_list_of(str, tuple(TORCH_DTYPES)), default=list(DEFAULT_DTYPES),
                        metavar="T,T", help=f"fp16, bf16, fp32 (default {','.join(DEFAULT_DTYPES)})")
    parser.add_argument("--buckets", type=_list_of(int, tuning.BUCKETS), default=list(DEFAULT_BUCKETS),
                        metavar="L,L", help=f"length buckets, in priority order (default "
                                            f"{','.join(map(str, DEFAULT_BUCKETS))})")
    parser.add_argument("--modes", type=_list_of(str, tuning.MODES), default=list(tuning.MODES), metavar="M,M",
                        help="segment, packed (default both; packed only for buckets <= "
                             f"{PACKED_MAX_BUCKET})")
    parser.set_defaults(run=run_tune)
    return parser


def no_gpu_message() -> str:
    build = f"CUDA build {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    return (f"bpmt-fast bench tune: error: tuning needs a CUDA GPU, and torch {torch.__version__} ({build}) sees "
            f"none; run it on a GPU machine (the table it writes is per GPU architecture)")


def run_tune(args) -> int:
    """Sweep, writing the table after every key; 2 (and a message on stderr) without CUDA."""
    if not torch.cuda.is_available():
        print(no_gpu_message(), file=sys.stderr)
        return 2
    unknown = [k for k in args.kernels if k not in LAUNCHES]
    if unknown:
        raise ValueError(f"no launch function for kernel(s) {unknown}; registered: {', '.join(LAUNCHES)}")
    from bpmt_fast.bench import timing
    from bpmt_fast.env import environment_info

    arch = tuning.device_arch()
    out = Path(args.out) if args.out else tuning.TUNED_DIR / f"{arch}.json"
    existing = read_existing(out, arch)
    info = environment_info()
    device = torch.device("cuda")
    run = {"device": info["gpu"], "arch": arch, "torch": info["torch"], "triton": info["triton"],
           "cuda": info["cuda"], "date": info["date"], "git_commit": info["git_commit"], "budget_s": args.budget_s,
           "timing": "median ms of triton.testing.do_bench (quick), representative input B256 x 5 parts, H8, "
                     "segments of the bucket's length; backward kernels: the whole backward launcher"}
    keys = sweep_keys(args.kernels, args.head_dims, args.dtypes, args.buckets, args.modes)
    results: list[KeyResult] = []
    started = time.monotonic()

    def on_key(result: KeyResult) -> None:
        results.append(result)
        run.update(elapsed_s=round(time.monotonic() - started, 1), keys_planned=len(keys), keys_done=len(results))
        write_table(out, merged_table(existing, arch, run, results))
        gain = (f" {result.default_ms / result.median_ms:.2f}x" if result.status == "tuned" else "")
        print(f"[{len(results)}/{len(keys)}] {result.key}: {result.status} {config_label(result.config)}{gain} "
              f"(default {result.default_ms} ms, {result.measured} measured, {len(result.skipped)} skipped)",
              flush=True)

    def measure(fn) -> float:
        return timing.measure(fn, device, quick=True).median_ms

    def free_memory() -> None:  # after a failed candidate; a broken CUDA context fails the next ones instead
        try:
            timing.free_memory(device)
        except Exception:
            pass

    _, stopped = sweep(keys, LAUNCHES, measure, args.budget_s, on_key=on_key, on_error=free_memory)
    _INPUTS.clear()
    run["stopped_by_budget"] = stopped
    if results:
        write_table(out, merged_table(existing, arch, run, results))
    if stopped:
        print(f"time budget spent after {len(results)} of {len(keys)} keys", flush=True)
    tuned = sum(r.status == "tuned" for r in results)
    print(f"{tuned} tuned entries from this run in {out} ({datetime.datetime.now():%H:%M:%S})")
    return 0
