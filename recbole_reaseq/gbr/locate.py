"""Beyond-log behaviour location: where in a user's sequence did behaviour happen off the log?

Reference: ReaSeq (TaoRank Team, arXiv 2512.21257), Section 3.1 ("beyond-log behaviour location")
and Table 5 (variants GBR-T-0, GBR-C-0, GBR-TC-0).

A *candidate position* ``i`` of a sequence ``x_0 .. x_{n-1}`` means "between ``x_i`` and
``x_{i+1}``" (``0 <= i <= n-2``); a [FILL] token is later inserted there. Positions are 0-based
indices into the time-ordered sequence (stable order, same-time ties keep file order, exactly as
:func:`recbole_reaseq.data.candidates.leave_one_out_positions`).

Stage 1 (rules, :func:`stage1_positions`), all on consecutive behaviours ``(x_i, x_{i+1})``:

* ``TD`` (time discontinuity): ``t_{i+1} - t_i > time_threshold`` (strict). The default threshold
  is a percentile of the *positive* gaps of the data (:func:`default_time_threshold`, 75th by
  default): Beauty timestamps have day resolution and 44 % of its consecutive gaps are 0 (same-day
  ties), so a percentile of all gaps would be meaningless. Measured on the full sequences:
  Beauty p50/p75/p90 of positive gaps = 47/147/327 days; ml-100k = 37 s / 68 s / 173 s (ml-100k
  users rate in bursts; its TD positions are the slow steps within and the breaks between them).
  On the training views (what :func:`recbole_reaseq.gbr.labels.build_gbr_inputs` uses) the p75
  thresholds are 141 days (Beauty) and 67 s (ml-100k).
* ``CD`` (category discontinuity): the category label at a configurable level differs,
  ``c_{i+1} != c_i``. A pair where either label is unknown (code ``-1``) is never a CD position
  (an unknown category is not evidence of a change).
* ``TDCD``: ``TD or CD`` (the union asked for by the issue; not a Table 5 variant).
* Table 5 names, selectable verbatim: ``T`` = ``TD``; ``C`` = ``CD``; ``TC`` = ``TD and CD`` (the
  paper's coarse filter requires *both* a long time gap and a category change, so ``TC`` is the
  intersection, not the union).

Category labels (:func:`category_label`): the label at level ``k`` is the category path's prefix of
``k`` levels (so equal level names under different parents stay different), the whole path if it
is shorter. Beauty paths start with the store level ``Beauty``, so the meaningful default level is
2 (Makeup / Skin Care / Hair Care ...). ml-100k has genre *lists* (``class``, alphabetical, e.g.
``Action Adventure Thriller``); as in :mod:`recbole_reaseq.knowledge.items` the store root
``Movies`` is prepended, so level 2 = the FIRST listed genre, level 3 = the first two genres.
NOTE: "first genre" favours alphabetically early genres (a movie tagged Action and Romance is
Action); it is a documented rule, not a semantic choice.

Stage 2 (model-based, :func:`stage2_filter`; beyond the paper, which leaves it as future work): a
stage-1 position ``i`` is kept only if the observed next item ``x_{i+1}`` ranks worse than
``kappa`` (rank > kappa, 1-based, ties counted against it) among all items scored by a pretrained
next-item scorer given the prefix ``x_0 .. x_i``: the log "jumps" to something the model did not
expect. Scorers implement :class:`NextItemScorer`: ``score_next(prefixes) -> [B, n_items]`` (column
0 is RecBole's padding item and is never ranked). Provided: :class:`SwingScorer` (item-to-item
Swing co-occurrence graph built from TRAINING sequences only, scipy.sparse), :class:`CallableScorer`
(any callable) and :func:`recbole_sequential_scorer` (a trained RecBole sequential model, e.g. a
SASRec checkpoint).

Data loading (:func:`load_sequences`) reads RecBole atomic files; item ids are local (1..N in order
of first appearance in the ``.inter`` file, 0 = padding) with their raw tokens in ``item_tokens``.
NOTE: these are not RecBole's remapped ids; map through the tokens.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Protocol, Sequence, Tuple

import numpy as np
import scipy.sparse as sp
import torch

from recbole_reaseq.data.candidates import (leave_one_out_positions, recbole_time_key,
                                             time_order_note)
from recbole_reaseq.data.datasets import read_atomic

__all__ = ["RULES", "TABLE5_RULES", "DEFAULT_TIME_PERCENTILE", "MissingFieldError", "SequenceData",
           "category_label", "load_sequences", "time_gaps", "default_time_threshold",
           "td_positions", "cd_positions", "stage1_positions", "NextItemScorer", "SwingScorer",
           "CallableScorer", "recbole_sequential_scorer", "swing_similarity", "next_item_ranks",
           "stage2_filter", "locate_gaps"]

# rule -> (needs time, needs category, combine)
RULES: Dict[str, Tuple[bool, bool, str]] = {
    "TD": (True, False, "td"), "CD": (False, True, "cd"), "TDCD": (True, True, "or"),
    "T": (True, False, "td"), "C": (False, True, "cd"), "TC": (True, True, "and"),
}
TABLE5_RULES = ("T", "C", "TC")
DEFAULT_TIME_PERCENTILE = 75.0
UNKNOWN_CATEGORY = -1


class MissingFieldError(ValueError):
    """A location rule needs a field (timestamp or category) that the data set lacks."""


# ==================================================================================  data
@dataclass
class SequenceData:
    """Per-user time-ordered item sequences, CSR layout (user ``u``: ``offsets[u]:offsets[u+1]``).

    ``times`` / ``cats`` are ``None`` when the data set lacks the field; ``missing`` then says why
    (used in :class:`MissingFieldError` messages).
    """

    users: np.ndarray                     # [U] raw user tokens (str)
    offsets: np.ndarray                   # [U+1] int64
    items: np.ndarray                     # [N] int64 item ids, 1..n_items-1
    times: Optional[np.ndarray] = None    # [N] float64 seconds
    cats: Optional[np.ndarray] = None     # [N] int64 category code, -1 = unknown
    item_tokens: Optional[np.ndarray] = None  # [n_items] raw token per id, [0] = "[PAD]"
    category_names: List[str] = field(default_factory=list)  # code -> label
    n_items: int = 0                      # table size incl. padding (max id + 1)
    source: str = "<in memory>"
    missing: Dict[str, str] = field(default_factory=dict)  # field -> how to fix
    time_order: Dict[str, str] = field(default_factory=dict)  # fingerprint entry of the order

    def __len__(self) -> int:
        return len(self.users)

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)                                   # [U]

    def sequence(self, u: int) -> np.ndarray:
        return self.items[self.offsets[u]:self.offsets[u + 1]]         # [n_u]

    def seq_times(self, u: int) -> np.ndarray:
        return self.require("time").times[self.offsets[u]:self.offsets[u + 1]]

    def seq_cats(self, u: int) -> np.ndarray:
        return self.require("category").cats[self.offsets[u]:self.offsets[u + 1]]

    def sequences(self) -> List[np.ndarray]:
        return [self.sequence(u) for u in range(len(self))]

    def require(self, what: str) -> "SequenceData":
        """Raise :class:`MissingFieldError` naming the field and the fix if ``what`` is absent."""
        arr = self.times if what == "time" else self.cats
        if arr is None:
            name = "timestamp" if what == "time" else "category"
            other = "C" if what == "time" else "T"
            why = self.missing.get(name, f"{self.source} has no {name} field")
            how = ("a timestamp:float column in the .inter file" if what == "time" else
                   "a category token_seq column in the .item file, named in ITEM_META_FIELDS")
            raise MissingFieldError(f"the rule needs the {name} field, but {why}. Fix: add it to "
                                    f"the data set ({how}), or use rule {other!r}.")
        return self

    @classmethod
    def from_lists(cls, items: Sequence[Sequence[int]], times: Optional[Sequence] = None,
                   cats: Optional[Sequence] = None, users: Optional[Sequence[str]] = None,
                   n_items: Optional[int] = None, source: str = "<in memory>"
                   ) -> "SequenceData":
        """Build from Python lists (one list per user); ``cats`` may hold any hashable labels."""
        lengths = np.array([len(s) for s in items], dtype=np.int64)
        offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
        flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in items]) if len(items) \
            else np.zeros(0, dtype=np.int64)
        t = None if times is None else np.concatenate(
            [np.asarray(s, dtype=np.float64) for s in times])
        c, names = None, []
        if cats is not None:
            labels = [lab for s in cats for lab in s]
            names = sorted({str(lab) for lab in labels if lab is not None})
            index = {n: k for k, n in enumerate(names)}
            c = np.array([UNKNOWN_CATEGORY if lab is None else index[str(lab)] for lab in labels],
                         dtype=np.int64)
        users = np.array(users if users is not None else [f"u{k}" for k in range(len(items))])
        n = int(n_items) if n_items is not None else int(flat.max(initial=0)) + 1
        missing = {}
        if t is None:
            missing["timestamp"] = f"{source} was built without timestamps"
        if c is None:
            missing["category"] = f"{source} was built without categories"
        return cls(users=users, offsets=offsets, items=flat, times=t, cats=c,
                   category_names=names, n_items=n, source=source, missing=missing)


def category_label(value: Optional[str], level: int, root: Optional[str] = None
                   ) -> Optional[str]:
    """Label of a category path at ``level`` (1-based): its first ``level`` levels joined by ``>``.

    ``value`` is the raw token_seq (levels separated by spaces). ``root`` is prepended (ml-100k:
    ``Movies``, so level 2 is the first genre). Shorter paths give their whole path; an empty value
    gives ``None`` (unknown).
    """
    if level < 1:
        raise ValueError(f"category level must be >= 1, got {level}")
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    levels = [lv for lv in str(value).split(" ") if lv]
    if not levels:
        return None
    path = ([root] if root else []) + levels
    return ">".join(path[:level])


def load_sequences(dataset: str, data_path: Optional[str] = None,
                   category_level: Optional[int] = None,
                   normalize_time: Optional[bool] = None) -> SequenceData:
    """Time-ordered sequences of every user of ``<dataset>.inter`` with timestamps and categories.

    The order is RecBole's (:func:`recbole_reaseq.data.candidates.recbole_time_key`): a stable
    sort by the float32 timestamp, rescaled to [0, 1] when ``normalize_time`` (``None``: as the
    data set's RecBole defaults, :func:`recbole_reaseq.config.default_time_normalized`). Rows
    whose timestamps tie there keep file order, exactly as in RecBole's histories; the raw
    timestamps are kept in ``times``. ``time_order`` is the fingerprint entry of that order
    (:func:`recbole_reaseq.data.candidates.time_order_note`).

    ``category_level`` defaults to the data set's primary level
    (:func:`recbole_reaseq.knowledge.items.category_levels`: 2 for Beauty and ml-100k). A missing
    timestamp column or ``.item`` file / category column does not fail here: the field is ``None``
    and the rule that needs it raises :class:`MissingFieldError`.
    """
    from recbole_reaseq.knowledge.items import (CATEGORY_ROOTS, category_levels, dataset_folder,
                                                meta_fields)

    folder = dataset_folder(dataset, data_path)
    inter_path = os.path.join(folder, f"{dataset}.inter")
    if not os.path.isfile(inter_path):
        raise FileNotFoundError(f"{inter_path} not found. Fix: pass data_path to the folder that "
                                f"holds {dataset}/{dataset}.inter.")
    inter = read_atomic(inter_path)
    for col in ("user_id", "item_id"):
        if col not in inter.columns:
            raise KeyError(f"{inter_path}: no column {col!r} (it has {list(inter.columns)})")
    users_raw = inter["user_id"].to_numpy()
    tokens_raw = inter["item_id"].to_numpy()
    codes, uniq = _first_appearance_codes(tokens_raw)
    item_ids = codes + 1                                              # [N] 1..n
    user_codes, user_uniq = _first_appearance_codes(users_raw)
    missing: Dict[str, str] = {}
    time_order: Dict[str, str] = {}
    if "timestamp" in inter.columns:
        if normalize_time is None:
            from recbole_reaseq.config import default_time_normalized

            normalize_time = default_time_normalized(dataset, data_path)
        times = inter["timestamp"].astype(np.float64).to_numpy()
        order, starts, ends = leave_one_out_positions(
            user_codes, recbole_time_key(times, normalize_time))
        time_order = time_order_note(user_codes, times, normalize_time, order)
    else:
        times = None
        missing["timestamp"] = (f"{inter_path} has no 'timestamp' column (it has "
                                f"{list(inter.columns)})")
        order, starts, ends = leave_one_out_positions(user_codes, np.zeros(len(user_codes)))
    level = category_level or category_levels(dataset)[0]
    cats, names = None, []
    column = meta_fields(dataset).get("category")
    item_path = os.path.join(folder, f"{dataset}.item")
    if not column:
        missing["category"] = f"data set {dataset!r} maps no column to the category role"
    elif not os.path.isfile(item_path):
        missing["category"] = f"{item_path} (the item file with column {column!r}) does not exist"
    else:
        meta = read_atomic(item_path)
        if column not in meta.columns:
            missing["category"] = (f"{item_path} has no column {column!r} (it has "
                                   f"{list(meta.columns)})")
        else:
            meta = meta.drop_duplicates("item_id").set_index("item_id")[column]
            root = CATEGORY_ROOTS.get(dataset)
            labels = [category_label(v, level, root) for v in meta.reindex(uniq).to_numpy()]
            names = sorted({lab for lab in labels if lab is not None})
            index = {n: k for k, n in enumerate(names)}
            per_item = np.array([UNKNOWN_CATEGORY if lab is None else index[lab]
                                 for lab in labels], dtype=np.int64)   # [n]
            cats = per_item[codes][order]
    lengths = (ends - starts).astype(np.int64)
    return SequenceData(
        users=user_uniq[user_codes[order[starts]]].astype(str),
        offsets=np.r_[0, np.cumsum(lengths)].astype(np.int64),
        items=item_ids[order].astype(np.int64),
        times=None if times is None else times[order],
        cats=cats, item_tokens=np.r_[np.array(["[PAD]"], dtype=object), uniq.astype(object)],
        category_names=names, n_items=len(uniq) + 1, source=f"{dataset} ({folder})",
        missing=missing, time_order=time_order)


def _first_appearance_codes(values: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Codes 0..k-1 in order of first appearance, and the distinct values in that order."""
    uniq, first, inv = np.unique(values, return_index=True, return_inverse=True)
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(uniq))
    return rank[inv], uniq[np.argsort(first, kind="stable")]


