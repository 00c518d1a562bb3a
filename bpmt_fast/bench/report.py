"""Results of a run: one JSON (machine, versions, settings, ceilings, every row), a markdown report and PNG plots.

The markdown and plots are derived from the JSON only, so `bpmt-fast bench report` rebuilds them from a saved
run (for example one copied back from a GPU machine).
"""
from __future__ import annotations

import json
import math
import platform
import subprocess
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from bpmt_fast.attention import BACKENDS  # noqa: E402
from bpmt_fast.env import environment_info  # noqa: E402

from .common import ATTENTION_REMOVED, OK, write_json_atomic  # noqa: E402
from .shapes import SHAPE_SETS  # noqa: E402

RESULTS_NAME, REPORT_NAME, PLOTS_DIR = "results.json", "report.md", "plots"
SCHEMA = 1
# Speed-ups are relative to the fastest of the attention that ships with torch: what a user has without us.
TORCH_BACKENDS = frozenset({"math", "sdpa", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "sdpa-math", "flex"})


# ---- JSON ----
def nvidia_driver() -> str | None:
    try:
        result = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip().splitlines()[0] if result.returncode == 0 and result.stdout.strip() else None


def machine_info(device: torch.device) -> dict:
    info = environment_info()
    info.update(bench_device=device.type, cpu=platform.processor() or platform.machine(), driver=nvidia_driver())
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu_memory_gib=props.total_memory / 2**30, compute_capability=f"{props.major}.{props.minor}")
    return info


def backend_table() -> list[dict]:
    return [{"name": name, "available": cls.is_available(), "exact": cls.IS_EXACT, "reason": cls.why_unavailable(),
             "version": cls.version() if cls.is_available() else None} for name, cls in BACKENDS.items()]


def new_results(settings: dict, device: torch.device, hardware: dict) -> dict:
    return {"schema": SCHEMA, "environment": machine_info(device), "settings": settings, "hardware": hardware,
            "backends": backend_table(), "rows": []}


def write_json(results: dict, out: Path) -> Path:
    """Atomic, so a run killed mid-write leaves the previous suite's results; a failed measurement is NaN."""
    return write_json_atomic(out / RESULTS_NAME, results)


