"""The whole run: data -> split -> for each model: stage 1 -> stage 2 -> finetune -> evaluation, all in one run
directory (resolved config, checkpoints, metrics.jsonl, plots, summary.md), resumable after a kill."""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import yaml

from bpmt_fast.eval.metrics import evaluate_retrieval
from bpmt_fast.eval.pose_stats import pose_statistics, zscore_by_gallery

from .config import TrainConfig, to_dict
from .data import build_datasets, load_sequences, make_split
from .distributed import SINGLE, close_parallel, init_parallel, resolve_device
from .plots import plot_run, read_metrics
from .stages import FinetuneStage, MetricsLog, jsonable, ReconstructionStage, build_model, closed_set, evaluate_model

STAGE_NAMES = ("1", "2", "ft")


def reference_metrics(data, split) -> dict | None:
    """The non-learned floor: 1-NN on z-scored pose statistics, same gallery / probe and metrics as the models."""
    if not (split.gallery and split.probe):
        return None

    def features(indices):
        seqs = [data.sequences[i] for i in indices]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            feats = np.stack([pose_statistics(s.poses, s.skeleton) for s in seqs])
        labels = np.array([data.eval_label_map[s.subject] for s in seqs])
        return {"features": feats, "labels": labels, "views": np.array([s.view for s in seqs]),
                "conditions": np.array([s.condition for s in seqs])}

    gallery, probe = features(split.gallery), features(split.probe)
    gallery["features"], probe["features"] = zscore_by_gallery(gallery["features"], probe["features"])
    return evaluate_retrieval(probe, gallery)


def check_trainable(config: TrainConfig, data, stages: list[str]) -> None:
    """Fail before any training when the split cannot feed the stages (not after an hour of pretraining)."""
    if not data.split.train:
        raise ValueError(f"the {config.data.protocol} split of {config.data.source} leaves no training sequence")
    identities = len(data.label_map)
    if "ft" in stages and config.finetune.identities_per_batch > identities:
        raise ValueError(f"finetune.identities_per_batch={config.finetune.identities_per_batch} but the "
                         f"{config.data.protocol} split of {config.data.source} has only {identities} training "
                         f"identities; lower it or use more data")
    closed_set_lists = [name for name in ("val", "test") if getattr(data.split, name)
                        and not (name == "val" and data.split.val_gallery)]
    if "ft" in stages and closed_set_lists and not config.finetune.ce_weight:
        raise ValueError(f"the {config.data.protocol} protocol scores {' and '.join(closed_set_lists)} by closed-set "
                         f"classification, which needs the classifier: set finetune.ce_weight > 0")


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


def summarise(results: dict) -> str:
    lines = ["# Run summary", ""]
    lines.append(f"data: {results['data']}  ")
    lines.append(f"split: {results['split']}  ")
    lines.append(f"attention backend: {results['attn_backend']}, device: {results['device']}")
    lines += ["", "| model | closed-set acc | rank-1 (per query) | rank-5 | mAP | rank-1 (per view pair) | train time |",
              "|---|---|---|---|---|---|---|"]
    for name, result in results["models"].items():
        retrieval = result.get("test", {}).get("all", {})
        per_query, per_pair = retrieval.get("per_query") or {}, retrieval.get("per_view_pair") or {}
        cell = lambda d, k: f"{d[k]:.3f}" if k in d and d[k] is not None else "-"  # noqa: E731
        acc = f"{result['closed_set_accuracy']:.3f}" if result.get("closed_set_accuracy") is not None else "-"
        lines.append(f"| {name} | {acc} | {cell(per_query, 'rank1')} | {cell(per_query, 'rank5')} | "
                     f"{cell(per_query, 'mAP')} | {cell(per_pair, 'rank1')} | {result.get('seconds', 0):.0f} s |")
    conditions = [c for c in next(iter(results["models"].values()), {}).get("test", {}) if c != "all"]
    if conditions:
        lines += ["", "Rank-1 (per query, identical view excluded) per probe condition:", "",
                  "| model | " + " | ".join(conditions) + " |", "|---|" + "---|" * len(conditions)]
        for name, result in results["models"].items():
            test = result.get("test", {})
            cells = [f"{test[c]['per_query']['rank1']:.3f}" if c in test else "-" for c in conditions]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
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
    return "\n".join(lines) + "\n"


