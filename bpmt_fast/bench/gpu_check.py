"""`bpmt-fast gpu-check` (`make gpu-check`): validate and benchmark everything on a CUDA machine in one command,
within a time budget, most important first, every result written as soon as it exists.

GPU time is rare and ends without warning, so the parts run in order of importance, each with its own budget
(seconds of the default 450 s total; all scale with --budget-s):

  env       5  GPU, compute capability, torch / triton / CUDA versions, xformers, backend availability: env.json
  launches 60  every kernel specialization of `bpmt_fast.kernels.specializations.all_cases()` launched for real:
               `launch_case` (the exact launcher path, forward and backward), then the public functions under
               autograd against the references (softmax / flow) with the tests' tolerances: launches.json
  tests   130  the backend and kernel tests under BPMT_REQUIRE_CUDA=1 (a skip of a backend that should run on
               this machine fails), in parallel groups: tests/<group>.xml (junit) and .log, tests.json
  sync     30  finetune training steps (`FinetuneStage.train_step`) with the triton and sdpa backends, bf16
               autocast, under torch.cuda.set_sync_debug_mode("error"): the first host sync and where: sync.json
  train   120  the real training pipeline (`bpmt-fast train`, stages 1, 2, ft of one short epoch each) at the
               acceptance shape of configs/gpu-speed.yaml (B=256, N=60, d=128, 8 heads), bf16, per available
               backend (sdpa, triton, xformers, flow-triton) with compile off and reduce-overhead, one child
               process each, most informative first; `bpmt-fast compare` over the finished runs:
               train/<run>/, train/compare.md, train.json (finetune step ms, seq/s, peak memory per run)
  bench   100  `bench all` at full size with what is left of the budget: benchmarks/results/<date>-<gpu>/
  readme    5  the README's GPU results section regenerated from those results (`bench report --readme`)

Each part ends with one verdict, PASS / FAIL / SKIPPED (why) / TIMEOUT, printed and appended to verdict.txt;
verdict.json is rewritten after every part. Parts that touch the GPU run in child processes that are killed at
their deadline: a hang, or a kernel fault that poisons its CUDA context, stops that part only (cooperative checks
inside the parts end them a little earlier, with their partial results written). Kernel launches and test
groups run in several processes at once, which spreads Triton's compiles over the CPU cores.

The device is injectable (`run_gpu_check(device=torch.device("cpu"))`, `--device cpu`): a CPU rehearsal runs
the same orchestration (kernels in the Triton interpreter) and every file it writes says "cpu"; it never
updates the README. The internal entry points for child processes are `python -m bpmt_fast.bench.gpu_check
part NAME ...` and `... launch-worker ...`.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ElementTree
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .common import error_text, say
from .common import write_json_atomic as write_json

PASS, FAIL, SKIPPED, TIMEOUT = "PASS", "FAIL", "SKIPPED", "TIMEOUT"
PARTS = ("env", "launches", "tests", "sync", "train", "bench", "readme")
DEFAULT_TOTAL_S = 450.0
DEFAULT_BUDGETS = {"env": 5, "launches": 60, "tests": 130, "sync": 30, "train": 120, "bench": 100,
                   "readme": 5}  # seconds, summing to DEFAULT_TOTAL_S
ELASTIC_PART = "bench"  # takes what earlier parts left unused (less what later parts need)
MIN_PART_S = 2.0  # a part with less time left than this is not started
KILL_GRACE_S = 5.0  # SIGTERM, then SIGKILL after this
PACKAGE_DIR = Path(__file__).resolve().parents[1]
SOURCE_ROOT = PACKAGE_DIR.parent  # the repository when run from a source tree (tests/ and setup.py beside)
# Known today, fixed by a separate issue: the finetune step syncs with the host (the batch's host-to-device
# copy, loss parts read with .item(), data-dependent branches in the losses). Set to None once it passes.
# Test groups run in parallel processes (kernel compiles spread over the CPU cores); most important first.
TEST_GROUPS = {
    "triton": ["tests/test_triton_attention.py"],
    "flow-triton": ["tests/test_flow_triton.py"],
    "kernel-training": ["tests/test_kernel_training.py", "tests/test_flow_reference.py"],
    "backends": ["tests/test_attention_backends.py"],
    "models": ["tests/test_models.py"],
    "api": ["tests/test_attention_api.py"],
}
TRAIN_PRESET = SOURCE_ROOT / "configs" / "gpu-speed.yaml"
SYNC_BACKENDS = ("sdpa", "triton")  # sdpa first: no kernels to compile, so it fits the budget
MAX_LAUNCH_WORKERS = 16  # processes; each compiles its cases on one core


# ---- the run's settings, shared with child processes as check.json --------------------------------------------
@dataclass
class Check:
    out: Path  # verdicts and part outputs
    device: str = "cuda"
    bench_out: Path | None = None  # default: benchmarks/results/<date>-<device slug>/
    readme: Path | None = None  # README to regenerate (None: no README part output)
    budget_s: float = DEFAULT_TOTAL_S
    launch_cases: list[int] | None = None  # indices into all_cases() (None: all); rehearsals and tests
    launch_workers: int | None = None  # None: one per CPU core, at most MAX_LAUNCH_WORKERS
    test_groups: dict[str, list[str]] | None = None  # None: TEST_GROUPS
    sync_backends: list[str] = field(default_factory=lambda: list(SYNC_BACKENDS))
    python: list[str] = field(default_factory=lambda: [sys.executable])

    @property
    def on_gpu(self) -> bool:
        return self.device == "cuda"

    def to_json(self) -> str:
        values = dataclasses.asdict(self)
        return json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in values.items()}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Check":
        values = json.loads(text)
        for key in ("out", "bench_out", "readme"):
            values[key] = None if values[key] is None else Path(values[key])
        return cls(**values)

    def save(self) -> Path:
        path = self.out / "check.json"
        path.write_text(self.to_json())
        return path


@dataclass
class Verdict:
    part: str
    status: str  # PASS | FAIL | SKIPPED | TIMEOUT
    reason: str = ""
    seconds: float = 0.0
    expected: str | None = None  # a FAIL the project knows about: why

    def line(self) -> str:
        note = f" [expected: {self.expected}]" if self.status == FAIL and self.expected else ""
        return f"{self.part:<9} {self.status:<8} {self.seconds:6.1f} s  {self.reason}{note}"

    @property
    def ok(self) -> bool:
        """No news that needs a fix: passed, skipped with a reason, out of time, or a known failure."""
        return self.status != FAIL or bool(self.expected)


class Refused(ValueError):
    """gpu-check cannot run here (no CUDA device)."""


def device_slug(device: str) -> str:
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


def default_bench_out(device: str) -> Path:
    """GPU runs go where results are committed; a CPU rehearsal into the ignored bench-results/."""
    root = SOURCE_ROOT if (SOURCE_ROOT / "setup.py").is_file() else Path.cwd()
    folder = f"{datetime.date.today().isoformat()}-{device_slug(device)}"
    return root / "benchmarks" / "results" / folder if device == "cuda" else root / "bench-results" / folder


# ---- child processes with a hard deadline ---------------------------------------------------------------------
def child_env(check: Check) -> dict[str, str]:
    """The environment of child processes: the in-tree package importable, the Triton interpreter only on CPU."""
    env = dict(os.environ)
    if (SOURCE_ROOT / "setup.py").is_file():
        env["PYTHONPATH"] = os.pathsep.join([str(SOURCE_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(
            os.pathsep) if p and p != str(SOURCE_ROOT)])
    if check.on_gpu:
        env.pop("TRITON_INTERPRET", None)  # set, it would run our kernels in Python on the CPU
    else:
        env["TRITON_INTERPRET"] = "1"
    return env


def _kill(process: subprocess.Popen) -> None:
    """SIGTERM the child's whole process group (pytest workers, compilers), then SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=KILL_GRACE_S)
            return
        except subprocess.TimeoutExpired:
            continue


