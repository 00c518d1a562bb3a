"""The three resumable training stages and evaluation.

Each stage trains for its epochs, logs train / validation figures per epoch to metrics.jsonl, and checkpoints
after every epoch (see checkpoint.py); a stage that finds its own checkpoint resumes after the last finished
epoch, and one marked done is skipped with its final weights loaded.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bpmt_fast.eval.inference import evaluation_frames, infer_batch
from bpmt_fast.eval.metrics import closed_set_accuracy, evaluate_retrieval
from bpmt_fast.model import BPMT, Baseline
from bpmt_fast.model.skeleton import PART_NAMES

from bpmt_fast.collectives import gather

from . import checkpoint
from .data import Datasets, eval_loader, frame_buckets, frame_mask_for, identity_loader, shuffled_loader
from .distributed import SINGLE, Parallel
from .losses import cross_part_contrastive_loss, identity_loss, reconstruction_error_per_group
from .precision import resolve_precision
from .throughput import StageMeter


VALIDATION_MASK_EPOCH = 10**6  # mask seed for validation, out of the range of training epochs


def jsonable(value):
    """json.dumps fallback for numpy arrays and scalars in metric dicts."""
    return value.tolist() if isinstance(value, np.ndarray) else float(value)


class MetricsLog:
    def __init__(self, path: Path, enabled: bool = True):
        self.path, self.enabled = path, enabled  # only one process of a DDP run writes

    def write(self, **record) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps(record, default=jsonable) + "\n")

    def forget_after(self, model: str, stage: str, epoch: int) -> None:
        """Drop the records of (model, stage) past `epoch`: a kill between logging an epoch and checkpointing it
        reruns that epoch, which must not leave two records of it."""
        if not self.enabled or not self.path.is_file():
            return
        lines = self.path.read_text().splitlines()
        keep = [line for line in lines if not _later(json.loads(line), model, stage, epoch)]
        if len(keep) != len(lines):
            checkpoint.atomic_write_text(self.path, "".join(line + "\n" for line in keep))


def _later(record: dict, model: str, stage: str, epoch: int) -> bool:
    return record.get("model") == model and record.get("stage") == stage and record.get("epoch", 0) > epoch


def warmup_cosine(optimizer, warmup_steps: int, total_steps: int):
    def factor(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def group_names(model, stage: str) -> list[str]:
    if isinstance(model, Baseline):
        return ["body"]
    if stage == "part":
        return list(PART_NAMES)
    return [f"{PART_NAMES[a]}<-{PART_NAMES[b]}" for a, b in model.pairs]



def pooled(totals: torch.Tensor) -> torch.Tensor:
    """Masked-frame mean reconstruction error from `(2, G)` error sums and weights."""
    return totals[0].sum() / totals[1].sum().clamp(min=1)


def packing_sizes(batch: dict) -> dict:
    """The host ints the collate computed (longest sequence, total frames): with them a packing attention backend
    builds its layout without reading the lengths back from the GPU."""
    if "max_length" not in batch:
        return {}
    return {"max_length": batch["max_length"], "total_length": batch["total_frames"]}


class Stage:
    """Shared epoch loop with checkpoint / resume; subclasses define one training step and validation."""

    stage_key: str  # "stage1" | "stage2" | "finetune"

    def __init__(self, name: str, model, data: Datasets, config, run_config, device, log: MetricsLog, ckpt_dir,
                 parallel: Parallel = SINGLE):
        self.name, self.model, self.data, self.config = name, model, data, config
        self.run_config, self.device, self.log, self.ckpt_dir = run_config, device, log, ckpt_dir
        self.parallel = parallel
        self.train_model = model  # the DDP replica while training under torchrun, compiled when asked
        self.checkpoint_name = f"{name}-{self.stage_key}"
        self.speed: dict | None = None  # StageMeter summary of the steps this process ran (None: none ran)
        self.precision = resolve_precision(run_config.train.precision, device)
        self.scaler = self.precision.scaler()

    def trained_modules(self) -> tuple[str, ...]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Train exactly the modules this stage uses: DDP needs a gradient for every trainable parameter."""
        modules = self.trained_modules()
        for name, param in self.model.named_parameters():
            param.requires_grad = any(name == m or name.startswith(m + ".") for m in modules)

    def trainable_parameters(self):
        return [p for p in self.model.parameters() if p.requires_grad]

    def say(self, message: str) -> None:
        if self.parallel.is_main:
            print(f"[{self.name} {self.stage_key}] {message}")

    def batches_per_epoch(self) -> int:
        raise NotImplementedError

    def progress(self, batches, epoch: int, total: int | None = None):
        """tqdm bar over one epoch's batches (rank 0 only); `show` puts loss and throughput on it."""
        bar = tqdm(batches, total=total, desc=f"{self.name} {self.stage_key} e{epoch + 1}", leave=False,
                   disable=None if self.parallel.is_main else True)
        bar.started, bar.sequences = time.perf_counter(), 0
        return bar

    def show(self, bar, step: int, mean_loss, batch: dict) -> None:
        """Loss and throughput on the bar every `train.log_every` steps: `mean_loss()` (the epoch's mean loss so far,
        a device tensor) is computed and read only then, since each read waits for the GPU."""
        bar.sequences += len(batch["lengths"]) * self.parallel.world_size
        if (step + 1) % self.run_config.train.log_every:
            return
        rate = bar.sequences / max(time.perf_counter() - bar.started, 1e-9)
        bar.set_postfix(loss=f"{float(mean_loss()):.4f}", seq_per_s=f"{rate:.0f}", refresh=False)

    def optimizer_step(self, loss: torch.Tensor, optimizer, scheduler, grad_clip: float = 0.0) -> None:
        """Backward and one optimizer step (fp16: through the gradient scaler), without reading anything back."""
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if grad_clip:
            self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(self.trainable_parameters(), grad_clip)
        self.scaler.step(optimizer)
        self.scaler.update()
        scheduler.step()

    def loading(self) -> dict:
        """Training loader options: worker processes, pinned memory on CUDA, frames padded to static buckets."""
        runtime = self.run_config.train
        return {"workers": runtime.workers, "pin_memory": self.device.type == "cuda",
                "buckets": frame_buckets(runtime.frame_buckets, self.run_config.data.max_frames)}

    def to_device(self, batch: dict) -> dict:
        """The batch's tensors on the training device (asynchronous from pinned memory)."""
        return {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                for k, v in batch.items()}

    def compiled(self, model):
        """`model` under torch.compile when `train.compile` asks for it (graphs reused thanks to frame buckets)."""
        mode = self.run_config.train.compile
        return model if mode == "off" else torch.compile(model, mode=None if mode == "default" else mode)

    def run(self) -> dict:
        self.prepare()
        params = self.trainable_parameters()
        optimizer = torch.optim.AdamW(params, lr=self.config.lr, weight_decay=self.config.weight_decay)
        steps = self.batches_per_epoch()
        scheduler = warmup_cosine(optimizer, self.config.warmup_epochs * steps, self.config.epochs * steps)
        state = {"epoch": 0, "done": False, "best": None, "since_best": 0}
        # Dropout draws of a fresh stage depend on (seed, stage, rank) only, not on whether the earlier stages ran
        # in this process or were loaded from their checkpoints: a run resumed between stages stays the same run.
        stage_number = ("stage1", "stage2", "finetune").index(self.stage_key)
        torch.manual_seed(int(np.random.SeedSequence([self.run_config.seed, stage_number, self.parallel.rank])
                              .generate_state(1)[0]))
        folder = checkpoint.latest_checkpoint(self.ckpt_dir, self.checkpoint_name)
        if folder is not None:
            state = checkpoint.load_checkpoint(folder, self.model)
            if state["done"]:
                self.say(f"done earlier, weights loaded from {folder}")
                self.finish(state)
                return state
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state.get("scaler", {}))
            notice = self.parallel.restore_rng(state["rng"])  # each rank's dropout continues as without the kill
            self.say(f"resuming after epoch {state['epoch']} from {folder}" + (f"; {notice}" if notice else ""))
        self.log.forget_after(self.name, self.stage_key, state["epoch"])
        self.train_model = self.compiled(self.parallel.wrap(self.model, self.device))
        self.meter = StageMeter(self.device)
        if not self.has_validation():
            self.say(self.without_validation)
        for epoch in range(state["epoch"], self.config.epochs):
            started = time.perf_counter()
            train = self.train_epoch(epoch, optimizer, scheduler)
            val = self.validate(epoch)
            elapsed = time.perf_counter() - started
            self.log.write(model=self.name, stage=self.stage_key, epoch=epoch + 1, split="train", **train)
            self.log.write(model=self.name, stage=self.stage_key, epoch=epoch + 1, split="val", **val)
            stop = self.update_best(state, val)
            state.update(epoch=epoch + 1, done=stop or epoch + 1 == self.config.epochs,
                         optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                         scaler=self.scaler.state_dict(), rng=self.parallel.rng_states())
            if self.run_config.checkpoint_every and ((epoch + 1) % self.run_config.checkpoint_every == 0
                                                     or state["done"]):
                self.save(state)
            self.say(f"epoch {epoch + 1}/{self.config.epochs} train {train['loss']:.4f} "
                     + (f"train rank-1 {train['rank1']:.3f} " if "rank1" in train else "")
                     + (f"val {val['loss']:.4f} " if "loss" in val else "")
                     + (f"val rank-1 {val['rank1']:.3f} " if "rank1" in val else "")
                     + (f"val mAP {val['mAP']:.3f} " if "mAP" in val else "") + f"({elapsed:.1f} s)")
            if stop:
                self.say(f"early stop: no validation gain for {self.config.patience} epochs")
                break
        self.parallel.barrier()  # rank 0's checkpoints are complete before any rank reads them
        self.speed = self.meter.summary()
        self.finish(state)
        return state

    def save(self, state):
        if self.parallel.is_main:
            checkpoint.save_checkpoint(self.ckpt_dir, self.checkpoint_name, self.model, state, state["epoch"])

    without_validation = "no validation split: every epoch is trained, the last epoch's weights are kept"

    def has_validation(self) -> bool:
        split = self.data.split
        return bool(split.val or (split.val_gallery and split.val_probe))

    def update_best(self, state, val) -> bool:
        return False

    def finish(self, state) -> None:
        self.train_model = self.model  # drop the DDP replica
        for param in self.model.parameters():
            param.requires_grad = True
            param.grad = None  # a later stage must not see this stage's last gradients (e.g. in its clipping norm)


