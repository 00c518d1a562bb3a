"""Evaluation metrics: closed-set accuracy and the retrieval protocols the gait literature publishes.

All metrics are fractions in [0, 1] (multiply by 100 for the percentages papers print). Inputs may be numpy
arrays, torch tensors or lists; labels and views may be strings or integers (they are only compared with ``==``
and sorted).

Retrieval protocols (``PROTOCOLS``)
-----------------------------------
A probe ranks a gallery by ascending distance; its *correct matches* are the gallery items with its identity.
Positions are 1-based and counted among the gallery items the protocol keeps for that probe.

``reid`` -- Gait3D / GREW / Market-1501 person re-identification evaluation, as torchreid's ``eval_market1501``
    (``torchreid/metrics/rank.py``) and OpenGait's ``evaluate_many`` (``opengait/evaluation/metric.py``) compute
    it. For each probe, the gallery items with the SAME subject AND the SAME camera / view as the probe are
    removed (other walkers seen by that camera stay); the rest is ranked. A probe without any correct match left
    is not scored: it is left out of every mean, as those evaluations do, and counted in ``num_without_match``.
    Reported: rank-k (CMC: the fraction of scored probes with a correct match among the first k), mAP and mINP.

``gait3d`` -- Gait3D's official evaluation (``evaluate_rank`` of Gait3D-Benchmark ``lib/utils/rank.py``, which
    OpenGait's ``evaluate_Gait3D`` calls): probe and gallery are disjoint sets and nothing is removed. Same
    metrics; probes whose identity is absent from the gallery are left out and counted the same way.

``cross-view`` -- CASIA-B / OU-MVLP single-view-gallery evaluation, as OpenGait's
    ``single_view_gallery_evaluation`` with ``de_diag`` (``opengait/evaluation/evaluator.py``, after GaitSet).
    The view list V is the sorted union of the probe and gallery views. For every cell (probe view p, gallery
    view g), each probe of view p is ranked against the gallery items of view g only, and

    * rank-k of the cell = (probes of view p with a correct match among the first k) / (all probes of view p):
      a probe without any correct match in gallery view g counts as a MISS, and a gallery view without items
      scores 0 (OpenGait divides by the number of probes of view p, whatever the gallery holds);
    * each probe view scores the sum of its off-diagonal cells / (V - 1) (``de_diag``: the identical view is
      excluded but every other view of V counts, including empty ones);
    * the reported number is the mean over the probe views that have probes.

    mAP (OpenGait reports accuracy only for CASIA-B, so there is no published rule): a cell's mAP is the mean AP
    over the probes of view p that have a correct match in gallery view g; a cell without such probes is NaN (a
    cell with nothing to rank has no precision, and 0 would be a made-up score). Per probe view, the mean of the
    non-NaN off-diagonal cells; overall, the mean of the non-NaN probe views. mINP is not reported.
    With a single view (V = 1) there is no cross-view pair and every figure is NaN.

Average precision (torchreid / OpenGait) of a probe with n correct matches at positions r_1 < ... < r_n is
``AP = (1/n) * sum_i i / r_i``, the precision at each correct match averaged over them. INP (Ye et al., "Deep
Learning for Person Re-identification: A Survey and Outlook", TPAMI 2021) is ``n / r_n``, the share of the list
up to the hardest (last) correct match that is correct; mINP is its mean over scored probes.

Differences from the published code, on purpose:

* Ties: the gallery is ordered by a *stable* sort on distance, so equal distances are broken by the gallery index
  (lower first). The published code uses unstable sorts, whose tie order is unspecified.
* A rank k larger than the ranked gallery counts a correct match anywhere (the published CMC is cut at the
  gallery size and cannot be read beyond it).
* Nothing is rounded (OpenGait rounds each cross-view cell to 0.01 %).

95 % intervals
--------------
Every retrieval result carries ``ci95 = {"rank1": [lo, hi], "mAP": [lo, hi]}``: a percentile bootstrap over
probes. ``BOOTSTRAP_RESAMPLES`` (1000) resamples of the P probes are drawn with replacement as
``numpy.random.default_rng(0).integers(0, P, size=(1000, P))`` (one row per resample); each resample's figure is
the protocol's figure recomputed on the resampled probes (for ``reid`` / ``gait3d``: the mean over its scored
probes; for ``cross-view``: the cell tables and view means recomputed over the same view list V). Resamples whose
figure is undefined (no scored probe drawn) are dropped; the interval is the 2.5th and 97.5th percentiles
(``numpy.percentile``, linear) of the rest, and ``[nan, nan]`` when nothing is left. The gallery is fixed: the
interval reflects the sampling of probes only. Closed-set accuracy gets a Wilson score interval (z = 1.959964).

Empty results: a mean over nothing is NaN, never an error. Invalid inputs (mismatched lengths, NaN distances,
ranks below 1, unknown metric or protocol) raise ``ValueError``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

PROTOCOLS = ("reid", "gait3d", "cross-view")
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
WILSON_Z = 1.959964  # the 97.5th percentile of the standard normal: a two-sided 95 % interval

_VIEW_PROTOCOLS = ("reid", "cross-view")  # protocols that need probe and gallery views

# --------------------------------------------------------------------------------------------------- inputs


def _to_numpy(x) -> np.ndarray:
    """numpy array from a numpy array, torch tensor or (nested) list."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _vector(x, name: str, length: int | None = None) -> np.ndarray:
    arr = _to_numpy(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if length is not None and len(arr) != length:
        raise ValueError(f"{name} has {len(arr)} entries, expected {length}")
    return arr


def _check_ranks(ranks: Sequence[int]) -> tuple[int, ...]:
    ranks = tuple(int(k) for k in ranks)
    if not ranks or any(k < 1 for k in ranks):
        raise ValueError(f"ranks must be positive integers, got {ranks}")
    return ranks


def _check_retrieval_inputs(dist, probe_labels, gallery_labels, probe_views=None, gallery_views=None):
    """Validated float64 distances and 1-D label / view vectors of matching lengths."""
    dist = _to_numpy(dist).astype(np.float64)
    if dist.ndim != 2:
        raise ValueError(f"dist must be a (P, G) matrix, got shape {dist.shape}")
    if np.isnan(dist).any():
        raise ValueError("dist contains NaN")
    num_probes, num_gallery = dist.shape
    probe_labels = _vector(probe_labels, "probe_labels", num_probes)
    gallery_labels = _vector(gallery_labels, "gallery_labels", num_gallery)
    if probe_views is not None:
        probe_views = _vector(probe_views, "probe_views", num_probes)
    if gallery_views is not None:
        gallery_views = _vector(gallery_views, "gallery_views", num_gallery)
    return dist, probe_labels, gallery_labels, probe_views, gallery_views


def _require_views(protocol: str, probe_views, gallery_views) -> None:
    if probe_views is None or gallery_views is None:
        raise ValueError(f"the {protocol!r} protocol needs probe_views and gallery_views")


# ----------------------------------------------------------------------------------------- classification


def _predictions(logits_or_predictions, labels) -> tuple[np.ndarray, np.ndarray]:
    """Predicted and true labels, validated: ``(N, C)`` scores become their arg-max (first index on ties)."""
    scores = _to_numpy(logits_or_predictions)
    if scores.ndim == 2:
        predictions = scores.argmax(axis=1)
    elif scores.ndim == 1:
        predictions = scores
    else:
        raise ValueError(f"expected (N, C) logits or (N,) predictions, got shape {scores.shape}")
    labels = _vector(labels, "labels", len(predictions))
    if len(labels) == 0:
        raise ValueError("closed-set accuracy of an empty set")
    return predictions, labels


def closed_set_accuracy(logits_or_predictions, labels) -> float:
    """Fraction of correct predictions.

    ``logits_or_predictions``: ``(N, C)`` scores (the prediction is the arg-max, first index on ties) or ``(N,)``
    predicted labels. ``labels``: ``(N,)``.
    """
    predictions, labels = _predictions(logits_or_predictions, labels)
    return float(np.mean(predictions == labels))


def _wilson_interval(successes: int, trials: int, z: float = WILSON_Z) -> list[float]:
    """Wilson score interval of a binomial proportion; unlike the normal approximation it stays in [0, 1] and
    is sensible at 0 % and 100 %. ``[nan, nan]`` for zero trials."""
    if trials == 0:
        return [float("nan"), float("nan")]
    p = successes / trials
    z2n = z * z / trials
    centre = (p + z2n / 2) / (1 + z2n)
    half = z / (1 + z2n) * np.sqrt(p * (1 - p) / trials + z2n / (4 * trials))
    return [float(max(centre - half, 0.0)), float(min(centre + half, 1.0))]


def closed_set_result(logits_or_predictions, labels) -> dict:
    """Closed-set accuracy with its Wilson 95 % interval: ``{"accuracy", "num_sequences", "ci95": [lo, hi]}``.

    Arguments as ``closed_set_accuracy``.
    """
    predictions, labels = _predictions(logits_or_predictions, labels)
    correct = int(np.sum(predictions == labels))
    return {"accuracy": correct / len(labels), "num_sequences": len(labels),
            "ci95": _wilson_interval(correct, len(labels))}


# ------------------------------------------------------------------------------------------------ distances


def distance_matrix(probe_feats, gallery_feats, metric: str = "euclidean") -> np.ndarray:
    """``(P, D)`` x ``(G, D)`` features -> ``(P, G)`` float64 distances (smaller = more similar).

    ``euclidean``: L2 distance. ``cosine``: ``1 - cos(angle)`` in [0, 2]; a zero vector has cosine 0 to everything.
    """
    probe = _to_numpy(probe_feats).astype(np.float64)
    gallery = _to_numpy(gallery_feats).astype(np.float64)
    if probe.ndim != 2 or gallery.ndim != 2 or probe.shape[1] != gallery.shape[1]:
        raise ValueError(f"features must be (P, D) and (G, D), got {probe.shape} and {gallery.shape}")
    if metric == "euclidean":
        squared = (probe**2).sum(1)[:, None] + (gallery**2).sum(1)[None, :] - 2.0 * probe @ gallery.T
        return np.sqrt(np.maximum(squared, 0.0))
    if metric == "cosine":
        def unit(x):
            return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

        return 1.0 - unit(probe) @ unit(gallery).T
    raise ValueError(f"unknown metric {metric!r}: expected 'euclidean' or 'cosine'")


# ---------------------------------------------------------------------------------- per-probe ranking


def _probe_scores(dist, probe_labels, gallery_labels, keep=None) -> dict:
    """Rank each probe's gallery once and summarise where its correct matches fall.

    ``keep``: ``(P, G)`` bool, the gallery items each probe is ranked against (all when ``None``). Returns
    ``{"first_hit", "num_hits", "ap", "inp"}``, each ``(P,)``: the 1-based position of the first correct match
    among the kept items (0 when there is none), the number of correct matches, AP and INP (NaN without a match).
    """
    num_probes = len(dist)
    order = np.argsort(dist, axis=1, kind="stable")  # ties keep gallery-index order
    hits = gallery_labels[order] == probe_labels[:, None]
    if keep is None:
        position = np.broadcast_to(np.arange(1, dist.shape[1] + 1), dist.shape)
    else:
        kept = np.take_along_axis(keep, order, axis=1)
        hits &= kept
        position = np.cumsum(kept, axis=1)  # position among the kept items, at each ranked slot
    rows, cols = np.nonzero(hits)  # every correct match, probe by probe, nearest first
    hit_position = position[rows, cols]
    num_hits = np.bincount(rows, minlength=num_probes)
    nth = np.arange(len(rows)) - (np.cumsum(num_hits) - num_hits)[rows] + 1  # 1 for a probe's first match, ...
    scored = num_hits > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.bincount(rows, weights=nth / hit_position, minlength=num_probes) / num_hits
    first_hit = np.zeros(num_probes, dtype=np.int64)
    first_hit[rows[nth == 1]] = hit_position[nth == 1]
    last = nth == num_hits[rows]
    inp = np.full(num_probes, np.nan)
    inp[rows[last]] = num_hits[rows[last]] / hit_position[last]
    return {"first_hit": first_hit, "num_hits": num_hits, "ap": np.where(scored, ap, np.nan), "inp": inp}


def _rank_k(first_hit: np.ndarray, k: int) -> np.ndarray:
    """1.0 where a correct match lies among the first k kept items, else 0.0 (also when there is none)."""
    return ((first_hit >= 1) & (first_hit <= k)).astype(np.float64)


# ------------------------------------------------------------------------------------------- bootstrap


def _bootstrap_weights(num_probes: int) -> np.ndarray:
    """``(BOOTSTRAP_RESAMPLES, P)`` float: how many times each probe is drawn in each resample.

    A resample's figure is then a weighted mean, so 1000 resamples cost a few matrix products over per-probe
    quantities computed once, instead of 1000 re-rankings.
    """
    if num_probes == 0:
        return np.zeros((BOOTSTRAP_RESAMPLES, 0))
    draws = np.random.default_rng(BOOTSTRAP_SEED).integers(0, num_probes, size=(BOOTSTRAP_RESAMPLES, num_probes))
    flat = (draws + num_probes * np.arange(BOOTSTRAP_RESAMPLES)[:, None]).ravel()
    counts = np.bincount(flat, minlength=BOOTSTRAP_RESAMPLES * num_probes)
    return counts.reshape(BOOTSTRAP_RESAMPLES, num_probes).astype(np.float64)


def _percentile_interval(figures: np.ndarray) -> list[float]:
    """2.5th / 97.5th percentiles of the defined resample figures; ``[nan, nan]`` when none is defined."""
    figures = np.asarray(figures, dtype=np.float64)
    figures = figures[~np.isnan(figures)]
    if figures.size == 0:
        return [float("nan"), float("nan")]
    low, high = np.percentile(figures, [2.5, 97.5])
    return [float(low), float(high)]


def _nanmean_last(x: np.ndarray) -> np.ndarray:
    """Mean over the last axis of the non-NaN entries; NaN (without a warning) where there are none."""
    defined = ~np.isnan(x)
    counts = defined.sum(axis=-1)
    totals = np.where(defined, x, 0.0).sum(axis=-1)
    return np.where(counts > 0, totals / np.maximum(counts, 1), np.nan)


def _weighted_means(weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per row of ``weights (B, P)``: the weighted mean of the non-NaN ``values (P,)``; NaN when none is drawn."""
    defined = ~np.isnan(values)
    totals = weights @ np.where(defined, values, 0.0)
    counts = weights @ defined.astype(np.float64)
    return np.where(counts > 0, totals / np.where(counts > 0, counts, 1.0), np.nan)


# --------------------------------------------------------------------------------- single-gallery protocols


def _single_gallery_result(protocol: str, scores: dict, ranks: tuple[int, ...]) -> dict:
    """reid / gait3d result from per-probe scores: means over the probes with a correct match, plus intervals."""
    scored = scores["num_hits"] > 0
    # NaN marks a probe without a correct match: it takes part in no mean. Rank-1 always feeds the interval.
    per_probe = {f"rank{k}": np.where(scored, _rank_k(scores["first_hit"], k), np.nan) for k in set(ranks) | {1}}
    per_probe["mAP"], per_probe["mINP"] = scores["ap"], scores["inp"]
    point = {name: float(_nanmean_last(values)) for name, values in per_probe.items()}
    result = {"protocol": protocol, **{f"rank{k}": point[f"rank{k}"] for k in ranks}}
    result.update(mAP=point["mAP"], mINP=point["mINP"], num_probes=len(scored), num_scored=int(scored.sum()),
                  num_without_match=int((~scored).sum()))
    weights = _bootstrap_weights(len(scored))
    result["ci95"] = {name: _percentile_interval(_weighted_means(weights, per_probe[name]))
                      for name in ("rank1", "mAP")}
    return result


def retrieval_reid(dist, probe_labels, gallery_labels, probe_views, gallery_views,
                   ranks: Sequence[int] = (1, 5, 10)) -> dict:
    """The ``reid`` protocol (module docstring): same-subject same-view gallery items removed per probe.

    ``dist``: ``(P, G)`` distances. Returns ``{"protocol": "reid", "rank1", "rank5", ... (one per k), "mAP",
    "mINP", "num_probes" (all given), "num_scored", "num_without_match", "ci95": {"rank1", "mAP"}}``.
    """
    ranks = _check_ranks(ranks)
    _require_views("reid", probe_views, gallery_views)
    dist, probe_labels, gallery_labels, probe_views, gallery_views = _check_retrieval_inputs(
        dist, probe_labels, gallery_labels, probe_views, gallery_views)
    same_walk = ((gallery_labels[None, :] == probe_labels[:, None])
                 & (gallery_views[None, :] == probe_views[:, None]))
    scores = _probe_scores(dist, probe_labels, gallery_labels, keep=~same_walk)
    return _single_gallery_result("reid", scores, ranks)


def retrieval_gait3d(dist, probe_labels, gallery_labels, ranks: Sequence[int] = (1, 5, 10)) -> dict:
    """The ``gait3d`` protocol (module docstring): the whole gallery ranked, nothing removed.

    Returns the same keys as ``retrieval_reid``, with ``"protocol": "gait3d"``.
    """
    ranks = _check_ranks(ranks)
    dist, probe_labels, gallery_labels, _, _ = _check_retrieval_inputs(dist, probe_labels, gallery_labels)
    return _single_gallery_result("gait3d", _probe_scores(dist, probe_labels, gallery_labels), ranks)


# ---------------------------------------------------------------------------------------- cross-view


def _view_list(probe_views: np.ndarray, gallery_views: np.ndarray, views) -> list:
    """The sorted view list V: the union of probe and gallery views, or ``views`` when given (it must cover them)."""
    present = np.unique(np.concatenate([probe_views, gallery_views])).tolist()
    if views is None:
        return present
    view_list = np.unique(_vector(views, "views")).tolist()
    missing = [view for view in present if view not in view_list]
    if missing:
        raise ValueError(f"views {view_list} lacks {missing}, seen in the probe or gallery views")
    return view_list


def _per_gallery_view(dist, probe_labels, gallery_labels, gallery_views, view_list, ranks) -> dict:
    """Every probe ranked against each gallery view alone: ``{"rank{k}": (P, V), ..., "mAP": (P, V)}``.

    ``rank{k}``: 1.0 / 0.0 (a probe without a correct match in that gallery view scores 0.0: a miss).
    ``mAP``: AP, NaN where the probe has no correct match in that gallery view.
    """
    num_probes = len(dist)
    first_hit = np.zeros((num_probes, len(view_list)), dtype=np.int64)  # 0: no correct match in that view
    ap = np.full((num_probes, len(view_list)), np.nan)
    for j, view in enumerate(view_list):
        cols = np.flatnonzero(gallery_views == view)
        if cols.size:  # an empty gallery view keeps "no match" for every probe
            scores = _probe_scores(dist[:, cols], probe_labels, gallery_labels[cols])
            first_hit[:, j], ap[:, j] = scores["first_hit"], scores["ap"]
    return {**{f"rank{k}": _rank_k(first_hit, k) for k in ranks}, "mAP": ap}


def _cell_sums(weights: np.ndarray, probe_view_onehot: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``(B, V, V)``: per resample, the weighted sum of ``values (P, V)`` over the probes of each probe view."""
    num_probes, num_views = probe_view_onehot.shape
    spread = (probe_view_onehot[:, :, None] * values[:, None, :]).reshape(num_probes, num_views * num_views)
    return (weights @ spread).reshape(len(weights), num_views, num_views)


def _cross_view_tables(weights: np.ndarray, probe_view_onehot: np.ndarray, per_probe: dict) -> dict:
    """Cell tables, per-probe-view and overall figures for each row of ``weights (B, P)`` (probe multiplicities).

    Returns ``{name: {"cells": (B, V, V), "per_probe_view": (B, V), "overall": (B,)}}``; the diagonal is NaN.
    """
    num_views = probe_view_onehot.shape[1]
    off_diagonal = ~np.eye(num_views, dtype=bool)
    num_probes = weights @ probe_view_onehot  # (B, V): probes of each probe view in the resample
    has_probes = num_probes > 0
    tables = {}
    for name, values in per_probe.items():
        with np.errstate(invalid="ignore", divide="ignore"):
            if name == "mAP":
                defined = ~np.isnan(values)
                counts = _cell_sums(weights, probe_view_onehot, defined.astype(np.float64))
                cells = _cell_sums(weights, probe_view_onehot, np.where(defined, values, 0.0)) / counts
                cells = np.where(counts > 0, cells, np.nan)
            else:  # every probe of the view counts: misses included
                cells = _cell_sums(weights, probe_view_onehot, values) / num_probes[:, :, None]
                cells = np.where(has_probes[:, :, None], cells, np.nan)
        cells = np.where(off_diagonal, cells, np.nan)
        if name == "mAP":
            per_view = _nanmean_last(cells)
        elif num_views > 1:  # de_diag: sum of the off-diagonal cells / (V - 1); nansum only skips the diagonal
            per_view = np.where(has_probes, np.nansum(cells, axis=-1) / (num_views - 1), np.nan)
        else:
            per_view = np.full(num_probes.shape, np.nan)
        tables[name] = {"cells": cells, "per_probe_view": per_view, "overall": _nanmean_last(per_view)}
    return tables


def retrieval_cross_view(dist, probe_labels, gallery_labels, probe_views, gallery_views,
                         ranks: Sequence[int] = (1, 5, 10), views=None) -> dict:
    """The ``cross-view`` protocol (module docstring): per (probe view, gallery view) cell, OpenGait's ``de_diag``.

    ``views``: the view list V (default: the sorted union of probe and gallery views). Give the whole test set's
    views when scoring a subset of the probes (one walking condition), as OpenGait does, so that V and the
    ``(V - 1)`` divisor do not depend on which views that subset happens to cover.

    Returns ``{"protocol": "cross-view", "rank1", ..., "mAP", "num_probes", "num_views", "ci95": {"rank1", "mAP"},
    "table": {"views": [...], "rank1": (V, V), ..., "mAP": (V, V) (NaN on the diagonal and in rows without
    probes), "num_probes": (V, V) int (probes ranked in each cell), "num_scored": (V, V) int (of them, those with
    a correct match in the cell's gallery view: the mAP denominators), "per_probe_view": {name: (V,)}}}``.
    """
    ranks = _check_ranks(ranks)
    _require_views("cross-view", probe_views, gallery_views)
    dist, probe_labels, gallery_labels, probe_views, gallery_views = _check_retrieval_inputs(
        dist, probe_labels, gallery_labels, probe_views, gallery_views)
    view_list = _view_list(probe_views, gallery_views, views)
    num_views = len(view_list)
    view_index = {view: i for i, view in enumerate(view_list)}
    probe_view_onehot = np.zeros((len(dist), num_views))
    probe_view_onehot[np.arange(len(dist)), [view_index[view] for view in probe_views.tolist()]] = 1.0

    names = [f"rank{k}" for k in ranks] + ["mAP"]
    per_probe = _per_gallery_view(dist, probe_labels, gallery_labels, gallery_views, view_list, set(ranks) | {1})
    point = {name: {key: value[0] for key, value in tables.items()}  # the one "resample": every probe once
             for name, tables in _cross_view_tables(np.ones((1, len(dist))), probe_view_onehot, per_probe).items()}
    off_diagonal = ~np.eye(num_views, dtype=bool)
    probes_per_view = probe_view_onehot.sum(axis=0).astype(np.int64)
    with_match = probe_view_onehot.T @ ~np.isnan(per_probe["mAP"])  # (V, V): probes with a match per cell
    table = {"views": view_list, **{name: point[name]["cells"] for name in names},
             "num_probes": np.where(off_diagonal, probes_per_view[:, None], 0),
             "num_scored": np.where(off_diagonal, with_match, 0).astype(np.int64),
             "per_probe_view": {name: point[name]["per_probe_view"] for name in names}}

    headline_per_probe = {name: per_probe[name] for name in ("rank1", "mAP")}
    resampled = _cross_view_tables(_bootstrap_weights(len(dist)), probe_view_onehot, headline_per_probe)
    return {"protocol": "cross-view", **{name: float(point[name]["overall"]) for name in names},
            "num_probes": len(dist), "num_views": num_views,
            "ci95": {name: _percentile_interval(resampled[name]["overall"]) for name in ("rank1", "mAP")},
            "table": table}


# ------------------------------------------------------------------------------------------ convenience


_REQUIRED_KEYS = ("features", "labels")


def _retrieval_set(data: Mapping, name: str) -> dict:
    if not isinstance(data, Mapping):
        raise ValueError(f"{name} must be a mapping with keys 'features', 'labels'[, 'views', 'conditions']")
    missing = [key for key in _REQUIRED_KEYS if key not in data]
    if missing:
        raise ValueError(f"{name} is missing {missing}; it has {sorted(data)}")
    features = _to_numpy(data["features"])
    if features.ndim != 2:
        raise ValueError(f"{name}['features'] must be (N, D), got shape {features.shape}")
    out = {"features": features, "labels": _vector(data["labels"], f"{name}['labels']", len(features))}
    for key in ("views", "conditions"):
        value = data.get(key)
        out[key] = None if value is None else _vector(value, f"{name}[{key!r}]", len(features))
    return out


def check_protocols(protocols) -> tuple[str, ...]:
    protocols = (protocols,) if isinstance(protocols, str) else tuple(protocols)
    unknown = [name for name in protocols if name not in PROTOCOLS]
    if unknown or not protocols:
        raise ValueError(f"unknown protocol(s) {unknown or protocols}: expected some of {PROTOCOLS}")
    return protocols


def evaluate_retrieval(probe: Mapping, gallery: Mapping, protocols: Sequence[str] = ("reid",),
                       metric: str = "euclidean", ranks: Sequence[int] = (1, 5, 10)) -> dict:
    """Named retrieval protocols from features, overall and per probe condition.

    ``probe`` / ``gallery``: mappings with ``features`` ``(N, D)``, ``labels`` ``(N,)``, optionally ``views``
    ``(N,)`` (required by ``reid`` and ``cross-view``) and, for the probe, ``conditions`` ``(N,)`` (e.g. PsyMo:
    gallery ``nm``, probes ``bg``, ``cl``, ``ph``, ...). ``protocols``: names from ``PROTOCOLS`` (one name alone
    is accepted too).

    Returns ``{"all": {protocol: result, ...}, <condition>: {protocol: result, ...}, ...}``: one entry per distinct
    probe condition (sorted) when conditions are given. The distance matrix is computed once. ``cross-view`` uses
    the view list of the whole probe and gallery sets for every condition, as OpenGait does.
    """
    protocols = check_protocols(protocols)
    ranks = _check_ranks(ranks)
    probe, gallery = _retrieval_set(probe, "probe"), _retrieval_set(gallery, "gallery")
    for name in protocols:
        if name in _VIEW_PROTOCOLS and (probe["views"] is None or gallery["views"] is None):
            raise ValueError(f"the {name!r} protocol needs 'views' for both probe and gallery")
    conditions = [] if probe["conditions"] is None else np.unique(probe["conditions"]).tolist()
    if "all" in conditions:
        raise ValueError("a probe condition may not be called 'all' (the key of the overall result)")
    dist = distance_matrix(probe["features"], gallery["features"], metric)
    view_list = None
    if "cross-view" in protocols:
        view_list = _view_list(probe["views"], gallery["views"], None)

    def evaluate(rows: np.ndarray) -> dict:
        labels = probe["labels"][rows]
        views = None if probe["views"] is None else probe["views"][rows]
        results = {}
        for name in protocols:
            if name == "reid":
                results[name] = retrieval_reid(dist[rows], labels, gallery["labels"], views, gallery["views"], ranks)
            elif name == "gait3d":
                results[name] = retrieval_gait3d(dist[rows], labels, gallery["labels"], ranks)
            else:
                results[name] = retrieval_cross_view(dist[rows], labels, gallery["labels"], views, gallery["views"],
                                                     ranks, views=view_list)
        return results

    results = {"all": evaluate(np.arange(len(dist)))}
    for condition in conditions:
        results[condition] = evaluate(np.flatnonzero(probe["conditions"] == condition))
    return results
