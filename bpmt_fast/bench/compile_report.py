"""Compile every kernel specialization for real GPU targets on a machine without a GPU, and check its resources.

The Triton interpreter ignores tiles, warps, stages, registers and shared memory; a GPU compiler does not. Triton
compiles for a named target without a device (`triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))`)
and its bundled ptxas reports registers and spills. The specializations are the launches recorded from the
launchers themselves (`bpmt_fast.kernels.specializations`), bound to kernel signatures by triton's own launch
binder, so they are exactly what a GPU launch of the same shapes would compile.

Checks (`violations`), per specialization and architecture:
- it compiles;
- shared memory within the architecture's per-block limit (`SHARED_LIMITS`; sm86/sm89's smaller limit is
  reported, not enforced: those GPUs are not targets);
- registers x threads within an SM's register file (a large `maxnreg` can compile a block that never launches);
- no register spill in fp16 / bf16; fp32 within `FP32_SPILL_ALLOWANCE` bytes of spill stores (ptxas keeps up to
  16 B in a few softmax FMA specializations, whatever the tile).

`python -m bpmt_fast.bench.compile_report` (what `make compile-report` runs) compiles the full sweep for sm80 and
sm90 and writes `benchmarks/results/compile-report.json` + `.md`, stamped with `kernel_source_hash()`; a test
fails when the committed report no longer matches the kernel sources. `--subset` is the representative subset
`make test` compiles. Must run without TRITON_INTERPRET (the interpreter replaces the JIT functions).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import hashlib
import io
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from .common import write_json_atomic

ARCHS = (80, 90)
# Shared memory per block (opt-in maximum), bytes.
SHARED_LIMITS = {80: 166_912, 90: 232_448}
REGISTER_FILE = 65_536  # 32-bit registers per SM (and per block) on sm80 / sm90
SM86_SHARED_LIMIT = 101_376  # sm86 / sm89 (consumer Ampere / Ada): reported only
FP32_SPILL_ALLOWANCE = 32  # bytes/thread of spill stores tolerated in fp32 (see the module docstring)
REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "compile-report"
SUBSET_HEAD_DIMS = (32, 128)
SUBSET_DTYPES = ("bfloat16", "float32")


def kernel_dir() -> Path:
    """Where `bpmt_fast.kernels` lives (the repository's kernels/, installed under that name)."""
    import bpmt_fast.kernels

    return Path(bpmt_fast.kernels.__file__).resolve().parent


def kernel_source_hash() -> str:
    """sha256 over the kernel modules' sources (what the report describes)."""
    digest = hashlib.sha256()
    for path in sorted(kernel_dir().glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


# ---- specializations -------------------------------------------------------------------------------------------
def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def specialization_key(case, launch) -> tuple:
    """What makes two launches compile to the same binary, up to integer-value specialization."""
    return (launch.kernel_name, _dtype_name(case.dtype), tuple(sorted(launch.constexprs().items())))


class Selection(NamedTuple):
    """Which specializations to compile: None means all."""
    head_dims: tuple[int, ...] | None = None
    dtypes: tuple[str, ...] | None = None
    kernels: tuple[str, ...] | None = None  # substrings of kernel names
    softmax_lengths: tuple[int, ...] | None = None  # length classes of per-segment softmax cases

    def takes(self, case, kernel_name: str | None = None) -> bool:
        per_segment = case.op == "softmax" and not case.pack_rows
        return ((self.head_dims is None or case.head_dim in self.head_dims)
                and (self.softmax_lengths is None or not per_segment or case.max_len in self.softmax_lengths)
                and (self.dtypes is None or _dtype_name(case.dtype) in self.dtypes)
                and (kernel_name is None or self.kernels is None or any(k in kernel_name for k in self.kernels)))


# make test: every kernel and mode at D32 and D128 in bf16 and fp32 for sm90, softmax per segment at the longest
# length class (the largest tiles); for sm80 the largest tiles per kernel and dtype (`largest_only_archs`).
SUBSET = Selection(head_dims=SUBSET_HEAD_DIMS, dtypes=SUBSET_DTYPES, softmax_lengths=(120,))


def unique_specializations(selection: Selection = Selection()) -> list[dict]:
    """One entry per distinct (kernel, dtype, constexprs, options): the case and the launch's index in it."""
    from bpmt_fast.kernels.specializations import all_cases, case_launches

    seen, found = set(), []
    cases = all_cases()
    for index, case in enumerate(cases):
        if not selection.takes(case):
            continue
        for position, launch in enumerate(case_launches(case)):
            key = specialization_key(case, launch)
            if key not in seen and selection.takes(case, launch.kernel_name):
                seen.add(key)
                found.append({"case": index, "launch": position, "kernel": launch.kernel_name,
                              "case_name": case.name, "dtype": _dtype_name(case.dtype), "head_dim": case.head_dim,
                              "meta": {k: v for k, v in launch.constexprs().items()}})
    return found


# ---- compiling -------------------------------------------------------------------------------------------------
_PTXAS_PATTERNS = {
    "registers": re.compile(r"Used (\d+) registers"),
    "spill_stores": re.compile(r"(\d+) bytes spill stores"),
    "spill_loads": re.compile(r"(\d+) bytes spill loads"),
    "stack": re.compile(r"(\d+) bytes stack frame"),
}


def parse_ptxas_log(log: str) -> dict:
    """Registers, spill stores / loads and stack frame (bytes per thread) from `ptxas -v` output."""
    found = {}
    for name, pattern in _PTXAS_PATTERNS.items():
        match = pattern.search(log)
        if match is None:
            raise ValueError(f"ptxas log has no '{name}' line: {log[-300:]!r}")
        found[name] = int(match.group(1))
    return found


def mma_kind(ptx: str) -> str:
    """Which matrix unit the dots use: wgmma (sm90 warp groups), mma (tensor cores, mma.sync) or fma (none)."""
    if "wgmma.mma_async" in ptx:
        return "wgmma"
    if re.search(r"\bmma\.sync", ptx):
        return "mma"
    return "fma"


def compile_launch(launch, arch: int, cache: dict | None = None) -> dict:
    """Compile one recorded launch for sm<arch>; resources from ptxas and the compiled metadata.

    `cache` maps `compile_key`s of earlier rows to those rows: a specialization whose kernel source (with the jit
    functions it calls), signature, constants, options, target and triton are unchanged is not compiled again.
    """
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    fn = launch.kernel
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*launch.args, **launch.kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, launch.kwargs, bound, specialization, options)
    key = hashlib.sha256(repr((fn.cache_key, sorted(signature.items()), sorted(constexprs.items()),
                               sorted(attrs.items()), sorted(options.__dict__.items()), arch,
                               triton.__version__)).encode()).hexdigest()[:24]
    if cache and key in cache:
        return {k: v for k, v in cache[key].items() if k in _RESOURCE_KEYS} | {"compile_key": key, "cached": True}
    log = io.StringIO()
    knobs.nvidia.dump_ptxas_log = True
    # Triton's own cache would skip ptxas (and its log) for a binary compiled earlier, e.g. a float32-only kernel
    # recorded once per case dtype.
    knobs.compilation.always_compile = True
    with contextlib.redirect_stdout(log):
        compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                                  options=options.__dict__)
    row = parse_ptxas_log(log.getvalue())
    row.update(shared=int(compiled.metadata.shared), mma=mma_kind(compiled.asm["ptx"]),
               num_warps=options.num_warps, num_stages=options.num_stages, compile_key=key)
    return row


