"""Test-only restatement of the published retrieval protocols, one probe at a time, in plain Python.

Written from the definitions (torchreid ``eval_market1501`` / OpenGait ``evaluate_many`` for reid, Gait3D-Benchmark
``evaluate_rank`` for gait3d, OpenGait ``single_view_gallery_evaluation`` + ``de_diag`` for cross-view, Ye et al.
TPAMI 2021 for INP), not from ``bpmt_fast.eval.metrics``: sort, remove, count. Slow on purpose; only for tests.
Ties are broken by gallery index, the documented rule of the library.
"""
import math

import numpy as np


def ranked_matches(distances, probe_label, gallery_labels, kept):
    """True / False per kept gallery item, nearest first: is it the probe's identity?"""
    order = sorted(kept, key=lambda g: (distances[g], g))
    return [gallery_labels[g] == probe_label for g in order]


def average_precision(matches):
    """Mean, over the correct matches, of the precision of the list cut just after each of them."""
    found, precisions = 0, []
    for position, is_match in enumerate(matches, start=1):
        if is_match:
            found += 1
            precisions.append(found / position)
    return sum(precisions) / len(precisions)


def inverse_negative_penalty(matches):
    """INP: number of correct matches / position of the last (hardest) one."""
    last = max(position for position, is_match in enumerate(matches, start=1) if is_match)
    return sum(matches) / last


def found_within(matches, k):
    return any(matches[:k])


def mean(values):
    return sum(values) / len(values) if values else math.nan


def single_gallery_reference(dist, probe_labels, gallery_labels, removed, ranks=(1, 5, 10)):
    """Shared by reid and gait3d: ``removed(q, g)`` says whether gallery item g is taken out for probe q."""
    per_rank = {k: [] for k in ranks}
    aps, inps, without_match = [], [], 0
    for q in range(len(probe_labels)):
        kept = [g for g in range(len(gallery_labels)) if not removed(q, g)]
        matches = ranked_matches(dist[q], probe_labels[q], gallery_labels, kept)
        if not any(matches):  # the published evaluations skip such probes
            without_match += 1
            continue
        for k in ranks:
            per_rank[k].append(1.0 if found_within(matches, k) else 0.0)
        aps.append(average_precision(matches))
        inps.append(inverse_negative_penalty(matches))
    result = {f"rank{k}": mean(per_rank[k]) for k in ranks}
    result.update(mAP=mean(aps), mINP=mean(inps), num_probes=len(probe_labels), num_scored=len(aps),
                  num_without_match=without_match)
    return result


def reid_reference(dist, probe_labels, gallery_labels, probe_views, gallery_views, ranks=(1, 5, 10)):
    """Re-ID evaluation: remove gallery items of the probe's subject seen by the probe's camera."""
    def same_subject_same_camera(q, g):
        return gallery_labels[g] == probe_labels[q] and gallery_views[g] == probe_views[q]

    return single_gallery_reference(dist, probe_labels, gallery_labels, same_subject_same_camera, ranks)


def gait3d_reference(dist, probe_labels, gallery_labels, ranks=(1, 5, 10)):
    """Gait3D evaluation: the whole gallery, nothing removed."""
    return single_gallery_reference(dist, probe_labels, gallery_labels, lambda q, g: False, ranks)


def cell_accuracy(dist, probe_labels, gallery_labels, probes, gallery, k):
    """OpenGait's per-cell accuracy: probes whose identity is among their k nearest cell gallery items, divided by
    the number of probes (a probe without a match in the cell is a miss; an empty cell gallery scores 0)."""
    correct = 0
    for q in probes:
        matches = ranked_matches(dist[q], probe_labels[q], gallery_labels, gallery)
        correct += found_within(matches, k)
    return correct / len(probes)


def cell_map(dist, probe_labels, gallery_labels, probes, gallery):
    """Mean AP over the probes with a correct match in the cell's gallery; NaN when there is none."""
    aps = []
    for q in probes:
        matches = ranked_matches(dist[q], probe_labels[q], gallery_labels, gallery)
        if any(matches):
            aps.append(average_precision(matches))
    return mean(aps)


def de_diag(row, own):
    """Sum of a probe view's cells except its own view, divided by (number of views - 1)."""
    return sum(value for j, value in enumerate(row) if j != own) / (len(row) - 1)


def cross_view_reference(dist, probe_labels, gallery_labels, probe_views, gallery_views, ranks=(1, 5, 10),
                         views=None):
    """CASIA-B single-view-gallery evaluation; returns the overall figures, the tables and per-probe-view values."""
    views = sorted(set(probe_views) | set(gallery_views)) if views is None else sorted(views)
    size = len(views)
    tables = {name: np.full((size, size), np.nan) for name in [f"rank{k}" for k in ranks] + ["mAP"]}
    per_view = {name: np.full(size, np.nan) for name in tables}
    for i, probe_view in enumerate(views):
        probes = [q for q in range(len(probe_labels)) if probe_views[q] == probe_view]
        if not probes:
            continue
        for j, gallery_view in enumerate(views):
            if i == j:
                continue
            gallery = [g for g in range(len(gallery_labels)) if gallery_views[g] == gallery_view]
            for k in ranks:
                tables[f"rank{k}"][i, j] = cell_accuracy(dist, probe_labels, gallery_labels, probes, gallery, k)
            tables["mAP"][i, j] = cell_map(dist, probe_labels, gallery_labels, probes, gallery)
        if size > 1:
            for k in ranks:
                per_view[f"rank{k}"][i] = de_diag(tables[f"rank{k}"][i], i)
        per_view["mAP"][i] = mean([value for j, value in enumerate(tables["mAP"][i]) if j != i
                                   and not math.isnan(value)])
    result = {name: mean([value for value in per_view[name] if not math.isnan(value)]) for name in tables}
    result.update(views=views, tables=tables, per_probe_view=per_view)
    return result
