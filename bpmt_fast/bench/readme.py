"""The README's GPU results section, generated from a benchmark run: `bpmt-fast bench report PATH --readme`.

README.md holds the section between two marker comments (`START`, `END`). Everything between them is replaced
by a summary of the run (device, versions, date, commit, the key tables, links to the run's report.md and
plots); nothing outside them changes, and the same results give the same text. The section is never edited by
hand. Only full-size GPU runs go there: a CPU run or a --quick smoke test is refused, because the section is
what the project states about GPUs.
"""
from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path

from .common import OK, TIME_BUDGET_REASON
from .report import PLOTS_DIR, REPORT_NAME, load_results

START, END = "<!-- gpu-results:start -->", "<!-- gpu-results:end -->"
# Table cells for rows without a number: short, and the report has the reason.
STATUS_CELLS = {"unsupported": "n/a", "unavailable": "n/a", "skipped": "skip"}


def replace_section(text: str, section: str, path: str | Path, start: str = START, end: str = END,
                    what: str = "the generated GPU results section goes between them (put them into its "
                                "'## Benchmarks' section)") -> str:
    """`text` with everything between the `start` / `end` markers replaced by `section`; ValueError naming `path`
    (and `what` belongs there) when the markers are missing, repeated or out of order. Every generated README
    section (GPU results, compile report, cost model) is written through this."""
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise ValueError(f"{path} needs exactly one '{start}' followed by one '{end}': {what}")
    head, rest = text.split(start)
    _, tail = rest.split(end)
    return f"{head}{start}\n{section.strip()}\n{end}{tail}"


def check_gpu_run(results: dict, path: str | Path) -> None:
    settings = results.get("settings", {})
    if settings.get("device") != "cuda":
        raise ValueError(f"{path} holds a {settings.get('device', 'unknown')} run; the README's GPU results section "
                         f"takes full-size GPU runs only")
    if settings.get("quick"):
        raise ValueError(f"{path} is a --quick run (tiny shapes: a smoke test, not a measurement); the README's GPU "
                         f"results section takes full-size GPU runs only")


def _link(target: Path, readme_dir: Path) -> str:
    return Path(os.path.relpath(target.resolve(), readme_dir.resolve())).as_posix()


def _ms(value: float) -> str:
    return f"{value:.3g}" if value >= 0.1 else f"{value:.2g}"


def _cell(row: dict | None, key: str, best: float | None) -> str:
    if row is None:
        return ""
    if row["status"] != OK or not math.isfinite(row.get(key, math.nan)):
        return STATUS_CELLS.get(row["status"], row["status"])
    text = _ms(row[key])
    return f"**{text}**" if best is not None and row[key] == best else text


def _pivot(rows: list[dict], key_fields: dict[str, str], value: str) -> list[str]:
    """Markdown table lines: one line per value of the `key_fields` ({row field: column title}), one column per
    backend, the fastest bold."""
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    keys = list(dict.fromkeys(tuple(r[f] for f in key_fields) for r in rows))
    by_key = {(tuple(r[f] for f in key_fields), r["backend"]): r for r in rows}
    lines = [f"| {' | '.join(key_fields.values())} | {' | '.join(f'`{b}`' for b in backends)} |",
             "|" + "---|" * (len(key_fields) + len(backends))]
    for key in keys:
        measured = [by_key[(key, b)][value] for b in backends if (key, b) in by_key
                    and by_key[(key, b)]["status"] == OK and math.isfinite(by_key[(key, b)][value])]
        best = min(measured) if measured else None
        cells = [_cell(by_key.get((key, b)), value, best) for b in backends]
        lines.append(f"| {' | '.join(str(k) for k in key)} | {' | '.join(cells)} |")
    return lines


def _status_counts(rows: list[dict]) -> str:
    counts = Counter(r["status"] for r in rows)
    budget = sum(1 for r in rows if r["status"] == "skipped" and r.get("reason", "").startswith(TIME_BUDGET_REASON))
    parts = [f"{n} {status}" for status, n in counts.most_common()]
    return ", ".join(parts) + (f" ({budget} of them not started: time budget)" if budget else "")