def run_processes(commands: list[tuple[list[str], Path]], deadline: float, *, env: dict | None = None,
                  cwd: Path | None = None, clock: Callable[[], float] = time.monotonic) -> list[int | None]:
    """Run the commands at once, each with stdout + stderr into its log file, until they end or `deadline`
    (on `clock`) passes; returns each exit status, or None for one killed at the deadline."""
    processes = []
    for command, log_path in commands:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "w") as log:
            processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                              start_new_session=True))
    statuses: list[int | None] = []
    for process in processes:
        try:
            statuses.append(process.wait(timeout=max(0.0, deadline - clock())))
        except subprocess.TimeoutExpired:
            _kill(process)
            statuses.append(None)
    return statuses


def log_tail(path: Path, lines: int = 3) -> str:
    if not path.is_file():
        return ""
    text = path.read_text(errors="replace").strip().splitlines()
    return " | ".join(line.strip() for line in text[-lines:])


def run_isolated(name: str, check: Check, deadline: float, clock: Callable[[], float] = time.monotonic) -> Verdict:
    """Run part `name` in a child process (`... gpu_check part NAME`), killed at `deadline`."""
    started = clock()
    result = check.out / f"{name}.verdict.json"
    result.unlink(missing_ok=True)
    log = check.out / f"{name}.log"
    command = [*check.python, "-m", "bpmt_fast.bench.gpu_check", "part", name, "--check", str(check.save()),
               "--deadline", repr(deadline)]
    (status,) = run_processes([(command, log)], deadline, env=child_env(check), clock=clock)
    seconds = clock() - started
    if status is None:
        partial = PARTIAL_SUMMARIES[name](check) if name in PARTIAL_SUMMARIES else None
        return Verdict(name, TIMEOUT, f"stopped after {seconds:.0f} s (its budget); partial output kept: "
                                      f"{partial or log_tail(log, 1) or 'nothing finished'} (log {log.name})",
                       seconds)
    if not result.is_file():
        return Verdict(name, FAIL, f"child process exited with status {status} without a verdict; log {log.name}: "
                                   f"{log_tail(log)}", seconds)
    return Verdict(**{**json.loads(result.read_text()), "seconds": seconds})


def cooperative_deadline(deadline: float, now: float) -> float:
    """Inside a part: stop starting new work a little before the hard kill, to write partial results."""
    return deadline - min(10.0, 0.1 * max(0.0, deadline - now))


# ---- part: env ------------------------------------------------------------------------------------------------
def gpu_facts(device: str) -> dict:
    if device != "cuda":
        return {"device": "cpu", "note": "a CPU rehearsal: nothing here is a GPU result"}
    props = torch.cuda.get_device_properties(0)
    return {"device": "cuda", "gpu": props.name, "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1), "multiprocessors": props.multi_processor_count,
            "device_count": torch.cuda.device_count(), "bf16": torch.cuda.is_bf16_supported()}


def kernels_import() -> str | None:
    """Why the kernel modules (`bpmt_fast.kernels`, triton.jit at import) do not import here, or None."""
    try:
        import bpmt_fast.kernels.specializations  # noqa: F401
    except Exception as error:  # noqa: BLE001 - reported
        return error_text(error)
    return None


def part_env(check: Check, deadline: float) -> Verdict:
    from bpmt_fast.bench.report import backend_table, nvidia_driver
    from bpmt_fast.env import environment_info, package_version

    xformers = {"version": package_version("xformers"), "importable": importlib.util.find_spec("xformers") is not None}
    facts = {"environment": environment_info(), "gpu": gpu_facts(check.device), "driver": nvidia_driver(),
             "xformers": xformers, "kernels_import_error": kernels_import(), "backends": backend_table(),
             "env_vars": {k: os.environ.get(k) for k in ("PYTHONPATH", "LD_LIBRARY_PATH", "TRITON_INTERPRET",
                                                         "CUDA_VISIBLE_DEVICES", "BPMT_ATTN_BACKEND")}}
    write_json(check.out / "env.json", facts)
    env, gpu = facts["environment"], facts["gpu"]
    where = (f"{gpu['gpu']} sm{gpu['capability'].replace('.', '')}, {gpu['memory_gib']} GiB" if check.on_gpu
             else "cpu (rehearsal)")
    summary = (f"{where}; torch {env['torch']}, triton {env['triton'] or 'not installed'}, CUDA {env['cuda']}, "
               f"xformers {xformers['version'] or ('importable' if xformers['importable'] else 'absent')}")
    problems = []
    if facts["kernels_import_error"]:
        problems.append(f"bpmt_fast.kernels does not import: {facts['kernels_import_error']}")
    if check.on_gpu and not env["triton"]:
        problems.append("triton is not installed")
    if check.on_gpu and os.environ.get("TRITON_INTERPRET") == "1":
        summary += " (TRITON_INTERPRET=1 was set: the child processes run without it)"
    return Verdict("env", FAIL if problems else PASS, "; ".join(problems + [summary]))


# ---- part: launches -------------------------------------------------------------------------------------------
DTYPE_PRIORITY = {torch.bfloat16: 0, torch.float16: 1, torch.float32: 2}  # what training runs first
HEAD_DIM_PRIORITY = {32: 0, 16: 1, 64: 2, 128: 3}  # the library's shapes first (GPU.md: D32, the original D16)


