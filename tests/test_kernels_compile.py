"""Our Triton kernels compiled for real GPUs (sm80, sm90) on this CPU machine: what a GPU compiler would reject or
run badly (compile errors, shared memory over the per-block limit, register spills) fails here, not on a GPU.

The compile runs in a child process without TRITON_INTERPRET (this test process interprets the kernels, see
conftest.py): `python -m bpmt_fast.bench.compile_report --subset`, the representative subset of the full sweep
that `make compile-report` commits under benchmarks/results/. The committed report must describe the kernels as
they are (source hash) and meet the budgets.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bpmt_fast.bench import compile_report as cr

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "benchmarks" / "results" / "compile-report.json"

try:
    import triton  # noqa: F401
    from triton.backends.compiler import GPUTarget  # noqa: F401
except ImportError as error:  # pragma: no cover - triton is in the [test] extra on Linux x86_64
    pytest.skip(f"triton cannot compile here: {error}", allow_module_level=True)


def kernel_names_in_sources() -> set[str]:
    """Every `@triton.jit` function named *_kernel in kernels/, read from the source text (not from the module)."""
    names = set()
    for path in cr.kernel_dir().glob("*.py"):
        names |= set(re.findall(r"@triton\.jit\s*\ndef (\w+_kernel)\(", path.read_text()))
    return names


@pytest.fixture(scope="module")
def subset_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("compile") / "report"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-m", "bpmt_fast.bench.compile_report", "--subset", "--out", str(out)],
                            env=env, capture_output=True, text=True, timeout=900)
    report_path = out.with_suffix(".json")
    assert report_path.exists(), f"compile_report wrote no report:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return json.loads(report_path.read_text()), result


def test_subset_compiles_within_budgets(subset_report):
    report, result = subset_report
    assert not report["violations"], "budget violations:\n" + "\n".join(report["violations"])
    assert result.returncode == 0, result.stdout[-2000:]


def test_unchanged_specializations_are_reused_not_recompiled(subset_report, tmp_path):
    report, _ = subset_report
    source = tmp_path / "previous.json"
    source.write_text(json.dumps(report))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    again = tmp_path / "again"
    subprocess.run([sys.executable, "-m", "bpmt_fast.bench.compile_report", "--subset", "--out", str(again),
                    "--cache", str(source)], env=env, capture_output=True, text=True, timeout=300)
    rows = json.loads(again.with_suffix(".json").read_text())["rows"]
    assert rows and all(r.get("cached") for r in rows)
    # compile_s aside: a float32-only kernel recorded for several case dtypes is one binary compiled twice in the
    # first run (two timings), and both reuse one cached row in the second
    strip = lambda r: {k: v for k, v in r.items() if k not in ("cached", "compile_s")}  # noqa: E731
    assert [strip(r) for r in rows] == [strip(r) for r in report["rows"]]


def test_subset_covers_every_kernel_mode_and_arch(subset_report):
    report, _ = subset_report
    rows = report["rows"]
    assert {r["kernel"] for r in rows if r["arch"] == 90} == kernel_names_in_sources()
    assert {r["kernel"] for r in rows if r["arch"] == 80} == kernel_names_in_sources()
    modes = {r["case_name"].split(" D")[0] for r in rows}
    assert {"softmax packed", "flow causal", "flow non-causal", "flow chunked"} <= modes
    assert any(m.startswith("softmax per-segment") for m in modes)
    assert {r["dtype"] for r in rows} == {"bfloat16", "float32"}
    assert {r["head_dim"] for r in rows} == {32, 128}


def test_half_precision_softmax_uses_tensor_cores(subset_report):
    """bf16 dots run on tensor cores (wgmma or mma on sm90, mma on sm80), never on FMA units."""
    report, _ = subset_report
    for row in report["rows"]:
        if (row["dtype"] == "bfloat16" and row["kernel"].startswith("varlen_attention")
                and row["kernel"] != "varlen_attention_bwd_preprocess_kernel"):
            assert row["mma"] in ("mma", "wgmma"), (row["arch"], row["kernel"], row["case_name"], row["mma"])


# ---- the committed full report -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def committed():
    assert COMMITTED.exists(), f"{COMMITTED} is missing: run `make compile-report` and commit it"
    return json.loads(COMMITTED.read_text())


def test_committed_report_matches_the_kernel_sources(committed):
    assert committed["kernel_source_hash"] == cr.kernel_source_hash(), (
        "the kernels changed since benchmarks/results/compile-report.json was made: run `make compile-report` "
        "and commit the report")


def test_committed_report_meets_the_budgets(committed):
    rows = committed["rows"]
    assert not committed["violations"] and not cr.violations(rows)
    assert {r["arch"] for r in rows} == set(cr.ARCHS)
    assert len(committed["triton_versions"]) >= 2, "the full report compiles with two triton versions"
    for row in rows:
        assert "error" not in row
        assert row["shared"] <= cr.SHARED_LIMITS[row["arch"]]
        if row["dtype"] != "float32":
            assert row["spill_stores"] == 0, (row["kernel"], row["case_name"], row["arch"])
    per_version = {}
    for row in rows:
        per_version.setdefault((row["triton"], row["arch"]), set()).add(row["kernel"])
    assert all(kernels == kernel_names_in_sources() for kernels in per_version.values())


# ---- the report's own logic, without compiling ---------------------------------------------------------------
PTXAS_LOG = """ptxas info    : 11 bytes gmem
ptxas info    : Compiling entry function 'k' for 'sm_90a'
ptxas info    : Function properties for k
    24 bytes stack frame, 20 bytes spill stores, 16 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers
