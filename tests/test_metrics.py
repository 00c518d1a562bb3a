"""Evaluation metrics: hand-checked tiny galleries, both retrieval flavours, ties, skips, properties."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bpmt_fast.eval.metrics import (
    closed_set_accuracy,
    distance_matrix,
    evaluate_retrieval,
    retrieval_per_query,
    retrieval_per_view_pair,
)

# 3 identities x 2 views. Gallery columns: g0=(A,v0) g1=(A,v1) g2=(B,v0) g3=(B,v1) g4=(C,v0) g5=(C,v1).
GALLERY_LABELS = ["A", "A", "B", "B", "C", "C"]
GALLERY_VIEWS = ["v0", "v1", "v0", "v1", "v0", "v1"]
PROBE_LABELS = ["A", "B", "C"]
PROBE_VIEWS = ["v0", "v1", "v0"]
DIST = np.array([
    [0.1, 0.5, 0.3, 0.2, 0.4, 0.6],   # q0 = (A, v0)
    [0.3, 0.1, 0.2, 0.05, 0.4, 0.6],  # q1 = (B, v1)
    [0.2, 0.1, 0.3, 0.4, 0.5, 0.9],   # q2 = (C, v0)
])


def test_identical_view_exclusion_changes_the_answer():
    # Without exclusion:
    #   q0 order g0(A) g3 g2 g4 g1(A) g5 -> hits at 1, 5: rank1 1, AP (1/1 + 2/5)/2 = 0.7
    #   q1 order g3(B) g1 g2(B) g0 g4 g5 -> hits at 1, 3: rank1 1, AP (1 + 2/3)/2 = 5/6
    #   q2 order g1 g0 g2 g3 g4(C) g5(C) -> hits at 5, 6: rank1 0, AP (1/5 + 2/6)/2 = 4/15
    #   rank1 = 2/3, rank5 = 1, mAP = (0.7 + 5/6 + 4/15)/3 = 0.6
    plain = retrieval_per_query(DIST, PROBE_LABELS, GALLERY_LABELS)
    assert plain["rank1"] == pytest.approx(2 / 3)
    assert plain["rank5"] == pytest.approx(1.0)
    assert plain["mAP"] == pytest.approx(0.6)
    # With the query's view removed:
    #   q0 (v0) keeps g1 g3 g5: order g3(.2,B) g1(.5,A) g5 -> hit at 2: rank1 0, AP 1/2
    #   q1 (v1) keeps g0 g2 g4: order g2(.2,B) g0 g4       -> hit at 1: rank1 1, AP 1
    #   q2 (v0) keeps g1 g3 g5: order g1 g3 g5(C)          -> hit at 3: rank1 0, AP 1/3
    #   rank1 = 1/3, rank5 = 1, mAP = (1/2 + 1 + 1/3)/3 = 11/18
    masked = retrieval_per_query(DIST, PROBE_LABELS, GALLERY_LABELS, PROBE_VIEWS, GALLERY_VIEWS)
    assert masked == pytest.approx({"rank1": 1 / 3, "rank5": 1.0, "mAP": 11 / 18, "num_queries": 3,
                                    "num_skipped": 0})


def test_per_view_pair_table_on_two_views():
    # Same data: cell (v0 -> v1) averages q0 and q2: rank1 (0 + 0)/2 = 0, mAP (1/2 + 1/3)/2 = 5/12;
    # cell (v1 -> v0) is q1 alone: rank1 1, mAP 1. Mean over probe views: rank1 1/2, mAP (5/12 + 1)/2 = 17/24.
    # (The per-query flavour gives 1/3 and 11/18: it weights the two v0 probes twice.)
    result = retrieval_per_view_pair(DIST, PROBE_LABELS, GALLERY_LABELS, PROBE_VIEWS, GALLERY_VIEWS)
    assert result["rank1"] == pytest.approx(0.5)
    assert result["rank5"] == pytest.approx(1.0)
    assert result["mAP"] == pytest.approx(17 / 24)
    assert (result["num_pairs"], result["num_queries"], result["num_skipped"]) == (2, 3, 0)
    table = result["table"]
    assert table["probe_views"] == ["v0", "v1"] and table["gallery_views"] == ["v0", "v1"]
    np.testing.assert_allclose(table["rank1"], [[np.nan, 0.0], [1.0, np.nan]])
    np.testing.assert_allclose(table["mAP"], [[np.nan, 5 / 12], [1.0, np.nan]])
    np.testing.assert_array_equal(table["num_queries"], [[0, 2], [1, 0]])
    np.testing.assert_allclose(table["per_probe_view"]["rank1"], [0.0, 1.0])


def test_flavours_differ_on_a_case_built_to_separate_them():
    # One query (A, v0); gallery over two other views:
    #   g0 = (A, v1) d .5, g1 = (B, v1) d .1, g2 = (A, v2) d .2, g3 = (B, v2) d .3
    # Per query (nothing of v0 to remove): order g1(B) g2(A) g3(B) g0(A): hits at 2, 4
    #   -> rank1 0, rank5 1, AP (1/2 + 2/4)/2 = 1/2.
    # Per view pair: (v0 -> v1) order g1(B) g0(A): hit at 2 -> rank1 0, AP 1/2
    #                (v0 -> v2) order g2(A) g3(B): hit at 1 -> rank1 1, AP 1
    #   -> probe view v0: rank1 1/2, mAP 3/4; overall the same (one probe view).
    dist = np.array([[0.5, 0.1, 0.2, 0.3]])
    args = (dist, ["A"], ["A", "B", "A", "B"], ["v0"], ["v1", "v1", "v2", "v2"])
    per_query = retrieval_per_query(*args)
    per_pair = retrieval_per_view_pair(*args)
    assert (per_query["rank1"], per_query["rank5"], per_query["mAP"]) == pytest.approx((0.0, 1.0, 0.5))
    assert (per_pair["rank1"], per_pair["rank5"], per_pair["mAP"]) == pytest.approx((0.5, 1.0, 0.75))
    assert per_pair["table"]["probe_views"] == ["v0"] and per_pair["table"]["gallery_views"] == ["v1", "v2"]
    np.testing.assert_allclose(per_pair["table"]["rank1"], [[0.0, 1.0]])
    assert per_pair["num_pairs"] == 2 and per_pair["num_queries"] == 2


def test_ties_break_by_gallery_index():
    # Equal distances: the stable sort puts the lower gallery index first.
    dist = np.array([[0.2, 0.2]])
    impostor_first = retrieval_per_query(dist, ["A"], ["B", "A"], ["v0"], ["v1", "v1"])
    assert (impostor_first["rank1"], impostor_first["mAP"]) == (0.0, 0.5)  # hit at position 2
    match_first = retrieval_per_query(dist, ["A"], ["A", "B"], ["v0"], ["v1", "v1"])
    assert (match_first["rank1"], match_first["mAP"]) == (1.0, 1.0)
    pair = retrieval_per_view_pair(dist, ["A"], ["B", "A"], ["v0"], ["v1", "v1"])
    assert (pair["rank1"], pair["mAP"]) == (0.0, 0.5)


def test_query_without_valid_match_is_skipped_and_counted():
    # q0 = (A, v0): its only gallery match is in v0 -> removed -> skipped.
    # q1 = (Z, v1): identity absent from the gallery -> skipped.
    # q2 = (B, v0): order over v1 items g1(B, .1) g2(C, .3) -> rank1 1, AP 1.
    dist = np.array([[0.0, 0.5, 0.6],
                     [0.2, 0.3, 0.4],
                     [0.9, 0.1, 0.3]])
    args = (dist, ["A", "Z", "B"], ["A", "B", "C"], ["v0", "v1", "v0"], ["v0", "v1", "v1"])
    result = retrieval_per_query(*args)
    assert result == pytest.approx({"rank1": 1.0, "rank5": 1.0, "mAP": 1.0, "num_queries": 1, "num_skipped": 2})
    pair = retrieval_per_view_pair(*args)
    # (v0 -> v1): q0 has no A in v1 (skipped), q2 scores 1. (v1 -> v0): q1 skipped -> undefined cell.
    assert pair["rank1"] == 1.0 and pair["num_skipped"] == 2 and pair["num_pairs"] == 1
    assert math.isnan(pair["table"]["rank1"][1, 0])


def test_everything_skipped_gives_nan_not_an_error():
    result = retrieval_per_query(np.array([[0.1]]), ["A"], ["A"], ["v0"], ["v0"])
    assert result["num_queries"] == 0 and result["num_skipped"] == 1
    assert math.isnan(result["rank1"]) and math.isnan(result["mAP"])


def test_map_of_a_perfect_ranking_is_one():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=12)
    views = np.arange(12) % 3
    probe_labels, probe_views = rng.integers(0, 4, size=5), np.array([0, 1, 2, 0, 1])
    dist = np.where(probe_labels[:, None] == labels[None, :], 0.1, 1.0) + rng.uniform(0, 0.01, (5, 12))
    for fn in (retrieval_per_query, retrieval_per_view_pair):
        result = fn(dist, probe_labels, labels, probe_views, views)
        assert result["mAP"] == pytest.approx(1.0) and result["rank1"] == pytest.approx(1.0)


def test_rank_k_counts_positions_among_remaining_items_only():
    # Query (A, v0); gallery: five v0 impostors nearest (removed), then 4 v1 impostors, then A in v1.
    # Among the remaining items A is at position 5: rank1 0, rank5 1, AP 1/5.
    dist = np.arange(10, dtype=float)[None, :]
    labels = ["X"] * 9 + ["A"]
    views = ["v0"] * 5 + ["v1"] * 5
    result = retrieval_per_query(dist, ["A"], labels, ["v0"], views, ranks=(1, 4, 5))
    assert (result["rank1"], result["rank4"], result["rank5"], result["mAP"]) == pytest.approx((0, 0, 1, 0.2))


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


def test_input_errors():
    with pytest.raises(ValueError, match="NaN"):
        retrieval_per_query(np.array([[np.nan]]), ["A"], ["A"])
    with pytest.raises(ValueError, match="gallery_labels"):
        retrieval_per_query(np.zeros((1, 2)), ["A"], ["A"])
    with pytest.raises(ValueError, match="both"):
        retrieval_per_query(np.zeros((1, 1)), ["A"], ["A"], probe_views=["v0"])
    with pytest.raises(ValueError, match="needs"):
        retrieval_per_view_pair(np.zeros((1, 1)), ["A"], ["A"], None, None)
    with pytest.raises(ValueError, match="ranks"):
        retrieval_per_query(np.zeros((1, 1)), ["A"], ["A"], ranks=(0,))


def test_evaluate_retrieval_per_condition():
    # 1-D features. Gallery (nm): A = 0 and B = 10, each in views v0 and v1.
    # bg probe: A at v0, feature 0.1 -> v1 gallery: A (0.1 away) before B -> rank1 1.
    # cl probe: A at v1, feature 9.0 -> v0 gallery: B (1 away) before A (9 away) -> rank1 0, AP 1/2.
    gallery = {"features": [[0.0], [0.0], [10.0], [10.0]], "labels": ["A", "A", "B", "B"],
               "views": ["v0", "v1", "v0", "v1"]}
    probe = {"features": torch.tensor([[0.1], [9.0]]), "labels": ["A", "A"], "views": ["v0", "v1"],
             "conditions": ["bg", "cl"]}
    results = evaluate_retrieval(probe, gallery)
    assert set(results) == {"all", "bg", "cl"}
    assert results["bg"]["per_query"]["rank1"] == 1.0 and results["cl"]["per_query"]["rank1"] == 0.0
    assert results["cl"]["per_query"]["mAP"] == pytest.approx(0.5)
    assert results["all"]["per_query"]["rank1"] == pytest.approx(0.5)
    assert results["all"]["per_query"]["mAP"] == pytest.approx(0.75)
    assert results["all"]["per_view_pair"]["rank1"] == pytest.approx(0.5)  # (v0->v1) 1, (v1->v0) 0
    # Without views: no exclusion (cl probe still ranks B first), no per-view-pair flavour.
    no_views = evaluate_retrieval({k: v for k, v in probe.items() if k != "views"},
                                  {k: v for k, v in gallery.items() if k != "views"})
    assert no_views["all"]["per_view_pair"] is None
    assert no_views["cl"]["per_query"]["rank1"] == 0.0
    with pytest.raises(ValueError, match="missing"):
        evaluate_retrieval({"features": [[0.0]]}, gallery)


# ------------------------------------------------------------------------------------------- properties


def _reference_per_query(dist, probe_labels, gallery_labels, probe_views, gallery_views, ks=(1, 5)):
    """Loop-per-query reference, written independently of the vectorised code."""
    hits_at = {k: [] for k in ks}
    aps = []
    for q in range(dist.shape[0]):
        keep = [g for g in range(dist.shape[1]) if gallery_views[g] != probe_views[q]]
        keep.sort(key=lambda g: (dist[q, g], g))
        relevant = [gallery_labels[g] == probe_labels[q] for g in keep]
        if not any(relevant):
            continue
        positions = [i + 1 for i, r in enumerate(relevant) if r]
        for k in ks:
            hits_at[k].append(positions[0] <= k)
        aps.append(np.mean([(n + 1) / p for n, p in enumerate(positions)]))
    return {f"rank{k}": np.mean(hits_at[k]) if aps else np.nan for k in ks} | {
        "mAP": np.mean(aps) if aps else np.nan, "num_queries": len(aps)}


@st.composite
def problems(draw):
    num_probes, num_gallery = draw(st.integers(1, 6)), draw(st.integers(1, 9))
    flat = draw(st.permutations(range(num_probes * num_gallery)))  # distinct distances: no ties
    dist = np.array(flat, dtype=float).reshape(num_probes, num_gallery) / 7.0
    ids, views = st.integers(0, 2), st.sampled_from(["a", "b", "c"])
    return (dist,
            np.array(draw(st.lists(ids, min_size=num_probes, max_size=num_probes))),
            np.array(draw(st.lists(ids, min_size=num_gallery, max_size=num_gallery))),
            np.array(draw(st.lists(views, min_size=num_probes, max_size=num_probes))),
            np.array(draw(st.lists(views, min_size=num_gallery, max_size=num_gallery))),
            draw(st.randoms(use_true_random=False)))


def _assert_same(a, b):
    assert set(a) == set(b)
    for key, value in a.items():
        if key != "table":
            assert value == pytest.approx(b[key], nan_ok=True), key
    if "table" in a:
        table_a, table_b = a["table"], b["table"]
        assert table_a["probe_views"] == table_b["probe_views"]
        assert table_a["gallery_views"] == table_b["gallery_views"]
        for name in ("rank1", "rank5", "mAP", "num_queries"):
            np.testing.assert_allclose(table_a[name], table_b[name])
        for name, values in table_a["per_probe_view"].items():
            np.testing.assert_allclose(values, table_b["per_probe_view"][name])


@settings(max_examples=100, deadline=None)
@given(problems())
def test_properties_on_random_problems(problem):
    dist, probe_labels, gallery_labels, probe_views, gallery_views, random = problem
    args = (dist, probe_labels, gallery_labels, probe_views, gallery_views)
    per_query, per_pair = retrieval_per_query(*args), retrieval_per_view_pair(*args)
    for result in (per_query, per_pair):
        for key in ("rank1", "rank5", "mAP"):
            assert math.isnan(result[key]) or 0.0 <= result[key] <= 1.0 + 1e-12
        if not math.isnan(result["rank1"]):
            assert result["rank1"] <= result["rank5"] + 1e-12
    assert per_query["num_queries"] + per_query["num_skipped"] == len(dist)
    assert per_query == pytest.approx(_reference_per_query(*args) | {"num_skipped": per_query["num_skipped"]},
                                      nan_ok=True)
    # Permuting the gallery (columns, labels and views together) changes nothing when there are no ties.
    perm = list(range(dist.shape[1]))
    random.shuffle(perm)
    permuted = (dist[:, perm], probe_labels, gallery_labels[perm], probe_views, gallery_views[perm])
    _assert_same(per_query, retrieval_per_query(*permuted))
    _assert_same(per_pair, retrieval_per_view_pair(*permuted))