class ReconstructionStage(Stage):
    """Stage 1 ("part") or stage 2 ("pair") masked-frame reconstruction."""

    def __init__(self, model_stage: str, *args, **kwargs):
        self.model_stage = model_stage
        self.stage_key = "stage1" if model_stage == "part" else "stage2"
        super().__init__(*args, **kwargs)
        self.contrastive_sum = 0.0  # this epoch's summed contrastive term (a device tensor once a step ran)

    def trained_modules(self):
        modules = self.model.STAGE_MODULES[self.model_stage]
        if self.model_stage == "pair" and not self.config.freeze_parts:  # else: fixed stage-1 part encoders
            modules += ("tokenizer", "part_encoder")
        if not self.contrastive:  # the projection only feeds the contrastive loss (DDP: no gradient, no training)
            modules = tuple(m for m in modules if m != "pair_projection")
        return modules

    @property
    def contrastive(self) -> bool:
        """Stage 2 with the CLIP-style cross-part objective beside reconstruction."""
        return self.model_stage == "pair" and self.config.contrastive_weight > 0

    def batches_per_epoch(self):
        return math.ceil(len(self.data.pretrain) / self.config.batch_size)

    def with_mask(self, batch: dict, epoch: int) -> dict:
        """Adds the `(B, P, T)` frame mask, drawn on the host from (seed, epoch, sequence): the data path's job."""
        parts = self.model.tokenizer.num_parts
        return {**batch, "frame_mask": frame_mask_for(batch, parts, self.config.mask_ratio, self.run_config.seed,
                                                      epoch)}

    def forward_stage(self, model, batch: dict) -> dict:
        """Forward of a device batch (with its frame mask) under the training precision: the model's
        `training_feat`, reconstruction predictions in fp32."""
        with self.precision.autocast():
            feat = model(batch["poses"], batch["lengths"], batch["frame_mask"], stage=self.model_stage,
                         **packing_sizes(batch))["training_feat"]
        recon = feat["reconstruction"]
        return {**feat, "reconstruction": {**recon, "pred": recon["pred"].float()}}

    def reconstruct(self, model, batch: dict) -> dict:
        return self.forward_stage(model, batch)["reconstruction"]

    def train_step(self, batch: dict, optimizer, scheduler) -> torch.Tensor:
        """One optimizer step on a device batch; returns `(2, G)` global error sums and weights (detached, on the
        device); the contrastive term, when on, is added to `self.contrastive_sum`. Reads nothing back to the host:
        `bpmt-fast gpu-check` runs it under CUDA sync debugging."""
        feat = self.forward_stage(self.train_model, batch)
        group_sum, group_weight = reconstruction_error_per_group(feat["reconstruction"])
        totals = self.parallel.sum(torch.stack([group_sum, group_weight]).detach())  # (2, G) over all ranks
        # Masked-frame mean over the global batch: this rank's error sum over the global count, times the world
        # size because DDP averages the ranks' gradients (their average is the single-process one).
        loss = group_sum.sum() / totals[1].sum().clamp(min=1) * self.parallel.world_size
        if self.contrastive:  # over the whole global batch (other walks are the negatives), as the triplet loss
            term = self.config.contrastive_weight * cross_part_contrastive_loss(
                gather(feat["pair_embeddings"]), self.config.contrastive_temperature)
            loss = loss + term
            self.contrastive_sum = self.contrastive_sum + term.detach()
        self.optimizer_step(loss, optimizer, scheduler)
        return totals

    def train_epoch(self, epoch, optimizer, scheduler):
        self.model.train()
        seed = self.run_config.seed
        # Stages 1 and 2 need no labels: they read the pretraining set (training split + data.pretrain_sources)
        loader = shuffled_loader(self.data.pretrain, self.config.batch_size, seed, epoch, self.parallel,
                                 **self.loading())
        totals, steps, self.contrastive_sum = 0.0, 0, 0.0
        bar = self.progress(loader, epoch)
        for step, batch in enumerate(bar):
            device_batch = self.to_device(self.with_mask(batch, epoch))
            self.meter.step_started()
            step_totals = self.train_step(device_batch, optimizer, scheduler)
            self.meter.step_finished(len(batch["lengths"]) * self.parallel.world_size)
            totals, steps = totals + step_totals, step + 1
            self.show(bar, step, lambda: pooled(totals), batch)
        # Pooled over the epoch's masked frames, as validation pools them: the two curves compare like with like.
        sums, weights = totals
        record = {"loss": float(pooled(totals)), "per_group": self._per_group(sums, weights)}
        if self.contrastive:
            record["contrastive"] = float(self.contrastive_sum) / max(steps, 1)
        return record

    @torch.no_grad()
    def validate(self, epoch):
        self.model.eval()
        indices = self.data.split.val or self.data.split.val_gallery + self.data.split.val_probe
        if not indices:
            return {}
        sums, weights = 0.0, 0.0
        # One fixed mask per sequence for every epoch: validation curves compare like with like.
        for batch in eval_loader(self.data.subset(indices, crop=True)):
            batch = self.to_device(self.with_mask(batch, VALIDATION_MASK_EPOCH))
            group_sum, group_weight = reconstruction_error_per_group(self.reconstruct(self.model, batch))
            sums, weights = sums + group_sum, weights + group_weight
        per_group = self._per_group(sums, weights)
        return {"loss": float(sums.sum() / weights.sum().clamp(min=1)), "per_group": per_group}

    def _per_group(self, sums, weights) -> dict:
        values = (sums / weights.clamp(min=1)).tolist() if isinstance(sums, torch.Tensor) else []
        return dict(zip(group_names(self.model, self.model_stage), values))