def launch_order(cases: list) -> list[int]:
    """Indices of `cases`, most important first: a budget that ends early loses the least important ones."""
    return sorted(range(len(cases)), key=lambda i: (DTYPE_PRIORITY.get(cases[i].dtype, 9),
                                                    HEAD_DIM_PRIORITY.get(cases[i].head_dim, 9), i))


def _packed_reference(op: str, q, k, v, lengths: list[int], causal: bool, work_dtype):
    """Reference on packed `(total, H, D)` inputs: unpack to `(B, N, H, D)`, compute, pack back; differentiable
    w.r.t. the returned padded leaves. Returns (output packed, leaves, lengths tensor)."""
    from bpmt_fast.attention import layout
    from bpmt_fast.reference.flow import flow_attention_reference
    from bpmt_fast.reference.softmax import softmax_attention_reference

    lengths_t = torch.tensor(lengths, device=q.device)
    n = max(lengths)
    leaves = [layout.unpack(x.detach().to(work_dtype), lengths_t, n).requires_grad_() for x in (q, k, v)]
    if op == "softmax":
        out = softmax_attention_reference(*leaves, q_lengths=lengths_t, kv_lengths=lengths_t)
    else:
        out = flow_attention_reference(*leaves, q_lengths=lengths_t, kv_lengths=lengths_t, causal=causal)
    return layout.pack(out, lengths_t), leaves, lengths_t


def _grads_packed(out, leaves, grad_out, lengths_t):
    from bpmt_fast.attention import layout

    grads = torch.autograd.grad(out, leaves, grad_out)
    return [layout.pack(g, lengths_t) for g in grads]


def compare_case(case, device: str) -> dict:
    """The public function of the case's op under autograd vs its reference, on `case_inputs`: outputs and
    dq/dk/dv, with the tolerances of `bpmt_fast.testing` (softmax: 2x the low-precision PyTorch error in half
    precision; flow: the dtype's tolerance against a float64 reference, as tests/test_flow_triton.py)."""
    from bpmt_fast.kernels.flow_attention import flow_attention_varlen
    from bpmt_fast.kernels.specializations import case_inputs
    from bpmt_fast.kernels.varlen_attention import varlen_attention
    from bpmt_fast.testing import LOW_PRECISION_FLOOR, allowed_error, low_precision_softmax_attention, max_error

    q, k, v, cu = case_inputs(case, device)
    lengths = case.lengths()
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).to(device, case.dtype)
    leaves = [x.detach().requires_grad_() for x in (q, k, v)]
    if case.op == "softmax":
        out = varlen_attention(*leaves, cu, cu, pack_rows=case.pack_rows)
    else:
        out = flow_attention_varlen(*leaves, cu, cu, causal=case.causal)
    got = [out, *torch.autograd.grad(out, leaves, grad_out)]
    work = torch.float32 if case.op == "softmax" else torch.float64
    ref, ref_leaves, lengths_t = _packed_reference(case.op, q, k, v, lengths, case.causal, work)
    expected = [ref, *_grads_packed(ref, ref_leaves, grad_out.to(work), lengths_t)]  # same upstream gradient
    baseline = [None] * 4
    if case.op == "softmax" and case.dtype in LOW_PRECISION_FLOOR:
        from bpmt_fast.attention import layout

        low = [layout.unpack(x.detach(), lengths_t, max(lengths)).requires_grad_() for x in (q, k, v)]
        base = layout.pack(low_precision_softmax_attention(*low, lengths_t, lengths_t), lengths_t)
        base_all = [base, *_grads_packed(base, low, grad_out, lengths_t)]
        baseline = [max_error(b, e) for b, e in zip(base_all, expected)]
    checks = {}
    for name, x, ref_x, base in zip(("output", "dq", "dk", "dv"), got, expected, baseline):
        finite = bool(torch.isfinite(x).all())
        error = max_error(x, ref_x) if finite else float("nan")
        allowed = allowed_error(ref_x, case.dtype, base)
        checks[name] = {"error": error, "allowed": allowed, "ok": finite and error <= allowed}
    return checks


def declared_limit(case, device: str) -> str | None:
    """Why our backend of the case's op refuses it on `device` (on CPU: bf16 in the Triton interpreter), or None."""
    from bpmt_fast.attention import BACKENDS, AttentionInputs

    backend = BACKENDS["triton" if case.op == "softmax" else "flow-triton"]
    inputs = AttentionInputs(device, case.dtype, case.head_dim, case.head_dim, 2, masked=True, causal=case.causal)
    return "; ".join(backend.extra_reasons(inputs)) or None


def check_case(case, device: str) -> dict:
    """One case: the exact launcher path (`launch_case`: forward + backward launchers) with finite results, then
    the comparison with the reference. Any exception (a launch-time resource error such as too much shared
    memory included) is this case's error, not the run's."""
    from bpmt_fast.kernels.specializations import launch_case

    record = {"case": case.name, "op": case.op, "dtype": str(case.dtype).replace("torch.", ""),
              "head_dim": case.head_dim, "mode": case.mode, "status": "ok", "reason": ""}
    limit = declared_limit(case, device)
    if limit:
        return {**record, "status": "skipped", "reason": limit, "seconds": 0.0}
    started = time.perf_counter()
    stage = "launch_case"
    try:
        outputs = launch_case(case, device)
        bad = [name for name, x in zip(("out", "dq", "dk", "dv"), outputs) if not bool(torch.isfinite(x).all())]
        if bad:
            record.update(status="fail", reason=f"launch_case: non-finite {', '.join(bad)}")
        else:
            stage = "compare"
            record["checks"] = compare_case(case, device)
            wrong = [f"{name} error {c['error']:.3g} > allowed {c['allowed']:.3g}"
                     for name, c in record["checks"].items() if not c["ok"]]
            if wrong:
                record.update(status="fail", reason="vs reference: " + "; ".join(wrong))
    except Exception as error:  # noqa: BLE001 - a case's failure is its result
        record.update(status="error", reason=f"{stage}: {error_text(error)}")
    if device == "cuda":
        with contextlib.suppress(Exception):
            torch.cuda.synchronize()
    record["seconds"] = round(time.perf_counter() - started, 3)
    return record


CONTEXT_BROKEN_STATUS = 3  # a launch worker's exit status when a kernel fault poisoned its CUDA context


def cuda_alive() -> bool:
    """False once a kernel fault (e.g. an illegal address) has poisoned this process's CUDA context: from then
    on every CUDA call fails, so later cases would only repeat the first case's error."""
    try:
        torch.ones(1, device="cuda").add_(1).cpu()
        torch.cuda.synchronize()
    except Exception:  # noqa: BLE001 - any failure means the context is gone
        return False
    return True


