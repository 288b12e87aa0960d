"""Fixed CTR-track candidate sets and user segments, sampled once and stored on disk.

Every valid/test user gets ONE candidate set: the held-out positive plus ``n`` negatives drawn
uniformly, without replacement, from the items the user never interacted with (in train, valid
or test), with a fixed seed. Valid and test share the negatives; only the positive differs. The set
is stored under ``<reaseq_artifact_dir>/<dataset>/ctr_candidates/`` and reused by every model and
every epoch (RecBole's ``uni100`` resamples at every evaluation, RecBole issue #2077).

Segments: cold-start users are the least active third by training-history length (ReaSeq,
Section 4), taken by whole activity levels so that equally active users are never split: the
largest length ``c`` with share(train_len <= c) <= ``cold_fraction`` (at least the minimum length).
On amazon-beauty that is train_len <= 3, 32.0 % of users. Hot users are the rest.

Raw tokens (not RecBole's remapped ids) are stored, together with a manifest holding the sha256 of
the ``.inter`` file: a candidate file built from other data is detected as stale and rebuilt.
"""
from __future__ import annotations

import json
import logging
import os
import time

import numpy as np

from recbole_reaseq.data.datasets import file_sha256

VERSION = 1


def leave_one_out_positions(uids: np.ndarray, times: np.ndarray):
    """Per user (rows of equal ``uids``), the row indices in time order (stable, ties keep file order).

    Returns ``order`` (row indices sorted by user then time) and ``starts``/``ends`` per user.
    """
    order = np.lexsort((times, uids))  # stable: same-time rows keep file order
    sorted_u = uids[order]
    bounds = np.flatnonzero(np.r_[True, sorted_u[1:] != sorted_u[:-1], True])
    return order, bounds[:-1], bounds[1:]


def recbole_time_key(times: np.ndarray, normalize: bool) -> np.ndarray:
    """[N] float32: the key RecBole 1.2.1 sorts interactions by (``order: TO``, stable sort).

    RecBole reads a ``timestamp:float`` column as float64, rescales it to
    ``(t - min) / (max - min)`` when its config normalises the field
    (:func:`recbole_reaseq.config.time_normalized`; RecBole's own ml-100k defaults do), and stores
    it as float32 before sorting. Distinct timestamps can therefore tie (ml-100k, normalised: 164
    of its 49,282 distinct timestamps), and tied rows keep file order. Sorting by this key
    reproduces RecBole's order exactly, on unfiltered data (the min and max are taken over the
    rows given; RecBole takes them after its filters).
    """
    t = np.asarray(times, dtype=np.float64)                          # [N]
    if normalize and len(t):
        lo, hi = t.min(), t.max()
        t = np.ones_like(t) if hi == lo else (t - lo) / (hi - lo)
    return t.astype(np.float32)


def time_order_note(uids: np.ndarray, times: np.ndarray, normalize: bool,
                    order: np.ndarray | None = None) -> dict:
    """``{"time_order": ...}`` when RecBole's order (:func:`recbole_time_key`) differs from the raw
    timestamps' order, else ``{}``: an entry for the fingerprints of artefacts built on that order.
    ``order``: RecBole's order when the caller has sorted by it already
    (:func:`leave_one_out_positions` of ``recbole_time_key(times, normalize)``).

    Empty where the two orders agree (amazon-beauty: day-resolution timestamps stay exact in
    float32, normalised or not), so artefacts built there before the key existed stay valid."""
    raw, _, _ = leave_one_out_positions(uids, np.asarray(times, dtype=np.float64))
    ours = order if order is not None else leave_one_out_positions(
        uids, recbole_time_key(times, normalize))[0]
    if np.array_equal(raw, ours):
        return {}
    return {"time_order": "recbole-float32" + ("-normalized" if normalize else "")}


def cold_threshold(train_len: np.ndarray, cold_fraction: float) -> int:
    """Largest c with mean(train_len <= c) <= cold_fraction (whole activity levels), >= min."""
    values = np.unique(train_len)
    best = int(values[0])
    for c in values:
        if np.mean(train_len <= c) <= cold_fraction + 1e-12:
            best = int(c)
        else:
            break
    return best


def sample_negatives(user_items: list[np.ndarray], n_items: int, n_neg: int, seed: int) -> np.ndarray:
    """For each user, ``n_neg`` distinct item ids in [1, n_items) not in the user's items."""
    rng = np.random.default_rng(seed)
    out = np.empty((len(user_items), n_neg), dtype=np.int64)
    for row, items in enumerate(user_items):
        seen = set(int(i) for i in items)
        if n_items - 1 - len(seen) < n_neg:
            raise ValueError(f"user row {row} has only {n_items - 1 - len(seen)} unseen items; "
                             f"lower ctr_num_negatives (now {n_neg}).")
        chosen: list[int] = []
        taken = set(seen)
        while len(chosen) < n_neg:
            for item in rng.integers(1, n_items, size=2 * n_neg):
                item = int(item)
                if item not in taken:
                    taken.add(item)
                    chosen.append(item)
                    if len(chosen) == n_neg:
                        break
        out[row] = chosen
    return out


