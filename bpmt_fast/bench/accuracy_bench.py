"""Accuracy suite: the same short training run (tiny synthetic data, same seed) with every backend.

It runs the training pipeline's own stages (stage 1 -> stage 2 -> finetune -> retrieval evaluation, from
`bpmt_fast.train`) on one shared dataset, without the pipeline's plots and periodic checkpoints. Exact backends
must end with the losses `math` ends with (relative 1e-3: only rounding differs); an inexact backend (flow) shows
what it costs or gains in loss and rank-1 next to the time it takes. Training runs in fp32, the pipeline's
precision, whatever --dtype says.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Iterator

import torch

from bpmt_fast.attention import BACKENDS, AttentionInputs
from bpmt_fast.train.config import load_config
from bpmt_fast.train.pipeline import evaluate_trained, prepare_data, train_model
from bpmt_fast.train.stages import MetricsLog

from .common import (ERROR, INTERPRETED_TRAINING_REASON, NAN, OK, OOM, SKIPPED, TIME_BUDGET_REASON, UNSUPPORTED,
                     Settings, error_text, say, select_backends, skip_reason)
from .timing import free_memory, is_out_of_memory

LOSS_RTOL = 1e-3  # exact backends: final losses within this of math's (relative, floor 1)
DIFFERS = "differs"
STAGE_KEYS = ("stage1", "stage2", "finetune")

QUICK_RUN = {
    "models": ["bpmt"],
    "model": {"dim": 16, "heads": 2, "part_layers": 1, "pair_layers": 1, "embedding_dim": 16, "dropout": 0.0},
    "data": {"synthetic": {"num_subjects": 8, "sequences_per_subject": 4, "min_frames": 16, "max_frames": 24},
             "max_frames": 20, "test_subjects": 0.3, "val_subjects": 0.2},
    "stage1": {"epochs": 1, "batch_size": 16},
    "stage2": {"epochs": 1, "batch_size": 16},
    "finetune": {"epochs": 1, "warmup_epochs": 0, "identities_per_batch": 4, "sequences_per_identity": 2,
                 "batches_per_epoch": 2},
}
FULL_RUN = {
    "models": ["bpmt", "baseline"],
    "model": {"dim": 64, "heads": 4, "part_layers": 2, "pair_layers": 1, "embedding_dim": 64, "dropout": 0.0},
    "data": {"synthetic": {"num_subjects": 24, "sequences_per_subject": 8, "min_frames": 30, "max_frames": 90},
             "max_frames": 60, "test_subjects": 0.3, "val_subjects": 0.2},
    "stage1": {"epochs": 3, "batch_size": 32},
    "stage2": {"epochs": 2, "batch_size": 32},
    "finetune": {"epochs": 4, "identities_per_batch": 8, "sequences_per_identity": 4, "batches_per_epoch": 8},
}


def run_config(settings: Settings):
    preset = QUICK_RUN if settings.quick else FULL_RUN
    # checkpoint_every 0: no per-epoch checkpoints (the finetune stage still keeps its best weights).
    return load_config(overrides={**preset, "device": settings.device.type, "seed": 0, "checkpoint_every": 0,
                                  "run_dir": str(settings.out / "accuracy")})


def final_losses(metrics_path: Path, model: str) -> dict[str, float]:
    """The last training loss of each stage for one model, from the run's metrics.jsonl."""
    losses = {}
    for line in metrics_path.read_text().splitlines():
        record = json.loads(line)
        if record.get("model") == model and record.get("split") == "train" and record.get("stage") in STAGE_KEYS:
            losses[record["stage"]] = record["loss"]
    return losses


def train_and_evaluate(name: str, config, data, device: torch.device, metrics_path: Path) -> dict[str, dict]:
    """{model: {"losses", "rank1", "mAP", "seconds"}} after stage 1 -> (stage 2) -> finetune with backend `name`."""
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, attn_backend=name))
    log = MetricsLog(metrics_path)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bpmt-bench-") as checkpoints:
        for model_name in config.models:
            started = time.perf_counter()
            model, _ = train_model(model_name, config, data, device, log, Path(checkpoints), ["1", "2", "ft"])
            headline = config.evaluation.protocols[0]
            test = evaluate_trained(model, config, data, device).get("test", {}).get("all", {}).get(headline) or \
                {"rank1": NAN, "mAP": NAN}
            results[model_name] = {"losses": final_losses(metrics_path, model_name), "rank1": test["rank1"],
                                   "mAP": test["mAP"], "seconds": time.perf_counter() - started}
    return results