# ===============================================================================  stage 1
def time_gaps(data: SequenceData) -> np.ndarray:
    """All within-user consecutive gaps ``t_{i+1} - t_i`` (seconds), pooled over users."""
    times = data.require("time").times                                 # [N]
    if len(times) < 2:
        return np.zeros(0)
    gaps = np.diff(times)                                              # [N-1]
    same_user = np.ones(len(gaps), dtype=bool)
    bounds = data.offsets[1:-1] - 1                                    # gap across users u-1, u
    same_user[bounds[(bounds >= 0) & (bounds < len(gaps))]] = False
    return gaps[same_user]


def default_time_threshold(data: SequenceData, percentile: float = DEFAULT_TIME_PERCENTILE
                           ) -> float:
    """The ``percentile`` of the POSITIVE within-user gaps (zero gaps = same-time ties excluded).

    Call it on the training view (:func:`recbole_reaseq.gbr.labels.training_view`) so that
    valid/test timestamps do not shape the threshold.
    """
    gaps = time_gaps(data)
    positive = gaps[gaps > 0]
    if positive.size == 0:
        raise ValueError(f"{data.source}: no positive time gap; TD cannot fire. Use rule 'C'.")
    return float(np.percentile(positive, percentile))


def td_positions(times: np.ndarray, threshold: float) -> np.ndarray:
    """Positions ``i`` with ``times[i+1] - times[i] > threshold``. times [n] -> [k] int64."""
    return np.flatnonzero(np.diff(np.asarray(times, dtype=np.float64)) > threshold)