class CandidateSet:
    """Candidates and segments in RecBole's internal ids, indexed by internal user id."""

    def __init__(self, user_ids, valid_pos, test_pos, negatives, train_len, cold, info):
        self.user_ids = user_ids          # [U] internal ids
        self.valid_pos = valid_pos        # [U]
        self.test_pos = test_pos          # [U]
        self.negatives = negatives        # [U, n]
        self.train_len = train_len        # [U]
        self.cold = cold                  # [U] bool
        self.info = info
        self.row_of_user = {int(u): r for r, u in enumerate(user_ids)}

    def rows(self, uids) -> np.ndarray:
        try:
            return np.fromiter((self.row_of_user[int(u)] for u in uids), dtype=np.int64,
                               count=len(uids))
        except KeyError as err:
            raise KeyError(f"user id {err.args[0]} has no CTR candidate set; the candidate "
                           "file does not match this data set (delete it to rebuild).") from None

    def valid_subset(self, n_users: int, seed: int) -> np.ndarray:
        """[U] bool: a fixed random subset of ``n_users`` users for cheaper early stopping."""
        mask = np.zeros(len(self.user_ids), dtype=bool)
        if n_users >= len(mask):
            mask[:] = True
        else:
            mask[np.random.default_rng(seed).choice(len(mask), n_users, replace=False)] = True
        return mask

    def candidates(self, uids, phase: str) -> np.ndarray:
        """[B, 1 + n] item ids: column 0 is the held-out positive of ``phase``."""
        rows = self.rows(uids)
        pos = (self.valid_pos if phase == "valid" else self.test_pos)[rows]
        return np.concatenate([pos[:, None], self.negatives[rows]], axis=1)


def candidate_file(config) -> str:
    root = os.path.join(config["reaseq_artifact_dir"], config["dataset"], "ctr_candidates")
    name = f"seed{config['ctr_candidate_seed']}_neg{config['ctr_num_negatives']}"
    return os.path.join(root, name)


def _inter_file(config) -> str:
    return os.path.join(config["data_path"], f"{config['dataset']}.inter")


def build_candidates(dataset, n_neg: int, seed: int, cold_fraction: float) -> dict:
    """Sample candidates from a RecBole Dataset (after filtering, before the split); raw tokens."""
    uid_f, iid_f, time_f = dataset.uid_field, dataset.iid_field, dataset.time_field
    inter = dataset.inter_feat
    uids = inter[uid_f].numpy()
    iids = inter[iid_f].numpy()
    times = inter[time_f].numpy() if time_f in inter.columns else np.arange(len(uids))
    order, starts, ends = leave_one_out_positions(uids, times)
    if np.any(ends - starts < 3):
        raise ValueError("every user needs >= 3 interactions for leave-one-out (train, valid, "
                         "test); filter with user_inter_num_interval: '[3,inf)'.")
    users = uids[order[starts]]
    test_pos = iids[order[ends - 1]]
    valid_pos = iids[order[ends - 2]]
    train_len = (ends - starts - 2).astype(np.int64)
    user_items = [iids[order[s:e]] for s, e in zip(starts, ends)]
    negatives = sample_negatives(user_items, dataset.item_num, n_neg, seed)
    cut = cold_threshold(train_len, cold_fraction)
    return {
        "users": dataset.id2token(uid_f, users).astype(str),
        "valid_pos": dataset.id2token(iid_f, valid_pos).astype(str),
        "test_pos": dataset.id2token(iid_f, test_pos).astype(str),
        "negatives": dataset.id2token(iid_f, negatives.reshape(-1)).astype(str).reshape(
            negatives.shape),
        "train_len": train_len,
        "cold": train_len <= cut,
        "cold_max_train_len": np.int64(cut),
    }


def _to_internal(dataset, raw: dict, manifest: dict) -> CandidateSet:
    uid_f, iid_f = dataset.uid_field, dataset.iid_field
    token = lambda field, arr: np.asarray(dataset.token2id(field, list(arr)), dtype=np.int64)
    negatives = token(iid_f, raw["negatives"].reshape(-1)).reshape(raw["negatives"].shape)
    return CandidateSet(token(uid_f, raw["users"]), token(iid_f, raw["valid_pos"]),
                        token(iid_f, raw["test_pos"]), negatives, raw["train_len"],
                        raw["cold"].astype(bool), manifest)


def load_or_build_candidates(config, dataset) -> CandidateSet:
    """The stored candidate set for (data set, candidate seed, n); built once if missing or stale."""
    logger = logging.getLogger()
    base = candidate_file(config)
    inter_hash = file_sha256(_inter_file(config))
    wanted = {"version": VERSION, "dataset": config["dataset"], "inter_sha256": inter_hash,
              "seed": int(config["ctr_candidate_seed"]), "num_negatives":
              int(config["ctr_num_negatives"]), "cold_fraction": float(config["ctr_cold_fraction"]),
              "filters": {k: str(config[k]) for k in ("user_inter_num_interval",
                                                      "item_inter_num_interval", "val_interval")}}
    manifest_path, data_path = base + ".json", base + ".npz"
    if os.path.isfile(manifest_path) and os.path.isfile(data_path):
        with open(manifest_path, encoding="utf-8") as f:
            manifest = json.load(f)
        if all(manifest.get(k) == v for k, v in wanted.items()):
            with np.load(data_path, allow_pickle=False) as npz:
                raw = {k: npz[k] for k in npz.files}
            return _to_internal(dataset, raw, manifest)
        logger.warning(f"CTR candidates at {data_path} are stale (built from other data or "
                       "settings); rebuilding them.")
    start = time.time()
    raw = build_candidates(dataset, wanted["num_negatives"], wanted["seed"],
                           wanted["cold_fraction"])
    os.makedirs(os.path.dirname(base), exist_ok=True)
    tmp = data_path + ".tmp.npz"
    np.savez_compressed(tmp, **raw)
    os.replace(tmp, data_path)
    manifest = dict(wanted, users=int(len(raw["users"])), cold_users=int(raw["cold"].sum()),
                    cold_max_train_len=int(raw["cold_max_train_len"]),
                    build_seconds=round(time.time() - start, 3))
    with open(manifest_path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    os.replace(manifest_path + ".tmp", manifest_path)
    logger.info(f"CTR candidates written to {data_path}")
    return _to_internal(dataset, raw, manifest)