_RESOURCE_KEYS = ("registers", "spill_stores", "spill_loads", "stack", "shared", "mma", "num_warps", "num_stages",
                  "compile_s")


def _compile_jobs(jobs: list[tuple[int, int, int]], cache: dict | None = None) -> list[dict]:
    """Worker: compile (case index, launch index, arch) jobs in a fresh triton cache (so ptxas always runs)."""
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="bpmt-compile-")
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    from bpmt_fast.kernels.specializations import all_cases, case_launches

    cases = all_cases()
    recorded: dict[int, list] = {}  # a case's launches are recorded once per worker, not once per job
    rows = []
    for case_index, launch_index, arch in jobs:
        if case_index not in recorded:
            recorded[case_index] = case_launches(cases[case_index])
        launch = recorded[case_index][launch_index]
        started = time.perf_counter()
        try:
            row = compile_launch(launch, arch, cache)
        except Exception as error:  # noqa: BLE001  (a compile failure is a result to report)
            row = {"error": f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300] if str(error) else ''}"}
        seconds = round(time.perf_counter() - started, 2)
        rows.append({"case": case_index, "launch": launch_index, "arch": arch, "compile_s": seconds, **row})
    return rows


def compile_all(selection: Selection = Selection(), archs=ARCHS, workers: int | None = None,
                largest_only_archs: tuple[int, ...] = (), cache_rows: list[dict] = ()) -> list[dict]:
    """Compile every unique specialization for every arch (in `largest_only_archs` only the specializations with
    the largest tiles per kernel and dtype); one row per (specialization, arch)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("compile_report needs the real triton JIT: unset TRITON_INTERPRET")
    import triton

    specs = unique_specializations(selection)
    jobs = []
    for arch in archs:
        chosen = _largest(specs) if arch in largest_only_archs else specs
        jobs += [(spec["case"], spec["launch"], arch) for spec in chosen]
    workers = workers or max(1, min(len(jobs), os.cpu_count() or 1))
    chunks = [jobs[i::workers] for i in range(workers)]
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        cache = {row["compile_key"]: row for row in cache_rows if "compile_key" in row and "error" not in row}
        results = [row for rows in pool.map(_compile_jobs, chunks, [cache] * len(chunks)) for row in rows]
    by_key = {(s["case"], s["launch"]): s for s in specs}
    rows = []
    for result in results:
        spec = by_key[(result["case"], result["launch"])]
        rows.append({**{k: v for k, v in spec.items() if k not in ("case", "launch")}, **result,
                     "triton": triton.__version__})
    rows.sort(key=lambda r: (r["arch"], r["kernel"], r["dtype"], r["head_dim"], str(r["meta"])))
    return rows


def _tile_area(spec: dict) -> int:
    meta = spec["meta"]
    area = 1
    for key in ("BLOCK_M", "BLOCK_N", "CHUNK", "BLOCK_T"):
        area *= meta.get(key, 1)
    return area * meta.get("BLOCK_D", 1) * meta.get("BLOCK_DV", 1)


def _largest(specs: list[dict]) -> list[dict]:
    """Per (kernel, dtype): the specialization with the largest tiles (the one nearest any resource limit)."""
    best = {}
    for spec in specs:
        key = (spec["kernel"], spec["dtype"])
        if key not in best or _tile_area(spec) > _tile_area(best[key]):
            best[key] = spec
    return list(best.values())


# ---- checks ----------------------------------------------------------------------------------------------------
def violations(rows: list[dict]) -> list[str]:
    """Every row that breaks a budget, as one line naming the specialization and the budget."""
    problems = []
    for row in rows:
        where = f"sm{row['arch']} {row['kernel']} {row['case_name']} {row['meta']}"
        if "error" in row:
            problems.append(f"{where}: does not compile: {row['error']}")
            continue
        threads = 32 * row["num_warps"]
        if row["registers"] * threads > REGISTER_FILE:  # ptxas honours a large maxnreg even when no block fits
            problems.append(f"{where}: {row['registers']} registers x {threads} threads > the {REGISTER_FILE} "
                            f"registers of an SM: cannot launch")
        limit = SHARED_LIMITS[row["arch"]]
        if row["shared"] > limit:
            problems.append(f"{where}: {row['shared']} B of shared memory > sm{row['arch']} limit {limit} B")
        allowance = FP32_SPILL_ALLOWANCE if row["dtype"] == "float32" else 0
        if row["spill_stores"] > allowance:
            problems.append(f"{where}: {row['spill_stores']} B/thread of spill stores > {allowance} B allowed "
                            f"for {row['dtype']}")
    return problems


def format_row(row: dict) -> str:
    where = f"sm{row['arch']} {row['kernel']:<40} {row['case_name']:<32} {row['meta']}"
    if "error" in row:
        return f"{where}: ERROR {row['error']}"
    return (f"{where}: regs {row['registers']}, spill {row['spill_stores']} B, smem {row['shared']} B, "
            f"{row['mma']}")


# ---- report ----------------------------------------------------------------------------------------------------
def summary_rows(rows: list[dict]) -> list[dict]:
    """Per (arch, kernel, dtype): count, max registers, max spill stores, max shared, MMA kinds, failures."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["triton"], row["arch"], row["kernel"], row["dtype"]), []).append(row)
    summary = []
    for (version, arch, kernel, dtype), members in sorted(groups.items()):
        ok = [r for r in members if "error" not in r]
        summary.append({
            "triton": version, "arch": arch, "kernel": kernel, "dtype": dtype, "count": len(members),
            "errors": len(members) - len(ok),
            "max_registers": max((r["registers"] for r in ok), default=None),
            "max_spill_stores": max((r["spill_stores"] for r in ok), default=None),
            "max_shared": max((r["shared"] for r in ok), default=None),
            "mma": ",".join(sorted({r["mma"] for r in ok})),
            "over_sm86": sum(r["shared"] > SM86_SHARED_LIMIT for r in ok),
        })
    return summary