class FinetuneStage(Stage):
    stage_key = "finetune"

    def trained_modules(self):
        return self.model.STAGE_MODULES["finetune"]

    def batches_per_epoch(self):
        batch = self.config.identities_per_batch * self.config.sequences_per_identity
        return self.config.batches_per_epoch or math.ceil(len(self.data.train) / batch)

    def _batches(self, epoch):
        """`batches_per_epoch` P x K batches: several sampler passes when one pass over identities is shorter."""
        steps, sub_epoch = self.batches_per_epoch(), 0
        while steps > 0:
            loader = identity_loader(self.data.train, self.config.identities_per_batch,
                                     self.config.sequences_per_identity, self.run_config.seed,
                                     epoch * 1000 + sub_epoch, self.parallel, **self.loading())
            for batch in loader:
                if steps == 0:
                    break
                steps -= 1
                yield batch
            sub_epoch += 1

    def train_step(self, batch: dict, optimizer, scheduler) -> tuple[torch.Tensor, dict]:
        """One optimizer step on one P x K device batch; returns the loss and its named parts (detached tensors on
        the device). Reads nothing back to the host: `bpmt-fast gpu-check` runs it under CUDA sync debugging."""
        with self.precision.autocast():
            feat = self.train_model(batch["poses"], batch["lengths"], stage="finetune",
                                    **packing_sizes(batch))["training_feat"]
        # Every rank computes the loss of the whole global batch (triplets need all of it), in fp32.
        logits = None if feat["logits"] is None else gather(feat["logits"])
        out = {"training_feat": {"embeddings": gather(feat["embeddings"]), "logits": logits}}
        loss, loss_parts = identity_loss(out, gather(batch["labels"]), self.config)
        self.optimizer_step(loss, optimizer, scheduler, self.config.grad_clip)
        return loss.detach(), loss_parts

    def train_epoch(self, epoch, optimizer, scheduler):
        self.model.train()
        total, parts, steps = 0.0, {}, 0
        bar = self.progress(self._batches(epoch), epoch, self.batches_per_epoch())
        for step, batch in enumerate(bar):
            device_batch = self.to_device(batch)
            self.meter.step_started()
            loss, loss_parts = self.train_step(device_batch, optimizer, scheduler)
            self.meter.step_finished(len(batch["lengths"]) * self.parallel.world_size)
            total, steps = total + loss, step + 1  # device sums: read once per epoch (and every log_every steps)
            parts = {key: parts.get(key, 0.0) + value for key, value in loss_parts.items()}
            self.show(bar, step, lambda: total / steps, batch)
        record = {"loss": float(total) / max(steps, 1), **{k: float(v) / max(steps, 1) for k, v in parts.items()}}
        if "ce" in record:  # uniform guessing over the training identities, for the curves (plots.py)
            record["ce_uniform"] = self.config.ce_weight * math.log(self.data.train.num_classes)
        if self.data.train_gallery and self.data.train_probe:  # same measure as validation, training subjects
            record.update(self._retrieval(self.data.train_gallery, self.data.train_probe))
        return record

    def _retrieval(self, gallery, probe) -> dict:
        """Rank-1 and mAP under the headline protocol (the first of `evaluation.protocols`)."""
        evaluation = self.run_config.evaluation
        headline = evaluate_model(self.model, self.data, gallery, probe, self.device, evaluation,
                                  protocols=evaluation.protocols[:1], per_epoch=True)["all"][evaluation.protocols[0]]
        name = evaluation.protocols[0]
        return {"rank1": headline["rank1"], "mAP": headline["mAP"],
                "retrieval": {f"rank-1 ({name})": headline["rank1"], f"mAP ({name})": headline["mAP"]}}

    @torch.no_grad()
    def validate(self, epoch):
        """Validation retrieval (rank-1, mAP), or closed-set accuracy when validation shares the training subjects;
        `score` is what early stopping watches: mAP, which moves more smoothly than rank-1 on small galleries."""
        split = self.data.split
        if split.val_gallery and split.val_probe:
            record = self._retrieval(split.val_gallery, split.val_probe)
            return {**record, "score": record["mAP"]}
        if split.val:
            accuracy = closed_set(self.model, self.data, split.val, self.device)
            return {"rank1": accuracy, "score": accuracy, "retrieval": {"accuracy": accuracy}}
        return {}

    without_validation = ("no validation split: early stopping is off (finetune.patience unused), every epoch is "
                          "trained and the last epoch's weights are evaluated")

    def update_best(self, state, val) -> bool:
        """Early stopping on the validation score; the best weights are kept separately (`<model>-best`).

        Rank 0 decides and every rank follows: ranks that disagreed (validation figures can differ in the last bit
        between GPUs) would stop at different epochs and hang the job."""
        if "score" not in val:
            return False
        improved = state["best"] is None or val["score"] > state["best"]
        since_best = 0 if improved else state["since_best"] + 1
        improved, since_best = self.parallel.decide_on_main([int(improved), since_best])
        if improved:
            state["best"] = val["score"]
            if self.parallel.is_main:
                checkpoint.save_checkpoint(self.ckpt_dir, f"{self.name}-best", self.model,
                                           {"score": val["score"], "epoch": state["epoch"] + 1}, state["epoch"] + 1)
        state["since_best"] = since_best
        return since_best >= self.config.patience

    def finish(self, state):
        """Keep the best validation weights (the ones evaluated); without validation, the last epoch's."""
        super().finish(state)
        best = checkpoint.latest_checkpoint(self.ckpt_dir, f"{self.name}-best")
        if best is not None:
            checkpoint.load_weights(best, self.model)
        elif self.has_validation():
            raise ValueError(f"{self.name} finetune validated every epoch but no {self.name}-best checkpoint exists "
                             f"in {self.ckpt_dir}")