"""


def test_parse_ptxas_log():
    assert cr.parse_ptxas_log(PTXAS_LOG) == {"registers": 255, "spill_stores": 20, "spill_loads": 16, "stack": 24}
    with pytest.raises(ValueError, match="registers"):
        cr.parse_ptxas_log("ptxas info : nothing")


def test_mma_kind():
    assert cr.mma_kind("wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16") == "wgmma"
    assert cr.mma_kind("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32") == "mma"
    assert cr.mma_kind("fma.rn.f32 %f1, %f2, %f3, %f4;") == "fma"


def row(**changes):
    base = {"arch": 90, "kernel": "k", "case_name": "c", "meta": {}, "dtype": "bfloat16", "registers": 128,
            "num_warps": 4,
            "spill_stores": 0, "spill_loads": 0, "stack": 0, "shared": 1000, "mma": "wgmma", "triton": "3.9.0"}
    return {**base, **changes}


def test_violations_name_each_broken_budget():
    assert cr.violations([row()]) == []
    assert "cannot launch" in cr.violations([row(registers=221, num_warps=16)])[0]  # 221 x 512 > 65,536
    assert "does not compile" in cr.violations([{**row(), "error": "PTXASError: x"}])[0]
    assert "shared memory" in cr.violations([row(arch=80, shared=cr.SHARED_LIMITS[80] + 1)])[0]
    assert cr.violations([row(arch=90, shared=cr.SHARED_LIMITS[80] + 1)]) == []  # fits sm90's larger limit
    assert "spill" in cr.violations([row(spill_stores=4)])[0]  # any spill in half precision
    assert "spill" in cr.violations([row(dtype="float16", spill_stores=4)])[0]
    assert cr.violations([row(dtype="float32", spill_stores=cr.FP32_SPILL_ALLOWANCE)]) == []
    assert "spill" in cr.violations([row(dtype="float32", spill_stores=cr.FP32_SPILL_ALLOWANCE + 4)])[0]


def test_summary_and_markdown_report_sm86_overruns():
    rows = [row(shared=cr.SM86_SHARED_LIMIT + 1), row(dtype="float32", shared=10, mma="fma")]
    report = {"kernel_source_hash": "abc", "date": "2026-11-30", "triton_versions": ["3.9.0"], "archs": [90],
              "specializations": 2, "violations": cr.violations(rows), "rows": rows}
    text = cr.render_markdown(report)
    assert "Above the sm86 / sm89 limit (101,376 B): 1" in text
    assert "| 3.9.0 | sm90 | `k` | bfloat16 | 1 | 128 | 0 |" in text


def test_source_hash_follows_the_kernel_files(tmp_path, monkeypatch):
    for path in cr.kernel_dir().glob("*.py"):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    monkeypatch.setattr(cr, "kernel_dir", lambda: tmp_path)
    before = cr.kernel_source_hash()
    assert before == cr.kernel_source_hash()
    with open(tmp_path / "varlen_attention.py", "a") as f:
        f.write("\n# a changed tile\n")
    assert cr.kernel_source_hash() != before


def test_refuses_to_run_interpreted(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        cr.compile_all()


def test_readme_section_is_generated_from_the_committed_report(committed):
    text = (REPO / "README.md").read_text()
    section = text.split(cr.README_START, 1)[1].split(cr.README_END, 1)[0].strip()
    assert section == cr.readme_summary(committed).strip(), (
        "README's compile-report section differs from benchmarks/results/compile-report.json: run "
        "`make compile-report` (it regenerates both)")


def test_update_readme_replaces_only_the_marked_section(tmp_path):
    report = {"kernel_source_hash": "abc", "date": "2026-11-30", "specializations": 1, "violations": [],
              "rows": [row()]}
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{cr.README_START}\nold\n{cr.README_END}\noutro\n")
    cr.update_readme(readme, report)
    once = readme.read_text()
    assert once.startswith("intro\n") and once.endswith("\noutro\n") and "old" not in once
    assert "| 3.9.0 | sm90 | 1 | 0 | 128 | 0 B |" in once
    cr.update_readme(readme, report)
    assert readme.read_text() == once
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match=f"README.md needs exactly one '{cr.README_START}'"):
        cr.update_readme(readme, report)
