"""Evaluation metrics: closed-set accuracy, distance matrices and cross-view retrieval (rank-k, mAP).

All metrics are fractions in [0, 1] (multiply by 100 for the percentages papers print). Inputs may be numpy
arrays, torch tensors or lists; labels and views may be strings or integers (they are only compared with ``==``).

Retrieval
---------
A *query* (probe) ranks the gallery by ascending distance. Its hits are the gallery items with the query's
identity. Two flavours are provided; both exclude gallery items seen from the query's own view / camera, so a
model cannot score by matching the viewpoint (or the very same recording) instead of the walker.

``retrieval_per_query`` ("per-query masking", Gait3D / GREW / ReID style)
    For each query, the gallery items with the same view as the query are removed; the query is ranked against
    everything else. Rank-k of the query is 1 if a hit is among the first k remaining items. The reported numbers
    are means over queries. A query whose identity has no hit left after masking cannot be scored: it is
    *skipped* (left out of every mean) and counted in ``num_skipped``.

``retrieval_per_view_pair`` (CASIA-B / OpenGait style)
    For every pair (probe view p, gallery view g) with p != g, each probe of view p is ranked against the gallery
    items of view g only. A cell of the (probe view x gallery view) table is the mean over the probes of view p
    that have a hit in gallery view g (the others are skipped for that cell and counted). Identical-view cells
    are NaN, and so is a cell without any scorable probe. As in OpenGait, each probe view's score is the mean
    over its defined cells, and the reported number is the mean over probe views. This weights every view pair
    equally, whatever the number of probes per view, so it differs from the per-query flavour whenever views
    are unbalanced or a query's hits lie in some views only.

Average precision of a query over its (masked) gallery with n hits at 1-based positions r_1 < ... < r_n is
``AP = (1/n) * sum_i i / r_i`` (the precision at each hit, averaged over hits); mAP is the mean AP over the
scored queries. A perfect ranking (all hits first) has AP 1.

Ties: the gallery is ordered by a *stable* sort on distance, so equal distances are broken by the gallery
index (lower index ranks first). Results are therefore deterministic, but with exact ties they depend on the
gallery order; permuting the gallery changes nothing when distances are distinct.

Empty results: a mean over nothing (every query skipped) is NaN, never an error. Invalid inputs (mismatched
lengths, NaN distances, unknown metric) raise ``ValueError``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

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


def _nanmean(values) -> float:
    """Mean of the non-NaN values; NaN (without a warning) when there are none."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


# ----------------------------------------------------------------------------------------- classification


def closed_set_accuracy(logits_or_predictions, labels) -> float:
    """Fraction of correct predictions.

    ``logits_or_predictions``: ``(N, C)`` scores (the prediction is the arg-max, first index on ties) or ``(N,)``
    predicted labels. ``labels``: ``(N,)``.
    """
    scores = _to_numpy(logits_or_predictions)
    if scores.ndim == 2:
        predictions = scores.argmax(axis=1)
    elif scores.ndim == 1:
        predictions = scores
    else:
        raise ValueError(f"expected (N, C) logits or (N,) predictions, got shape {scores.shape}")
    labels = _vector(labels, "labels", len(predictions))
    if len(labels) == 0:
        raise ValueError("closed_set_accuracy of an empty set")
    return float(np.mean(predictions == labels))


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


# ---------------------------------------------------------------------------------------------- retrieval


def _check_retrieval_inputs(dist, probe_labels, gallery_labels, probe_views, gallery_views):
    dist = _to_numpy(dist).astype(np.float64)
    if dist.ndim != 2:
        raise ValueError(f"dist must be a (P, G) matrix, got shape {dist.shape}")
    if np.isnan(dist).any():
        raise ValueError("dist contains NaN")
    num_probes, num_gallery = dist.shape
    probe_labels = _vector(probe_labels, "probe_labels", num_probes)
    gallery_labels = _vector(gallery_labels, "gallery_labels", num_gallery)
    if (probe_views is None) != (gallery_views is None):
        raise ValueError("give both probe_views and gallery_views, or neither")
    if probe_views is not None:
        probe_views = _vector(probe_views, "probe_views", num_probes)
        gallery_views = _vector(gallery_views, "gallery_views", num_gallery)
    return dist, probe_labels, gallery_labels, probe_views, gallery_views


