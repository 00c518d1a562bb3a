"""Probes against a gallery of embeddings: ranked matches per probe, and the field's retrieval figures when the
identities are known (`bpmt-fast identify`, `bpmt_fast.api`)."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from bpmt_fast.eval.metrics import check_protocols, distance_matrix, evaluate_retrieval

MATCH_COLUMNS = ("probe", "probe_subject", "rank", "gallery", "gallery_subject", "distance", "correct")


def check_comparable(probe, gallery) -> None:
    """Embeddings from different checkpoints (or one unit-normalised, one not) live in different spaces:
    comparing them is an error naming both origins."""
    keys = ("model", "weights", "l2_normalised", "embedding_dim")
    ours, theirs = ({key: side.info.get(key) for key in keys} for side in (probe, gallery))
    if ours != theirs or probe.features.shape[1] != gallery.features.shape[1]:
        raise ValueError(f"probe and gallery embeddings come from different models or settings: probe {ours}, "
                         f"gallery {theirs}; embed both with the same run, model and --l2-normalise choice")


def top_matches(probe, gallery, top_k: int, metric: str) -> list[dict]:
    """Per probe: its labels and the `top_k` nearest gallery items (ascending distance, ties by gallery order),
    each with its distance and, when both subjects are known, whether it is the same identity."""
    if top_k < 1:
        raise ValueError(f"top-k must be >= 1, got {top_k}")
    dist = distance_matrix(probe.features, gallery.features, metric)  # (P, G)
    order = np.argsort(dist, axis=1, kind="stable")[:, :top_k]  # (P, k)
    results = []
    for p, row in enumerate(order):
        subject = probe.subject[p]
        matches = [{"rank": r + 1, "sequence_id": gallery.sequence_id[g], "subject": gallery.subject[g],
                    "view": gallery.view[g], "condition": gallery.condition[g], "source": gallery.source[g],
                    "distance": float(dist[p, g]),
                    "correct": (subject == gallery.subject[g]) if subject and gallery.subject[g] else None}
                   for r, g in enumerate(row.tolist())]
        results.append({"sequence_id": probe.sequence_id[p], "subject": subject, "view": probe.view[p],
                        "condition": probe.condition[p], "source": probe.source[p], "matches": matches})
    return results


def retrieval_figures(probe, gallery, protocols, metric: str, ranks=(1, 5, 10)) -> tuple[dict, list[str]]:
    """The named protocols' results (`bpmt_fast.eval.metrics.evaluate_retrieval`, overall and per probe
    condition) when every probe and gallery item has a subject, else none; protocols that need views are left
    out, with a note, where a view is unknown."""
    protocols = check_protocols(protocols)  # named even when no figure can be computed
    if not (probe.labelled() and gallery.labelled()):
        return {}, ["identities unknown (a probe or gallery item has no subject): no retrieval figures"]
    has_views = all(probe.view) and all(gallery.view)
    usable = [name for name in protocols if name == "gait3d" or has_views]
    notes = [f"{name}: left out, a probe or gallery item has no view" for name in protocols if name not in usable]
    if not usable:
        return {}, notes
    subjects = {s: i for i, s in enumerate(sorted(set(probe.subject) | set(gallery.subject)))}

    def retrieval_set(side) -> dict:
        return {"features": side.features, "labels": np.array([subjects[s] for s in side.subject]),
                "views": np.array(side.view), "conditions": np.array(side.condition)}

    probe_set = retrieval_set(probe)
    if not all(probe.condition) or "all" in probe.condition:  # no per-condition rows without every condition
        probe_set.pop("conditions")
    return evaluate_retrieval(probe_set, retrieval_set(gallery), protocols=usable, metric=metric,
                              ranks=ranks), notes


def write_matches(matches: list[dict], path: str | os.PathLike, header: dict | None = None) -> Path:
    """`.json`: `header` plus the probes with their ranked matches; `.csv`: one row per (probe, rank) with
    `MATCH_COLUMNS`. Any other suffix is an error naming it."""
    path = Path(path)
    if path.suffix.lower() not in (".csv", ".json"):
        raise ValueError(f"{path}: matches are written as .csv or .json, not {path.suffix or 'no suffix'!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(plain_json({**(header or {}), "probes": matches}), indent=1, allow_nan=False))
        return path
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(MATCH_COLUMNS)
        for probe in matches:
            for match in probe["matches"]:
                correct = "" if match["correct"] is None else int(match["correct"])
                writer.writerow([probe["sequence_id"], probe["subject"], match["rank"], match["sequence_id"],
                                 match["subject"], f"{match['distance']:.6g}", correct])
    return path


def plain_json(value):
    """Strict JSON values: numpy scalars and arrays as Python numbers and lists, NaN (an undefined figure) as
    null, tuples as lists."""
    if isinstance(value, dict):
        return {str(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [plain_json(v) for v in value]
    if isinstance(value, (np.bool_, np.integer)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        return None if value != value else float(value)
    return value