def inference_options(evaluation, data: Datasets) -> dict:
    """How evaluation runs a sequence through the model (bpmt_fast.eval.inference): whole sequences up to the
    all-frames cap in chunks of `evaluation.chunk_frames` (0: the training crop length), and the flip average."""
    if evaluation is None:
        return {}
    return {"chunk_frames": evaluation_frames(evaluation, data.train.max_frames)[1], "flip": evaluation.flip}


@torch.no_grad()
def embed(model, dataset, device, **options) -> tuple[np.ndarray, list[dict]]:
    """Retrieval embeddings of a dataset's sequences; `options`: see `inference_options`."""
    features, meta = [], []
    for batch in eval_loader(dataset):
        out = infer_batch(model, batch["poses"], batch["lengths"], device, **options)
        features.append(out["embeddings"].numpy())
        meta += [{"label": int(l), "view": v, "condition": c}
                 for l, v, c in zip(batch["labels"], batch["views"], batch["conditions"])]
    return np.concatenate(features), meta


def _retrieval_set(features, meta) -> dict:
    return {"features": features, "labels": np.array([m["label"] for m in meta]),
            "views": np.array([m["view"] for m in meta]), "conditions": np.array([m["condition"] for m in meta])}


def evaluate_model(model, data: Datasets, gallery: list[int], probe: list[int], device, evaluation,
                   protocols=None, per_epoch: bool = False) -> dict:
    """Retrieval of `probe` against `gallery` under the named protocols (default: `evaluation.protocols`).

    `per_epoch`: the training curves' cheap measure (centre training-length crop, no flip), whatever
    `evaluation.all_frames` / `flip` say: those apply to the final evaluation."""
    options = {} if per_epoch else inference_options(evaluation, data)
    gallery_set = _retrieval_set(*embed(model, data.subset(gallery, crop=per_epoch), device, **options))
    probe_set = _retrieval_set(*embed(model, data.subset(probe, crop=per_epoch), device, **options))
    return evaluate_retrieval(probe_set, gallery_set, protocols=protocols or evaluation.protocols,
                              metric=evaluation.metric, ranks=evaluation.ranks)