def run_pipeline(config: TrainConfig, stages: list[str] | None = None) -> dict:
    """The whole run; under torchrun (WORLD_SIZE > 1) every rank calls this and trains its DDP replica."""
    stages = stages or config.stages
    unknown = [s for s in stages if s not in STAGE_NAMES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; valid: {', '.join(STAGE_NAMES)}")
    parallel, device = init_parallel(config.device)
    try:
        return _run(config, stages, parallel, device)
    finally:
        close_parallel(parallel)


def prepare_data(config: TrainConfig, say=print):
    """Sequences -> split -> datasets, as the resolved config says (training and `evaluate_run` alike)."""
    sequences, report = load_sequences(config.data)
    say(report)
    split = make_split(sequences, config.data)
    say(split.describe())
    return build_datasets(sequences, split, config.data, config.augment, config.seed)


def results_header(config: TrainConfig, data, device, with_reference: bool = True) -> dict:
    """What every results.json / summary.md starts with: data, split, backend, device, the reference row."""
    from bpmt_fast.attention import default_backend_name

    results = {"data": config.data.source, "split": data.split.describe().splitlines()[0], "device": str(device),
               "attn_backend": config.model.attn_backend or default_backend_name(), "models": {}}
    reference = reference_metrics(data, data.split) if with_reference else None
    if reference is not None:
        results["models"]["pose-stats 1-NN (reference)"] = {"test": reference}
    return results


def new_model(name: str, config: TrainConfig, data, device):
    num_classes = len(data.label_map) if config.finetune.ce_weight else 0
    return build_model(name, config.model, num_classes).to(device)


def train_model(name: str, config: TrainConfig, data, device, log, ckpt_dir: Path, stages: list[str],
                parallel=SINGLE):
    """A fresh model `name` (seeded: the same initial weights on every rank and for every backend) through the
    requested stages; stage 2 is BPMT's only."""
    torch.manual_seed(config.seed)
    model = new_model(name, config, data, device)
    torch.manual_seed(config.seed + parallel.rank)  # each rank its own dropout
    stage_args = (name, model, data)
    common = (config, device, log, ckpt_dir, parallel)
    if "1" in stages:
        ReconstructionStage("part", *stage_args, config.stage1, *common).run()
    if "2" in stages and name == "bpmt":
        ReconstructionStage("pair", *stage_args, config.stage2, *common).run()
    if "ft" in stages:
        FinetuneStage(*stage_args, config.finetune, *common).run()
    return model


def evaluate_test_split(model, data, device) -> dict:
    """Test retrieval (gallery / probe) and closed-set accuracy, whichever the split defines."""
    split, result = data.split, {}
    if split.gallery and split.probe:
        result["test"] = evaluate_model(model, data, split.gallery, split.probe, device)
    if split.test:
        result["closed_set_accuracy"] = closed_set(model, data, split.test, device)
    return result


def _run(config: TrainConfig, stages: list[str], parallel, device) -> dict:
    main = parallel.is_main
    say = print if main else (lambda *args: None)
    run_dir = Path(config.run_dir)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))

    data = prepare_data(config, say)
    if parallel.enabled:
        say(f"data parallel: {parallel.world_size} ranks, device {device}")
    check_trainable(config, data, stages)
    log = MetricsLog(run_dir / "metrics.jsonl", enabled=main)
    ckpt_dir = run_dir / "checkpoints"
    results = results_header(config, data, device, with_reference=main)

    for name in config.models:
        started = time.perf_counter()
        model = train_model(name, config, data, device, log, ckpt_dir, stages, parallel)
        result = evaluate_test_split(model, data, device) if "ft" in stages and main else {}
        result["seconds"] = time.perf_counter() - started
        results["models"][name] = result
        log.write(model=name, stage="test", **{k: v for k, v in result.items() if k != "seconds"})

    if main:
        results["curves"] = train_vs_validation(run_dir / "metrics.jsonl")
        (run_dir / "results.json").write_text(json.dumps(results, indent=2, default=jsonable))
        (run_dir / "summary.md").write_text(summarise(results))
        plots = plot_run(run_dir)
        print(summarise(results))
        print(f"run directory: {run_dir} ({len(plots)} plots)")
    return results


def evaluate_run(run_dir: str | Path) -> dict:
    """Rebuild data and split from the run's resolved config and evaluate each model's best (else last) weights."""
    from . import checkpoint
    from .config import from_dict

    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise ValueError(f"{run_dir} is not a run directory: no config.yaml")
    config = from_dict(TrainConfig, yaml.safe_load(config_path.read_text()))
    device = resolve_device(config.device)
    data = prepare_data(config, say=lambda *args: None)
    results = results_header(config, data, device)
    for name in config.models:
        folder = (checkpoint.latest_checkpoint(run_dir / "checkpoints", f"{name}-best")
                  or checkpoint.latest_checkpoint(run_dir / "checkpoints", f"{name}-finetune"))
        if folder is None:
            print(f"{name}: no finetuned checkpoint in {run_dir}")
            continue
        model = new_model(name, config, data, device)
        checkpoint.load_weights(folder, model)
        results["models"][name] = evaluate_test_split(model, data, device)
    print(summarise(results))
    return results
