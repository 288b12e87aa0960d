"""Representation quality of item embeddings by history-based neighbour retrieval.

Reference: ReaSeq (TaoRank Team, arXiv 2512.21257), Section 2.1.2 and Appendix C, Table 1: item
embeddings are compared by how well the cosine neighbours of a user's historical items retrieve the
user's next (held-out) item, reported as HR@K and macro Recall@K for several K.

Protocol of :func:`hr_at_k`, for user ``u`` with training history ``H_u`` and held-out target
``t_u`` (item indices = rows of ``emb``)::

    N_k(h)    = the k items with the highest cosine similarity to h among ALL items
                (h itself excluded when exclude_self=True)
    hit_u@k   = 1[ t_u in  U_{h in H_u} N_k(h) ]
    HR@k      = mean_u hit_u@k
    MacroRecall@k = mean over distinct target items i of ( mean_{u : t_u = i} hit_u@k )

Macro recall weighs every target *item* equally, so popular targets do not dominate (HR@k weighs
every user equally). Users with an empty history count as misses.

Search: exact by default, via faiss ``IndexFlatIP`` on L2-normalised vectors (``use_faiss=True``)
or pure numpy (``use_faiss=False``, same results up to exact score ties); ``index="ivf"`` /
``"hnsw"`` (or any faiss index-factory string) gives an approximate search for large catalogues,
and :func:`approx_recall_at_k` measures its recall@K against exact search. The same choice is
configured by :func:`index_options` (config keys ``gsu_index: flat | ivf | hnsw`` and
``gsu_index_nlist / _nprobe / _hnsw_m / _ef_search``, see ``properties/model/ReaSeqCTR.yaml``),
shared with the serving GSU :class:`recbole_reaseq.model.layers.KnowledgeIndex`:
``hr_at_k(emb, histories, targets, **index_options(config))``.

NOTE: the paper does not say whether neighbours of one history item may include other history
items or the target's duplicates; here every item except the query itself is a candidate.
NOTE: k larger than the catalogue (minus the query) is clamped: all remaining items are returned.
NOTE: exact score ties at the k-th position are broken arbitrarily (as faiss does); ties elsewhere
in numpy are broken by lower item index.

This module does not import recbole.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

__all__ = [
    "l2_normalize",
    "INDEX_TYPES",
    "index_spec",
    "index_options",
    "build_index",
    "exact_topk",
    "index_topk",
    "item_neighbours",
    "hr_at_k",
    "approx_recall_at_k",
]

INDEX_TYPES = ("flat", "ivf", "hnsw")
_INDEX_DEFAULTS = {"nlist": None, "nprobe": 16, "hnsw_m": 32, "ef_search": 128,
                   "ef_construction": 40}
_PAIR_CHUNK = 65536
_QUERY_CHUNK = 1024


# ----------------------------------------------------------------------------- search


def l2_normalize(emb: Any, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation, float32, C-contiguous; all-zero rows stay zero. ``[N, D]``."""
    x = np.asarray(emb, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"emb must be 2-d [N, D], got shape {x.shape}.")
    if not np.all(np.isfinite(x)):
        raise ValueError("emb contains NaN or inf.")
    norms = np.linalg.norm(x, axis=1, keepdims=True)  # [N, 1]
    return np.ascontiguousarray(x / np.maximum(norms, eps), dtype=np.float32)


