"""Frozen item representations for models, in RecBole's internal item-id order.

Reference: ReaSeq (TaoRank Team, arXiv 2512.21257), Section 2.1.2 (reasoning-enhanced item
representations: the knowledge embedding and its semantic IDs) as used by Section 2.2
(knowledge-enhanced CTR).

:func:`load_item_representations` gives a model

* ``knowledge_emb``: float32 ``[n_items, D]``, row 0 (RecBole's padding item) = zeros; any other
  frozen text embedding of :mod:`recbole_reaseq.knowledge.pipeline` (``demand_emb``,
  ``attribute_emb``) or the title-only embedding ``title_emb`` (computed here, see below) can be
  asked for instead through ``knowledge_field``;
* ``sid``: int64 ``[n_items, L+1]`` semantic-ID codes shifted by :data:`SID_OFFSET`, so that code
  :data:`SID_PAD` (= 0) is the padding item and :data:`SID_UNKNOWN` (= 1) an item the artefacts do
  not know; ``sid_vocab[l]`` is the table size of level ``l`` (largest shifted code + 1).

The artefacts are built on demand through :func:`recbole_reaseq.knowledge.pipeline.ensure_artifacts`
(offline backend unless ``reaseq_knowledge.backend`` says otherwise; RQ-VAE and encoder settings
from ``reaseq_knowledge``), under ``reaseq_artifact_dir``. Item tokens are mapped with
``dataset.field2id_token``; items without an artefact row get zeros / :data:`SID_UNKNOWN`, are
counted and logged. Building leaves the global random state (torch, numpy, random) as it found it,
so a model initialises identically whether or not its artefacts had to be built first.

:func:`side_feature_columns` turns RecBole's ``dataset.item_feat`` into integer code columns for
embedding tables: token fields as they are, the first ``levels`` tokens of a token_seq field (a
category path: one column per level) and float fields (price) as quantile buckets.

``knowledge_field: title_emb`` reads the title-only embeddings of
:func:`recbole_reaseq.knowledge.pipeline.title_embeddings` (cached as ``title_emb.npy``).
"""
from __future__ import annotations

import contextlib
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from recbole.utils import FeatureType

from recbole_reaseq.config import config_get
from recbole_reaseq.knowledge import pipeline as P

__all__ = ["SID_PAD", "SID_UNKNOWN", "SID_OFFSET", "KNOWLEDGE_FIELDS", "ItemRepresentations",
           "load_item_representations", "map_rows", "preserve_rng",
           "side_feature_columns"]

logger = logging.getLogger(__name__)

SID_PAD = 0        # code of RecBole's padding item (row 0) at every level
SID_UNKNOWN = 1    # code of an item without an artefact row
SID_OFFSET = 2     # raw RQ-VAE code c is stored as c + SID_OFFSET
KNOWLEDGE_FIELDS = ("knowledge_emb", "demand_emb", "attribute_emb", "title_emb")


@dataclass
class ItemRepresentations:
    """Frozen per-item tensors in RecBole's internal item-id order (row 0 = padding)."""

    knowledge_emb: Optional[torch.Tensor] = None      # [n_items, D] float32
    sid: Optional[torch.Tensor] = None                # [n_items, L+1] int64, shifted codes
    sid_vocab: List[int] = field(default_factory=list)  # table size per SID level
    missing: Dict[str, int] = field(default_factory=dict)  # items without a row, per field
    knowledge_field: Optional[str] = None
    root: Optional[Path] = None                       # artefact folder they were read from


@contextlib.contextmanager
def preserve_rng() -> Iterator[None]:
    """Restore the global torch (CPU + CUDA), numpy and ``random`` states on exit."""
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def _read_rows(paths: "P.KnowledgePaths", name: str) -> Tuple[List[str], np.ndarray]:
    """``(ids, matrix)`` of ``<root>/<name>.npy`` + ``<name>.ids.json``."""
    npy, ids = paths.npy(name), paths.ids(name)
    for p in (npy, ids):
        if not p.is_file():
            raise FileNotFoundError(f"{p} is missing. Fix: python -m recbole_reaseq.knowledge all "
                                    f"--dataset {paths.dataset} (or delete the manifests so that "
                                    f"models rebuild it).")
    return json.loads(ids.read_text(encoding="utf-8")), np.load(npy)