@torch.no_grad()
def closed_set_predictions(model, data: Datasets, indices: list[int], device,
                           evaluation=None) -> tuple[np.ndarray, np.ndarray]:
    """Predicted and true classes (training-subject classes) of the sequences `indices`, un-augmented, run as
    `evaluation` says (see `inference_options`); without it, the per-epoch measure (centre crop, no flip)."""
    options = inference_options(evaluation, data)
    predictions, labels = [], []
    for batch in eval_loader(data.subset(indices, crop=evaluation is None)):
        logits = infer_batch(model, batch["poses"], batch["lengths"], device, **options)["logits"]
        predictions.append(logits.argmax(1))
        labels += [data.label_map[s] for s in batch["subjects"]]
    return torch.cat(predictions).numpy(), np.array(labels)


def closed_set(model, data: Datasets, indices: list[int], device) -> float:
    """Closed-set accuracy under the per-epoch measure (validation)."""
    return closed_set_accuracy(*closed_set_predictions(model, data, indices, device))


def build_model(name: str, model_config, num_classes: int):
    from dataclasses import replace

    config = replace(model_config, num_classes=num_classes)
    if name == "bpmt":
        return BPMT(config)
    if name == "baseline":
        return Baseline(config)
    raise ValueError(f"unknown model {name!r}; valid: bpmt, baseline")


def step_runner(model_name: str, model, model_stage: str, run_config, device) -> Stage:
    """A stage whose `train_step` runs outside a pipeline run (the train-step benchmark, the demo): no data set,
    no run directory, but the same precision, compilation, losses and optimizer step as `bpmt-fast train`.

    `model_stage`: "part" | "pair" | "finetune". Device batches: `poses`, `lengths` (or None) and `frame_mask`
    `(B, P, T)` (reconstruction) or `labels` (finetune); optionally the collate's `max_length` / `total_frames`."""
    log = MetricsLog(Path(), enabled=False)
    if model_stage == "finetune":
        stage = FinetuneStage(model_name, model, None, run_config.finetune, run_config, device, log, None)
    else:
        section = run_config.stage1 if model_stage == "part" else run_config.stage2
        stage = ReconstructionStage(model_stage, model_name, model, None, section, run_config, device, log, None)
    stage.prepare()
    stage.train_model = stage.compiled(model)
    return stage