def index_spec(index: str, n_items: int, nlist: int | None = None, hnsw_m: int = 32) -> str:
    """faiss index-factory string for ``"flat"``, ``"ivf"``, ``"hnsw"`` or a raw factory string.

    ``ivf`` uses ``nlist`` lists (default ``~4 sqrt(N)``, at most ``N // 39`` so that k-means has
    enough points per centroid, at least 1).
    """
    key = index.lower()
    if key == "flat":
        return "Flat"
    if key == "ivf":
        if nlist is None:
            nlist = max(1, min(int(4 * math.sqrt(n_items)), n_items // 39))
        if not 1 <= nlist <= n_items:
            raise ValueError(f"index='ivf' needs 1 <= nlist <= n_items ({n_items}), got {nlist}.")
        return f"IVF{nlist},Flat"
    if key == "hnsw":
        return f"HNSW{hnsw_m},Flat"
    return index  # a raw faiss factory string, e.g. "IVF256,PQ16"


def index_options(config: Any, prefix: str = "gsu_index") -> dict[str, Any]:
    """``build_index`` keyword arguments from a config (RecBole ``Config`` or any mapping).

    Keys: ``<prefix>`` (``flat`` | ``ivf`` | ``hnsw``), ``<prefix>_nlist`` (IVF lists, ``None`` =
    ``~4 sqrt(N)``), ``<prefix>_nprobe`` (IVF lists probed per query), ``<prefix>_hnsw_m`` (HNSW
    neighbours per node), ``<prefix>_ef_search`` (HNSW search beam), ``<prefix>_ef_construction``
    (HNSW build beam; faiss's default 40). Missing keys take the
    defaults (exact ``flat`` search). Bad values raise ``ValueError`` naming the key and the fix.
    """
    from recbole_reaseq.config import config_get

    def get(key, default):
        return config_get(config, key, default)

    kind = str(get(prefix, "flat")).lower()
    if kind not in INDEX_TYPES:
        raise ValueError(f"{prefix}: unknown index type {get(prefix, 'flat')!r}. Fix: set "
                         f"{prefix} to one of {', '.join(INDEX_TYPES)} (flat = exact search).")
    out: dict[str, Any] = {"index": kind}
    for name, default in _INDEX_DEFAULTS.items():
        value = get(f"{prefix}_{name}", default)
        integer = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
        if value is not None and (not integer or value < 1):
            raise ValueError(f"{prefix}_{name} must be a positive integer, got {value!r}. Fix: "
                             f"set {prefix}_{name} to an integer >= 1"
                             + (" or ~ (automatic)." if name == "nlist" else "."))
        out[name] = None if value is None else int(value)
    return out


def build_index(emb: Any, index: str = "flat", nlist: int | None = None, hnsw_m: int = 32,
                nprobe: int = 16, ef_search: int = 128, normalize: bool = True,
                ef_construction: int = 40) -> Any:
    """Inner-product faiss index over (L2-normalised) ``emb [N, D]``: cosine search.

    ``nprobe`` (IVF) and ``ef_search`` (HNSW) are applied when the index has them;
    ``ef_construction`` (HNSW) before the vectors are added.
    """
    import faiss

    x = l2_normalize(emb) if normalize else np.ascontiguousarray(emb, dtype=np.float32)
    spec = index_spec(index, x.shape[0], nlist, hnsw_m)
    idx = faiss.index_factory(x.shape[1], spec, faiss.METRIC_INNER_PRODUCT)
    if hasattr(faiss.downcast_index(idx), "hnsw"):
        faiss.downcast_index(idx).hnsw.efConstruction = int(ef_construction)
    if not idx.is_trained:
        idx.train(x)
    idx.add(x)
    params = faiss.ParameterSpace()
    if "IVF" in spec:
        params.set_index_parameter(idx, "nprobe", int(nprobe))
    if "HNSW" in spec:
        params.set_index_parameter(idx, "efSearch", int(ef_search))
    return idx


def exact_topk(items: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact maximum-inner-product top-k in numpy: ``(scores [Q, k], ids [Q, k])``, best first.

    ``items [N, D]`` and ``queries [Q, D]`` should already be normalised for cosine.
    """
    n = items.shape[0]
    k = min(k, n)
    out_s = np.empty((queries.shape[0], k), dtype=np.float32)
    out_i = np.empty((queries.shape[0], k), dtype=np.int64)
    for s in range(0, queries.shape[0], _QUERY_CHUNK):
        scores = queries[s:s + _QUERY_CHUNK] @ items.T  # [q, N]
        if k < n:
            cand = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # [q, k] unordered
        else:
            cand = np.broadcast_to(np.arange(n), scores.shape).copy()
        cand_s = np.take_along_axis(scores, cand, axis=1)  # [q, k]
        order = np.lexsort((cand, -cand_s), axis=1)  # by score desc, then id asc
        out_i[s:s + _QUERY_CHUNK] = np.take_along_axis(cand, order, axis=1)
        out_s[s:s + _QUERY_CHUNK] = np.take_along_axis(cand_s, order, axis=1)
    return out_s, out_i


def index_topk(index: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """faiss search: ``(scores [Q, k], ids [Q, k])``; missing results are id ``-1``."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    scores, ids = index.search(q, int(k))
    return scores, ids.astype(np.int64)


def _drop_self(ids: np.ndarray, query_ids: np.ndarray) -> np.ndarray:
    """Remove each query's own id from its row ``[Q, k+1] -> [Q, k]`` (else drop the last one)."""
    is_self = ids == query_ids[:, None]  # [Q, k+1]
    no_self = ~is_self.any(1)
    is_self[no_self, -1] = True
    return ids[~is_self].reshape(ids.shape[0], ids.shape[1] - 1)


def item_neighbours(emb: Any, items: Sequence[int], k: int, use_faiss: bool = True,
                    exclude_self: bool = True, index: str = "flat", **index_kwargs: Any
                    ) -> np.ndarray:
    """Top-k cosine neighbours of the given item rows: ``[len(items), k']`` int64, best first,
    ``k' = min(k, N - exclude_self)``; ``-1`` marks a missing result of an approximate index."""
    x = l2_normalize(emb)
    n = x.shape[0]
    items = np.asarray(items, dtype=np.int64).reshape(-1)
    if items.size and (items.min() < 0 or items.max() >= n):
        raise ValueError(f"item indices must lie in [0, {n}) (rows of emb).")
    k_eff = min(int(k), n - 1 if exclude_self else n)
    if k_eff < 1:
        return np.zeros((items.size, 0), dtype=np.int64)
    k_search = k_eff + 1 if exclude_self else k_eff
    queries = x[items]  # [Q, D]
    if use_faiss:
        idx = build_index(x, index=index, normalize=False, **index_kwargs)
        ids = np.concatenate([index_topk(idx, queries[s:s + _QUERY_CHUNK], k_search)[1]
                              for s in range(0, items.size, _QUERY_CHUNK)] or
                             [np.zeros((0, k_search), np.int64)])
    else:
        if index.lower() != "flat" or index_kwargs:
            raise ValueError(f"use_faiss=False supports only exact search (index='flat'), got "
                             f"index={index!r}. Fix: use_faiss=True for approximate indexes.")
        ids = exact_topk(x, queries, k_search)[1]
    return _drop_self(ids, items) if exclude_self else ids


# ----------------------------------------------------------------------------- metrics


def _check_users(histories: Sequence[Sequence[int]], targets: Sequence[int], n: int
                 ) -> tuple[list[np.ndarray], np.ndarray]:
    if len(histories) != len(targets):
        raise ValueError(f"hr_at_k: {len(histories)} histories but {len(targets)} targets. "
                         "Fix: one held-out target per user, aligned with histories.")
    hist = [np.asarray(h, dtype=np.int64).reshape(-1) for h in histories]
    tgt = np.asarray(targets, dtype=np.int64).reshape(-1)
    for name, arr in (("targets", tgt), ("histories", np.concatenate(hist) if hist else tgt[:0])):
        if arr.size and (arr.min() < 0 or arr.max() >= n):
            raise ValueError(f"hr_at_k: {name} must be item indices in [0, {n}) (rows of emb), "
                             f"got range [{arr.min()}, {arr.max()}].")
    return hist, tgt


def hr_at_k(emb: Any, histories: Sequence[Sequence[int]], targets: Sequence[int],
            ks: Sequence[int] = (10, 20, 50, 100, 200), use_faiss: bool = True,
            exclude_self: bool = True, index: str = "flat", **index_kwargs: Any
            ) -> dict[str, float]:
    """History-neighbour retrieval quality of ``emb [N, D]`` (see the module docstring).

    Args:
        histories: per user, the training-history item indices (rows of ``emb``).
        targets: per user, the held-out target item index.
        ks: cut-offs; each must be >= 1.
        use_faiss: faiss search (``True``) or exact numpy search (``False``, ``index="flat"`` only).
        exclude_self: a history item is not its own neighbour.
        index: ``"flat"`` (exact), ``"ivf"``, ``"hnsw"`` or a faiss factory string;
            ``index_kwargs`` go to :func:`build_index` (``nlist``, ``hnsw_m``, ``nprobe``, ...).
    Returns:
        ``{"HR@k": float, "MacroRecall@k": float for k in ks, "n_users": U, "n_targets": T}``
        (``T`` = distinct target items).
    """
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ValueError(f"hr_at_k(ks={ks}) needs at least one cut-off, all >= 1.")
    x = l2_normalize(emb)
    n = x.shape[0]
    hist, tgt = _check_users(histories, targets, n)
    n_users = len(hist)
    if n_users == 0:
        raise ValueError("hr_at_k: no users (empty histories/targets).")
    kmax = max(ks)

    lens = np.array([h.size for h in hist], dtype=np.int64)
    pair_user = np.repeat(np.arange(n_users), lens)  # [P]
    pair_item = np.concatenate(hist) if lens.sum() else np.zeros(0, np.int64)  # [P]
    uniq, pair_row = np.unique(pair_item, return_inverse=True)
    nbrs = item_neighbours(x, uniq, kmax, use_faiss, exclude_self, index, **index_kwargs)  # [I, k']

    miss = np.iinfo(np.int64).max  # larger than any k: k may exceed k' when clamped
    best = np.full(n_users, miss, dtype=np.int64)  # best (0-based) rank of the target per user
    for s in range(0, pair_user.size, _PAIR_CHUNK):
        users = pair_user[s:s + _PAIR_CHUNK]
        rows = nbrs[pair_row[s:s + _PAIR_CHUNK]]  # [p, k']
        match = rows == tgt[users][:, None]  # [p, k']
        rank = np.where(match.any(1), match.argmax(1), miss)  # [p]
        np.minimum.at(best, users, rank)

    t_uniq, t_inv = np.unique(tgt, return_inverse=True)
    t_count = np.bincount(t_inv, minlength=t_uniq.size).astype(np.float64)
    out: dict[str, float] = {}
    for k in ks:
        hit = (best < k).astype(np.float64)  # [U]
        out[f"HR@{k}"] = float(hit.mean())
        per_item = np.bincount(t_inv, weights=hit, minlength=t_uniq.size) / t_count  # [T]
        out[f"MacroRecall@{k}"] = float(per_item.mean())
    out["n_users"] = n_users
    out["n_targets"] = int(t_uniq.size)
    return out


def approx_recall_at_k(emb: Any, index: str = "hnsw", k: int = 10, n_queries: int = 1000,
                       queries: Sequence[int] | None = None, seed: int = 0,
                       exclude_self: bool = True, **index_kwargs: Any) -> float:
    """Recall@k of an approximate index against exact cosine search.

    For query items ``q`` (``queries``, or ``n_queries`` rows drawn without replacement with
    ``seed``): ``mean_q |approx_k(q) & exact_k(q)| / |exact_k(q)|``. Returns 1.0 for ``"flat"``
    (up to exact score ties).
    """
    x = l2_normalize(emb)
    n = x.shape[0]
    if queries is None:
        rng = np.random.default_rng(seed)
        q = rng.choice(n, size=min(int(n_queries), n), replace=False)
    else:
        q = np.asarray(queries, dtype=np.int64).reshape(-1)
    if q.size == 0:
        raise ValueError("approx_recall_at_k: no queries. Fix: n_queries >= 1 or pass queries.")
    exact = item_neighbours(x, q, k, True, exclude_self, "flat")
    approx = item_neighbours(x, q, k, True, exclude_self, index, **index_kwargs)
    if exact.shape[1] == 0:
        return 1.0
    hits = sum(np.intersect1d(a[a >= 0], e).size for a, e in zip(approx, exact))
    return hits / float(exact.size)
