"""`bpmt-fast compare`: finished runs side by side, one row per (run, model): attention backend, precision and
compile mode, training speed per stage, peak memory and test rank-1 / mAP, as compare.md and compare.png.

Reads each run directory's results.json (written by the pipeline; per model `speed` holds the `StageMeter`
summaries of its stages) and config.yaml (`yaml.safe_load`: data only). Fields a run does not have, e.g. `speed`
or `train.precision` in runs older than them, show as "-". The reference row (pose-stats 1-NN) has no training,
so it is in the table with "-" speed columns and left out of the plot.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import yaml

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

STAGES = ("stage1", "stage2", "finetune")
COLUMNS = ("run", "model", "attn backend", "precision", "compile", "device", "protocol", "stage1 seq/s",
           "stage2 seq/s", "finetune seq/s", "finetune step ms", "peak memory MiB", "rank-1", "mAP")


@dataclass
class Run:
    name: str  # shown in the table: the directory name (the path as given when two names are the same)
    path: Path
    results: dict
    config: dict


def load_run(path: Path, name: str) -> Run:
    """A run directory's results and config; a ValueError naming the run when results.json is absent or broken."""
    results_path = path / "results.json"
    if not results_path.is_file():
        raise ValueError(f"run {path}: no results.json (not a run directory, or its run has not finished)")
    try:
        results = json.loads(results_path.read_text())  # NaN is allowed: the pipeline writes it (empty cells)
    except json.JSONDecodeError as error:
        raise ValueError(f"run {path}: results.json is not valid JSON ({error})") from None
    config_path, config = path / "config.yaml", {}
    if config_path.is_file():
        try:
            config = yaml.safe_load(config_path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"run {path}: config.yaml is not valid YAML ({error})") from None
    return Run(name, path, results, config if isinstance(config, dict) else {})


def load_runs(run_dirs: list[str | Path]) -> list[Run]:
    paths = [Path(d) for d in run_dirs]
    names = [p.resolve().name for p in paths]
    return [load_run(p, n if names.count(n) == 1 else str(p)) for p, n in zip(paths, names)]


def choose_protocol(run: Run, protocol: str | None) -> str | None:
    """The protocol of `run`'s test columns: the one asked for (an error if the run lacks it), else its first."""
    available = run.results.get("protocols") or []
    if protocol is None:
        return available[0] if available else None
    if protocol not in available:
        raise ValueError(f"run {run.path}: no test results under protocol {protocol!r}; it has "
                         f"{', '.join(available) or 'none'}")
    return protocol


def _get(tree, *keys):
    """tree[k0][k1]...; None where a level is missing."""
    for key in keys:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _setting(value):
    """A config value as shown: YAML 1.1 reads an unquoted `off` / `on` as a bool."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return value


def compare_rows(runs: list[Run], protocol: str | None = None) -> list[dict]:
    """One dict per (run, model) with raw values (None where missing), keyed by COLUMNS, plus `memory_kind`."""
    rows = []
    for run in runs:
        chosen = choose_protocol(run, protocol)
        for model, result in (run.results.get("models") or {}).items():
            speed = _get(result, "speed") or {}
            peaks = [(s["peak_memory_mb"], s.get("memory_kind")) for s in speed.values()
                     if isinstance(s, dict) and s.get("peak_memory_mb") is not None]
            peak = max(peaks, key=lambda p: p[0]) if peaks else (None, None)
            test = _get(result, "test", "all", chosen) if chosen else None
            rows.append({
                "run": run.name, "model": model, "attn backend": run.results.get("attn_backend"),
                # the precision the run resolved ("auto" -> bf16 / fp32), else the configured one (older runs)
                "precision": run.results.get("precision") or _setting(_get(run.config, "train", "precision")),
                "compile": _setting(_get(run.config, "train", "compile")),
                "device": run.results.get("device"), "protocol": chosen,
                **{f"{stage} seq/s": _get(speed, stage, "seq_per_s") for stage in STAGES},
                "finetune step ms": _get(speed, "finetune", "step_ms"),
                "peak memory MiB": peak[0], "memory_kind": peak[1],
                "rank-1": _get(test, "rank1"), "mAP": _get(test, "mAP"),
            })
    return rows


def _cell(column: str, value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        digits = 3 if column in ("rank-1", "mAP") else 0 if column == "peak memory MiB" else 1
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(c, row[c]) for c in COLUMNS) + " |" for row in rows]
    kinds = sorted({row["memory_kind"] for row in rows if row["memory_kind"]})
    notes = ["", "seq/s: median over a stage's steps after warm-up (global batch / step time); step ms: median."]
    if kinds:
        notes.append(f"peak memory: the largest over a model's stages, measured as {' or '.join(kinds)}.")
    return "\n".join(lines + notes)


def plot_speed_vs_accuracy(rows: list[dict], path: Path) -> Path:
    """Scatter of finetune seq/s against test rank-1, one labelled point per (run, model) that has both."""
    points = [r for r in rows if r["finetune seq/s"] is not None and r["rank-1"] is not None
              and math.isfinite(r["rank-1"])]
    fig, ax = plt.subplots(figsize=(7, 5))
    colours = {run: f"C{i % 10}" for i, run in enumerate(dict.fromkeys(r["run"] for r in rows))}
    for row in points:
        ax.scatter(row["finetune seq/s"], row["rank-1"], color=colours[row["run"]], s=40)
        label = f"{row['run']} / {row['model']} ({row['attn backend']})"
        ax.annotate(label, (row["finetune seq/s"], row["rank-1"]), fontsize=8, xytext=(4, 4),
                    textcoords="offset points")
    if not points:
        ax.text(0.5, 0.5, "no (run, model) has both finetune seq/s and test rank-1", ha="center",
                transform=ax.transAxes)
    elif max(r["finetune seq/s"] for r in points) > 10 * min(r["finetune seq/s"] for r in points):
        ax.set_xscale("log")  # CPU and GPU runs differ by orders of magnitude
    protocols = ", ".join(dict.fromkeys(r["protocol"] for r in rows if r["protocol"])) or "-"
    ax.set(xlabel="finetune sequences / s (median step)", ylabel=f"test rank-1 ({protocols})",
           title="Training speed vs accuracy")
    ax.margins(x=0.2, y=0.15)  # room for the labels right of and above the outermost points
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_compare(run_dirs: list[str | Path], out: str | Path = "compare", protocol: str | None = None) -> str:
    """Print the table of `run_dirs` and write it to OUT/compare.md with the plot OUT/compare.png."""
    runs = load_runs(run_dirs)
    rows = compare_rows(runs, protocol)
    table = markdown_table(rows)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sources = "\n".join(f"- `{run.name}`: {run.path}" for run in runs)
    plot = plot_speed_vs_accuracy(rows, out / "compare.png")
    (out / "compare.md").write_text(f"# Run comparison\n\n{table}\n\nRuns:\n{sources}\n\n![finetune speed vs "
                                    f"rank-1]({plot.name})\n")
    print(table)
    print(f"\nwrote {out / 'compare.md'} and {plot}")
    return table
