"""Inference: the filled vectors of every user's located gaps, stored once per (data set, variant).

Reference: ReaSeq (TaoRank Team, arXiv 2512.21257), Section 3.2.3 (inference: [FILL] only at U,
labelled behaviours keep their observed items, the final hidden states at [FILL] are mapped back
to the item-representation space) and Section 3.3 / Table 6 (augmented sequences for CTR).

:func:`augment` reads the trained reasoner (:mod:`.train`) and, for every user of the TRAINING
view (valid/test targets dropped, :func:`recbole_reaseq.gbr.labels.training_view`), inserts a
[FILL] token after each gap position ``i`` of U (between ``x_i`` and ``x_{i+1}``), shows every
behaviour as its item (no [MASK]), runs :func:`~recbole_reaseq.gbr.reasoner.fill_predictions` and
keeps the output at each [FILL], L2-normalised. Each fill's context (``context``):

* ``prefix`` (default): the tokens up to and including ``x_{i+1}``, the behaviour right after the
  gap (the last ``max_len`` tokens). A filled vector thus depends only on behaviours that every
  CTR sample using it already has in its history (a gap is used only when ``x_i`` and ``x_{i+1}``
  are both in the history), never on that sample's target or anything later: one vector per gap,
  consistent between training rows and evaluation rows.
* ``full``: the whole training sequence (bidirectional, the paper's reading; one window of
  ``max_len`` tokens around the gap for long users). Cheaper, but the fills inside a TRAINING
  row's history have seen that row's target and later training behaviours (never valid/test ones).

Stored under ``<artifact_dir>/<dataset>/gbr/<variant>/``: ``augment.npz`` (``users`` raw tokens
[U]; ``item_offsets`` [U+1] and ``items`` [N] raw item tokens of each user's training view;
``gap_offsets`` [U+1] and ``gap_pos`` [G] the positions ``i`` of U per user, sorted; ``fills``
[G, D] float32 unit vectors in the frozen representation space) and ``manifest.augment.json``
(key: data fingerprint, the reasoner checkpoint's run key and sha256, context, version; counts,
timings). A stored augmentation whose key differs, or whose ``.npz`` was modified, is stale and
rebuilt by :func:`augment`; :func:`load_augmentation` (transform and model side) refuses it with
the command that fixes it, or rebuilds it when ``gbr_build_missing`` is set.

Evaluation-time sequences: valid and test histories are the training prefix plus held-out items
(the valid item, in the test history) that GBR never saw. They reuse the stored vectors of the
gaps inside the training prefix; no gap is ever located next to, nor any vector computed from, a
valid/test item (:mod:`.transform` uses a gap ``i`` only when ``x_i`` and ``x_{i+1}`` are both in
the row's history, and stored gaps all lie inside the training view). Changing a user's valid/test
items changes nothing stored (tested).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from recbole_reaseq.config import config_get
from recbole_reaseq.data.datasets import file_sha256

from .reasoner import build_sequence, collate, fill_predictions
from .train import (Prepared, _atomic_write_bytes, _fingerprint, config_from_recbole,
                    data_fingerprint, load_reasoner, prepare, read_json, train,
                    variant_root, write_json)

__all__ = ["AUG_VERSION", "Augmentation", "fill_windows", "augment", "augmentation_paths",
           "load_augmentation", "StaleAugmentationError", "DECODES", "decode_fills"]

logger = logging.getLogger(__name__)

AUG_VERSION = 1
WINDOW_BATCH = 256


DECODES = ("raw", "expected", "nearest")


def decode_fills(fills: torch.Tensor, items: torch.Tensor, mode: str = "raw",
                 temperature: float = 0.07, chunk: int = 2048) -> torch.Tensor:
    """Map filled vectors ``fills`` [G, D] back onto the catalogue ``items`` [N, D] (unit rows
    out, [G, D]).

    * ``raw``: the reasoner's output as it is (L2-normalised), the paper's reading;
    * ``expected``: the item representation expected under the reasoner's own in-batch softmax
      (eq. 6-7) spread over the whole catalogue, ``sum_j softmax_j(cos(f, x_j) / temperature) x_j``,
      re-normalised: a point inside the items' hull, a soft version of
    * ``nearest``: the most similar real item's representation.

    All-zero item rows (padding, items without a representation) are never used.
    """
    if mode not in DECODES:
        raise ValueError(f"gbr_fill_decode={mode!r} is unknown. Fix: use one of "
                         f"{', '.join(DECODES)}.")
    f = F.normalize(fills.float(), dim=-1)                                  # [G, D]
    if mode == "raw":
        return f
    keep = items.norm(dim=-1) > 0
    x = F.normalize(items[keep].float(), dim=-1)                           # [N', D]
    out = []
    for s in range(0, len(f), chunk):
        sims = f[s:s + chunk] @ x.T                                         # [g, N']
        if mode == "nearest":
            out.append(x[sims.argmax(dim=1)])                               # [g, D]
        else:
            out.append(F.normalize(torch.softmax(sims / temperature, dim=1) @ x, dim=-1))
    return torch.cat(out) if out else f


class StaleAugmentationError(FileNotFoundError):
    """The stored augmentation is missing or does not match the data / settings."""


@dataclass
class Augmentation:
    """A stored augmentation (raw tokens; the transform maps them to RecBole ids)."""

    users: np.ndarray          # [U] str
    item_offsets: np.ndarray   # [U+1] int64
    items: np.ndarray          # [N] str, training view, time order
    gap_offsets: np.ndarray    # [U+1] int64
    gap_pos: np.ndarray        # [G] int64, per user sorted: a fill between items i and i+1
    fills: np.ndarray          # [G, D] float32 unit vectors
    manifest: Dict[str, Any]
    path: Optional[Path] = None

    @property
    def dim(self) -> int:
        return int(self.fills.shape[1])


def augmentation_paths(dataset: str, variant: str, artifact_dir: Optional[str] = None
                       ) -> Tuple[Path, Path]:
    root = variant_root(dataset, variant, artifact_dir)
    return root / "augment.npz", root / "manifest.augment.json"


def fill_windows(n_items: int, gaps: np.ndarray, max_len: int, context: str
                 ) -> List[Tuple[int, int, List[Tuple[int, int]]]]:
    """Token windows that compute the fills of one user.

    The user's token sequence is item ``i`` followed by a [FILL] when ``i`` is in ``gaps``. Returns
    ``[(start, end, [(gap index j, token offset of its [FILL] within the window), ...]), ...]``.
    ``prefix``: one window per gap ending at the item right after it; ``full``: the whole
    sequence (``max_len``-token windows around the gaps when it is longer).
    """
    gaps = np.asarray(gaps, dtype=np.int64)
    T = n_items + len(gaps)
    fill_tok = gaps + np.arange(len(gaps)) + 1                 # [G] token index of each [FILL]
    groups: Dict[Tuple[int, int], List[Tuple[int, int]]] = {}
    for j, p in enumerate(fill_tok.tolist()):
        if context == "prefix":
            end = p + 2                                         # the [FILL] and x_{i+1}
            start = max(0, end - max_len)
        elif T <= max_len:
            start, end = 0, T
        else:
            end = min(T, max(p + 1 + max_len // 2, max_len))
            start = end - max_len
        groups.setdefault((start, end), []).append((j, p - start))
    return [(s, e, reads) for (s, e), reads in groups.items()]


def _compute_fills(prep: Prepared, model) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    cfg = prep.cfg
    examples = prep.inputs.examples
    gap_counts = np.array([len(x.fill_after) for x in examples], dtype=np.int64)
    gap_offsets = np.r_[0, np.cumsum(gap_counts)].astype(np.int64)
    dim = int(prep.item_repr.shape[1])
    fills = np.zeros((int(gap_offsets[-1]), dim), dtype=np.float32)
    jobs = []                                   # (ids, kinds, [(global row, offset)])
    for u, x in enumerate(examples):
        if not len(x.fill_after):
            continue
        ids, kinds, _ = build_sequence(x.items, x.fill_after, (), None)
        for start, end, reads in fill_windows(len(x.items), x.fill_after, cfg.max_len,
                                              cfg.context):
            jobs.append((ids[start:end], kinds[start:end],
                         [(int(gap_offsets[u]) + j, off) for j, off in reads]))
    jobs.sort(key=lambda job: len(job[0]))      # similar lengths per batch: less padding
    for lo in range(0, len(jobs), WINDOW_BATCH):
        chunk = jobs[lo:lo + WINDOW_BATCH]
        batch = collate([(i, k, np.zeros(len(i), dtype=bool)) for i, k, _ in chunk])
        pred = fill_predictions(model, batch)                          # [B, T, D]
        rows, bs, ts = [], [], []
        for b, (_, _, reads) in enumerate(chunk):
            for row, off in reads:
                rows.append(row)
                bs.append(b)
                ts.append(off)
        vec = F.normalize(pred[torch.tensor(bs), torch.tensor(ts)].float(), dim=-1)  # [q, D]
        fills[np.asarray(rows)] = vec.numpy()
    gap_pos = np.concatenate([x.fill_after for x in examples]).astype(np.int64) \
        if examples else np.zeros(0, dtype=np.int64)
    return gap_offsets, gap_pos, fills


def _key(prep: Prepared, train_manifest: Dict[str, Any]) -> Dict[str, Any]:
    return {"version": AUG_VERSION, "dataset": prep.cfg.dataset, "variant": prep.cfg.variant,
            "data": prep.data_fp, "reasoner_key": train_manifest.get("key_fingerprint"),
            "reasoner_sha256": train_manifest.get("checkpoint_sha256"),
            "context": prep.cfg.context, "max_len": prep.cfg.max_len}


def _fresh(npz: Path, manifest: Optional[Dict[str, Any]], key: Optional[Dict[str, Any]]
           ) -> List[str]:
    """Reasons why the stored augmentation is not usable ([] = fresh)."""
    if manifest is None:
        return ["no manifest.augment.json"]
    if not npz.is_file():
        return [f"{npz.name} is missing"]
    problems = []
    if key is not None:
        problems += [f"{k} changed" for k in key if manifest.get("key", {}).get(k) != key[k]]
    if file_sha256(str(npz)) != manifest.get("npz_sha256"):
        problems.append(f"{npz.name} was modified after it was written")
    return problems


def augment(prep: Prepared, force: bool = False) -> Dict[str, Any]:
    """Build (or reuse, when fresh) the augmentation of ``prep.cfg``; returns its manifest."""
    cfg = prep.cfg
    model, train_manifest = load_reasoner(prep)
    key = _key(prep, train_manifest)
    npz, mpath = augmentation_paths(cfg.dataset, cfg.variant, cfg.artifact_dir)
    old = read_json(mpath)
    problems = _fresh(npz, old, key)
    if not problems and not force:
        return dict(old, status="fresh")
    if old is not None and problems:
        logger.warning("GBR augmentation %s is stale (%s); rebuilding", npz, "; ".join(problems))
    start = time.perf_counter()
    gap_offsets, gap_pos, fills = _compute_fills(prep, model)
    examples = prep.inputs.examples
    tokens = prep.data.item_tokens
    items = np.concatenate([x.items for x in examples]) if examples else np.zeros(0, np.int64)
    arrays = {
        "users": np.array([x.user for x in examples], dtype=str),
        "item_offsets": np.r_[0, np.cumsum([len(x.items) for x in examples])].astype(np.int64),
        "items": np.asarray(tokens[items], dtype=str),
        "gap_offsets": gap_offsets, "gap_pos": gap_pos, "fills": fills,
    }
    _atomic_write_bytes(npz, lambda f: np.savez(f, **arrays))
    n_tok = int(len(items) + len(gap_pos))
    manifest = {
        "key": key, "fingerprint": _fingerprint(key), "npz_sha256": file_sha256(str(npz)),
        "variant": cfg.variant, "dataset": cfg.dataset, "context": cfg.context,
        "knowledge_field": cfg.knowledge_field, "center_repr": cfg.center_repr,
        "rule": cfg.rule, "loss": cfg.loss,
        "weighting": cfg.weighting, "users": int(len(examples)), "items": int(len(items)),
        "gaps": int(len(gap_pos)), "dim": int(fills.shape[1]),
        "fill_ratio": len(gap_pos) / max(n_tok, 1),
        "label_ratio": train_manifest.get("label_ratio"),
        "users_with_fill": int(np.sum(np.diff(gap_offsets) > 0)),
        "seconds": round(time.perf_counter() - start, 3),
        "eval_time": "valid/test histories reuse the vectors of the gaps inside the training "
                     "prefix; held-out items never get a gap or enter the reasoner",
        "status": "built",
    }
    write_json(mpath, manifest)
    _CACHE.clear()
    return manifest


# ===========================================================================  consumer side
_CACHE: Dict[Tuple[str, str], Augmentation] = {}


def load_augmentation(config, data=None) -> Augmentation:
    """The stored augmentation named by a RecBole config (``dataset``, ``reaseq_artifact_dir``,
    ``gbr_rule`` / ``gbr_loss`` / ``gbr_weighting`` / ``center_repr`` / ``gbr_options.tag`` ->
    variant), checked against the current data
    files and ``knowledge_field``. Missing or stale: rebuilt (reasoner training is resumable) when
    ``gbr_build_missing`` is true, else :class:`StaleAugmentationError` with the command to run.
    ``data``: the data set's sequences when the caller has them loaded
    (:func:`recbole_reaseq.gbr.locate.load_sequences`), read for the data fingerprint."""
    gbr = config_from_recbole(config)                  # the one reading of the gbr_* keys
    dataset, rule, loss, weighting = gbr.dataset, gbr.rule, gbr.loss, gbr.weighting
    center, tag, artifact_dir = gbr.center_repr, gbr.tag, gbr.artifact_dir
    npz, mpath = augmentation_paths(dataset, gbr.variant, artifact_dir)
    manifest = read_json(mpath)
    problems = _fresh(npz, manifest, None)
    if not problems:
        current = data_fingerprint(dataset, config_get(config, "data_path"), gbr.normalize_time,
                                   data=data)
        if manifest["key"]["data"] != current:
            problems.append("the data files changed since it was built")
        field = config_get(config, "knowledge_field", "knowledge_emb")
        if manifest.get("knowledge_field") != field:
            problems.append(f"it was built on {manifest.get('knowledge_field')}, the config "
                            f"asks for knowledge_field={field}")
        if bool(manifest.get("center_repr", False)) != center:
            problems.append(f"its center_repr is {manifest.get('center_repr', False)}, the "
                            f"config's {center}")
    if problems:
        if config_get(config, "gbr_build_missing", False):
            logger.warning("GBR augmentation %s: %s; building it (gbr_build_missing)", npz,
                           "; ".join(problems))
            prep = prepare(gbr)
            train(prep)
            augment(prep)
            manifest = read_json(mpath)
        else:
            raise StaleAugmentationError(
                f"GBR augmentation {npz} cannot be used: {'; '.join(problems)}. Fix: python -m "
                f"recbole_reaseq.gbr all --dataset {dataset} --rule {rule} --loss {loss} "
                f"--weighting {weighting}{' --center-repr' if center else ''}"
                f"{' --tag ' + tag if tag else ''} --artifact-dir "
                f"{artifact_dir} (or set "
                f"gbr_build_missing: True).")
    cache_key = (str(npz), manifest["npz_sha256"])
    if cache_key not in _CACHE:
        with np.load(npz, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        _CACHE.clear()
        _CACHE[cache_key] = Augmentation(manifest=manifest, path=npz, **arrays)
    return _CACHE[cache_key]