def cd_positions(cats: np.ndarray) -> np.ndarray:
    """Positions ``i`` with known, different labels at ``i`` and ``i+1``. cats [n] -> [k] int64."""
    c = np.asarray(cats)
    known = (c[:-1] != UNKNOWN_CATEGORY) & (c[1:] != UNKNOWN_CATEGORY)
    return np.flatnonzero((c[1:] != c[:-1]) & known)


def _check_rule(rule: str) -> Tuple[bool, bool, str]:
    if rule not in RULES:
        raise ValueError(f"unknown location rule {rule!r}; choose one of {', '.join(RULES)} "
                         f"(Table 5: T = TD, C = CD, TC = TD and CD; TDCD = TD or CD)")
    return RULES[rule]


def stage1_positions(rule: str, times: Optional[np.ndarray] = None,
                     cats: Optional[np.ndarray] = None,
                     time_threshold: Optional[float] = None) -> np.ndarray:
    """Stage-1 candidate positions of ONE sequence under ``rule`` (sorted int64 array).

    Raises :class:`MissingFieldError` when the rule needs ``times`` / ``cats`` and they are None.
    """
    need_t, need_c, how = _check_rule(rule)
    if need_t and times is None:
        raise MissingFieldError(f"rule {rule!r} needs the timestamp field (times=None). Fix: "
                                f"load a data set with timestamps or use rule 'C'.")
    if need_c and cats is None:
        raise MissingFieldError(f"rule {rule!r} needs the category field (cats=None). Fix: "
                                f"load a data set with item categories or use rule 'T'.")
    if need_t and time_threshold is None:
        raise ValueError(f"rule {rule!r} needs time_threshold (see default_time_threshold)")
    td = td_positions(times, time_threshold) if need_t else None
    cd = cd_positions(cats) if need_c else None
    if how == "td":
        return td
    if how == "cd":
        return cd
    if how == "or":
        return np.union1d(td, cd).astype(np.int64)
    return np.intersect1d(td, cd).astype(np.int64)