def _header(results: dict, folder: Path, readme_dir: Path) -> list[str]:
    env, settings, hw = results["environment"], results["settings"], results["hardware"]
    memory = env.get("gpu_memory_gib")
    device = (f"**{env.get('gpu')}** (compute capability {env.get('compute_capability')}"
              + (f", {memory:.0f} GiB" if memory else "") + ")")
    plots = sorted((folder / PLOTS_DIR).glob("*.png"))
    links = [f"[{REPORT_NAME}]({_link(folder / REPORT_NAME, readme_dir)})"]
    links += [f"[{p.stem}]({_link(p, readme_dir)})" for p in plots]
    return [
        "<!-- generated by `bpmt-fast bench report PATH --readme` from the results.json linked below: "
        "do not edit by hand -->",
        f"### GPU results: {env.get('gpu')}", "",
        f"- device {device}, driver {env.get('driver') or 'unknown'}; torch {env.get('torch')}, triton "
        f"{env.get('triton') or 'not installed'}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, Python "
        f"{env.get('python')}",
        f"- run {env.get('date')}, git commit {env.get('git_commit') or 'unknown'}; suite `{settings.get('suite')}`, "
        f"dtype {settings.get('dtype')}, time budget "
        + (f"{settings['budget_s']:.0f} s" if settings.get("budget_s") is not None else "none"),
        f"- measured ceilings: copy {hw.get('bandwidth_gb_s', math.nan):.0f} GB/s (read + write), matmul "
        f"{hw.get('matmul_tflop_s', math.nan):.0f} TFLOP/s ({hw.get('matmul_dtype')})",
        f"- rows: {_status_counts(results['rows'])}",
        f"- results: [{folder.name}/results.json]({_link(folder / 'results.json', readme_dir)}); full report and "
        f"plots: " + ", ".join(links), ""]


def _attention(rows: list[dict]) -> list[str]:
    members = [r for r in rows if r["suite"] == "attention"]
    if not members:
        return []
    return ["#### Attention: median ms per call (fastest in bold)", "",
            *_pivot(members, {"shape_set": "shape set", "case": "case", "direction": "pass"}, "median_ms"), ""]


def _train_step(rows: list[dict]) -> list[str]:
    members = [r for r in rows if r["suite"] == "train-step"]
    if not members:
        return []
    return ["#### Training step: ms per optimizer step (fastest in bold; `attention removed` is the bound)", "",
            *_pivot(members, {"case": "case", "mode": "mode"}, "median_ms"), ""]


def _accuracy(rows: list[dict]) -> list[str]:
    members = [r for r in rows if r["suite"] == "accuracy"]
    if not members:
        return []
    lines = ["#### Accuracy: the same short training run per backend", "",
             "| backend | model | status | finetune loss | rank-1 | mAP | Δ loss vs math |",
             "|---|---|---|---|---|---|---|"]
    for r in members:
        numbers = [f"{r[k]:.4g}" if r["status"] in (OK, "differs") and math.isfinite(r[k]) else "-"
                   for k in ("loss_finetune", "rank1", "mAP", "max_loss_diff_vs_math")]
        lines.append(f"| `{r['backend']}` | {r['model']} | {r['status']} | {' | '.join(numbers)} |")
    return lines + [""]


def render_section(results: dict, folder: Path, readme_dir: Path) -> str:
    """The generated section (between the markers) for the run in `folder`, links relative to `readme_dir`."""
    rows = results["rows"]
    lines = _header(results, folder, readme_dir) + _attention(rows) + _train_step(rows) + _accuracy(rows)
    lines.append("Cells: `n/a` the backend cannot run this case here, `skip` not run (see the report for why), "
                 "`wrong` failed the correctness gate, `error` / `oom` failed.")
    return "\n".join(lines)


def update_readme(results_path: str | Path, readme_path: str | Path = "README.md", require_gpu: bool = True) -> Path:
    """Replace README's GPU results section with the run at `results_path` (results.json or its folder)."""
    readme = Path(readme_path)
    if not readme.is_file():
        raise ValueError(f"no README at {readme}")
    results, folder = load_results(results_path)
    if require_gpu:
        check_gpu_run(results, folder / "results.json")
    text = readme.read_text()
    updated = replace_section(text, render_section(results, folder, readme.parent), readme)
    if updated != text:
        readme.write_text(updated)
    print(f"README GPU results section: {readme} from {folder / 'results.json'}", flush=True)
    return readme
