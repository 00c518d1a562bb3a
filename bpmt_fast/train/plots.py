"""Loss-curve PNGs from metrics.jsonl: per part (stage 1), per part pair (stage 2), finetuning.

Train and validation share one plot, as in the original BPMT write-up, so over-fitting shows at a glance.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _curves(records, model: str, stage: str, key: str):
    """{group: {split: [(epoch, value)]}} for `key` ('loss' or a per-group dict name)."""
    curves = defaultdict(lambda: defaultdict(list))
    for record in records:
        if record.get("model") != model or record.get("stage") != stage or "epoch" not in record:
            continue
        values = record.get(key)
        if isinstance(values, dict):
            for group, value in values.items():
                curves[group][record["split"]].append((record["epoch"], value))
        elif values is not None:
            curves[key][record["split"]].append((record["epoch"], values))
    return curves


def _cross_entropy(records, model: str):
    """The finetune cross-entropy beside uniform guessing over the training identities (log K): how far the
    classifier is from chance, i.e. whether training fits at all."""
    curves = _curves(records, model, "finetune", "ce")
    uniform = [(r["epoch"], r["ce_uniform"]) for r in records
               if r.get("model") == model and r.get("stage") == "finetune" and "ce_uniform" in r]
    if curves and uniform:
        curves["ce"]["uniform guessing"] = uniform
    return curves


def _grid_plot(curves, title: str, path: Path, ylabel: str = "masked reconstruction MSE") -> Path | None:
    if not curves:
        return None
    count = len(curves)
    cols = min(count, 5)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False, sharex=True)
    for ax, (group, splits) in zip(axes.flat, curves.items()):
        for split, points in sorted(splits.items()):
            epochs, values = zip(*sorted(points))
            ax.plot(epochs, values, marker="o", markersize=2, label=split)
        ax.set_title(group, fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[count:]:
        ax.axis("off")
    axes[0, 0].set_ylabel(ylabel, fontsize=8)
    fig.suptitle(title)
    fig.supxlabel("epoch")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_run(run_dir: Path) -> list[Path]:
    """Write every loss-curve PNG the run's metrics allow; returns the files written."""
    records = read_metrics(run_dir / "metrics.jsonl")
    written = []
    for model in sorted({r["model"] for r in records if "model" in r}):
        plots = [
            (_curves(records, model, "stage1", "per_group"), f"{model} stage 1: per-part reconstruction",
             f"{model}_stage1_parts.png", "masked reconstruction MSE"),
            (_curves(records, model, "stage2", "per_group"), f"{model} stage 2: per-pair reconstruction",
             f"{model}_stage2_pairs.png", "masked reconstruction MSE"),
            ({**_curves(records, model, "finetune", "loss"), **_cross_entropy(records, model),
              **_curves(records, model, "finetune", "retrieval")},
             f"{model} finetune", f"{model}_finetune.png", "loss / rank-1"),
        ]
        for curves, title, name, ylabel in plots:
            path = _grid_plot(curves, title, run_dir / "plots" / name, ylabel)
            if path:
                written.append(path)
    return written