# ================================================================================  scorers
class NextItemScorer(Protocol):
    """Scores every item as the next behaviour after each prefix.

    ``score_next(prefixes)``: a list of B int arrays (item ids, oldest first, possibly empty) ->
    float tensor ``[B, n_items]`` (higher = more likely; column 0, the padding item, is ignored by
    every consumer). Scores are logits: :mod:`recbole_reaseq.gbr.labels` applies a log-softmax.
    """

    n_items: int

    def score_next(self, prefixes: Sequence[np.ndarray]) -> torch.Tensor: ...


class CallableScorer:
    """Adapter: any ``fn(prefixes) -> [B, n_items]`` (tensor or array) becomes a scorer."""

    def __init__(self, fn: Callable[[Sequence[np.ndarray]], object], n_items: int):
        self.fn, self.n_items = fn, int(n_items)

    def score_next(self, prefixes: Sequence[np.ndarray]) -> torch.Tensor:
        out = torch.as_tensor(self.fn(prefixes), dtype=torch.float32)  # [B, n_items]
        if out.shape != (len(prefixes), self.n_items):
            raise ValueError(f"scorer returned {tuple(out.shape)}, expected "
                             f"({len(prefixes)}, {self.n_items})")
        return out


def recbole_sequential_scorer(model, n_items: int, max_len: int,
                              device: Optional[str] = None) -> CallableScorer:
    """A trained RecBole sequential model (SASRec, GRU4Rec, ...) as a :class:`NextItemScorer`.

    Prefixes are left-truncated to the last ``max_len`` items and right-padded with 0 (RecBole's
    layout), then ``model.full_sort_predict`` scores all items. Item ids must be the MODEL's ids
    (RecBole's remapped ids). NOTE: an empty prefix gets all-zero scores (uniform), since RecBole's
    models cannot read a length-0 sequence.
    """
    from recbole.data.interaction import Interaction

    dev = device or next(model.parameters()).device

    def fn(prefixes: Sequence[np.ndarray]) -> torch.Tensor:
        out = torch.zeros(len(prefixes), n_items)                      # [B, n_items]
        rows = [k for k, p in enumerate(prefixes) if len(p) > 0]
        if not rows:
            return out
        seq = torch.zeros(len(rows), max_len, dtype=torch.long)         # [b, max_len]
        lens = torch.zeros(len(rows), dtype=torch.long)                 # [b]
        for r, k in enumerate(rows):
            p = np.asarray(prefixes[k][-max_len:], dtype=np.int64)
            seq[r, :len(p)] = torch.from_numpy(p)
            lens[r] = len(p)
        inter = Interaction({model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: lens}).to(dev)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            scores = model.full_sort_predict(inter).view(len(rows), -1).float().cpu()
        model.train(was_training)
        out[rows] = scores[:, :n_items]
        return out

    return CallableScorer(fn, n_items)


