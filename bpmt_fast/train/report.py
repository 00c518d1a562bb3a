"""What a run reports: the summary.md tables built from results.json and the train-vs-validation curves."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .plots import read_metrics


def train_vs_validation(metrics_path: Path) -> dict:
    """Per model, from metrics.jsonl: each reconstruction stage's last-epoch train / validation MSE, and the
    finetune epoch early stopping kept (first best validation score) with train / validation rank-1 and mAP."""
    records = read_metrics(metrics_path)
    curves: dict = {}
    for model in dict.fromkeys(r["model"] for r in records if "epoch" in r):
        def at(stage, split, epoch=None):
            rows = [r for r in records if r.get("model") == model and r.get("stage") == stage
                    and r.get("split") == split and (epoch is None or r["epoch"] == epoch)]
            return rows[-1] if rows else {}

        entry = {}
        for stage in ("stage1", "stage2"):
            train = at(stage, "train")
            if train:
                entry[stage] = {"epoch": train["epoch"], "train": train["loss"],
                                "val": at(stage, "val", train["epoch"]).get("loss")}
        scored = [r for r in records if r.get("model") == model and r.get("stage") == "finetune"
                  and r.get("split") == "val" and "score" in r]
        if scored:
            best = max(scored, key=lambda r: r["score"])  # max keeps the first of equal scores, as early stopping
            train = at("finetune", "train", best["epoch"])
            entry["finetune"] = {"best_epoch": best["epoch"], "epochs": scored[-1]["epoch"],
                                 "train": {k: train.get(k) for k in ("rank1", "mAP")},
                                 "val": {k: best.get(k) for k in ("rank1", "mAP")}}
        curves[model] = entry
    return curves


def _pair(a, b) -> str:
    cell = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    return f"{cell(a)} / {cell(b)}"


def _figure(result: dict | None, key: str, interval: bool = False) -> str:
    """`0.512` or `0.512 [0.43, 0.60]` (95% interval) from a protocol or closed-set result; `-` when absent."""
    if not result or result.get(key) is None:
        return "-"
    text = f"{result[key]:.3f}"
    bounds = (result.get("ci95") or {}).get(key) if key != "accuracy" else result.get("ci95")
    if interval and bounds is not None and all(np.isfinite(bounds)):
        text += f" [{bounds[0]:.2f}, {bounds[1]:.2f}]"
    return text


PROTOCOL_NOTES = {
    "reid": "gallery items of the probe's own subject in the probe's own camera / view removed (Gait3D / GREW / "
            "Market-1501 ReID rule); probes left without a match are not scored",
    "gait3d": "nothing removed (Gait3D's official evaluation: probe and gallery are disjoint sets)",
    "cross-view": "each probe view against each other gallery view alone, misses counted, mean over the V-1 other "
                  "views then over probe views (CASIA-B / OpenGait single-view gallery with the identical view "
                  "excluded)",
}


def summarise(results: dict) -> str:
    lines = ["# Run summary", ""]
    lines.append(f"data: {results['data']}  ")
    lines.append(f"split: {results['split']}  ")
    lines.append(f"test retrieval: {results['test_retrieval']}  ")
    lines.append(f"attention backend: {results['attn_backend']}, device: {results['device']}, precision: "
                 f"{results.get('precision', '-')}, compile: {results.get('compile', '-')}")
    models = results["models"]
    for protocol in results["protocols"]:
        rows = [(name, r["test"]["all"][protocol]) for name, r in models.items() if "test" in r]
        if not rows:
            continue
        lines += ["", f"Test retrieval, protocol `{protocol}`: {PROTOCOL_NOTES[protocol]}. 95% intervals: "
                  "bootstrap over probes.", "",
                  "| model | rank-1 [95% CI] | rank-5 | rank-10 | mAP [95% CI] | mINP | probes scored / all |",
                  "|---|---|---|---|---|---|---|"]
        for name, res in rows:
            probes = f"{res.get('num_scored', res['num_probes'])} / {res['num_probes']}"
            lines.append(f"| {name} | {_figure(res, 'rank1', True)} | {_figure(res, 'rank5')} | "
                         f"{_figure(res, 'rank10')} | {_figure(res, 'mAP', True)} | {_figure(res, 'mINP')} | "
                         f"{probes} |")
    headline = results["protocols"][0]
    conditions = [c for c in next((r["test"] for r in models.values() if "test" in r), {}) if c != "all"]
    if conditions:
        lines += ["", f"Rank-1 per probe condition (`{headline}`):", "",
                  "| model | " + " | ".join(conditions) + " |", "|---|" + "---|" * len(conditions)]
        for name, result in models.items():
            test = result.get("test", {})
            cells = [_figure(test[c][headline], "rank1") if c in test else "-" for c in conditions]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    closed = [(name, r["closed_set"]) for name, r in models.items() if "closed_set" in r]
    if closed:
        lines += ["", "Closed-set accuracy (95% Wilson interval; training side: the training sequences "
                  "un-augmented):", "", "| model | test accuracy [95% CI] | test sequences | train accuracy |",
                  "|---|---|---|---|"]
        for name, res in closed:
            test, train = res["test"], res.get("train")
            lines.append(f"| {name} | {_figure(test, 'accuracy', True)} | {test['num_sequences']} | "
                         f"{_figure(train, 'accuracy')} |")
    gap = [(name, r) for name, r in models.items() if "train" in r and "test" in r]
    if gap:
        lines += ["", f"Train vs test retrieval (`{headline}`; training subjects measured like the test, gallery / "
                  "probe drawn from as many training subjects as validation has):", "",
                  "| model | rank-1 train / test | mAP train / test |", "|---|---|---|"]
        for name, r in gap:
            train, test = r["train"]["all"][headline], r["test"]["all"][headline]
            lines.append(f"| {name} | {_pair(train['rank1'], test['rank1'])} | {_pair(train['mAP'], test['mAP'])} |")
    if results.get("curves"):
        lines += ["", "Train vs validation (training-subject retrieval is measured like validation, on as many "
                  "subjects; reconstruction MSE is pooled over the masked frames of the last epoch):", "",
                  "| model | stage 1 MSE train / val | stage 2 MSE train / val | finetune best epoch | "
                  "rank-1 train / val | mAP train / val |", "|---|---|---|---|---|---|"]
        for name, entry in results["curves"].items():
            recon = [_pair(entry[s]["train"], entry[s]["val"]) if s in entry else "-" for s in ("stage1", "stage2")]
            fine = entry.get("finetune")
            if fine:
                best = f"{fine['best_epoch']} of {fine['epochs']}"
                rank1 = _pair(fine["train"]["rank1"], fine["val"]["rank1"])
                mean_ap = _pair(fine["train"]["mAP"], fine["val"]["mAP"])
            else:
                best = rank1 = mean_ap = "-"
            lines.append(f"| {name} | {recon[0]} | {recon[1]} | {best} | {rank1} | {mean_ap} |")
    lines += speed_lines(results)
    seconds = [f"{name} {r['seconds']:.0f} s" for name, r in models.items() if r.get("seconds") is not None]
    if seconds:
        lines += ["", "Training time: " + ", ".join(seconds)]
    return "\n".join(lines) + "\n"


def speed_lines(results: dict) -> list[str]:
    """The speed and memory table: per model and stage, sequences/s and step time (medians over the steps after
    warm-up) and peak memory, measured by the training loop itself."""
    rows = [(name, stage, figures) for name, r in results["models"].items()
            for stage, figures in (r.get("speed") or {}).items()]
    if not rows:
        return []
    kind = rows[0][2].get("memory_kind", "")
    lines = ["", f"Speed and memory ({results.get('precision', '-')} precision, compile "
             f"{results.get('compile', '-')}; medians over the steps after warm-up; memory: {kind}):", "",
             "| model | stage | steps | seq/s | step ms (median / p90) | peak memory MiB |",
             "|---|---|---|---|---|---|"]
    cell = lambda value, digits: "-" if value is None else f"{value:.{digits}f}"  # noqa: E731
    for name, stage, f in rows:
        lines.append(f"| {name} | {stage} | {f.get('steps', '-')} | {cell(f.get('seq_per_s'), 0)} | "
                     f"{cell(f.get('step_ms'), 1)} / {cell(f.get('step_ms_p90'), 1)} | "
                     f"{cell(f.get('peak_memory_mb'), 0)} |")
    return lines