def launch_worker(check: Check, indices: list[int], out: Path, deadline: float) -> int:
    """Child process: check the cases `indices` one by one, one JSON line each, until the deadline. Returns the
    exit status: 0, or CONTEXT_BROKEN_STATUS after a case that broke the CUDA context (its last log line says
    which; the parent reports this worker's remaining cases as lost with it)."""
    from bpmt_fast.kernels.specializations import all_cases

    cases = all_cases()
    stop = cooperative_deadline(deadline, time.monotonic())
    with open(out, "a") as lines:
        for index in indices:
            if time.monotonic() >= stop:
                break
            record = {"index": index, **check_case(cases[index], check.device)}
            lines.write(json.dumps(record) + "\n")
            lines.flush()
            say(f"{record['case']}: {record['status']} {record['reason'][:200]}")
            if check.on_gpu and record["status"] == "error" and not cuda_alive():
                say(f"CUDA context broken after case {record['case']}: {record['reason'][:200]}")
                return CONTEXT_BROKEN_STATUS
    return 0


def launch_summary(records: dict[int, dict], chosen: list[int], crashed: dict[int, str]) -> Verdict:
    failed = [records[i] for i in chosen if i in records and records[i]["status"] not in ("ok", "skipped")]
    skipped = [records[i] for i in chosen if i in records and records[i]["status"] == "skipped"]
    missing = [i for i in chosen if i not in records]
    ok = len(chosen) - len(failed) - len(missing) - len(skipped)
    parts = [f"{ok}/{len(chosen)} cases ok"]
    if skipped:
        parts.append(f"{len(skipped)} skipped ({skipped[0]['reason']})")
    if failed:
        parts.append(f"{len(failed)} failed: " + "; ".join(f"{r['case']} ({r['reason'][:160]})" for r in failed[:4])
                     + (" ..." if len(failed) > 4 else ""))
    lost = [i for i in missing if i in crashed]
    if lost:
        parts.append(f"{len(lost)} not run: their worker died ({next(iter(crashed.values()))})")
    if len(missing) > len(lost):
        parts.append(f"{len(missing) - len(lost)} not run: time budget")
    status = FAIL if failed or lost else TIMEOUT if missing else PASS
    return Verdict("launches", status, "; ".join(parts))


def part_launches(check: Check, deadline: float) -> Verdict:
    """Cases spread round-robin (most important first) over worker processes, which compile in parallel."""
    from bpmt_fast.kernels.specializations import all_cases

    cases = all_cases()
    chosen = [i for i in launch_order(cases) if check.launch_cases is None or i in check.launch_cases]
    workers = max(1, min(check.launch_workers or min(MAX_LAUNCH_WORKERS, os.cpu_count() or 1), len(chosen)))
    folder = check.out / "launches"
    folder.mkdir(parents=True, exist_ok=True)
    check_path = check.save()
    shares = [chosen[w::workers] for w in range(workers)]
    commands = []
    for w, share in enumerate(shares):
        (folder / f"worker-{w}.jsonl").unlink(missing_ok=True)
        commands.append(([*check.python, "-m", "bpmt_fast.bench.gpu_check", "launch-worker", "--check",
                          str(check_path), "--cases", ",".join(map(str, share)), "--out",
                          str(folder / f"worker-{w}.jsonl"), "--deadline", repr(deadline)],
                         folder / f"worker-{w}.log"))
    statuses = run_processes(commands, deadline, env=child_env(check))
    records, crashed = {}, {}
    for w, (share, status) in enumerate(zip(shares, statuses)):
        path = folder / f"worker-{w}.jsonl"
        for line in path.read_text().splitlines() if path.is_file() else []:
            record = json.loads(line)
            records[record["index"]] = record
        if status not in (0, None):
            for index in share:
                crashed[index] = f"worker-{w} exited with status {status}: {log_tail(folder / f'worker-{w}.log', 1)}"
    rows = [records.get(i) or {"index": i, "case": cases[i].name, "status": "not run",
                               "reason": crashed.get(i, "time budget")} for i in chosen]
    write_json(check.out / "launches.json", {"device": check.device, "workers": workers, "cases": rows})
    return launch_summary(records, chosen, crashed)


# ---- part: tests ----------------------------------------------------------------------------------------------
def pytest_command(check: Check, group: str, files: list[str]) -> list[str]:
    folder = check.out / "tests"
    # -v: one line per test as it ends, so a group killed at its deadline still shows how far it got.
    # No -x: one GPU run should show every failure; --continue-on-collection-errors: a module that fails to
    # collect (e.g. a required backend missing) must not hide the other modules.
    return [*check.python, "-m", "pytest", "-v", "-rfEs", "-p", "no:cacheprovider", "--durations=15",
            "--continue-on-collection-errors", f"--junitxml={folder / (group + '.xml')}", *files]


def junit_summary(path: Path) -> dict:
    """Counts, failing test ids and skip reasons (most common first) from a junit XML file."""
    root = ElementTree.parse(path).getroot()
    counts = Counter()
    failing, skips = [], Counter()
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed" if child.tag == "failure" else "error"
                message = (child.get("message") or "").strip().splitlines()
                failing.append(f"{name}: {message[0][:200] if message else child.tag}")
            elif child.tag == "skipped":
                outcome = "skipped"
                skips[(child.get("message") or "").strip()[:200]] += 1
        counts[outcome] += 1
    return {"counts": dict(counts), "failing": failing, "skip_reasons": skips.most_common(20)}


PROGRESS = re.compile(r" (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b")


def log_progress(path: Path) -> dict:
    """Outcome counts from a `pytest -v` log (for a group killed before it wrote its junit XML)."""
    counts = Counter(m.group(1).lower() for m in PROGRESS.finditer(path.read_text(errors="replace"))) \
        if path.is_file() else Counter()
    return dict(counts)


def group_result(group: str, status: int | None, folder: Path) -> dict:
    xml, log = folder / f"{group}.xml", folder / f"{group}.log"
    if status is None:
        return {"group": group, "status": TIMEOUT, "counts_so_far": log_progress(log)}
    if not xml.is_file():
        return {"group": group, "status": FAIL, "reason": f"pytest exited with status {status} without a report: "
                                                          f"{log_tail(log)}"}
    summary = junit_summary(xml)
    failed = summary["counts"].get("failed", 0) + summary["counts"].get("error", 0)
    ok = status == 0 and not failed
    reason = "" if ok else f"pytest exit status {status}" + ("" if failed else f": {log_tail(log, 2)}")
    return {"group": group, "status": PASS if ok else FAIL, "reason": reason, **summary}