def _row(name: str, model: str) -> dict:
    return {"suite": "accuracy", "backend": name, "model": model, "exact": BACKENDS[name].IS_EXACT, "status": None,
            "reason": "", "dtype": "float32", **{f"loss_{k}": NAN for k in STAGE_KEYS}, "rank1": NAN, "mAP": NAN,
            "seconds": NAN, "max_loss_diff_vs_math": NAN}


def compare_with_math(rows: list[dict]) -> None:
    """Fill each row's largest relative loss difference from math's run of the same model; flag exact ones."""
    reference = {r["model"]: r for r in rows if r["backend"] == "math" and r["status"] == OK}
    for row in rows:
        ref = reference.get(row["model"])
        if row["status"] != OK or ref is None:
            continue
        diffs = [abs(row[f"loss_{k}"] - ref[f"loss_{k}"]) / max(1.0, abs(ref[f"loss_{k}"])) for k in STAGE_KEYS
                 if math.isfinite(ref[f"loss_{k}"])]
        row["max_loss_diff_vs_math"] = max(diffs, default=NAN)
        if row["exact"] and row["max_loss_diff_vs_math"] > LOSS_RTOL:
            row.update(status=DIFFERS, reason=f"final loss differs from math by {row['max_loss_diff_vs_math']:.2e} "
                                              f"(relative; allowed {LOSS_RTOL:g})")


def run_accuracy(settings: Settings) -> Iterator[dict]:
    """Rows per backend as each finishes (the runner saves each); math runs first, so every later row is compared
    with it before it is yielded. Once the suite's time budget is spent, the remaining backends are `skipped` rows
    with reason "time budget"."""
    config = run_config(settings)
    names = settings.backends or select_backends(None)
    if settings.out_of_time():  # not even the shared data set
        for name in names:
            yield from ({**_row(name, model), "status": SKIPPED, "reason": TIME_BUDGET_REASON}
                        for model in config.models)
        say(f"accuracy: skipped, {TIME_BUDGET_REASON}")
        return
    folder = settings.out / "accuracy"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "data.log", "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        data = prepare_data(config)
    head_dim = config.model.dim // config.model.heads
    probe = AttentionInputs(settings.device.type, torch.float32, head_dim, head_dim, config.model.heads, masked=True,
                            requires_grad=True)
    rows = []
    for name in names:
        template = [_row(name, model) for model in config.models]
        rows += backend_rows(name, template, config, data, probe, settings, folder)
        compare_with_math(rows)
        yield from template


def backend_rows(name: str, template: list[dict], config, data, probe, settings: Settings, folder: Path) -> list[dict]:
    """The backend's rows (one per model): trained and evaluated, or why not."""
    skip = skip_reason(name, settings.device, INTERPRETED_TRAINING_REASON)
    reasons = BACKENDS[name].not_supported_reasons(probe)
    if settings.out_of_time():
        skip = (SKIPPED, TIME_BUDGET_REASON)
    if skip or reasons:
        status, reason = skip or (UNSUPPORTED, "; ".join(reasons))
        for row in template:
            row.update(status=status, reason=reason)
        say(f"accuracy | {name}: {status} {reason[:90]}")
        return template
    metrics_path = folder / f"{name}.metrics.jsonl"
    metrics_path.unlink(missing_ok=True)  # a rerun into the same folder starts a fresh log
    try:
        with open(folder / f"{name}.log", "w") as log, contextlib.redirect_stdout(log), \
                contextlib.redirect_stderr(log):
            results = train_and_evaluate(name, config, data, settings.device, metrics_path)
    except Exception as error:  # noqa: BLE001 - any failure is a row, never a crash
        status = OOM if is_out_of_memory(error) else ERROR
        for row in template:
            row.update(status=status, reason=error_text(error))
        say(f"accuracy | {name}: {status} {template[-1]['reason'][:90]}")
        free_memory(settings.device)
        return template
    for row in template:
        result = results[row["model"]]
        row.update(status=OK, rank1=result["rank1"], mAP=result["mAP"], seconds=result["seconds"],
                   **{f"loss_{k}": result["losses"].get(k, NAN) for k in STAGE_KEYS})
    say(f"accuracy | {name}: " + ", ".join(f"{r['model']} finetune loss {r['loss_finetune']:.4f} rank-1 "
                                          f"{r['rank1']:.3f} ({r['seconds']:.1f} s)" for r in template))
    return template