def _rank_gallery(dist, probe_labels, gallery_labels):
    """Stable order of the gallery per query, and whether each ranked item has the query's identity.

    Returns ``order (P, G)`` (gallery indices, nearest first; ties by gallery index) and ``same_id (P, G)``.
    """
    order = np.argsort(dist, axis=1, kind="stable")
    same_id = gallery_labels[order] == probe_labels[:, None]
    return order, same_id


def _score_queries(same_id, valid):
    """Score every query over the valid part of its ranked gallery.

    ``same_id``, ``valid``: ``(Q, G)`` bool, in ranked order. Returns ``scored (Q,)`` (the query has a valid hit),
    ``first_hit (Q,)`` (1-based position of the first valid hit among valid items; 0 when not scored) and
    ``ap (Q,)`` (average precision; 0 when not scored).
    """
    hits = same_id & valid
    num_queries = len(hits)
    position = np.cumsum(valid, axis=1)  # 1-based rank among the valid items, at each ranked slot
    rows, cols = np.nonzero(hits)  # every hit, row by row, nearest first within a row
    hit_rank = position[rows, cols]
    num_hits = np.bincount(rows, minlength=num_queries)
    nth = np.arange(len(rows)) - (np.cumsum(num_hits) - num_hits)[rows] + 1  # 1 for a query's first hit, ...
    scored = num_hits > 0
    ap = np.bincount(rows, weights=nth / hit_rank, minlength=num_queries) / np.maximum(num_hits, 1)
    first_hit = np.zeros(num_queries, dtype=np.int64)
    first_hit[rows[nth == 1]] = hit_rank[nth == 1]
    return scored, first_hit, ap


def retrieval_per_query(dist, probe_labels, gallery_labels, probe_views=None, gallery_views=None,
                        ranks: Sequence[int] = (1, 5)) -> dict:
    """Rank-k and mAP with per-query masking of the query's own view (see the module docstring).

    ``dist``: ``(P, G)`` distances. Views ``None`` (both) disables the view exclusion.
    Returns ``{"rank1", "rank5", ... (one per k), "mAP", "num_queries" (scored), "num_skipped"}``.
    """
    ranks = _check_ranks(ranks)
    dist, probe_labels, gallery_labels, probe_views, gallery_views = _check_retrieval_inputs(
        dist, probe_labels, gallery_labels, probe_views, gallery_views)
    order, same_id = _rank_gallery(dist, probe_labels, gallery_labels)
    if probe_views is None:
        valid = np.ones_like(same_id)
    else:
        valid = gallery_views[order] != probe_views[:, None]
    scored, first_hit, ap = _score_queries(same_id, valid)
    result = {f"rank{k}": _nanmean(np.where(scored, first_hit <= k, np.nan)) for k in ranks}
    result["mAP"] = _nanmean(np.where(scored, ap, np.nan))
    result["num_queries"] = int(scored.sum())
    result["num_skipped"] = int((~scored).sum())
    return result