def render_markdown(report: dict) -> str:
    rows = report["rows"]
    lines = [f"# Kernel compile report", "",
             f"Kernel source hash `{report['kernel_source_hash']}`, {report['date']}, triton "
             f"{', '.join(report['triton_versions'])}, targets {', '.join(f'sm{a}' for a in report['archs'])}; "
             f"{len(rows)} compiles of {report['specializations']} specializations. Produced by "
             f"`make compile-report` on a CPU (no GPU: resources from ptxas, not measurements).", "",
             f"Budgets: no compile error; registers x threads <= {REGISTER_FILE:,}; shared memory <= sm80 "
             f"{SHARED_LIMITS[80]:,} B / sm90 {SHARED_LIMITS[90]:,} B per block; no spill in fp16 / bf16; "
             f"fp32 spill stores <= "
             f"{FP32_SPILL_ALLOWANCE} B per thread.", "",
             "| triton | arch | kernel | dtype | specs | max regs | max spill B | max smem B | MMA | > sm86 smem "
             "| errors |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary_rows(rows):
        lines.append(f"| {s['triton']} | sm{s['arch']} | `{s['kernel']}` | {s['dtype']} | {s['count']} | "
                     f"{s['max_registers']} | {s['max_spill_stores']} | {s['max_shared']} | {s['mma']} | "
                     f"{s['over_sm86']} | {s['errors']} |")
    problems = report["violations"]
    lines += ["", f"## Budget violations: {len(problems)}", ""] + [f"- {p}" for p in problems]
    over = [r for r in rows if "error" not in r and r["shared"] > SM86_SHARED_LIMIT]
    lines += ["", f"## Above the sm86 / sm89 limit ({SM86_SHARED_LIMIT:,} B): {len(over)}", ""]
    lines += [f"- triton {r['triton']} sm{r['arch']} `{r['kernel']}` {r['case_name']}: {r['shared']:,} B"
              for r in over]
    lines.append("")
    return "\n".join(lines)


README_START, README_END = "<!-- compile-report:start -->", "<!-- compile-report:end -->"


def readme_summary(report: dict) -> str:
    """The README's compile-report section: one row per (triton, arch), generated, never edited by hand."""
    rows = report["rows"]
    lines = [f"Generated by `make compile-report` from `benchmarks/results/compile-report.json` (kernel source hash "
             f"`{report['kernel_source_hash']}`, {report['date']}): {report['specializations']} specializations, "
             f"each compiled for sm80 and sm90 with every triton listed. Budget violations: "
             f"{len(report['violations'])}. Per-kernel table: "
             f"[benchmarks/results/compile-report.md](benchmarks/results/compile-report.md).", "",
             "| triton | arch | compiles | errors | max registers | max spill, fp16/bf16 | max spill, fp32 | "
             "max shared memory | > sm86/89 limit | MMA, fp16/bf16 softmax |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for version, arch in sorted({(r["triton"], r["arch"]) for r in rows}):
        group = [r for r in rows if r["triton"] == version and r["arch"] == arch]
        ok = [r for r in group if "error" not in r]
        half = [r["spill_stores"] for r in ok if r["dtype"] != "float32"]
        single = [r["spill_stores"] for r in ok if r["dtype"] == "float32"]
        mma = sorted({r["mma"] for r in ok if r["dtype"] != "float32" and r["kernel"].startswith("varlen")
                      and "preprocess" not in r["kernel"]})
        lines.append(f"| {version} | sm{arch} | {len(group)} | {len(group) - len(ok)} | "
                     f"{max((r['registers'] for r in ok), default='-')} | {max(half, default='-')} B | "
                     f"{max(single, default='-')} B | {max((r['shared'] for r in ok), default=0):,} B "
                     f"(limit {SHARED_LIMITS[arch]:,}) | {sum(r['shared'] > SM86_SHARED_LIMIT for r in ok)} | "
                     f"{', '.join(mma)} |")
    return "\n".join(lines)


def update_readme(readme: Path, report: dict) -> None:
    """Replace the text between the compile-report markers of `readme` with `readme_summary(report)`."""
    from bpmt_fast.bench.readme import replace_section

    readme.write_text(replace_section(readme.read_text(), readme_summary(report), readme, README_START, README_END,
                                      "the compile report's summary goes between them"))


def build_report(rows: list[dict], specializations: int) -> dict:
    return {"kernel_source_hash": kernel_source_hash(), "date": datetime.date.today().isoformat(),
            "triton_versions": sorted({r["triton"] for r in rows}), "archs": sorted({r["arch"] for r in rows}),
            "specializations": specializations, "violations": violations(rows), "rows": rows}


def write_report(report: dict, out: Path) -> tuple[Path, Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out.with_suffix(".json"), out.with_suffix(".md")
    write_json_atomic(json_path, report)
    md_path.write_text(render_markdown(report))
    return json_path, md_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subset", action="store_true", help="the representative subset make test compiles")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="report path without suffix")
    parser.add_argument("--rows-only", type=Path, help="write the raw rows as JSON here (for merging) and stop")
    parser.add_argument("--merge", type=Path, nargs="*", default=[], help="rows JSON files of other triton versions")
    parser.add_argument("--workers", type=int)
    parser.add_argument("--cache", type=Path, nargs="*", help="earlier reports whose unchanged rows are reused")
    parser.add_argument("--readme", type=Path, help="also regenerate this README's compile-report section")
    parser.add_argument("--head-dims", type=int, nargs="+", help="only these head dims (exploring; no report)")
    parser.add_argument("--dtypes", nargs="+", help="only these dtypes, e.g. bfloat16 float32 (exploring)")
    parser.add_argument("--kernels", nargs="+", help="only kernels whose name contains one of these (exploring)")
    parser.add_argument("--archs", type=int, nargs="+", default=list(ARCHS))
    args = parser.parse_args(argv)
    largest_only = (80,) if args.subset else ()
    selection = SUBSET if args.subset else Selection()
    explore = args.head_dims or args.dtypes or args.kernels
    if explore:
        selection = Selection(tuple(args.head_dims) if args.head_dims else None,
                              tuple(args.dtypes) if args.dtypes else None,
                              tuple(args.kernels) if args.kernels else None)
    cache_rows = []
    for path in args.cache or []:
        if path.exists():
            cache_rows += json.loads(path.read_text()).get("rows", [])
    rows = compile_all(selection, archs=tuple(args.archs), workers=args.workers, largest_only_archs=largest_only,
                       cache_rows=cache_rows)
    if explore:  # a table on stdout, nothing written
        for row in rows:
            print(format_row(row))
        return 1 if violations(rows) else 0
    if args.rows_only:
        args.rows_only.write_text(json.dumps(rows))
        return 0
    for path in args.merge:
        rows += json.loads(path.read_text())
    report = build_report(rows, len(unique_specializations(selection)))
    json_path, md_path = write_report(report, args.out)
    if args.readme:
        update_readme(args.readme, report)
    print(f"compile report: {len(rows)} compiles, {len(report['violations'])} budget violations -> {md_path}")
    for problem in report["violations"]:
        print(f"  {problem}")
    return 1 if report["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