def center_rows(matrix: np.ndarray) -> np.ndarray:
    """Centred unit rows: ``norm(norm(x_j) - mean_k norm(x_k))`` over the catalogue's rows.

    Knowledge embeddings of one catalogue share a large common direction (on Beauty, the cosine
    of an item with the mean item direction averages 0.73). A cosine objective is blind to it, so
    GBR's filled vectors come out orthogonal to it, off the items' manifold; centring removes the
    shared direction from every consumer of the table at once (``center_repr``). All-zero rows
    stay zero and do not enter the mean.
    """
    x = matrix.astype(np.float32)                                   # [N, D]
    norms = np.linalg.norm(x, axis=1, keepdims=True)                # [N, 1]
    real = norms[:, 0] > 0
    if not real.any():
        return x
    unit = np.where(real[:, None], x / np.maximum(norms, 1e-12), 0.0)
    centred = unit - unit[real].mean(axis=0, keepdims=True)         # [N, D]
    cn = np.linalg.norm(centred, axis=1, keepdims=True)
    return np.where(real[:, None], centred / np.maximum(cn, 1e-12), 0.0).astype(np.float32)


def map_rows(dataset, ids: Sequence[str], matrix: np.ndarray, fill) -> Tuple[np.ndarray, int]:
    """Rows of ``matrix`` (row ``j`` = item token ``ids[j]``) in RecBole's internal id order.

    Returns ``(out [n_items, ...], missing)``: row 0 (padding) and items whose token has no row
    get ``fill``; ``missing`` counts the latter (padding excluded).
    """
    tokens = dataset.field2id_token[dataset.iid_field]          # internal id -> token
    row = {str(t): j for j, t in enumerate(ids)}
    out = np.full((len(tokens),) + matrix.shape[1:], fill, dtype=matrix.dtype)
    missing = 0
    for internal in range(1, len(tokens)):
        j = row.get(str(tokens[internal]))
        if j is None:
            missing += 1
        else:
            out[internal] = matrix[j]
    return out, missing


def load_item_representations(config, dataset, knowledge: bool = True, sid: bool = True,
                              knowledge_field: Optional[str] = None,
                              center: bool = False) -> ItemRepresentations:
    """Frozen ``knowledge_emb`` [n_items, D] and/or shifted ``sid`` [n_items, L+1] of ``dataset``.

    Builds missing or stale artefacts first (:func:`~recbole_reaseq.knowledge.pipeline.
    ensure_artifacts`, config keys ``reaseq_artifact_dir``, ``data_path``, ``reaseq_knowledge``).
    ``knowledge_field`` (default: config ``knowledge_field``, else ``knowledge_emb``) picks the
    embedding: one of :data:`KNOWLEDGE_FIELDS`. ``center``: rows through :func:`center_rows`
    (over every artefact row, so GBR's item table, built from the same rows, matches).
    """
    out = ItemRepresentations()
    if not (knowledge or sid):
        return out
    name = knowledge_field or config_get(config, "knowledge_field") or "knowledge_emb"
    if knowledge and name not in KNOWLEDGE_FIELDS:
        raise ValueError(f"config knowledge_field must be one of {', '.join(KNOWLEDGE_FIELDS)}; "
                         f"got {name!r}.")
    steps = ("build", "encode", "quantize") if sid else ("build", "encode")
    with preserve_rng():
        paths = P.ensure_artifacts(config, steps=steps)
        out.root = paths.root
        if knowledge:
            if name == "title_emb":
                ids, emb = P.title_embeddings(paths)
            else:
                ids, emb = _read_rows(paths, name)
            emb = center_rows(emb) if center else emb.astype(np.float32)
            mat, missing = map_rows(dataset, ids, emb, 0.0)
            out.knowledge_emb = torch.from_numpy(mat)                       # [n_items, D]
            out.knowledge_field = name
            out.missing[name] = missing
        if sid:
            ids, codes = _read_rows(paths, "sid_codes")                     # [N, L+1] raw codes
            shifted = codes.astype(np.int64) + SID_OFFSET
            mat, missing = map_rows(dataset, ids, shifted, SID_UNKNOWN)
            mat[0] = SID_PAD
            out.sid = torch.from_numpy(mat)                                 # [n_items, L+1]
            out.sid_vocab = [int(c) + 1 for c in np.maximum(mat.max(axis=0), SID_UNKNOWN)]
            out.missing["sid"] = missing
    n_real = dataset.item_num - 1
    for what, count in out.missing.items():
        log = logger.warning if count else logger.info
        log("item representations (%s, %s): %d of %d items have no artefact row (zeros / "
            "unknown code)", paths.root, what, count, n_real)
    return out