def retrieval_per_view_pair(dist, probe_labels, gallery_labels, probe_views, gallery_views,
                            ranks: Sequence[int] = (1, 5)) -> dict:
    """CASIA-B / OpenGait-style rank-k and mAP averaged over (probe view, gallery view) pairs (module docstring).

    Returns ``{"rank1", "rank5", ..., "mAP"`` (means over probe views of the per-probe-view means),
    ``"num_pairs"`` (defined off-diagonal cells), ``"num_queries"`` (scored (probe, gallery view) evaluations),
    ``"num_skipped"`` (off-diagonal (probe, gallery view) evaluations without a hit), ``"table"}`` where ``table`` is
    ``{"probe_views": [...], "gallery_views": [...], <metric>: (Vp, Vg) array with NaN on identical views and
    undefined cells, "num_queries": (Vp, Vg) int array, "per_probe_view": {<metric>: (Vp,) array}}``.
    """
    ranks = _check_ranks(ranks)
    if probe_views is None or gallery_views is None:
        raise ValueError("retrieval_per_view_pair needs probe_views and gallery_views")
    dist, probe_labels, gallery_labels, probe_views, gallery_views = _check_retrieval_inputs(
        dist, probe_labels, gallery_labels, probe_views, gallery_views)
    probe_view_list, gallery_view_list = np.unique(probe_views), np.unique(gallery_views)
    names = [f"rank{k}" for k in ranks] + ["mAP"]
    shape = (len(probe_view_list), len(gallery_view_list))
    table = {name: np.full(shape, np.nan) for name in names}
    counts = np.zeros(shape, dtype=np.int64)
    num_skipped = 0
    for j, gallery_view in enumerate(gallery_view_list):
        # Rank the probes of the other views against this view's gallery items only. The stable sort of the
        # column subset keeps ties in gallery-index order, as everywhere else.
        rows = np.flatnonzero(probe_views != gallery_view)
        cols = np.flatnonzero(gallery_views == gallery_view)
        _, same_id = _rank_gallery(dist[np.ix_(rows, cols)], probe_labels[rows], gallery_labels[cols])
        scored, first_hit, ap = _score_queries(same_id, np.ones_like(same_id))
        per_query = {f"rank{k}": (first_hit <= k).astype(np.float64) for k in ranks}
        per_query["mAP"] = ap
        for i, probe_view in enumerate(probe_view_list):
            if probe_view == gallery_view:
                continue
            of_view = probe_views[rows] == probe_view
            selected = of_view & scored
            num_skipped += int((of_view & ~scored).sum())
            counts[i, j] = int(selected.sum())
            if counts[i, j]:
                for name in names:
                    table[name][i, j] = per_query[name][selected].mean()
    per_probe_view = {name: np.array([_nanmean(row) for row in table[name]]) for name in names}
    result = {name: _nanmean(per_probe_view[name]) for name in names}
    result["num_pairs"] = int((counts > 0).sum())
    result["num_queries"] = int(counts.sum())
    result["num_skipped"] = num_skipped
    result["table"] = {"probe_views": probe_view_list.tolist(), "gallery_views": gallery_view_list.tolist(),
                       **table, "num_queries": counts, "per_probe_view": per_probe_view}
    return result


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


def evaluate_retrieval(probe: Mapping, gallery: Mapping, metric: str = "euclidean",
                       ranks: Sequence[int] = (1, 5)) -> dict:
    """Both retrieval flavours from features, overall and per probe condition.

    ``probe`` / ``gallery``: mappings with ``features`` ``(N, D)``, ``labels`` ``(N,)``, optionally ``views``
    ``(N,)`` (needed for the view exclusion and the per-view-pair flavour) and, for the probe, ``conditions``
    ``(N,)`` (e.g. PsyMo: gallery ``nm``, probes ``bg``, ``cl``, ``ph``, ...).

    Returns ``{"all": {"per_query": ..., "per_view_pair": ...}, <condition>: {...}, ...}``: one entry per distinct
    probe condition (sorted) when conditions are given. Without views, ``per_query`` runs without exclusion and
    ``per_view_pair`` is ``None``. The distance matrix is computed once.
    """
    probe, gallery = _retrieval_set(probe, "probe"), _retrieval_set(gallery, "gallery")
    if (probe["views"] is None) != (gallery["views"] is None):
        raise ValueError("give 'views' for both probe and gallery, or for neither")
    dist = distance_matrix(probe["features"], gallery["features"], metric)

    def evaluate(rows: np.ndarray) -> dict:
        probe_views = None if probe["views"] is None else probe["views"][rows]
        args = (dist[rows], probe["labels"][rows], gallery["labels"], probe_views, gallery["views"])
        return {"per_query": retrieval_per_query(*args, ranks=ranks),
                "per_view_pair": None if probe_views is None else retrieval_per_view_pair(*args, ranks=ranks)}

    results = {"all": evaluate(np.arange(len(dist)))}
    if probe["conditions"] is not None:
        for condition in np.unique(probe["conditions"]).tolist():
            if condition == "all":
                raise ValueError("a probe condition may not be called 'all' (the key of the overall result)")
            results[condition] = evaluate(np.flatnonzero(probe["conditions"] == condition))
    return results
