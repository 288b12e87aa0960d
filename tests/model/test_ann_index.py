"""Approximate serving-GSU indexes of KnowledgeIndex (``gsu_index: flat | ivf | hnsw``).

The exact index against brute force is tested in test_layers.py (unchanged default behaviour).
"""
from __future__ import annotations

import numpy as np
import pytest

from recbole_reaseq.knowledge.evaluate import hr_at_k, index_options
from recbole_reaseq.model.layers import KnowledgeIndex


@pytest.fixture(autouse=True)
def faiss_one_thread():
    """One faiss thread: HNSW construction is then deterministic (and the cores are shared)."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def clustered(n: int, dim: int, clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` items and 200 queries of a Gaussian mixture (centres ~ N(0, I), unit noise)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    draw = lambda m: (centres[rng.integers(0, clusters, m)]                    # noqa: E731
                      + rng.standard_normal((m, dim)).astype(np.float32))
    return draw(n), draw(200)


def recall(approx: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(approx, exact)]))


def test_ivf_probing_every_list_equals_exact():
    items, queries = clustered(3000, 32, 20, seed=0)
    ids = np.arange(5000, 8000)
    exact_s, exact_i = KnowledgeIndex(items, ids=ids).search(queries, 20)
    ivf = KnowledgeIndex(items, ids=ids, index="ivf", nlist=16, nprobe=16)
    assert type(__import__("faiss").downcast_index(ivf.index)).__name__ == "IndexIVFFlat"
    s, i = ivf.search(queries, 20)
    assert np.array_equal(i.numpy(), exact_i.numpy())
    assert np.allclose(s.numpy(), exact_s.numpy(), atol=1e-5)
    ivf.set_search_params(nprobe=1)                     # one list of 16: approximate
    r1 = recall(ivf.search(queries, 20)[1].numpy(), exact_i.numpy())
    assert 0.0 < r1 < 1.0


def test_hnsw_recall_on_clustered_data():
    """Bound: on this seeded 3000-item mixture with a single-thread (deterministic) build, HNSW
    (M=32, efSearch=64 >= 6 K) measured recall@10 = 1.0 (faiss 1.15); 0.97 leaves room for faiss
    versions changing the graph construction while still failing a broken index (a wrong metric
    or unnormalised vectors lose far more; a random index would score ~0.003)."""
    items, queries = clustered(3000, 32, 20, seed=0)
    _, exact = KnowledgeIndex(items).search(queries, 10)
    hnsw = KnowledgeIndex(items, index="hnsw", hnsw_m=32, ef_search=64)
    assert type(__import__("faiss").downcast_index(hnsw.index)).__name__ == "IndexHNSWFlat"
    assert len(hnsw) == 3000
    scores, found = hnsw.search(queries, 10)
    assert recall(found.numpy(), exact.numpy()) >= 0.97
    assert np.all(np.diff(scores.numpy(), axis=1) <= 1e-6)         # best first
    hnsw.set_search_params(ef_search=10)
    low = recall(hnsw.search(queries, 10)[1].numpy(), exact.numpy())
    assert low <= recall(found.numpy(), exact.numpy())


def test_from_config_and_errors(tiny_root, workdir):
    from recbole_reaseq.quick_start import make_config
    from tests.conftest import tiny_config

    config = make_config("ReaSeqCTR", "tiny", config_dict=tiny_config(tiny_root, workdir))
    assert index_options(config) == {"index": "flat", "nlist": None, "nprobe": 16,
                                     "hnsw_m": 32, "ef_search": 128,
                                     "ef_construction": 40}             # ReaSeqCTR.yaml defaults
    items, queries = clustered(500, 16, 5, seed=1)
    assert KnowledgeIndex.from_config(config, items).kind == "flat"
    config["gsu_index"], config["gsu_index_nlist"] = "ivf", 8
    config["gsu_index_nprobe"] = 8
    ivf = KnowledgeIndex.from_config(config, items)
    assert ivf.kind == "ivf" and ivf.index.nlist == 8 and ivf.index.nprobe == 8
    assert np.array_equal(ivf.search(queries, 5)[1], KnowledgeIndex(items).search(queries, 5)[1])
    # the representation evaluation takes the same options
    res = hr_at_k(items, [[0, 1], [2]], [3, 4], ks=(10,), **index_options(config))
    assert res == hr_at_k(items, [[0, 1], [2]], [3, 4], ks=(10,))
    config["gsu_index"] = "lsh"
    with pytest.raises(ValueError, match="gsu_index: unknown index type 'lsh'.*flat, ivf, hnsw"):
        KnowledgeIndex.from_config(config, items)
    config["gsu_index"], config["gsu_index_nprobe"] = "ivf", 0
    with pytest.raises(ValueError, match="gsu_index_nprobe must be a positive integer.*Fix"):
        KnowledgeIndex.from_config(config, items)
    with pytest.raises(ValueError, match="gsu_index_ef_search must be a positive integer"):
        KnowledgeIndex(items, index="hnsw", ef_search=2.5)


def test_ef_construction_reaches_the_hnsw_graph():
    import faiss

    from recbole_reaseq.knowledge.evaluate import build_index

    items, _ = clustered(300, 16, 5, seed=2)
    for ef in (40, 200):
        built = build_index(items, "hnsw", hnsw_m=8, ef_construction=ef)   # keep it alive
        index = faiss.downcast_index(built)
        assert index.hnsw.efConstruction == ef and index.ntotal == 300
    gsu = KnowledgeIndex(items, index="hnsw", hnsw_m=8, ef_construction=120)
    assert faiss.downcast_index(gsu.index).hnsw.efConstruction == 120
    with pytest.raises(ValueError, match="gsu_index_ef_construction"):
        KnowledgeIndex(items, index="hnsw", ef_construction=0)