def part_tests(check: Check, deadline: float) -> Verdict:
    groups = check.test_groups or TEST_GROUPS
    if not (SOURCE_ROOT / "tests").is_dir():
        return Verdict("tests", SKIPPED, f"no tests/ folder beside the package at {SOURCE_ROOT} (run from a "
                                         f"source tree)")
    folder = check.out / "tests"
    folder.mkdir(parents=True, exist_ok=True)
    env = child_env(check)
    if check.on_gpu:
        env["BPMT_REQUIRE_CUDA"] = "1"  # a skipped backend that should run here is a failure
    commands = [(pytest_command(check, group, files), folder / f"{group}.log") for group, files in groups.items()]
    statuses = run_processes(commands, deadline, env=env, cwd=SOURCE_ROOT)
    results = [group_result(group, status, folder) for group, status in zip(groups, statuses)]
    write_json(check.out / "tests.json", {"device": check.device, "require_cuda": check.on_gpu, "groups": results})
    return tests_verdict(results)


def tests_verdict(results: list[dict]) -> Verdict:
    parts = []
    for r in results:
        counts = r.get("counts") or r.get("counts_so_far") or {}
        shown = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        text = f"{r['group']}: {r['status']} ({shown or 'nothing counted'})"
        if r["status"] == TIMEOUT:
            text += " at its deadline"
        if r.get("failing"):
            text += " " + "; ".join(r["failing"][:3])
        elif r.get("reason"):
            text += f" {r['reason']}"
        parts.append(text)
    statuses = {r["status"] for r in results}
    status = FAIL if FAIL in statuses else TIMEOUT if TIMEOUT in statuses else PASS
    return Verdict("tests", status, " | ".join(parts))


# ---- part: sync -----------------------------------------------------------------------------------------------
SYNC_RUN = {
    "models": ["bpmt"],
    "data": {"synthetic": {"num_subjects": 12, "sequences_per_subject": 4, "min_frames": 30, "max_frames": 60},
             "max_frames": 60, "test_subjects": 0.25, "val_subjects": 0.0},
    "finetune": {"epochs": 1, "warmup_epochs": 0, "identities_per_batch": 4, "sequences_per_identity": 2,
                 "batches_per_epoch": 8},
    "checkpoint_every": 0,
}
SYNC_WARMUP_STEPS, SYNC_STEPS = 2, 3


def sync_location(error: BaseException) -> tuple[str, list[str]]:
    """(innermost frame of this repository outside this module, traceback tail) of an exception."""
    frames = traceback.extract_tb(error.__traceback__)
    ours = [f for f in frames if f.filename.startswith(str(SOURCE_ROOT)) and f.filename != __file__]
    where = ours[-1] if ours else frames[-1]
    tail = traceback.format_list(frames[-12:])
    return f"{short_path(where.filename)}:{where.lineno} in {where.name}: {(where.line or '').strip()}", tail


def endless(loader_of_epoch):
    """Batches of epoch 0, 1, ...: the small data set has fewer P x K batches per epoch than the steps need."""
    epoch = 0
    while True:
        yield from loader_of_epoch(epoch)
        epoch += 1


def short_path(filename: str) -> str:
    return os.path.relpath(filename, SOURCE_ROOT) if filename.startswith(str(SOURCE_ROOT)) else filename