class SwingScorer:
    """Swing item-to-item graph (Yang et al. 2020, "Large Scale Product Graph Construction for
    Recommendation in E-commerce") as a next-item scorer.

    ``sim(i, j) = sum over unordered user pairs {u, v}, u != v, both of whom interacted with i and
    j, of w_u * w_v / (alpha + |I_u ∩ I_v|)`` for ``i != j`` (``sim(i, i) = 0``), where ``I_u`` is
    the SET of items of user ``u`` and ``w_u = |I_u| ** -user_power`` (0 = the plain Swing of the
    paper's first formula; 0.5 = its user-weighted variant). Built from the sequences it is given:
    pass TRAINING sequences only (:func:`recbole_reaseq.gbr.labels.training_view`).

    Raw score of item ``j`` after a prefix: ``s_j = sum_{m=0}^{window-1} decay**m *
    sim(prefix[-1-m], j)`` (the last ``window`` items, the most recent weighted 1).

    * ``output="raw"``: ``score_next`` returns ``s`` (an empty prefix scores all zeros).
    * ``output="logprob"`` (default): ``log P(j)`` with ``P(j) = (1 - mix) * s_j / sum_k s_k +
      mix * prior_j`` (Jelinek-Mercer smoothing; ``prior`` = training popularity with add-one,
      uniform if not given; ``P = prior`` when ``sum_k s_k = 0``, e.g. an empty prefix). A
      log-softmax of these scores returns them unchanged, so Δ (labels.py) is a difference of
      honest log-probabilities whatever the scale of the Swing weights.

    NOTE: user pairs sharing a single item contribute only to ``sim(i, i)``, which is dropped, so
    only pairs sharing >= 2 items are enumerated (exact, and what keeps it cheap).
    NOTE: the smoothing and the popularity prior are ours (Swing is a similarity, not a model).
    """

    def __init__(self, sim: sp.csr_matrix, window: int = 1, decay: float = 0.5,
                 popularity: Optional[np.ndarray] = None, mix: float = 0.1,
                 output: str = "logprob"):
        if output not in ("raw", "logprob"):
            raise ValueError(f"output {output!r}: choose 'raw' or 'logprob'")
        self.sim = sim.tocsr()                                         # [n_items, n_items]
        self.n_items = int(sim.shape[0])
        self.window, self.decay, self.mix = int(window), float(decay), float(mix)
        self.output = output
        prior = np.ones(self.n_items) if popularity is None else np.asarray(popularity, float) + 1.0
        prior[0] = 0.0                                                 # padding is never next
        self.prior = prior / prior.sum()                               # [n_items]

    @classmethod
    def from_sequences(cls, sequences: Sequence[np.ndarray], n_items: int, alpha: float = 1.0,
                       user_power: float = 0.0, window: int = 1, decay: float = 0.5,
                       mix: float = 0.1, output: str = "logprob") -> "SwingScorer":
        flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences]) \
            if len(sequences) else np.zeros(0, dtype=np.int64)
        popularity = np.bincount(flat, minlength=n_items)[:n_items]    # [n_items]
        return cls(swing_similarity(sequences, n_items, alpha, user_power), window, decay,
                   popularity=popularity, mix=mix, output=output)

    def raw_scores(self, prefixes: Sequence[np.ndarray]) -> np.ndarray:
        rows, cols, vals = [], [], []
        for b, p in enumerate(prefixes):
            p = np.asarray(p, dtype=np.int64)
            for m in range(min(self.window, len(p))):
                rows.append(b)
                cols.append(int(p[-1 - m]))
                vals.append(self.decay ** m)
        weights = sp.csr_matrix((vals, (rows, cols)), shape=(len(prefixes), self.n_items))
        return np.asarray((weights @ self.sim).toarray(), dtype=np.float64)  # [B, n_items]

    def score_next(self, prefixes: Sequence[np.ndarray]) -> torch.Tensor:
        s = self.raw_scores(prefixes)                                  # [B, n_items]
        if self.output == "raw":
            return torch.from_numpy(s.astype(np.float32))
        s[:, 0] = 0.0
        total = s.sum(axis=1, keepdims=True)                           # [B, 1]
        share = np.divide(s, total, out=np.zeros_like(s), where=total > 0)  # [B, n_items]
        mix = np.where(total > 0, self.mix, 1.0)                       # [B, 1]
        prob = (1.0 - mix) * share + mix * self.prior[None, :]         # [B, n_items]
        with np.errstate(divide="ignore"):
            return torch.from_numpy(np.log(prob).astype(np.float32))  # column 0 = -inf


