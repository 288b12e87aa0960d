"""Self-supervised labelled positions L, unlabelled gaps U, and the leakage-safe GBR inputs.

Reference: ReaSeq (TaoRank Team, arXiv 2512.21257), Section 3.2.1. For item position ``i`` of a
sequence ``x_0 .. x_{n-1}`` (``0 <= i <= n-2``):

    Δ_i = log P(x_{i+1} | x_0 .. x_i) - log P(x_{i+1} | x_0 .. x_{i-1})

under a pretrained next-item scorer (:class:`recbole_reaseq.gbr.locate.NextItemScorer`), with
``P = softmax(scores / temperature)`` over the real items (column 0, padding, excluded).
``L = {i : Δ_i > eta}``: behaviours that make the next one more predictable, whose identity the
reasoner must learn to recover from context. The last position has no next item, so it is never
in L. ``U`` = the located gaps (:mod:`recbole_reaseq.gbr.locate`), where [FILL] goes.

Both conditionals reuse one scoring pass: row ``k`` scores the prefix ``x_0 .. x_{k-1}``
(``k = 0`` is the empty prefix); ``Δ_i`` reads row ``i+1`` and row ``i`` at item ``x_{i+1}``, and
stage 2 of the locator reads the rank of ``x_{i+1}`` in row ``i+1``.

Leakage guard: :func:`build_gbr_inputs` first takes :func:`training_view` (each user's last two
behaviours, the valid and test targets of the leave-one-out protocol, are dropped), and builds the
time threshold, the default Swing scorer, Δ, L and U from that view only.

NOTE: the paper does not say how P is normalised for a co-occurrence scorer; scores are treated as
logits with a ``temperature`` (1.0 default). An empty prefix with the Swing scorer is uniform.
NOTE: ratios reported: ``gap_rate`` = |U| / consecutive pairs; ``fill_ratio`` = |U| / (items + |U|),
the share of [FILL] tokens in the GBR sequences (the Table 5 "[FILL] ratio" reading used here);
``label_ratio`` = |L| / items; ``stage2_keep`` = |U| / stage-1 candidates.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from .locate import (DEFAULT_TIME_PERCENTILE, NextItemScorer, SequenceData, SwingScorer,
                     _check_rule, default_time_threshold, next_item_ranks, stage1_positions)

__all__ = ["N_HOLDOUT", "training_view", "item_log_probs", "prefix_statistics", "delta_scores",
           "labelled_positions", "GBRExample", "GBRInputs", "build_gbr_inputs"]

N_HOLDOUT = 2  # valid + test targets of the time-ordered leave-one-out split


def training_view(data: SequenceData, n_holdout: int = N_HOLDOUT) -> SequenceData:
    """Each user's sequence without its last ``n_holdout`` behaviours (the valid/test targets);
    users left with no behaviour are dropped. Times and categories are cut alike."""
    lengths = data.lengths()                                           # [U]
    keep_len = np.maximum(lengths - n_holdout, 0)                      # [U]
    idx = np.concatenate([np.arange(s, s + k) for s, k in zip(data.offsets[:-1], keep_len)]) \
        if len(lengths) else np.zeros(0, dtype=np.int64)
    idx = idx.astype(np.int64)
    users = keep_len > 0
    new_len = keep_len[users]
    return SequenceData(
        users=data.users[users], offsets=np.r_[0, np.cumsum(new_len)].astype(np.int64),
        items=data.items[idx], times=None if data.times is None else data.times[idx],
        cats=None if data.cats is None else data.cats[idx], item_tokens=data.item_tokens,
        category_names=data.category_names, n_items=data.n_items,
        source=f"{data.source} [training view: last {n_holdout} dropped]",
        missing=dict(data.missing))


def item_log_probs(scores: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log-softmax of ``scores / temperature`` [B, n_items] over items 1..n-1; column 0 = -inf."""
    s = scores.float() / temperature                                   # [B, n]
    s[:, 0] = float("-inf")
    return F.log_softmax(s, dim=1)                                     # [B, n]


def prefix_statistics(data: SequenceData, scorer: NextItemScorer, temperature: float = 1.0,
                      batch_size: int = 256) -> Dict[str, np.ndarray]:
    """One scoring pass over every prefix ``x_0 .. x_{k-1}`` (k = 0..n-1) of every user.

    Returns flat arrays aligned with ``data.items`` [N] (entry = user position ``k``):
    ``lp_next`` = log P(x_k | x_<k), ``lp_skip`` = log P(x_{k+1} | x_<k) (nan at a user's last
    position), ``rank_next`` = 1-based rank of ``x_k`` given ``x_<k`` (ties against it).
    """
    n = len(data.items)
    lp_next = np.full(n, np.nan)
    lp_skip = np.full(n, np.nan)
    rank_next = np.zeros(n, dtype=np.int64)
    ends = np.repeat(data.offsets[1:], data.lengths())                 # [N] end of own user
    starts = np.repeat(data.offsets[:-1], data.lengths())              # [N]
    for lo in range(0, n, batch_size):
        flat = np.arange(lo, min(lo + batch_size, n))                  # [b] flat index of x_k
        prefixes = [data.items[starts[f]:f] for f in flat]
        scores = scorer.score_next(prefixes)                           # [b, n_items]
        lp = item_log_probs(scores, temperature)                       # [b, n_items]
        nxt = torch.from_numpy(data.items[flat])                       # [b] x_k
        lp_next[flat] = lp.gather(1, nxt.view(-1, 1)).squeeze(1).double().numpy()
        rank_next[flat] = next_item_ranks(scores, nxt).numpy()
        has_skip = flat + 1 < ends[flat]                               # [b]
        if has_skip.any():
            f2 = flat[has_skip]
            skip = torch.from_numpy(data.items[f2 + 1])                # [b'] x_{k+1}
            rows = torch.from_numpy(np.flatnonzero(has_skip))
            lp_skip[f2] = lp[rows].gather(1, skip.view(-1, 1)).squeeze(1).double().numpy()
    return {"lp_next": lp_next, "lp_skip": lp_skip, "rank_next": rank_next}