def sync_sites(step: Callable[[], object]) -> list[dict]:
    """Every host sync of one call of `step`, located: torch.cuda.set_sync_debug_mode("warn") warns at each
    synchronizing operation, attributed to the Python line that called it (syncs inside backward show up at
    the backward call). [{"location": "file:line", "count": n}] in order of first occurrence."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    sites = Counter(f"{short_path(w.filename)}:{w.lineno}" for w in caught if "synchroniz" in str(w.message).lower())
    return [{"location": where, "count": n} for where, n in sites.items()]


def sync_steps(backend: str, device: torch.device, folder: Path, run: dict = SYNC_RUN) -> dict:
    """Finetune steps of BPMT with `backend`: warm-up steps, then steps under sync debugging (CUDA only). `run`:
    training config overrides (data, model size)."""
    from bpmt_fast.train.config import load_config
    from bpmt_fast.train.data import identity_loader
    from bpmt_fast.train.pipeline import new_model, prepare_data
    from bpmt_fast.train.stages import step_runner, warmup_cosine

    model = {**run.get("model", {}), "attn_backend": backend, "dropout": 0.0}
    config = load_config(overrides={**run, "model": model, "device": device.type, "run_dir": str(folder)})
    with open(folder / f"sync-{backend}-data.log", "w") as log, contextlib.redirect_stdout(log):
        data = prepare_data(config)
    torch.manual_seed(0)
    model = new_model("bpmt", config, data, device)
    stage = step_runner("bpmt", model, "finetune", config, device)  # the pipeline's own step
    model.train()
    optimizer = torch.optim.AdamW(stage.trainable_parameters(), lr=config.finetune.lr)
    scheduler = warmup_cosine(optimizer, 1, 100)
    # Device batches: loading and the host-to-device copy belong to the data path, not to the step.
    batches = map(stage.to_device, endless(lambda epoch: identity_loader(
        data.train, config.finetune.identities_per_batch, config.finetune.sequences_per_identity, config.seed, epoch)))
    for _ in range(SYNC_WARMUP_STEPS):  # compiles kernels, allocates: outside the debug mode
        stage.train_step(next(batches), optimizer, scheduler)
    result = {"backend": backend, "autocast": stage.precision.name, "steps": SYNC_STEPS}
    if device.type != "cuda":
        stage.train_step(next(batches), optimizer, scheduler)
        return {**result, "status": "not checked", "reason": "sync debugging needs CUDA (the steps ran)"}
    torch.cuda.synchronize()
    first = first_sync(lambda batch: stage.train_step(batch, optimizer, scheduler), batches)
    batch = next(batches)
    result["sites"] = sync_sites(lambda: stage.train_step(batch, optimizer, scheduler))  # all, not only the first
    torch.cuda.synchronize()
    if first is None:
        return {**result, "status": "ok", "reason": f"{SYNC_STEPS} steps without a host sync"}
    return {**result, **first}


def first_sync(step: Callable, batches) -> dict | None:
    """SYNC_STEPS steps under set_sync_debug_mode("error"): the first host sync raises; its place, or None."""
    for number in range(SYNC_STEPS):
        batch = next(batches)  # host-side loading is not part of the step
        torch.cuda.set_sync_debug_mode("error")
        try:
            step(batch)
        except RuntimeError as error:
            if "synchroniz" not in str(error).lower():
                raise
            location, tail = sync_location(error)
            return {"status": "sync", "step": number, "location": location, "error": error_text(error),
                    "traceback": tail}
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return None


def part_sync(check: Check, deadline: float) -> Verdict:
    stop = cooperative_deadline(deadline, time.monotonic())
    device = torch.device(check.device)
    results = []
    with tempfile.TemporaryDirectory(prefix="bpmt-sync-") as tmp:
        for backend in check.sync_backends:
            if time.monotonic() >= stop:
                results.append({"backend": backend, "status": "not run", "reason": "time budget"})
                continue
            try:
                results.append(sync_steps(backend, device, Path(tmp)))
            except Exception as error:  # noqa: BLE001 - reported per backend
                results.append({"backend": backend, "status": "error", "error": error_text(error),
                                "traceback": traceback.format_exc().splitlines()[-12:]})
            write_json(check.out / "sync.json", {"device": check.device, "results": results})
    return sync_verdict(results, check.on_gpu)


def sync_verdict(results: list[dict], on_gpu: bool) -> Verdict:
    texts = []
    for r in results:
        detail = r.get("location") or r.get("error") or r.get("reason", "")
        text = f"{r['backend']}: {r['status']}" + (f" at {detail}" if r["status"] == "sync" else
                                                   f" ({detail})" if detail else "")
        if r.get("sites"):
            text += (f"; {sum(s['count'] for s in r['sites'])} syncs in one step at " +
                     ", ".join(f"{s['location']} x{s['count']}" for s in r["sites"][:6]))
        texts.append(text)
    statuses = {r["status"] for r in results}
    if "error" in statuses:
        return Verdict("sync", FAIL, "; ".join(texts))
    if "sync" in statuses:  # the training step reads nothing back to the host: a sync is a regression
        return Verdict("sync", FAIL, "; ".join(texts))
    if not on_gpu:
        return Verdict("sync", SKIPPED, "sync debugging needs CUDA; " + "; ".join(texts))
    return Verdict("sync", TIMEOUT if "not run" in statuses else PASS, "; ".join(texts))


# ---- part: train ----------------------------------------------------------------------------------------------
TRAIN_BACKENDS = ("sdpa", "triton", "xformers", "flow-triton")  # those available run, in this order
TRAIN_COMPILE = ("off", "reduce-overhead")  # per backend: eager first, it needs no graph capture to measure
# A run that is not the last may take this share of what is left: a hang or a slow compile in one run still
# leaves time for the next (the runs are ordered by importance, so the first ones get the most).
TRAIN_RUN_SHARE = 0.6
# The CPU rehearsal: the preset's orchestration (three stages, evaluation, compare) at a size that takes seconds.
TRAIN_CPU_OVERRIDES = (
    "model.dim=16", "model.heads=2", "model.part_layers=1", "model.embedding_dim=16",
    "data.synthetic.num_subjects=12", "data.synthetic.sequences_per_subject=4", "data.synthetic.min_frames=20",
    "data.synthetic.max_frames=20", "data.max_frames=20", "train.frame_buckets=[20]", "stage1.batch_size=16",
    "stage2.batch_size=16", "finetune.identities_per_batch=4", "finetune.sequences_per_identity=2",
    "finetune.batches_per_epoch=2",
)
NOT_RUN = ("not run", "unavailable")  # row statuses of runs that were never started


def train_plan(check: Check) -> list[dict]:
    """The runs, most informative first: every available backend of TRAIN_BACKENDS in eager and reduce-overhead
    mode (bf16); unavailable backends as rows that say why. The CPU rehearsal: sdpa, eager, fp32 only."""
    from bpmt_fast.attention import BACKENDS

    if not check.on_gpu:
        return [{"backend": "sdpa", "compile": "off", "precision": "fp32", "status": "not run",
                 "reason": "time budget"}]
    rows = []
    for backend in TRAIN_BACKENDS:
        why = BACKENDS[backend].why_unavailable() if backend in BACKENDS else "not a registered backend"
        for mode in TRAIN_COMPILE:
            rows.append({"backend": backend, "compile": mode, "precision": "bf16",
                         **({"status": "unavailable", "reason": why} if why else
                            {"status": "not run", "reason": "time budget"})})
    return rows


def train_command(check: Check, row: dict, run_dir: Path) -> list[str]:
    """`bpmt-fast train` of one run: the gpu-speed preset, stages 1, 2 and ft (ft needs their checkpoints)."""
    overrides = [f"device={check.device}", f"train.precision={row['precision']}",
                 f"train.compile='{row['compile']}'"]  # quoted: YAML reads a bare off as false
    if not check.on_gpu:
        overrides += TRAIN_CPU_OVERRIDES
    return [*check.python, "-m", "bpmt_fast.cli", "train", "--config", str(TRAIN_PRESET), "--run-dir",
            str(run_dir), "--attn-backend", row["backend"], *overrides]


def finetune_speed(run_dir: Path) -> dict:
    """The finetune stage's speed and memory from a finished run's results.json (BPMT)."""
    results = json.loads((run_dir / "results.json").read_text())
    speed = results["models"]["bpmt"]["speed"]
    finetune = speed["finetune"]
    return {"step_ms": finetune["step_ms"], "seq_per_s": finetune["seq_per_s"],
            "peak_memory_mb": finetune["peak_memory_mb"], "memory_kind": finetune.get("memory_kind"),
            "speed": speed}


def train_one(check: Check, row: dict, folder: Path, deadline: float) -> dict:
    """Run one training run in a child process killed at `deadline`; the row with its outcome."""
    import shutil

    name = f"{row['backend']}-{row['compile']}"
    run_dir, log = folder / name, folder / f"{name}.log"
    shutil.rmtree(run_dir, ignore_errors=True)  # the pipeline resumes from a run dir: measure from scratch
    started = time.monotonic()
    (status,) = run_processes([(train_command(check, row, run_dir), log)], deadline, env=child_env(check),
                              cwd=SOURCE_ROOT)
    row = {**row, "seconds": round(time.monotonic() - started, 1), "run_dir": str(run_dir), "log": str(log)}
    row.pop("reason", None)
    if status is None:
        return {**row, "status": "timeout", "reason": f"killed at its deadline; log: {log_tail(log, 1)}"}
    if status != 0:
        return {**row, "status": "error", "reason": f"exit status {status}: {log_tail(log)}"}
    try:
        return {**row, "status": "ok", **finetune_speed(run_dir)}
    except (OSError, KeyError, ValueError) as error:
        return {**row, "status": "error", "reason": f"finished without finetune speed in results.json: "
                                                    f"{error_text(error)}"}


def part_train(check: Check, deadline: float) -> Verdict:
    if not TRAIN_PRESET.is_file():
        return Verdict("train", SKIPPED, f"no preset {TRAIN_PRESET} (gpu-check runs from the source tree)")
    stop = cooperative_deadline(deadline, time.monotonic())
    folder = check.out / "train"
    folder.mkdir(parents=True, exist_ok=True)
    rows = train_plan(check)
    report = {"device": check.device, "preset": str(TRAIN_PRESET), "runs": rows}
    write_json(check.out / "train.json", report)
    pending = [i for i, row in enumerate(rows) if row["status"] not in ("unavailable",)]
    for position, index in enumerate(pending):
        left = stop - time.monotonic()
        if left < MIN_PART_S:
            break  # the rest stay "not run: time budget"
        last = position == len(pending) - 1
        rows[index] = train_one(check, rows[index], folder, stop if last else time.monotonic() + left * TRAIN_RUN_SHARE)
        write_json(check.out / "train.json", report)
    finished = [row["run_dir"] for row in rows if row["status"] == "ok"]
    compared = None
    if finished:
        from bpmt_fast.train.compare import run_compare

        try:
            with open(folder / "compare.log", "w") as out, contextlib.redirect_stdout(out):
                run_compare(finished, out=folder)
            compared = str(folder / "compare.md")
        except Exception as error:  # noqa: BLE001 - the runs' numbers stand without the table
            report["compare_error"] = error_text(error)
        report["compare"] = compared
        write_json(check.out / "train.json", report)
    verdict = train_verdict(rows, check.on_gpu)
    if "compare_error" in report:
        return Verdict("train", FAIL, f"bpmt-fast compare failed: {report['compare_error']}; {verdict.reason}")
    return verdict


def train_verdict(rows: list[dict], on_gpu: bool) -> Verdict:
    """PASS when every attempted run finished, FAIL on an error, TIMEOUT when the budget cut a run or left one
    out. Unavailable backends are listed, not counted."""
    texts = []
    for r in rows:
        text = f"{r['backend']} {r['compile']}: {r['status']}"
        if r["status"] == "ok":
            text += f" {r['step_ms']:.1f} ms/step, {r['seq_per_s']:.0f} seq/s, {r['peak_memory_mb']:.0f} MiB"
        elif r.get("reason"):
            text += f" ({str(r['reason'])[:160]})"
        texts.append(text)
    reason = ("" if on_gpu else "CPU rehearsal, tiny model: ") + "; ".join(texts)
    statuses = {r["status"] for r in rows}
    if "error" in statuses:
        return Verdict("train", FAIL, reason)
    if statuses & {"timeout", "not run"}:
        return Verdict("train", TIMEOUT, reason)
    if "ok" not in statuses:
        return Verdict("train", SKIPPED, reason or "no run planned")
    return Verdict("train", PASS, reason)


# ---- part: bench ----------------------------------------------------------------------------------------------
BAD_ROWS = ("wrong", "error", "differs")


def part_bench(check: Check, deadline: float) -> Verdict:
    from bpmt_fast.bench.runner import run_bench

    now = time.monotonic()
    budget = max(0.0, cooperative_deadline(deadline, now) - now)
    run_bench("all", out=check.bench_out, device=check.device, budget_s=budget)
    results = json.loads((check.bench_out / "results.json").read_text())
    write_model_comparison(results, check.bench_out)
    return bench_verdict(results, check.bench_out)


def write_model_comparison(results: dict, folder: Path) -> None:
    """The kernels' cost model beside the measured `triton` times (model-vs-measured.md), so the model can be
    corrected where the GPU disagrees. A failure here is written into the file, never fatal to the check."""
    from bpmt_fast.bench import cost_model

    try:
        gpu = cost_model.gpu_key(str(results.get("environment", {}).get("gpu") or ""))
        text = cost_model.model_vs_measured(results, gpu)
    except Exception as error:  # noqa: BLE001  (evidence of the failure beats a crashed check)
        text = f"cost model comparison failed: {type(error).__name__}: {error}"
    (folder / "model-vs-measured.md").write_text(text + "\n")


def bench_verdict(results: dict, folder: Path) -> Verdict:
    rows = results["rows"]
    counts = Counter(r["status"] for r in rows)
    bad = [r for r in rows if r["status"] in BAD_ROWS]
    budget = [r for r in rows if r["status"] == "skipped" and str(r.get("reason", "")).startswith("time budget")]
    text = f"{len(rows)} rows in {folder}: " + ", ".join(f"{n} {s}" for s, n in counts.most_common())
    if bad:
        shown = "; ".join(f"{r['suite']} {r['backend']} {r.get('case', r.get('model', ''))}: {r['reason'][:120]}"
                          for r in bad[:4])
        return Verdict("bench", FAIL, f"{text}; failed rows: {shown}")
    if budget:
        return Verdict("bench", TIMEOUT, f"{text} ({len(budget)} not started: time budget)")
    return Verdict("bench", PASS if rows else FAIL, text if rows else f"no rows in {folder}")


# ---- part: readme ---------------------------------------------------------------------------------------------
def part_readme(check: Check, deadline: float) -> Verdict:
    from bpmt_fast.bench.readme import update_readme
    from bpmt_fast.bench.runner import rebuild_report

    results = None if check.bench_out is None else check.bench_out / "results.json"
    if results is None or not results.is_file() or not json.loads(results.read_text()).get("rows"):
        return Verdict("readme", SKIPPED, "the bench part produced no results")
    rebuild_report(check.bench_out)  # the bench may have been stopped before it wrote report.md and plots
    if not check.on_gpu:
        return Verdict("readme", SKIPPED, "a CPU rehearsal never writes the README's GPU results (report rebuilt)")
    if check.readme is None:
        return Verdict("readme", SKIPPED, "no README given")
    update_readme(check.bench_out, check.readme)
    return Verdict("readme", PASS, f"{check.readme} GPU results section regenerated from {results}")


def bench_partial(check: Check) -> str | None:
    path = check.bench_out / "results.json" if check.bench_out else None
    if path is None or not path.is_file():
        return None
    return bench_verdict(json.loads(path.read_text()), check.bench_out).reason


def sync_partial(check: Check) -> str | None:
    path = check.out / "sync.json"
    return sync_verdict(json.loads(path.read_text())["results"], check.on_gpu).reason if path.is_file() else None


# What a part killed at its deadline had finished, from the files it writes as it goes.
PARTIAL_SUMMARIES = {"bench": bench_partial, "sync": sync_partial}

PART_FUNCTIONS: dict[str, Callable[[Check, float], Verdict]] = {
    "env": part_env, "launches": part_launches, "tests": part_tests, "sync": part_sync, "train": part_train,
    "bench": part_bench, "readme": part_readme,
}
ISOLATED = frozenset({"sync", "bench"})  # in a child process (launches and tests start their own)


# ---- orchestration --------------------------------------------------------------------------------------------
def part_budgets(total_s: float) -> dict[str, float]:
    scale = total_s / DEFAULT_TOTAL_S
    return {name: seconds * scale for name, seconds in DEFAULT_BUDGETS.items()}


def budget_for(name: str, order: list[str], budgets: dict[str, float], left: float) -> float:
    """Seconds part `name` may take now: its share (at least MIN_PART_S), capped by what is left; the elastic
    part takes everything left except what the later parts need (and the time to kill it at its deadline)."""
    if name == ELASTIC_PART:
        later = order[order.index(name) + 1:]
        reserved = sum(max(budgets.get(p, 0.0), MIN_PART_S) for p in later) + (KILL_GRACE_S if later else 0.0)
        return max(0.0, left - reserved)
    return min(max(budgets.get(name, 0.0), MIN_PART_S), left)


class Recorder:
    """verdict.txt and verdict.json, rewritten after every part."""

    def __init__(self, check: Check, clock: Callable[[], float]):
        self.check, self.clock, self.started = check, clock, clock()
        self.verdicts: list[Verdict] = []
        self.header = {"device": check.device, "gpu_result": check.on_gpu,
                       "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                       "budget_s": check.budget_s, "out": str(check.out), "bench_out": str(check.bench_out)}
        (check.out / "verdict.txt").write_text("")
        self.save(finished=False)

    def add(self, verdict: Verdict) -> None:
        self.verdicts.append(verdict)
        with open(self.check.out / "verdict.txt", "a") as lines:
            lines.write(verdict.line() + "\n")
        say(f"gpu-check | {verdict.line()}")
        self.save(finished=False)

    def save(self, finished: bool) -> None:
        write_json(self.check.out / "verdict.json", {
            **self.header, "finished": finished, "seconds": round(self.clock() - self.started, 1),
            "overall": PASS if all(v.ok for v in self.verdicts) else FAIL,
            "parts": [dataclasses.asdict(v) for v in self.verdicts]})


def run_part(name: str, check: Check, deadline: float, functions: dict, clock: Callable[[], float]) -> Verdict:
    started = clock()
    try:
        if name in ISOLATED and functions[name] is PART_FUNCTIONS[name]:
            return run_isolated(name, check, deadline, clock)
        verdict = functions[name](check, deadline)
    except Exception as error:  # noqa: BLE001 - a part's crash is its verdict; the next part still runs
        (check.out / f"{name}.error.txt").write_text(traceback.format_exc())
        verdict = Verdict(name, FAIL, f"{error_text(error)} (traceback: {name}.error.txt)")
    verdict.seconds = clock() - started
    if verdict.status != TIMEOUT and clock() > deadline:
        verdict.reason = f"ran past its deadline by {clock() - deadline:.0f} s; {verdict.reason}"
        verdict.status = TIMEOUT if verdict.status == PASS else verdict.status
    return verdict


def run_gpu_check(out: str | Path | None = None, budget_s: float = DEFAULT_TOTAL_S, *, device: str | None = None,
                  bench_out: str | Path | None = None, readme: str | Path | None = None,
                  parts: dict[str, Callable] | None = None, clock: Callable[[], float] = time.monotonic,
                  **options) -> list[Verdict]:
    """Run every part in order within `budget_s` seconds; returns the verdicts (also in OUT/verdict.json).

    device None: CUDA, refused (`Refused`, a ValueError) on a machine without it. readme None: the source tree's
    README.md when there is one. `parts` replaces part functions by name (tests); `options` are further `Check`
    fields (launch_cases, test_groups, sync_backends, ...)."""
    if budget_s <= 0:
        raise ValueError(f"budget_s must be > 0 seconds, got {budget_s}")
    if device is None:
        if not torch.cuda.is_available():
            raise Refused(f"gpu-check needs a CUDA GPU: torch {torch.__version__} ("
                          f"{'CUDA ' + torch.version.cuda if torch.version.cuda else 'CPU-only build'}) sees none here")
        device = "cuda"
    bench_folder = Path(bench_out) if bench_out else default_bench_out(device)
    if readme is None and (SOURCE_ROOT / "README.md").is_file():
        readme = SOURCE_ROOT / "README.md"
    check = Check(out=Path(out) if out else bench_folder / "gpu-check", device=device, bench_out=bench_folder,
                  readme=Path(readme) if readme else None, budget_s=budget_s, **options)
    check.out.mkdir(parents=True, exist_ok=True)
    functions = {**PART_FUNCTIONS, **(parts or {})}
    order = [p for p in PARTS if p in functions]
    budgets = part_budgets(budget_s)
    recorder = Recorder(check, clock)
    end = recorder.started + budget_s
    say(f"gpu-check on {device}: budget {budget_s:.0f} s, results in {check.out} (bench: {bench_folder})")
    for name in order:
        left = end - clock()
        budget = budget_for(name, order, budgets, left)
        if budget < MIN_PART_S:
            recorder.add(Verdict(name, SKIPPED, f"time budget: {max(0.0, left):.0f} s of the {budget_s:.0f} s "
                                                f"total left"))
            continue
        recorder.add(run_part(name, check, clock() + budget, functions, clock))
    recorder.save(finished=True)
    say("gpu-check verdicts (" + ("GPU run" if check.on_gpu else "CPU rehearsal: not GPU results") + "):")
    for verdict in recorder.verdicts:
        say("  " + verdict.line())
    return recorder.verdicts


# ---- child process entry points -------------------------------------------------------------------------------
def child_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bpmt_fast.bench.gpu_check",
                                     description="internal: the child processes of bpmt-fast gpu-check")
    commands = parser.add_subparsers(dest="command", required=True)
    part = commands.add_parser("part")
    part.add_argument("name", choices=PARTS)
    worker = commands.add_parser("launch-worker")
    worker.add_argument("--cases", required=True, help="comma-separated indices into all_cases()")
    worker.add_argument("--out", required=True, type=Path)
    for sub in (part, worker):
        sub.add_argument("--check", required=True, type=Path)
        sub.add_argument("--deadline", required=True, type=float, help="time.monotonic() value of the hard kill")
    args = parser.parse_args(argv)
    check = Check.from_json(args.check.read_text())
    if args.command == "launch-worker":
        return launch_worker(check, [int(i) for i in args.cases.split(",") if i], args.out, args.deadline)
    try:
        verdict = PART_FUNCTIONS[args.name](check, args.deadline)
    except Exception as error:  # noqa: BLE001 - the parent reads the verdict
        traceback.print_exc()
        verdict = Verdict(args.name, FAIL, f"{error_text(error)} (traceback in {args.name}.log)")
    write_json(check.out / f"{args.name}.verdict.json", dataclasses.asdict(verdict))
    return 0


if __name__ == "__main__":
    sys.exit(child_main())