def swing_similarity(sequences: Sequence[np.ndarray], n_items: int, alpha: float = 1.0,
                     user_power: float = 0.0) -> sp.csr_matrix:
    """The Swing matrix ``[n_items, n_items]`` (see :class:`SwingScorer`); symmetric, zero diagonal.

    Computed as ``P^T diag(w) P`` where ``P[(u,v), i] = 1`` iff both users of the pair have item
    ``i``, over user pairs that share >= 2 items, and
    ``w_(u,v) = w_u w_v / (alpha + |I_u ∩ I_v|)``.
    """
    sets = [np.unique(np.asarray(s, dtype=np.int64)) for s in sequences]
    sets = [s[s > 0] for s in sets]
    n_users = len(sets)
    if n_users < 2:
        return sp.csr_matrix((n_items, n_items), dtype=np.float64)
    r_u = np.repeat(np.arange(n_users), [len(s) for s in sets])
    r_i = np.concatenate(sets) if sets else np.zeros(0, dtype=np.int64)
    R = sp.csr_matrix((np.ones(len(r_u)), (r_u, r_i)), shape=(n_users, n_items))  # [U, n]
    overlap = sp.triu(R @ R.T, k=1).tocoo()                           # [U, U] u < v
    keep = overlap.data >= 2
    pu, pv, common = overlap.row[keep], overlap.col[keep], overlap.data[keep]
    sizes = np.array([len(s) for s in sets], dtype=np.float64)
    w_user = np.where(sizes > 0, sizes, 1.0) ** (-float(user_power))  # [U]
    w_pair = w_user[pu] * w_user[pv] / (alpha + common)                # [P]
    # P[(u,v), i] = R[u, i] * R[v, i]  (elementwise product of the two users' rows)
    P = R[pu].multiply(R[pv]).tocsr()                                  # [P, n]
    sim = (P.T @ sp.diags(w_pair) @ P).tocsr()                         # [n, n]
    sim.setdiag(0.0)
    sim.eliminate_zeros()
    return sim


