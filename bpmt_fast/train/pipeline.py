"""The whole run: data -> split -> for each model: stage 1 -> stage 2 -> finetune -> evaluation, all in one run
directory (resolved config, checkpoints, metrics.jsonl, plots, summary.md), resumable after a kill."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import yaml

from bpmt_fast.data.splits import compare_split_records, split_record
from bpmt_fast.eval.metrics import closed_set_result, distance_matrix, evaluate_retrieval
from bpmt_fast.eval.pose_stats import reference_features

from . import checkpoint
from .config import TrainConfig, leaves, load_resolved_config, parse_yaml, to_dict, within
from .data import build_datasets, load_sequences, make_split, pretraining_sequences
from .distributed import SINGLE, close_parallel, init_parallel, resolve_device
from .plots import plot_run
from .precision import check_backends, resolve_precision
from .report import summarise, train_vs_validation
from .stages import (FinetuneStage, MetricsLog, ReconstructionStage, build_model, closed_set_predictions,
                     evaluate_model, inference_options, jsonable)

STAGE_NAMES = ("1", "2", "ft")
REFERENCE = "pose-stats 1-NN (reference)"


def reference_metrics(config: TrainConfig, data) -> dict:
    """The non-learned floor, on the same test sequences and under the same protocols as the models: 1-NN on
    pose statistics z-scored by the gallery (closed set: the class of the nearest training sequence)."""
    gallery, probe = retrieval_test_lists(data)
    if not (gallery and probe):
        return {}
    evaluation = config.evaluation
    gallery_seqs, probe_seqs = [data.sequences[i] for i in gallery], [data.sequences[i] for i in probe]
    gallery_set, probe_set = reference_features(gallery_seqs, probe_seqs)  # pose statistics, once
    result = {"test": evaluate_retrieval(probe_set, gallery_set, protocols=evaluation.protocols,
                                         metric=evaluation.metric, ranks=evaluation.ranks)}
    if data.split.test:
        nearest = distance_matrix(probe_set["features"], gallery_set["features"], evaluation.metric).argmin(1)
        result["closed_set"] = {"test": closed_set_result(gallery_set["labels"][nearest], probe_set["labels"])}
    return result


def retrieval_test_lists(data) -> tuple[list[int], list[int]]:
    """(gallery, probe) of the test retrieval: the split's test gallery / probe; for closed-set protocols the
    training sequences are the gallery and the test sequences (unseen recordings or cameras) the probes."""
    split = data.split
    if split.gallery and split.probe:
        return split.gallery, split.probe
    return (split.train, split.test) if split.test else ([], [])


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


SPLIT_FILE = "split.json"


def prepare_data(config: TrainConfig, run_dir: Path | None = None, say=print, save_split: bool = False,
                 pretraining: bool = True):
    """Sequences -> split -> datasets, as the resolved config says (training and `evaluate_run` alike).

    With `run_dir`, the split is checked against the run's `split.json` (subject and sequence ids per side):
    data that no longer gives the saved split (a subject folder added, a file removed, another seed) is refused
    with the differences named, so a resumed or re-evaluated run never mixes training and test subjects.
    `save_split` writes `split.json` when the run has none yet. `pretraining=False` skips loading
    `data.pretrain_sources` (evaluation trains nothing)."""
    sequences, report = load_sequences(config.data)
    say(report)
    split = make_split(sequences, config.data)
    say(split.describe())
    if run_dir is not None:
        record, path = split_record(split, sequences), run_dir / SPLIT_FILE
        if path.is_file():
            changes = compare_split_records(json.loads(path.read_text()), record)
            if changes:
                raise ValueError(f"the data no longer gives the split saved in {path}:\n  " + "\n  ".join(changes)
                                 + "\nrestore the data, or start a new run directory")
        elif save_split:
            checkpoint.atomic_write_text(path, json.dumps(record, indent=1))
        else:
            raise ValueError(f"{run_dir} has no {SPLIT_FILE}: it was not written by this version's `train`")
    pretraining_set = pretraining_sequences(sequences, split, config.data) if pretraining else None
    if pretraining_set is not None:
        say(pretraining_set.describe())
    return build_datasets(sequences, split, config.data, config.augment, config.seed, config.evaluation,
                          pretraining_set)


def results_header(config: TrainConfig, data, device) -> dict:
    """What every results.json / summary.md starts with: data, split, protocols, backend, device."""
    from bpmt_fast.attention import default_backend_name

    split = data.split
    if split.gallery and split.probe:
        test = f"{len(split.probe)} probes against a gallery of {len(split.gallery)} test-subject sequences"
    elif split.test:
        test = (f"{len(split.test)} test sequences (probes) against the {len(split.train)} training sequences "
                f"(gallery)")
    else:
        test = "none (the split has no test side)"
    return {"data": config.data.source, "split": split.describe().splitlines()[0], "test_retrieval": test,
            "protocols": list(config.evaluation.protocols), "device": str(device),
            "precision": resolve_precision(config.train.precision, device).name, "compile": config.train.compile,
            "inference": {"all_frames": config.evaluation.all_frames, "flip": config.evaluation.flip,
                          "max_frames": data.max_frames,
                          "chunk_frames": inference_options(config.evaluation, data).get("chunk_frames")},
            "pretraining": {"sequences": len(data.pretrain.sequences), "sources": data.pretraining.kept,
                            "dropped": data.pretraining.dropped} if data.pretraining else None,
            "attn_backend": config.model.attn_backend or default_backend_name(), "models": {}}


def new_model(name: str, config: TrainConfig, data, device):
    num_classes = len(data.label_map) if config.finetune.ce_weight else 0
    return build_model(name, config.model, num_classes).to(device)


def previous_stage(name: str, stage: str) -> str | None:
    """The checkpoint a stage starts from: stage 2 from stage 1; finetune from stage 2 (BPMT) or stage 1."""
    return {"1": None, "2": "stage1", "ft": "stage2" if name == "bpmt" else "stage1"}[stage]


def start_from_previous_stage(name: str, stage: str, model, ckpt_dir: Path, say) -> None:
    """Load the kept weights of the stage before `stage` (finished, in this run directory) into `model`.

    A stage run on its own (`--stages ft`) must start where the earlier stages ended, never from random weights:
    a missing or unfinished earlier stage is an error naming it."""
    earlier = previous_stage(name, stage)
    label = {"2": "stage 2", "ft": "finetune"}[stage]
    folder = checkpoint.latest_checkpoint(ckpt_dir, f"{name}-{earlier}")
    if folder is None:
        raise ValueError(f"{name} {label} starts from {name}'s {earlier} weights, but {ckpt_dir} has no "
                         f"{name}-{earlier} checkpoint: run that stage first (e.g. --stages "
                         f"{'1,2,ft' if earlier == 'stage2' else '1,' + stage})")
    state = checkpoint.read_state(folder)
    if not state.get("done"):
        raise ValueError(f"{name} {label} starts from {name}'s {earlier} weights, but {earlier} stopped after epoch "
                         f"{state.get('epoch')} ({folder}): finish it first (rerun with its stage)")
    checkpoint.load_weights(folder, model)
    say(f"[{name}] {label} starts from {folder} ({earlier}, {state['epoch']} epochs)")


def train_model(name: str, config: TrainConfig, data, device, log, ckpt_dir: Path, stages: list[str],
                parallel=SINGLE):
    """A fresh model `name` (seeded: the same initial weights on every rank and for every backend) through the
    requested stages; stage 2 is BPMT's only. A stage whose predecessor is not run here starts from the
    predecessor's kept checkpoint (see `start_from_previous_stage`). Returns the model and, per stage that trained
    here, its speed and memory (`throughput.StageMeter.summary`)."""
    say = print if parallel.is_main else (lambda *args: None)
    torch.manual_seed(config.seed)
    model = new_model(name, config, data, device)
    check_backends(model, resolve_precision(config.train.precision, device), config.model.dim // config.model.heads,
                   config.model.heads)
    stage_args = (name, model, data)
    common = (config, device, log, ckpt_dir, parallel)
    ran, speed = [], {}
    for stage in ("1", "2", "ft"):
        if stage not in stages or (stage == "2" and name != "bpmt"):
            continue
        if stage != "1" and previous_stage(name, stage) not in ran:
            start_from_previous_stage(name, stage, model, ckpt_dir, say)
        if stage == "ft":
            runner = FinetuneStage(*stage_args, config.finetune, *common)
        else:
            part_or_pair = "part" if stage == "1" else "pair"
            runner = ReconstructionStage(part_or_pair, *stage_args,
                                         config.stage1 if stage == "1" else config.stage2, *common)
        runner.run()
        ran.append(runner.stage_key)
        if runner.speed is not None and runner.speed.get("steps"):
            speed[runner.stage_key] = runner.speed
    return model, speed


def evaluate_trained(model, config: TrainConfig, data, device) -> dict:
    """Everything reported for one finetuned model: test retrieval under every configured protocol (overall and
    per probe condition), the same on training subjects (the train-vs-test gap), and closed-set accuracy on test
    and training sequences where the protocol has a closed set. Counts and 95% intervals come with each figure."""
    split, evaluation, result = data.split, config.evaluation, {}
    gallery, probe = retrieval_test_lists(data)
    if gallery and probe:
        result["test"] = evaluate_model(model, data, gallery, probe, device, evaluation)
    if data.train_gallery and data.train_probe:
        result["train"] = evaluate_model(model, data, data.train_gallery, data.train_probe, device, evaluation)
    if split.test and config.finetune.ce_weight:
        result["closed_set"] = {side: closed_set_result(*closed_set_predictions(model, data, indices, device,
                                                                                evaluation))
                                for side, indices in (("test", split.test), ("train", split.train))}
    return result


# Settings a run directory may be resumed with after a change: what runs now and where, how often it checkpoints,
# how it computes (train.*: precision, compilation, workers; the attention backend) and how the finished models are
# evaluated. Every other setting shapes the weights the resumed stages continue from.
RESUMABLE_CHANGES = ("models", "stages", "device", "run_dir", "checkpoint_every", "train", "model.attn_backend",
                     "evaluation")


def check_resumed_config(run_dir: Path, config: TrainConfig) -> None:
    """Refuse to continue a run directory's checkpoints under different training settings (a changed learning
    rate, epoch count, model width or data would make a resumed run silently differ from the one its checkpoints
    belong to), naming each changed key. Keys a saved config lacks (written by an older version) are not compared;
    a directory without checkpoints may start over with any config."""
    saved_path, ckpt_dir = run_dir / "config.yaml", run_dir / "checkpoints"
    if not saved_path.is_file() or not any(ckpt_dir.glob(f"*{checkpoint.POINTER_SUFFIX}")):
        return
    saved = leaves(parse_yaml(saved_path.read_text()) or {})
    current = leaves(to_dict(config))
    changed = [f"{key}: {value!r} -> {current.get(key)!r}" for key, value in sorted(saved.items())
               if value != current.get(key) and not any(within(key, free) for free in RESUMABLE_CHANGES)]
    if changed:
        raise ValueError(f"{run_dir} holds checkpoints trained with other settings; resuming would mix them:\n  "
                         + "\n  ".join(changed) + f"\nuse the saved settings ({saved_path}), or a new run directory")


def _run(config: TrainConfig, stages: list[str], parallel, device) -> dict:
    main = parallel.is_main
    say = print if main else (lambda *args: None)
    run_dir = Path(config.run_dir)
    ckpt_dir = run_dir / "checkpoints"
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        check_resumed_config(run_dir, config)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
        for path in checkpoint.remove_stale(ckpt_dir):
            say(f"removed {path} (left by a killed save)")
    # Rank 0 checks (or writes) split.json; the others build the same split from the same data and seed.
    data = prepare_data(config, run_dir if main else None, say, save_split=True)
    if parallel.enabled:
        say(f"data parallel: {parallel.world_size} ranks, device {device}")
    check_trainable(config, data, stages)
    log = MetricsLog(run_dir / "metrics.jsonl", enabled=main)
    results = results_header(config, data, device)

    for name in config.models:
        started = time.perf_counter()
        model, speed = train_model(name, config, data, device, log, ckpt_dir, stages, parallel)
        seconds = time.perf_counter() - started
        # The test split is read here for the first time (early stopping saw only the validation split).
        result = evaluate_trained(model, config, data, device) if "ft" in stages and main else {}
        results["models"][name] = {**result, "seconds": seconds, "speed": speed}
        log.write(model=name, stage="test", **result)

    if main:
        results["models"] = {REFERENCE: reference_metrics(config, data), **results["models"]}
        results["curves"] = train_vs_validation(run_dir / "metrics.jsonl")
        checkpoint.atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2, default=jsonable))
        (run_dir / "summary.md").write_text(summarise(results))
        plots = plot_run(run_dir)
        print(summarise(results))
        print(f"run directory: {run_dir} ({len(plots)} plots)")
    return results


def finetuned_checkpoint(run_dir: Path, name: str) -> Path:
    """The weights a run reports for model `name`: its kept best finetune epoch (`<name>-best`), or the last
    finetune epoch's where the run had no validation split; an error naming the folder when there are neither."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    folder = (checkpoint.latest_checkpoint(ckpt_dir, f"{name}-best")
              or checkpoint.latest_checkpoint(ckpt_dir, f"{name}-finetune"))
    if folder is None:
        raise ValueError(f"{run_dir} has no finetuned {name} checkpoint ({name}-best or {name}-finetune in "
                         f"{ckpt_dir})")
    return folder


def load_run_config(run_dir: Path) -> TrainConfig:
    """A run directory's resolved config (its `config.yaml`); an error when `run_dir` is not a run directory."""
    config_path = Path(run_dir) / "config.yaml"
    if not config_path.is_file():
        raise ValueError(f"{run_dir} is not a run directory: no config.yaml")
    return load_resolved_config(config_path)


def evaluate_run(run_dir: str | Path) -> dict:
    """Re-evaluate a finished run: its resolved config, its saved split (checked against the data) and each
    model's kept best weights (the last finetune epoch's where the run had no validation split). The figures
    equal those `train` wrote to results.json."""
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    device = resolve_device(config.device)
    data = prepare_data(config, run_dir, say=lambda *args: None, pretraining=False)
    results = results_header(config, data, device)
    for name in config.models:
        folder = finetuned_checkpoint(run_dir, name)
        model = new_model(name, config, data, device)
        checkpoint.load_weights(folder, model)
        print(f"{name}: weights from {folder}")
        results["models"][name] = evaluate_trained(model, config, data, device)
    results["models"] = {REFERENCE: reference_metrics(config, data), **results["models"]}
    print(summarise(results))
    return results
