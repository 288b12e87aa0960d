"""Value-type metrics registered with RecBole's evaluator.

RecBole 1.2.1's ``GAUC`` is a ranking-type metric (it needs ``rec.meanrank`` from full score
matrices), and RecBole refuses to mix ranking and value metrics in one config, so GAUC cannot be
reported next to AUC and LogLoss. :class:`UserGAUC` is the value-type GAUC of the CTR track: the
plain mean over users of each user's AUC (ReaSeq's GAUC; users without both a positive and a
negative are skipped). It reads ``data.uid`` (the user of each scored row), which our CTR evaluator
puts in the ``DataStruct``; RecBole's own ``Collector`` does not collect it.

:func:`register_metric` adds a metric class to the tables RecBole's ``Config`` and ``Evaluator``
read (``recbole.evaluator.register``), so ``Evaluator({'metrics': ['GAUC_V', ...]})`` finds it.
"""
from __future__ import annotations

import numpy as np
import torch
from recbole.evaluator import register as _register
from recbole.evaluator.base_metric import AbstractMetric
from recbole.utils import EvaluatorType


def per_user_topk(topk: np.ndarray, ks=(10, 20)) -> dict:
    """Per-user full-ranking metrics from RecBole's ``rec.topk`` struct.

    ``topk`` is ``[n_users, max_k + 1]``: whether the item at each rank (0-based) is a positive of
    the user, then the user's number of positives (RecBole's ``Collector``). Returns
    ``{"hit@k", "recall@k", "mrr@k", "ndcg@k": [n_users] float64}`` for every ``k`` in ``ks``,
    with RecBole's definitions (``recbole.evaluator.metrics``), so their means are RecBole's
    metrics.
    """
    hits = topk[:, :-1].astype(bool)                                   # [U, max_k]
    pos_len = topk[:, -1].astype(np.float64)                           # [U]
    if max(ks) > hits.shape[1]:
        raise ValueError(f"per_user_topk: k={max(ks)} exceeds the struct's {hits.shape[1]} "
                         f"ranks. Fix: evaluate with topk >= {max(ks)}.")
    discount = 1.0 / np.log2(np.arange(2, hits.shape[1] + 2))         # [max_k]
    first = np.where(hits.any(1), hits.argmax(1), hits.shape[1])       # [U] first hit rank
    out = {}
    for k in ks:
        h = hits[:, :k]                                                # [U, k]
        ideal = np.cumsum(discount[:k])[np.minimum(pos_len, k).astype(int) - 1]   # [U]
        out[f"hit@{k}"] = h.any(1).astype(np.float64)
        out[f"recall@{k}"] = h.sum(1) / pos_len
        out[f"mrr@{k}"] = np.where(first < k, 1.0 / (first + 1), 0.0)
        out[f"ndcg@{k}"] = (h * discount[:k]).sum(1) / ideal
    return out


def per_user_auc(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray):
    """AUC of each group (ties count 1/2), via ranks. Returns (group ids, auc), groups with both
    classes only."""
    order = np.lexsort((scores, groups))
    g, s, y = groups[order], scores[order], labels[order]
    bounds = np.flatnonzero(np.r_[True, g[1:] != g[:-1], True])
    ids, aucs = [], []
    for start, end in zip(bounds[:-1], bounds[1:]):
        ys, ss = y[start:end], s[start:end]
        n_pos = int(ys.sum())
        n_neg = len(ys) - n_pos
        if n_pos == 0 or n_neg == 0:
            continue
        # average ranks (1-based) of the sorted scores, ties share their mean rank
        _, inverse, counts = np.unique(ss, return_inverse=True, return_counts=True)
        upper = np.cumsum(counts)
        avg_rank = (upper - (counts - 1) / 2.0)[inverse]
        auc = (avg_rank[ys == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
        ids.append(g[start])
        aucs.append(auc)
    return np.asarray(ids), np.asarray(aucs, dtype=np.float64)


class GAUC_V(AbstractMetric):
    """Value-type GAUC: mean over users of per-user AUC (needs ``data.uid``)."""

    metric_type = EvaluatorType.VALUE
    metric_need = ["rec.score", "data.label", "data.uid"]

    def calculate_metric(self, dataobject):
        if "data.uid" not in dataobject:
            raise KeyError("GAUC_V needs 'data.uid' (the user of each scored row) in the data "
                           "struct; use recbole_reaseq.evaluation.ctr, which provides it.")
        scores = dataobject.get("rec.score").float().numpy()
        labels = dataobject.get("data.label").float().numpy()
        uids = dataobject.get("data.uid").numpy()
        _, aucs = per_user_auc(scores, labels, uids)
        return {"gauc": round(float(aucs.mean()), self.decimal_place)}


def register_metric(cls: type) -> None:
    """Add ``cls`` to RecBole's metric tables; refuses to shadow an existing metric."""
    name = cls.__name__.lower()
    if name in _register.metrics_dict and _register.metrics_dict[name] is not cls:
        raise KeyError(f"metric '{name}' already exists in RecBole; rename {cls.__name__}.")
    _register.metrics_dict[name] = cls
    _register.metric_information[name] = cls.metric_need
    _register.metric_types[name] = cls.metric_type
    if cls.smaller and name not in _register.smaller_metrics:
        _register.smaller_metrics.append(name)


register_metric(GAUC_V)


def topk_struct(pos_rank: torch.Tensor, k: int) -> torch.Tensor:
    """RecBole's ``rec.topk`` layout for one positive per user at 0-based rank ``pos_rank``.

    Returns [U, k + 1]: a 0/1 hit indicator per cut-off position, then the positive count (1).
    """
    hits = torch.zeros(len(pos_rank), k + 1, dtype=torch.int)        # [U, k + 1]
    inside = pos_rank < k
    hits[inside.nonzero(as_tuple=True)[0], pos_rank[inside]] = 1
    hits[:, k] = 1
    return hits