def load_results(path: str | Path) -> tuple[dict, Path]:
    """(results, folder) from a results JSON or the folder holding one."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_NAME
    if not path.is_file():
        raise ValueError(f"no benchmark results at {path} (expected a {RESULTS_NAME} or the folder holding it)")
    results = json.loads(path.read_text())
    if not isinstance(results, dict) or "rows" not in results:
        raise ValueError(f"{path} is not a bpmt-fast benchmark results file (no 'rows')")
    return results, path.parent


# ---- derived numbers ----
def attention_speedups(rows: list[dict]) -> dict[int, float]:
    """{row index: speed-up vs the fastest torch backend on the same case and direction} for ok attention rows."""
    best: dict[tuple, float] = {}
    for row in rows:
        if row["suite"] == "attention" and row["status"] == OK and row["backend"] in TORCH_BACKENDS:
            key = (row["case"], row["direction"])
            best[key] = min(best.get(key, math.inf), row["median_ms"])
    return {i: best[(r["case"], r["direction"])] / r["median_ms"] for i, r in enumerate(rows)
            if r["suite"] == "attention" and r["status"] == OK and (r["case"], r["direction"]) in best}


def attention_removed_times(rows: list[dict]) -> dict[tuple, float]:
    return {(r["case"], r["mode"]): r["median_ms"] for r in rows
            if r["suite"] == "train-step" and r["backend"] == ATTENTION_REMOVED and r["status"] == OK}


# ---- markdown ----
def _num(value, fmt: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, fmt)


def _pct(value) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"


def _cell(text: str, limit: int = 110) -> str:
    text = str(text).replace("|", "/").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _header(results: dict) -> list[str]:
    env, settings, hw = results["environment"], results["settings"], results["hardware"]
    threads = settings.get("cpu_threads")
    device = (env.get("gpu") if settings.get("device") == "cuda"
              else f"CPU ({env.get('cpu')}, {threads} thread{'' if threads == 1 else 's'})")
    size = "--quick (tiny shapes: a smoke test, not a measurement)" if settings.get("quick") else "full size"
    versions = (f"torch {env.get('torch')}, triton {env.get('triton') or 'not installed'}, "
                f"CUDA {env.get('cuda') or 'none'}, cuDNN {env.get('cudnn') or 'none'}, "
                f"driver {env.get('driver') or 'none'}, Python {env.get('python')}")
    ceilings = (f"copy bandwidth {_num(hw.get('bandwidth_gb_s'), '.1f')} GB/s (read + write, "
                f"{hw.get('copy_mib')} MiB), "
                f"matmul {_num(hw.get('matmul_tflop_s'), '.2f')} TFLOP/s ({hw.get('matmul_dtype')}, "
                f"n={hw.get('matmul_n')})")
    lines = [f"# bpmt-fast benchmark: {device}", "",
             f"- date {env.get('date')}, git commit {env.get('git_commit') or 'unknown'}",
             f"- {versions}",
             f"- suite `{settings.get('suite')}`, {size}, dtype {settings.get('dtype')}, "
             f"device {settings.get('device')}",
             f"- measured ceilings: {ceilings}", ""]
    missing = [b for b in results.get("backends", []) if not b["available"]]
    if missing:
        lines += ["Backends not available here: " + "; ".join(f"`{b['name']}` ({b['reason']})" for b in missing), ""]
    return lines


def _gate_note(row: dict) -> str:
    allowed = row.get("gate_allowed")
    if isinstance(allowed, float) and math.isfinite(allowed):
        return f"{row['gate']}: {_num(row['gate_error'])} / {_num(allowed)}"
    return row.get("gate", "")


def _attention_section(rows: list[dict]) -> list[str]:
    indexed = [(i, r) for i, r in enumerate(rows) if r["suite"] == "attention"]
    if not indexed:
        return []
    speedups = attention_speedups(rows)
    lines = ["## Attention", "",
             "Median time of one call; `x torch` = speed-up over the fastest torch backend (math, sdpa*, flex) on "
             "the same case; TFLOP/s from analytic FLOPs over valid tokens (4·H·D·Σ Nq·Nk, x3.5 with backward); "
             "`% BW` = minimum bytes (q, k, v, o; + dq, dk, dv, do) per second over the measured copy bandwidth; "
             "`% MM` = TFLOP/s over the measured matmul ceiling; gate = max error against the reference / allowed. "
             "Rows that are not `ok` have no numbers (NaN in the JSON) and say why.", ""]
    by_set = defaultdict(list)
    for i, row in indexed:
        by_set[row["shape_set"]].append((i, row))
    for shape_set, members in by_set.items():
        description = SHAPE_SETS[shape_set].description if shape_set in SHAPE_SETS else ""
        lines += [f"### {shape_set}", "", description, "",
                  "| case | backend | pass | status | ms | x torch | TFLOP/s | % BW | % MM | peak MiB | gate / note |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for i, r in members:
            note = _gate_note(r) if r["status"] == OK else r["reason"]
            lines.append(f"| {r['case']} | {r['backend']} | {r['direction']} | {r['status']} | "
                         f"{_num(r['median_ms'], '.4g')} | "
                         f"{_num(speedups.get(i), '.2f')} | {_num(r['tflop_s'])} | {_pct(r['bandwidth_fraction'])} | "
                         f"{_pct(r['matmul_fraction'])} | {_num(r['peak_mib'], '.1f')} | {_cell(note)} |")
        lines.append("")
    return lines


def _train_step_section(rows: list[dict]) -> list[str]:
    members = [r for r in rows if r["suite"] == "train-step"]
    if not members:
        return []
    removed = attention_removed_times(rows)
    lines = ["## Training step", "",
             "Forward + backward + AdamW of one batch. `attention share` = 1 - (step with attention removed) / step, "
             "same case and mode: at most this fraction of the step is left for a faster attention kernel to win.", "",
             "| case | backend | mode | status | ms / step | sequences/s | attention share | peak MiB | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in members:
        bound = removed.get((r["case"], r["mode"]))
        measured = bound and r["status"] == OK and r["backend"] != ATTENTION_REMOVED
        share = 1 - bound / r["median_ms"] if measured else None
        lines.append(f"| {r['case']} | {r['backend']} | {r['mode']} | {r['status']} | "
                     f"{_num(r['median_ms'], '.4g')} | "
                     f"{_num(r['sequences_per_s'], '.0f')} | {_pct(share)} | "
                     f"{_num(r['peak_mib'], '.1f')} | {_cell(r['reason'] if r['status'] != OK else r['dtype'])} |")
    return lines + [""]


def _accuracy_section(rows: list[dict]) -> list[str]:
    members = [r for r in rows if r["suite"] == "accuracy"]
    if not members:
        return []
    lines = ["## Accuracy", "",
             "The same short synthetic training run (same seed, fp32) per backend: final training loss per stage, "
             "test rank-1 / mAP, and the largest relative loss difference from `math` (exact backends must stay "
             "within 1e-3).", "",
             "| backend | model | exact | status | stage-1 loss | stage-2 loss | finetune loss | rank-1 | mAP | "
             "Δ loss vs math | seconds | note |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in members:
        lines.append(f"| {r['backend']} | {r['model']} | {'yes' if r['exact'] else 'no'} | {r['status']} | "
                     f"{_num(r['loss_stage1'], '.5f')} | {_num(r['loss_stage2'], '.5f')} | "
                     f"{_num(r['loss_finetune'], '.5f')} | {_num(r['rank1'], '.3f')} | {_num(r['mAP'], '.3f')} | "
                     f"{_num(r['max_loss_diff_vs_math'], '.2e')} | {_num(r['seconds'], '.1f')} | "
                     f"{_cell(r['reason'])} |")
    return lines + [""]


def render_markdown(results: dict, plots: list[Path]) -> str:
    rows = results["rows"]
    lines = _header(results) + _attention_section(rows) + _train_step_section(rows) + _accuracy_section(rows)
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}]({PLOTS_DIR}/{p.name})" for p in plots] + [""]
    return "\n".join(lines)


# ---- plots ----
def _title(results: dict, what: str) -> str:
    env, settings = results["environment"], results["settings"]
    device = env.get("gpu") if settings.get("device") == "cuda" else "CPU"
    return f"{what} ({device}, {settings.get('dtype')}{', quick' if settings.get('quick') else ''})"


def backend_colors(rows: list[dict]) -> dict[str, tuple]:
    """One colour per backend for every plot of a report, in order of first appearance."""
    names = list(dict.fromkeys(r["backend"] for r in rows))
    palette = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {name: palette(i % palette.N) for i, name in enumerate(names)}


def _empty_plot(message: str, title: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 2.5))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _long_plot(results: dict, key: str, ylabel: str, path: Path) -> Path | None:
    rows = [r for r in results["rows"] if r["suite"] == "attention" and r["shape_set"] == "long"]
    if not rows:
        return None
    title = _title(results, f"long sequences: {ylabel} vs N")
    if not any(r["status"] == OK and math.isfinite(r[key]) for r in rows):
        why = " (peak memory is measured on CUDA only)" if key == "peak_mib" else ""
        return _empty_plot(f"no {ylabel} measured in this run{why}", title, path)
    colors = backend_colors(results["rows"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, direction in zip(axes, ("fwd", "fwd+bwd")):
        series = defaultdict(list)
        for r in rows:
            if r["direction"] == direction and r["status"] == OK and math.isfinite(r[key]):
                series[r["backend"]].append((r["n_q"], r[key]))
        for backend, points in sorted(series.items()):
            xs, ys = zip(*sorted(points))
            ax.plot(xs, ys, marker="o", label=backend, color=colors[backend])
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length N")
        ax.set_title(direction)
        ax.grid(True, which="both", alpha=0.3)
        if series:
            ax.set_yscale("log")
            ax.legend(fontsize=8)
    axes[0].set_ylabel(ylabel)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _speedup_plot(results: dict, path: Path) -> Path | None:
    rows = results["rows"]
    speedups = attention_speedups(rows)
    if not speedups:
        return None
    colors = backend_colors(rows)
    fig, axes = plt.subplots(2, 1, figsize=(12, 7.5))
    for ax, direction in zip(axes, ("fwd", "fwd+bwd")):
        chosen = {i: s for i, s in speedups.items() if rows[i]["direction"] == direction}
        cases = list(dict.fromkeys(rows[i]["case"] for i in chosen))
        backends = list(dict.fromkeys(rows[i]["backend"] for i in chosen))
        width = 0.8 / max(1, len(backends))
        for b, backend in enumerate(backends):
            values = {rows[i]["case"]: s for i, s in chosen.items() if rows[i]["backend"] == backend}
            xs = [c + b * width for c, case in enumerate(cases) if case in values]
            ax.bar(xs, [values[case] for case in cases if case in values], width, label=backend,
                   color=colors[backend])
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xticks([c + 0.4 - width / 2 for c in range(len(cases))])
        ax.set_xticklabels(cases, rotation=20, ha="right", fontsize=7)
        ax.set_ylabel("speed-up vs best torch")
        ax.set_title(direction)
        ax.legend(fontsize=7, ncol=4)
    fig.suptitle(_title(results, "attention: speed-up over the fastest torch backend (>1 is faster)"))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _train_step_plot(results: dict, path: Path) -> Path | None:
    rows = [r for r in results["rows"] if r["suite"] == "train-step" and r["status"] == OK]
    if not rows:
        return None
    cases = list(dict.fromkeys(r["case"] for r in rows))
    fig, axes = plt.subplots(len(cases), 1, figsize=(10, 3.2 * len(cases)), squeeze=False)
    for ax, case in zip(axes[:, 0], cases):
        members = [r for r in rows if r["case"] == case]
        backends = list(dict.fromkeys(r["backend"] for r in members))
        modes = list(dict.fromkeys(r["mode"] for r in members))
        width = 0.8 / len(modes)
        for m, mode in enumerate(modes):
            values = {r["backend"]: r["sequences_per_s"] for r in members if r["mode"] == mode}
            xs = [b + m * width for b, name in enumerate(backends) if name in values]
            ax.bar(xs, [values[name] for name in backends if name in values], width, label=mode)
        ax.set_xticks([b + 0.4 - width / 2 for b in range(len(backends))])
        ax.set_xticklabels(backends, rotation=15, ha="right", fontsize=8)
        ax.set_ylabel("sequences / s")
        ax.set_title(case, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(_title(results, "training step throughput"))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def make_plots(results: dict, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    made = [_long_plot(results, "median_ms", "median ms", folder / "long_time.png"),
            _long_plot(results, "peak_mib", "peak MiB", folder / "long_memory.png"),
            _speedup_plot(results, folder / "speedup.png"),
            _train_step_plot(results, folder / "train_step.png")]
    return [p for p in made if p is not None]


def write_report(results: dict, out: Path) -> Path:
    """report.md and plots/*.png in `out`, from the results alone."""
    out.mkdir(parents=True, exist_ok=True)
    plots = make_plots(results, out / PLOTS_DIR)
    path = out / REPORT_NAME
    path.write_text(render_markdown(results, plots))
    return path