def _user_delta(stats: Dict[str, np.ndarray], start: int, end: int) -> np.ndarray:
    """Δ [n] of one user (flat range start:end); nan at the last position."""
    n = end - start
    delta = np.full(n, np.nan)
    if n >= 2:
        delta[:-1] = stats["lp_next"][start + 1:end] - stats["lp_skip"][start:end - 1]
    return delta


def delta_scores(items: Sequence[int], scorer: NextItemScorer, temperature: float = 1.0
                 ) -> np.ndarray:
    """Δ_i of one sequence [n] (float64, nan at the last position; see the module docstring)."""
    data = SequenceData.from_lists([list(items)], n_items=scorer.n_items)
    stats = prefix_statistics(data, scorer, temperature)
    return _user_delta(stats, 0, len(items))


def labelled_positions(delta: np.ndarray, eta: float = 0.0) -> np.ndarray:
    """``L = {i : Δ_i > eta}`` (nan never qualifies). [n] -> [l] int64 sorted."""
    d = np.asarray(delta, dtype=np.float64)
    return np.flatnonzero(np.nan_to_num(d, nan=-np.inf) > eta).astype(np.int64)


@dataclass
class GBRExample:
    """One user's GBR input, training behaviour only."""

    user: str
    items: np.ndarray        # [n] item ids (training part, time order)
    fill_after: np.ndarray   # [g] sorted i: a [FILL] goes between items[i] and items[i+1]  (U)
    labelled: np.ndarray     # [l] sorted item positions in L
    delta: np.ndarray        # [n] Δ_i, nan at the last position


@dataclass
class GBRInputs:
    examples: List[GBRExample]
    stats: Dict[str, Any] = field(default_factory=dict)


ScorerArg = Union[None, NextItemScorer, Callable[[SequenceData], NextItemScorer]]


def build_gbr_inputs(data: SequenceData, rule: str, *, scorer: ScorerArg = None,
                     eta: float = 0.0, kappa: Optional[int] = None,
                     time_threshold: Optional[float] = None,
                     time_percentile: float = DEFAULT_TIME_PERCENTILE,
                     temperature: float = 1.0, n_holdout: int = N_HOLDOUT,
                     batch_size: int = 256, swing_kwargs: Optional[dict] = None) -> GBRInputs:
    """U (stage 1, + stage 2 if ``kappa``), Δ and L for every user, from TRAINING behaviour only.

    ``data`` is the FULL data set (as loaded); :func:`training_view` is applied here, so the
    valid/test targets never reach the threshold, the scorer, Δ, L, U or the example items.
    ``scorer``: ``None`` = :class:`SwingScorer` built on the training view (``swing_kwargs``); a
    callable without ``score_next`` = a factory called with the training view; otherwise used as
    is (it must itself have been trained on training behaviour only, e.g. a RecBole SASRec trained
    under the same leave-one-out split).
    """
    need_t, need_c, _ = _check_rule(rule)
    if need_t:
        data.require("time")
    if need_c:
        data.require("category")
    train = training_view(data, n_holdout)
    if need_t and time_threshold is None:
        time_threshold = default_time_threshold(train, time_percentile)
    if scorer is None:
        scorer = SwingScorer.from_sequences(train.sequences(), train.n_items,
                                            **(swing_kwargs or {}))
    elif not hasattr(scorer, "score_next"):
        scorer = scorer(train)
    stats = prefix_statistics(train, scorer, temperature, batch_size)
    examples: List[GBRExample] = []
    n_stage1 = 0
    for u in range(len(train)):
        s, e = int(train.offsets[u]), int(train.offsets[u + 1])
        items = train.items[s:e]
        delta = _user_delta(stats, s, e)
        if e - s >= 2:
            pos = stage1_positions(rule, train.times[s:e] if need_t else None,
                                   train.cats[s:e] if need_c else None, time_threshold)
        else:
            pos = np.zeros(0, dtype=np.int64)
        n_stage1 += len(pos)
        if kappa is not None and len(pos):
            pos = pos[stats["rank_next"][s + pos + 1] > kappa]
        examples.append(GBRExample(user=str(train.users[u]), items=items.copy(),
                                   fill_after=pos.astype(np.int64),
                                   labelled=labelled_positions(delta, eta), delta=delta))
    n_items = int(len(train.items))
    n_pairs = int(np.maximum(train.lengths() - 1, 0).sum())
    n_gaps = int(sum(len(x.fill_after) for x in examples))
    n_lab = int(sum(len(x.labelled) for x in examples))
    report = {
        "rule": rule, "eta": eta, "kappa": kappa, "temperature": temperature,
        "time_threshold": time_threshold, "n_users": len(examples), "n_items": n_items,
        "n_pairs": n_pairs, "n_stage1": n_stage1, "n_gaps": n_gaps, "n_labelled": n_lab,
        "gap_rate": n_gaps / max(n_pairs, 1),
        "fill_ratio": n_gaps / max(n_items + n_gaps, 1),
        "label_ratio": n_lab / max(n_items, 1),
        "stage2_keep": n_gaps / max(n_stage1, 1),
        "users_with_gap": float(np.mean([len(x.fill_after) > 0 for x in examples]))
        if examples else 0.0,
    }
    return GBRInputs(examples=examples, stats=report)
