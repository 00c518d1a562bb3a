"""Evaluation metrics: hand-checked cases, published-protocol references on random problems, intervals, errors."""
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bpmt_fast.eval.metrics import (
    PROTOCOLS,
    closed_set_accuracy,
    closed_set_result,
    distance_matrix,
    evaluate_retrieval,
    retrieval_cross_view,
    retrieval_gait3d,
    retrieval_reid,
)
from published_protocols import cross_view_reference, gait3d_reference, reid_reference

def headline(result, ranks=(1, 5, 10)):
    """The scalar figures of a result (no intervals, no tables)."""
    names = [f"rank{k}" for k in ranks] + ["mAP"] + (["mINP"] if "mINP" in result else [])
    return {name: result[name] for name in names}


def flat(result):
    """A result without its table, intervals spread into scalar keys, for ``pytest.approx``."""
    out = {key: value for key, value in result.items() if key not in ("ci95", "table")}
    for name, (low, high) in result["ci95"].items():
        out[f"ci95.{name}.low"], out[f"ci95.{name}.high"] = low, high
    return out


def assert_nan_intervals(result):
    assert set(result["ci95"]) == {"rank1", "mAP"}
    assert all(math.isnan(bound) for interval in result["ci95"].values() for bound in interval)


# ------------------------------------------------------------------------------------------ hand-checked


def test_reid_removes_only_the_probes_own_subject_in_its_own_view():
    # Probe (A, v0); gallery (A, v1) at 0.2, (B, v0) at 0.1, (B, v1) at 0.3. Nothing is the probe's subject in
    # the probe's view, so nothing is removed: order B, A, B -> first match at 2: rank1 0, AP 1/2, INP 1/2.
    # (The old rule removed every v0 item, B's included, and said rank1 1, mAP 1.)
    dist = np.array([[0.2, 0.1, 0.3]])
    result = retrieval_reid(dist, ["A"], ["A", "B", "B"], ["v0"], ["v1", "v0", "v1"])
    assert headline(result) == pytest.approx({"rank1": 0.0, "rank5": 1.0, "rank10": 1.0, "mAP": 0.5, "mINP": 0.5})
    assert (result["protocol"], result["num_probes"], result["num_scored"], result["num_without_match"]) == (
        "reid", 1, 1, 0)
    gait3d = retrieval_gait3d(dist, ["A"], ["A", "B", "B"])
    assert headline(gait3d) == pytest.approx(headline(result)) and gait3d["protocol"] == "gait3d"


def test_reid_drops_the_same_walk_but_gait3d_keeps_it():
    # Add (A, v0) at 0.05: reid removes it (same subject, same camera) and gives the case above again;
    # gait3d ranks it first: matches at 1 and 3 -> rank1 1, AP (1 + 2/3)/2 = 5/6, INP 2/3.
    dist = np.array([[0.05, 0.2, 0.1, 0.3]])
    labels, views = ["A", "A", "B", "B"], ["v0", "v1", "v0", "v1"]
    reid = retrieval_reid(dist, ["A"], labels, ["v0"], views)
    assert (reid["rank1"], reid["mAP"], reid["mINP"]) == pytest.approx((0.0, 0.5, 0.5))
    gait3d = retrieval_gait3d(dist, ["A"], labels)
    assert (gait3d["rank1"], gait3d["mAP"], gait3d["mINP"]) == pytest.approx((1.0, 5 / 6, 2 / 3))


