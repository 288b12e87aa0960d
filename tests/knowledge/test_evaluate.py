"""Tests for recbole_reaseq.knowledge.evaluate (history-neighbour HR@K / macro recall)."""
import numpy as np
import pytest

from recbole_reaseq.knowledge.evaluate import (
    approx_recall_at_k,
    exact_topk,
    hr_at_k,
    item_neighbours,
    l2_normalize,
)

# 6 items in 2-d at these angles (degrees); norms differ so only cosine matters.
ANGLES = [0, 10, 30, 90, 100, 250]
NORMS = [1.0, 2.0, 0.5, 3.0, 1.0, 2.0]
# Hand-computed neighbour order (self excluded), by angular distance:
#   0: 1(10) 2(30) 3(90) 4(100) 5(110)     1: 0(10) 2(20) 3(80) 4(90) 5(120)
#   2: 1(20) 0(30) 3(60) 4(70) 5(140)      3: 4(10) 2(60) 1(80) 0(90) 5(160)
#   4: 3(10) 2(70) 1(90) 0(100) 5(150)     5: 0(110) 1(120) 2(140) 4(150) 3(160)
NEIGHBOURS = [[1, 2, 3, 4, 5], [0, 2, 3, 4, 5], [1, 0, 3, 4, 5],
              [4, 2, 1, 0, 5], [3, 2, 1, 0, 5], [0, 1, 2, 4, 3]]
# users: (history, target)
#   u0: [0]    -> 2 : rank of 2 in N(0) is 1          -> miss@1, hit@2
#   u1: [3, 5] -> 1 : rank 2 in N(3), rank 1 in N(5)   -> miss@1, hit@2
#   u2: [1]    -> 0 : rank 0 in N(1)                   -> hit@1
#   u3: [2]    -> 0 : rank 1 in N(2)                   -> miss@1, hit@2
HISTORIES = [[0], [3, 5], [1], [2]]
TARGETS = [2, 1, 0, 0]


def toy_emb():
    a = np.deg2rad(ANGLES)
    return (np.stack([np.cos(a), np.sin(a)], 1) * np.array(NORMS)[:, None]).astype(np.float32)


@pytest.mark.parametrize("use_faiss", [True, False])
def test_toy_neighbours(use_faiss):
    nb = item_neighbours(toy_emb(), range(6), 5, use_faiss=use_faiss)
    assert nb.tolist() == NEIGHBOURS
    with_self = item_neighbours(toy_emb(), [3], 2, use_faiss=use_faiss, exclude_self=False)
    assert with_self.tolist() == [[3, 4]]


@pytest.mark.parametrize("use_faiss", [True, False])
def test_toy_hr_and_macro_recall(use_faiss):
    res = hr_at_k(toy_emb(), HISTORIES, TARGETS, ks=(1, 2), use_faiss=use_faiss)
    assert res["HR@1"] == pytest.approx(1 / 4)
    assert res["HR@2"] == pytest.approx(1.0)
    # per target item @1: item 2 -> 0/1, item 1 -> 0/1, item 0 -> (1 + 0)/2 ; mean = 1/6
    assert res["MacroRecall@1"] == pytest.approx(1 / 6)
    assert res["MacroRecall@2"] == pytest.approx(1.0)
    assert res["n_users"] == 4 and res["n_targets"] == 3
    assert list(res) == ["HR@1", "MacroRecall@1", "HR@2", "MacroRecall@2", "n_users", "n_targets"]


@pytest.mark.parametrize("use_faiss", [True, False])
def test_toy_without_self_exclusion(use_faiss):
    # each item is its own top-1: N(0)=[0,1], N(3)=[3,4], N(5)=[5,0], N(1)=[1,0], N(2)=[2,1]
    res = hr_at_k(toy_emb(), HISTORIES, TARGETS, ks=(1, 2), use_faiss=use_faiss,
                  exclude_self=False)
    assert res["HR@1"] == 0.0
    assert res["HR@2"] == pytest.approx(1 / 4)  # only u2 (N(1) contains 0)
    assert res["MacroRecall@2"] == pytest.approx(1 / 6)  # item 0: 1/2, items 1, 2: 0


def test_k_clamped_and_empty_history_is_miss():
    res = hr_at_k(toy_emb(), [[0], []], [5, 0], ks=(5, 50))
    assert res["HR@5"] == 0.5 and res["HR@50"] == 0.5  # item 5 is 0's 5th neighbour
    assert res["MacroRecall@5"] == 0.5


def test_input_errors():
    with pytest.raises(ValueError, match="one held-out target per user"):
        hr_at_k(toy_emb(), HISTORIES, TARGETS[:2])
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        hr_at_k(toy_emb(), [[0]], [6])
    with pytest.raises(ValueError, match="ks"):
        hr_at_k(toy_emb(), HISTORIES, TARGETS, ks=(0,))
    with pytest.raises(ValueError, match="use_faiss=True"):
        hr_at_k(toy_emb(), HISTORIES, TARGETS, use_faiss=False, index="hnsw")


def test_faiss_equals_numpy_on_random_data():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((300, 16)).astype(np.float32)
    histories = [rng.choice(300, size=rng.integers(1, 8), replace=False).tolist()
                 for _ in range(80)]
    targets = rng.integers(0, 300, size=80).tolist()
    ks = (1, 5, 10, 50, 100, 400)
    a = hr_at_k(emb, histories, targets, ks=ks, use_faiss=True)
    b = hr_at_k(emb, histories, targets, ks=ks, use_faiss=False)
    assert a == b
    assert 0.0 < a["HR@10"] < a["HR@100"] < 1.0
    assert a["HR@400"] == 1.0  # clamped to all 299 other items
    nb_f = item_neighbours(emb, range(300), 20, use_faiss=True)
    nb_n = item_neighbours(emb, range(300), 20, use_faiss=False)
    assert np.array_equal(nb_f, nb_n)


def test_exact_topk_matches_full_sort():
    rng = np.random.default_rng(1)
    x = l2_normalize(rng.standard_normal((50, 4)))
    scores, ids = exact_topk(x, x[:7], 10)
    full = np.argsort(-(x[:7] @ x.T), axis=1, kind="stable")[:, :10]
    assert np.array_equal(ids, full)
    assert np.all(np.diff(scores, axis=1) <= 0)
    assert np.array_equal(ids[:, 0], np.arange(7))  # each vector is its own best match


def test_approx_recall():
    rng = np.random.default_rng(2)
    emb = rng.standard_normal((500, 16)).astype(np.float32)
    assert approx_recall_at_k(emb, index="flat", k=10, n_queries=100) == 1.0
    r_ivf = approx_recall_at_k(emb, index="ivf", k=10, n_queries=100, nlist=8, nprobe=8)
    assert r_ivf == 1.0  # probing every list is exhaustive
    r_hnsw = approx_recall_at_k(emb, index="hnsw", k=10, n_queries=100, ef_search=64)
    assert 0.8 <= r_hnsw <= 1.0
    res = hr_at_k(emb, [[0, 1]], [2], ks=(10,), index="hnsw")
    assert set(res) == {"HR@10", "MacroRecall@10", "n_users", "n_targets"}