# ===============================================================================  stage 2
def next_item_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1-based rank of ``targets`` [B] within ``scores`` [B, n_items]; column 0 (padding) is not
    ranked; ties count against the target (rank = 1 + #other items scoring >= it)."""
    s = scores.clone()
    s[:, 0] = float("-inf")
    tgt = s.gather(1, targets.view(-1, 1))                             # [B, 1]
    ge = (s >= tgt).sum(dim=1)                                         # [B] includes the target
    return ge.to(torch.long)


def stage2_filter(items: np.ndarray, positions: np.ndarray, scorer: NextItemScorer,
                  kappa: int, prefix_scores: Optional[torch.Tensor] = None) -> np.ndarray:
    """Keep the positions ``i`` whose next item ``items[i+1]`` ranks worse than ``kappa`` (rank >
    kappa) under ``scorer`` given ``items[:i+1]``.

    ``prefix_scores`` [n, n_items] (row k = scores after ``items[:k]``) may be passed to reuse one
    scoring pass (:func:`recbole_reaseq.gbr.labels.prefix_statistics` does the same in bulk).
    """
    positions = np.asarray(positions, dtype=np.int64)
    if positions.size == 0:
        return positions
    if prefix_scores is not None:
        scores = prefix_scores[torch.from_numpy(positions + 1)]        # [k, n_items]
    else:
        scores = scorer.score_next([items[:i + 1] for i in positions])  # [k, n_items]
    targets = torch.from_numpy(np.asarray(items, dtype=np.int64)[positions + 1])  # [k]
    ranks = next_item_ranks(scores, targets).numpy()                  # [k]
    return positions[ranks > kappa]


def locate_gaps(data: SequenceData, rule: str, time_threshold: Optional[float] = None,
                time_percentile: float = DEFAULT_TIME_PERCENTILE,
                scorer: Optional[NextItemScorer] = None, kappa: Optional[int] = None
                ) -> Tuple[List[np.ndarray], Dict[str, float]]:
    """Stage 1 (+ stage 2 when ``scorer`` and ``kappa`` are given) for every user of ``data``.

    Returns per-user position arrays and stats (``time_threshold``, ``n_pairs``, ``n_stage1``,
    ``n_gaps``). The threshold defaults to :func:`default_time_threshold` of ``data`` itself.
    """
    need_t, need_c, _ = _check_rule(rule)
    if need_t:
        data.require("time")
        if time_threshold is None:
            time_threshold = default_time_threshold(data, time_percentile)
    if need_c:
        data.require("category")
    out, n_stage1 = [], 0
    for u in range(len(data)):
        items = data.sequence(u)
        if len(items) < 2:
            out.append(np.zeros(0, dtype=np.int64))
            continue
        pos = stage1_positions(rule, data.seq_times(u) if need_t else None,
                               data.seq_cats(u) if need_c else None, time_threshold)
        n_stage1 += len(pos)
        if scorer is not None and kappa is not None:
            pos = stage2_filter(items, pos, scorer, kappa)
        out.append(pos)
    n_pairs = int(np.maximum(data.lengths() - 1, 0).sum())
    stats = {"rule": rule, "time_threshold": time_threshold, "n_pairs": n_pairs,
             "n_stage1": n_stage1, "n_gaps": int(sum(len(p) for p in out))}
    return out, stats