def test_minp_by_hand():
    # Probe A: matches at positions 1 and 4 of five -> INP 2/4, AP (1/1 + 2/4)/2 = 3/4.
    # Probe B: one match at position 3 -> INP 1/3, AP 1/3. mINP = (1/2 + 1/3)/2, mAP = (3/4 + 1/3)/2.
    dist = np.array([[0.1, 0.2, 0.3, 0.4, 0.5],
                     [0.5, 0.4, 0.3, 0.2, 0.1]])
    gallery = ["A", "X", "B", "A", "X"]  # probe B order: X(g4) A(g3) B(g2) ...
    result = retrieval_gait3d(dist, ["A", "B"], gallery, ranks=(1, 3))
    assert result["mINP"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert result["mAP"] == pytest.approx((3 / 4 + 1 / 3) / 2)
    assert (result["rank1"], result["rank3"]) == pytest.approx((0.5, 1.0))


def test_probes_without_a_match_are_left_out_and_counted():
    # q0 = (A, v0): its only gallery match is A at v0, removed by reid -> no match.
    # q1 = (Z, v1): identity absent from the gallery -> no match (for gait3d too).
    # q2 = (B, v0): B at v1 first -> rank1 1, AP 1.
    dist = np.array([[0.0, 0.5, 0.6],
                     [0.2, 0.3, 0.4],
                     [0.9, 0.1, 0.3]])
    args = (dist, ["A", "Z", "B"], ["A", "B", "C"])
    reid = retrieval_reid(*args, ["v0", "v1", "v0"], ["v0", "v1", "v1"])
    assert headline(reid) == pytest.approx({"rank1": 1.0, "rank5": 1.0, "rank10": 1.0, "mAP": 1.0, "mINP": 1.0})
    assert (reid["num_probes"], reid["num_scored"], reid["num_without_match"]) == (3, 1, 2)
    gait3d = retrieval_gait3d(*args)  # q0 now finds A first: two of two scored probes at rank 1
    assert (gait3d["rank1"], gait3d["num_scored"], gait3d["num_without_match"]) == (1.0, 2, 1)


def test_rank_k_counts_positions_among_remaining_items_only():
    # Probe (A, v0): five (A, v0) items nearest (removed), then four impostors, then A in v1: position 5.
    dist = np.arange(10, dtype=float)[None, :]
    labels = ["A"] * 5 + ["X"] * 4 + ["A"]
    views = ["v0"] * 5 + ["v1"] * 5
    result = retrieval_reid(dist, ["A"], labels, ["v0"], views, ranks=(1, 4, 5))
    assert (result["rank1"], result["rank4"], result["rank5"], result["mAP"]) == pytest.approx((0, 0, 1, 0.2))


def test_rank_beyond_the_gallery_counts_a_match_anywhere():
    result = retrieval_gait3d(np.array([[0.3, 0.1]]), ["A"], ["A", "B"], ranks=(1, 2, 50))
    assert (result["rank1"], result["rank2"], result["rank50"]) == (0.0, 1.0, 1.0)


def test_ties_break_by_gallery_index():
    dist = np.array([[0.2, 0.2]])
    assert retrieval_gait3d(dist, ["A"], ["B", "A"])["mAP"] == 0.5  # match second
    assert retrieval_gait3d(dist, ["A"], ["A", "B"])["mAP"] == 1.0  # match first
    assert retrieval_reid(dist, ["A"], ["B", "A"], ["v0"], ["v1", "v1"])["rank1"] == 0.0
    assert retrieval_cross_view(dist, ["A"], ["B", "A"], ["v0"], ["v1", "v1"])["rank1"] == 0.0
    # A larger tie block (where an unstable sort reorders): 32 items at distance 0, the match the last of them.
    dist = np.ones((1, 64))
    dist[0, 1::2] = 0.0
    labels = ["B"] * 63 + ["A"]
    assert retrieval_gait3d(dist, ["A"], labels)["mAP"] == 1 / 32
    assert retrieval_cross_view(dist, ["A"], labels, ["v0"], ["v1"] * 64)["mAP"] == 1 / 32


def test_cross_view_counts_probes_without_a_match_in_a_gallery_view_as_misses():
    # Views v0 (probes A, B), v1 (gallery A), v2 (gallery A, B).
    #   cell (v0, v1): A finds A; B has no B in v1 -> a miss: 1/2 (the old rule skipped B: 1/1)
    #   cell (v0, v2): A finds A first (0.2 < 0.4); B sees A (0.3) before B (0.5): 1/2
    #   de_diag: (1/2 + 1/2) / 2 = 0.50 (the old rule: mean(1, 1/2) = 0.75).
    # rank5: cells 1/2 and 2/2 -> 0.75. mAP: cell (v0, v1) scores A only: 1; cell (v0, v2): (1 + 1/2)/2 -> 0.875.
    dist = np.array([[0.1, 0.2, 0.4],
                     [0.3, 0.3, 0.5]])
    result = retrieval_cross_view(dist, ["A", "B"], ["A", "A", "B"], ["v0", "v0"], ["v1", "v2", "v2"])
    assert result["rank1"] == pytest.approx(0.50)
    assert (result["rank5"], result["mAP"]) == pytest.approx((0.75, 0.875))
    assert (result["protocol"], result["num_probes"], result["num_views"]) == ("cross-view", 2, 3)
    table = result["table"]
    assert table["views"] == ["v0", "v1", "v2"]
    nan = np.nan
    np.testing.assert_allclose(table["rank1"], [[nan, 0.5, 0.5], [nan, nan, nan], [nan, nan, nan]])
    np.testing.assert_allclose(table["mAP"], [[nan, 1.0, 0.75], [nan, nan, nan], [nan, nan, nan]])
    np.testing.assert_array_equal(table["num_probes"], [[0, 2, 2], [0, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(table["num_scored"], [[0, 1, 2], [0, 0, 0], [0, 0, 0]])
    np.testing.assert_allclose(table["per_probe_view"]["rank1"], [0.5, nan, nan])


def test_cross_view_empty_gallery_view_scores_zero_and_counts_in_the_divisor():
    # Probes (A, v0), (A, v1); gallery (A, v1) only. Cell (v0, v1): 1. Cell (v1, v0): nothing to rank -> 0.
    # Per probe view: v0 1/1, v1 0/1 -> rank1 0.5. mAP: cell (v1, v0) has no scorable probe -> NaN, skipped -> 1.
    result = retrieval_cross_view(np.array([[0.1], [0.2]]), ["A", "A"], ["A"], ["v0", "v1"], ["v1"])
    assert (result["rank1"], result["mAP"]) == (0.5, 1.0)
    np.testing.assert_allclose(result["table"]["per_probe_view"]["rank1"], [1.0, 0.0])
    np.testing.assert_allclose(result["table"]["per_probe_view"]["mAP"], [1.0, np.nan])


def test_cross_view_weights_probe_views_equally():
    # 3 identities x 2 views. q0 = (A, v0), q1 = (B, v1), q2 = (C, v0).
    #   (v0 -> v1): q0 order g3(B) g1(A) g5 -> miss; q2 order g1 g3 g5(C) -> miss: 0; mAP (1/2 + 1/3)/2 = 5/12
    #   (v1 -> v0): q1 order g2(B) g0 g4 -> hit: 1; mAP 1
    # cross-view: rank1 (0 + 1)/2 = 1/2, mAP (5/12 + 1)/2 = 17/24.
    # reid ranks the whole gallery less each probe's own walk (q0: g0, q1: g3, q2: g4 removed):
    #   q0 order g3 g2 g4 g1(A) -> AP 1/4; q1 order g1 g2(B) -> AP 1/2; q2 order g1 g0 g2 g3 g5(C) -> AP 1/5
    #   -> rank1 0, mAP (1/4 + 1/2 + 1/5)/3 = 19/60.
    dist = np.array([[0.1, 0.5, 0.3, 0.2, 0.4, 0.6],
                     [0.3, 0.1, 0.2, 0.05, 0.4, 0.6],
                     [0.2, 0.1, 0.3, 0.4, 0.5, 0.9]])
    args = (dist, ["A", "B", "C"], ["A", "A", "B", "B", "C", "C"], ["v0", "v1", "v0"], ["v0", "v1"] * 3)
    cross = retrieval_cross_view(*args)
    assert (cross["rank1"], cross["mAP"]) == pytest.approx((0.5, 17 / 24))
    np.testing.assert_allclose(cross["table"]["mAP"], [[np.nan, 5 / 12], [1.0, np.nan]])
    reid = retrieval_reid(*args)
    assert (reid["rank1"], reid["mAP"]) == pytest.approx((0.0, 19 / 60))


def test_cross_view_with_a_single_view_is_nan():
    result = retrieval_cross_view(np.array([[0.1]]), ["A"], ["A"], ["v0"], ["v0"])
    assert math.isnan(result["rank1"]) and math.isnan(result["mAP"]) and result["num_views"] == 1
    assert_nan_intervals(result)


# ------------------------------------------------------------------------------------------- intervals


def test_closed_set_result_wilson_interval():
    result = closed_set_result([1] * 8 + [0] * 2, [1] * 10)
    assert (result["accuracy"], result["num_sequences"]) == (0.8, 10)
    assert result["ci95"] == pytest.approx([0.4902, 0.9433], abs=1e-4)
    perfect = closed_set_result(np.eye(3), [0, 1, 2])
    assert perfect["accuracy"] == 1.0 and perfect["ci95"] == pytest.approx([0.4385, 1.0], abs=1e-4)
    json.dumps(result)


def test_bootstrap_interval_contains_the_estimate_and_is_deterministic():
    rng = np.random.default_rng(3)
    dist = rng.random((40, 30))
    args = (dist, rng.integers(0, 6, 40), rng.integers(0, 6, 30), rng.integers(0, 3, 40), rng.integers(0, 3, 30))
    for result in (retrieval_reid(*args), retrieval_gait3d(*args[:3]), retrieval_cross_view(*args)):
        for name in ("rank1", "mAP"):
            low, high = result["ci95"][name]
            assert low <= result[name] <= high and low < high, (result["protocol"], name)
    assert retrieval_reid(*args)["ci95"] == retrieval_reid(*args)["ci95"]
    assert retrieval_cross_view(*args)["ci95"] == retrieval_cross_view(*args)["ci95"]


def test_bootstrap_is_nan_without_scorable_probes():
    no_match = retrieval_gait3d(np.array([[0.1, 0.2]]), ["Z"], ["A", "B"])
    assert no_match["num_scored"] == 0 and math.isnan(no_match["rank1"])
    assert_nan_intervals(no_match)
    same_walk_only = retrieval_reid(np.array([[0.1]]), ["A"], ["A"], ["v0"], ["v0"])
    assert_nan_intervals(same_walk_only)
    no_probes = retrieval_gait3d(np.zeros((0, 2)), [], ["A", "B"])
    assert no_probes["num_probes"] == 0
    assert_nan_intervals(no_probes)


def _resampled_reference_interval(reference, draws, name):
    """The documented bootstrap, restated: the reference figure on each resample of the probes, NaNs dropped."""
    figures = [reference(rows)[name] for rows in draws]
    return np.percentile([f for f in figures if not math.isnan(f)], [2.5, 97.5]).tolist()


def test_bootstrap_matches_resampling_the_probes_through_the_reference():
    rng = np.random.default_rng(5)
    num_probes, num_gallery = 7, 9
    dist = rng.random((num_probes, num_gallery))
    labels_p, labels_g = rng.integers(0, 4, num_probes), rng.integers(0, 3, num_gallery)
    views_p, views_g = rng.integers(0, 3, num_probes), rng.integers(0, 3, num_gallery)
    draws = np.random.default_rng(0).integers(0, num_probes, size=(1000, num_probes))
    reid = retrieval_reid(dist, labels_p, labels_g, views_p, views_g, ranks=(1,))
    cross = retrieval_cross_view(dist, labels_p, labels_g, views_p, views_g, ranks=(1,))
    views = cross["table"]["views"]

    def reid_on(rows):
        return reid_reference(dist[rows], labels_p[rows], labels_g, views_p[rows], views_g, ranks=(1,))

    def cross_on(rows):
        return cross_view_reference(dist[rows], labels_p[rows], labels_g, views_p[rows], views_g, (1,), views)

    for name in ("rank1", "mAP"):
        assert reid["ci95"][name] == pytest.approx(_resampled_reference_interval(reid_on, draws, name))
        assert cross["ci95"][name] == pytest.approx(_resampled_reference_interval(cross_on, draws, name))


# ---------------------------------------------------------------------------- published references, random


@st.composite
def problems(draw):
    num_probes, num_gallery = draw(st.integers(1, 7)), draw(st.integers(1, 9))
    flat = draw(st.permutations(range(num_probes * num_gallery)))  # distinct distances: no ties
    dist = np.array(flat, dtype=float).reshape(num_probes, num_gallery) / 7.0
    probe_ids, gallery_ids = st.integers(0, 3), st.integers(0, 2)  # identity 3: never in the gallery
    views = st.sampled_from(["a", "b", "c", "d"])

    def column(strategy, size):
        return np.array(draw(st.lists(strategy, min_size=size, max_size=size)))

    return (dist, column(probe_ids, num_probes), column(gallery_ids, num_gallery), column(views, num_probes),
            column(views, num_gallery), draw(st.randoms(use_true_random=False)))


def _assert_cross_view_equal(result, reference):
    assert headline(result) == pytest.approx({name: reference[name] for name in headline(result)}, nan_ok=True)
    table = result["table"]
    assert table["views"] == reference["views"]
    for name, expected in reference["tables"].items():
        np.testing.assert_allclose(table[name], expected, err_msg=name)
        np.testing.assert_allclose(table["per_probe_view"][name], reference["per_probe_view"][name], err_msg=name)


@settings(max_examples=150, deadline=None)
@given(problems())
def test_protocols_match_the_published_references(problem):
    dist, probe_labels, gallery_labels, probe_views, gallery_views, random = problem
    args = (dist, probe_labels, gallery_labels, probe_views, gallery_views)
    reid, gait3d, cross = retrieval_reid(*args), retrieval_gait3d(*args[:3]), retrieval_cross_view(*args)
    counts = ("num_probes", "num_scored", "num_without_match")
    reid_expected = reid_reference(*args)
    assert {key: reid[key] for key in reid_expected} == pytest.approx(reid_expected, nan_ok=True)
    gait3d_expected = gait3d_reference(*args[:3])
    assert {key: gait3d[key] for key in gait3d_expected} == pytest.approx(gait3d_expected, nan_ok=True)
    assert all(isinstance(reid[key], int) for key in counts)
    _assert_cross_view_equal(cross, cross_view_reference(*args))

    # Permuting the gallery (columns, labels and views together) changes nothing when there are no ties.
    perm = list(range(dist.shape[1]))
    random.shuffle(perm)
    permuted = (dist[:, perm], probe_labels, gallery_labels[perm], probe_views, gallery_views[perm])
    assert flat(retrieval_reid(*permuted)) == pytest.approx(flat(reid), nan_ok=True)
    assert flat(retrieval_gait3d(*permuted[:3])) == pytest.approx(flat(gait3d), nan_ok=True)
    cross_permuted = retrieval_cross_view(*permuted)
    assert flat(cross_permuted) == pytest.approx(flat(cross), nan_ok=True)
    _assert_cross_view_equal(cross_permuted, cross_view_reference(*args))


# ---------------------------------------------------------------------------------------- convenience


GALLERY = {"features": [[0.0], [0.0], [10.0], [10.0]], "labels": ["A", "A", "B", "B"],
           "views": ["v0", "v1", "v0", "v1"]}


def test_evaluate_retrieval_per_condition():
    # 1-D features. Gallery: A = 0 and B = 10, each in views v0 and v1.
    # bg probe: A at v0, feature 0.1 -> A items (0.1 away) before B: rank1 1 under every protocol.
    # cl probe: A at v2, feature 9.0 -> both B (1 away) before both A (9 away): rank1 0, AP (1/3 + 2/4)/2 = 5/12.
    # reid removes the bg probe's (A, v0) item; its A at v1 still comes first: AP 1.
    probe = {"features": torch.tensor([[0.1], [9.0]]), "labels": ["A", "A"], "views": ["v0", "v2"],
             "conditions": ["bg", "cl"]}
    results = evaluate_retrieval(probe, GALLERY, protocols=PROTOCOLS)
    assert list(results) == ["all", "bg", "cl"] and all(set(r) == set(PROTOCOLS) for r in results.values())
    assert results["bg"]["reid"]["rank1"] == 1.0 and results["cl"]["reid"]["rank1"] == 0.0
    assert results["cl"]["gait3d"]["mAP"] == pytest.approx(5 / 12)
    assert (results["all"]["reid"]["rank1"], results["all"]["reid"]["mAP"]) == pytest.approx((0.5, 17 / 24))
    # Every condition sees the whole view list {v0, v1, v2}: bg's row (v0) divides by 2, with an empty (v0, v2)
    # gallery cell scoring 0 -> (1 + 0)/2; the cl probe (v2) misses both cells -> 0.
    assert results["bg"]["cross-view"]["num_views"] == 3
    assert results["bg"]["cross-view"]["rank1"] == pytest.approx(0.5)
    assert results["all"]["cross-view"]["rank1"] == pytest.approx(0.25)
    # The distance metric is passed through; ranks reach every protocol.
    cosine = evaluate_retrieval(probe, GALLERY, protocols="gait3d", metric="cosine", ranks=(1, 2))
    assert set(cosine["all"]["gait3d"]) >= {"rank1", "rank2"} and "rank5" not in cosine["all"]["gait3d"]
    # JSON-friendly once the tables are lists.
    cross = results["all"]["cross-view"]
    table = {key: (value.tolist() if isinstance(value, np.ndarray) else value) for key, value in cross["table"].items()}
    table["per_probe_view"] = {key: value.tolist() for key, value in table["per_probe_view"].items()}
    json.dumps({**results["all"]["reid"], **results["all"]["gait3d"], **{**cross, "table": table}})


def test_evaluate_retrieval_without_views_runs_gait3d_only():
    probe = {"features": [[9.0]], "labels": ["A"]}
    gallery = {key: value for key, value in GALLERY.items() if key != "views"}
    assert evaluate_retrieval(probe, gallery, protocols=("gait3d",))["all"]["gait3d"]["rank1"] == 0.0
    for name in ("reid", "cross-view"):
        with pytest.raises(ValueError, match=f"'{name}' protocol needs 'views'"):
            evaluate_retrieval(probe, gallery, protocols=("gait3d", name))
    with pytest.raises(ValueError, match="needs 'views'"):
        evaluate_retrieval(probe, GALLERY)  # the default reid protocol, views on one side only


def test_evaluate_retrieval_errors():
    probe = {"features": [[0.0]], "labels": ["A"], "views": ["v0"]}
    with pytest.raises(ValueError, match=r"unknown protocol.*'reid', 'gait3d', 'cross-view'"):
        evaluate_retrieval(probe, GALLERY, protocols=("per_query",))
    with pytest.raises(ValueError, match="'all'"):
        evaluate_retrieval({**probe, "conditions": ["all"]}, GALLERY)
    with pytest.raises(ValueError, match="missing"):
        evaluate_retrieval({"features": [[0.0]]}, GALLERY)
    with pytest.raises(ValueError, match="ranks"):
        evaluate_retrieval(probe, GALLERY, ranks=(0,))


def test_input_errors():
    with pytest.raises(ValueError, match="NaN"):
        retrieval_gait3d(np.array([[np.nan]]), ["A"], ["A"])
    with pytest.raises(ValueError, match="gallery_labels"):
        retrieval_gait3d(np.zeros((1, 2)), ["A"], ["A"])
    with pytest.raises(ValueError, match="probe_views"):
        retrieval_reid(np.zeros((1, 1)), ["A"], ["A"], ["v0", "v1"], ["v0"])
    for fn in (retrieval_reid, retrieval_cross_view):
        with pytest.raises(ValueError, match="needs probe_views and gallery_views"):
            fn(np.zeros((1, 1)), ["A"], ["A"], ["v0"], None)
    with pytest.raises(ValueError, match="ranks"):
        retrieval_gait3d(np.zeros((1, 1)), ["A"], ["A"], ranks=(0,))
    with pytest.raises(ValueError, match="lacks"):
        retrieval_cross_view(np.zeros((1, 1)), ["A"], ["A"], ["v0"], ["v1"], views=["v0"])


# ------------------------------------------------------------------------------------------ classification


def test_closed_set_accuracy():
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [5.0, 1.0]])  # predictions 0, 1, 0
    assert closed_set_accuracy(logits, [0, 1, 1]) == pytest.approx(2 / 3)
    assert closed_set_accuracy(torch.tensor(logits), torch.tensor([0, 1, 0])) == 1.0
    assert closed_set_accuracy([3, 1, 2, 2], [3, 0, 2, 1]) == 0.5
    with pytest.raises(ValueError, match="entries"):
        closed_set_accuracy(logits, [0, 1])
    with pytest.raises(ValueError, match="empty"):
        closed_set_accuracy(np.zeros(0), np.zeros(0))


def test_distance_matrix_matches_brute_force():
    rng = np.random.default_rng(1)
    probe, gallery = rng.normal(size=(4, 6)), rng.normal(size=(7, 6))
    euclid = distance_matrix(probe, gallery)
    np.testing.assert_allclose(euclid, np.linalg.norm(probe[:, None] - gallery[None], axis=-1), atol=1e-9)
    cosine = distance_matrix(torch.tensor(probe), torch.tensor(gallery), metric="cosine")
    expected = 1 - (probe @ gallery.T) / np.outer(np.linalg.norm(probe, axis=1), np.linalg.norm(gallery, axis=1))
    np.testing.assert_allclose(cosine, expected, atol=1e-12)
    assert distance_matrix(probe, probe).diagonal() == pytest.approx(np.zeros(4), abs=1e-6)
    with pytest.raises(ValueError, match="unknown metric"):
        distance_matrix(probe, gallery, metric="manhattan")
    with pytest.raises(ValueError, match=r"\(P, D\)"):
        distance_matrix(probe, gallery[:, :3])