# =====================================================================================  side features
def _quantile_buckets(values: np.ndarray, n_buckets: int) -> np.ndarray:
    """Bucket ids 1..n of ``values`` [N] by quantiles of its finite entries (0 = non-finite)."""
    finite = np.isfinite(values)
    out = np.zeros(len(values), dtype=np.int64)
    if not finite.any():
        return out
    qs = np.quantile(values[finite], np.linspace(0.0, 1.0, n_buckets + 1)[1:-1])
    edges = np.unique(qs)                                               # [<= n_buckets - 1]
    out[finite] = np.searchsorted(edges, values[finite], side="right") + 1
    return out


def side_feature_columns(dataset, fields: Optional[Sequence[str]] = None, levels: int = 3,
                         n_buckets: int = 10) -> Dict[str, Tuple[torch.Tensor, List[int]]]:
    """Integer code columns of item side features: ``{field: (codes [n_items, c], vocab [c])}``.

    * token field (brand): one column, RecBole's token ids (0 = padding / missing);
    * token_seq field (category path): its first ``levels`` tokens, one column per level;
    * float field (price): quantile bucket ``1..n_buckets`` over the real items (0 = padding).

    ``fields=None`` takes every item feature of those types except the item id; float_seq fields
    are skipped. Row 0 (padding item) is all zeros.
    """
    feat = dataset.get_item_feature() if dataset.item_feat is not None else None
    if feat is None:
        if fields:
            raise KeyError(f"side features {list(fields)} requested, but the data set has no item "
                           f"features. Fix: load them (load_col: item: [...]) or set "
                           f"side_features: [].")
        return {}
    available = [f for f in feat.interaction if f != dataset.iid_field]
    names = available if fields is None else list(fields)
    out: Dict[str, Tuple[torch.Tensor, List[int]]] = {}
    for name in names:
        if name not in available:
            raise KeyError(f"side feature {name!r} is not an item feature of this data set; "
                           f"item features: {available}.")
        ftype = dataset.field2type[name]
        values = feat[name]
        if ftype == FeatureType.TOKEN:
            codes = values.long().view(-1, 1)                           # [n_items, 1]
            vocab = [dataset.num(name)]
        elif ftype == FeatureType.TOKEN_SEQ:
            codes = values.long()[:, :levels]                           # [n_items, <= levels]
            if codes.shape[1] < levels:
                codes = torch.nn.functional.pad(codes, (0, levels - codes.shape[1]))
            vocab = [dataset.num(name)] * levels
        elif ftype == FeatureType.FLOAT:
            codes = torch.from_numpy(_quantile_buckets(values.double().numpy()[1:], n_buckets))
            codes = torch.cat([torch.zeros(1, dtype=torch.long), codes]).view(-1, 1)
            vocab = [n_buckets + 1]
        else:
            if fields is not None:
                raise ValueError(f"side feature {name!r} has type {ftype}; only token, token_seq "
                                 f"and float fields are supported.")
            continue
        codes = codes.clone()
        codes[0] = 0
        out[name] = (codes.contiguous(), vocab)
    return out
