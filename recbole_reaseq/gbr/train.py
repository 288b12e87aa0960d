"""Resumable training of the generative behaviour reasoner on one data set.

Reference: ReaSeq (TaoRank Team, arXiv 2512.21257), Sections 3.2 (training sequences, eq. 6-7) and
4.2.1 (Adam, warm-up + cosine annealing; IB-PPL / IB-ACC, Table 5).

Pipeline (:func:`prepare` then :func:`train`):

1. :func:`recbole_reaseq.gbr.locate.load_sequences` (local item ids, raw tokens kept) ->
   :func:`recbole_reaseq.gbr.labels.build_gbr_inputs` with the rule (T / C / TC / TD / CD / TDCD),
   the optional stage-2 ``kappa`` and the default Swing scorer, all on the TRAINING view (each
   user's last two behaviours, the valid/test targets, are dropped before anything is computed);
2. frozen item representations: the knowledge embedding (``knowledge_field``) of
   :mod:`recbole_reaseq.knowledge.pipeline`, built on demand (offline backend), mapped to the local
   ids through the raw item tokens (row 0 = padding = zeros; an item without a row gets zeros and
   is counted);
3. a fixed, seeded slice of users (``holdout_fraction``) is held out: their training-view
   sequences are never trained on and give the per-epoch IB metrics (:func:`evaluate_ib`);
4. Adam + linear warm-up + cosine (:func:`recbole_reaseq.gbr.reasoner.make_optimizer`), one
   :func:`~recbole_reaseq.gbr.reasoner.training_step` per batch, a tqdm bar per epoch.

Files, under ``<artifact_dir>/<dataset>/gbr/<variant>/`` (``variant`` = the Table 5 name,
:func:`variant_name`, e.g. ``GBR-C-0``; ``-invt`` for the 1/t weighting):

* ``reasoner.pt``: checkpoint after every epoch (model, optimiser, scheduler, finished epochs,
  torch / numpy / python RNG states, history, the run key), written to a temporary file and
  renamed (``os.replace``), so a killed run leaves the previous epoch's checkpoint intact;
* ``train_log.jsonl``: one JSON line per finished epoch (loss, lr, seconds, IB metrics on the
  held-out slice), rewritten from the checkpoint's history after each epoch (no duplicate lines
  after a resume);
* ``manifest.train.json``: config, seed, data fingerprint (sha256 of ``.inter`` / ``.item``), the
  knowledge artefact's fingerprint, [FILL] ratio ``|U| / tokens``, ``|L|`` ratio, final metrics,
  timings. Written when the requested epochs are done.

Resuming: rerunning with the same settings continues after the last finished epoch. The run key
is every setting except ``epochs`` (how far to go) and ``progress``; a checkpoint with another key
(other data, representation, rule, loss, lr, ...) is stale: it is reported and training restarts
from scratch. Every epoch re-seeds its shuffling, masking and dropout from ``(seed, epoch)``, so
1 epoch + a resumed 2nd epoch gives exactly the weights of an uninterrupted 2-epoch run (tested).

NOTE: the learning-rate schedule spans ``schedule_epochs`` (default 20), not ``epochs``: ``epochs``
is where to stop along a fixed schedule, which is what makes extending a finished run exact. The
warm-up is ``warmup_ratio`` of the schedule's steps. ``epochs > schedule_epochs`` is refused.
NOTE: defaults for public data (lr 1e-3, batch 256, 128-d / 4 layers / 8 heads, max 64 tokens);
the paper's lr 0.0075 with batch 3200 is for Taobao scale.
NOTE: only users with at least one labelled position are trained on (the others give no loss).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import platform
import re
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from recbole_reaseq.data.datasets import file_sha256

from .labels import GBRInputs, build_gbr_inputs
from .locate import RULES, SequenceData, load_sequences
from .metrics import ib_metrics
from .reasoner import (LOSS_VARIANTS, BehaviorReasoner, ReasonerConfig, apply_mask,
                       build_sequence, collate, gbr_loss, make_optimizer, sample_mask,
                       training_step)

__all__ = ["VERSION", "LOSS_INDEX", "GBRConfig", "Prepared", "variant_name", "variant_root",
           "data_fingerprint", "prepare", "item_representations", "train", "evaluate_ib",
           "read_json", "load_reasoner", "config_from_recbole"]

logger = logging.getLogger(__name__)

VERSION = 1
LOSS_INDEX = {"softmax": 0, "cosine": 1, "euclidean": 2}     # Table 5: GBR-*-0, GBR-C-1, GBR-C-2
WEIGHTINGS = ("mean", "inv_t")
CONTEXTS = ("prefix", "full")
# settings that never change the weights (the data and representations are fingerprinted)
# normalize_time: the interaction order it gives is in the data fingerprint instead
_NOT_IN_KEY = ("epochs", "progress", "context", "data_path", "artifact_dir", "tag", "pack",
               "normalize_time")
_TAG = re.compile(r"[A-Za-z0-9_.]*")


@dataclass
class GBRConfig:
    """Every setting of a GBR run (see the module docstring; CLI flags mirror these names)."""

    dataset: str
    data_path: Optional[str] = None
    artifact_dir: str = "artifacts"
    # location and labels (Sections 3.1, 3.2.1)
    rule: str = "C"
    eta: float = 0.0
    kappa: Optional[int] = None
    time_percentile: float = 75.0
    category_level: Optional[int] = None
    # RecBole rescales the timestamps (its order then ties some of them): None = the data set's
    # RecBole defaults (recbole_reaseq.config.default_time_normalized)
    normalize_time: Optional[bool] = None
    # frozen item representations
    knowledge_field: str = "knowledge_emb"
    center_repr: bool = False                                   # item_repr.center_rows
    knowledge: Dict[str, Any] = field(default_factory=dict)   # reaseq_knowledge options
    # reasoner (Section 4.2.1)
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 8
    max_len: int = 64
    dropout: float = 0.1
    # loss (eq. 6-7)
    loss: str = "softmax"
    weighting: str = "mean"
    temperature: float = 0.07
    negatives: str = "all"
    t_min: float = 1e-3
    # optimisation
    epochs: int = 10
    schedule_epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-3
    warmup_ratio: float = 0.05
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 2020
    # IB metrics on the held-out slice (same batch size and seed for every variant)
    holdout_fraction: float = 0.05
    holdout_min_users: int = 8
    holdout_max_users: int = 2000
    eval_batch_size: int = 128
    eval_seed: int = 0
    # inference (augment.py)
    context: str = "prefix"
    progress: bool = True
    # naming only: a run with other training settings (e.g. a longer schedule) under its own
    # folder GBR-C-0-<tag>, beside the untagged variant instead of replacing it
    tag: str = ""
    # execution only: run the reasoner on packed rows (same function; reasoner.pack_sequences)
    pack: bool = True

    @property
    def variant(self) -> str:
        return variant_name(self.rule, self.loss, self.weighting, self.center_repr, self.tag)

    def check(self) -> "GBRConfig":
        """Raise ``ValueError`` naming the field and the fix for any bad setting."""
        def bad(name, why, fix):
            raise ValueError(f"GBR setting {name}={getattr(self, name)!r} {why}. Fix: {fix}.")
        if not self.dataset:
            bad("dataset", "is empty", "pass --dataset NAME")
        if self.rule not in RULES:
            bad("rule", "is unknown", f"use one of {', '.join(RULES)} (Table 5: T, C, TC)")
        if self.loss not in LOSS_VARIANTS:
            bad("loss", "is unknown", f"use one of {', '.join(LOSS_VARIANTS)}")
        if self.weighting not in WEIGHTINGS:
            bad("weighting", "is unknown", "use mean or inv_t")
        if self.negatives not in ("all", "targets"):
            bad("negatives", "is unknown", "use all or targets")
        if self.context not in CONTEXTS:
            bad("context", "is unknown", "use prefix or full (recbole_reaseq.gbr.augment)")
        for name in ("epochs", "schedule_epochs", "batch_size", "eval_batch_size", "d_model",
                     "n_layers", "n_heads", "max_len"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                bad(name, "must be a positive integer", f"pass --{name.replace('_', '-')} N >= 1")
        if self.d_model % self.n_heads:
            bad("n_heads", f"does not divide d_model={self.d_model}", "pick a divisor of d_model")
        if self.epochs > self.schedule_epochs:
            bad("epochs", f"exceeds schedule_epochs={self.schedule_epochs} (the LR schedule's "
                "length)", f"raise --schedule-epochs to >= {self.epochs} (a new schedule, so "
                "training restarts) or lower --epochs")
        if self.eval_batch_size < 2:
            bad("eval_batch_size", "must be >= 2 (IB metrics need in-batch negatives)",
                "pass --eval-batch-size >= 2")
        if not (0.0 < self.holdout_fraction < 1.0):
            bad("holdout_fraction", "must lie in (0, 1)", "e.g. 0.05")
        if not (0.0 <= self.warmup_ratio < 1.0):
            bad("warmup_ratio", "must lie in [0, 1)", "e.g. 0.05")
        if self.lr <= 0 or not math.isfinite(self.lr):
            bad("lr", "must be a positive number", "e.g. --lr 1e-3")
        if self.max_len < 2:
            bad("max_len", "must be >= 2", "e.g. 64")
        if not isinstance(self.tag, str) or not _TAG.fullmatch(self.tag):
            bad("tag", "is not a folder-safe name", "use letters, digits, '_' or '.', e.g. "
                "--tag s15")
        if not isinstance(self.knowledge, dict):
            bad("knowledge", "must be a dict of reaseq_knowledge options", "pass {} or a dict")
        return self

    def key(self) -> Dict[str, Any]:
        """Settings that change the trained weights (not ``epochs``, ``progress``, ``context``,
        nor the folders: the data and the representations are fingerprinted instead)."""
        return {k: v for k, v in asdict(self).items() if k not in _NOT_IN_KEY}


def variant_name(rule: str, loss: str, weighting: str = "mean", center: bool = False,
                 tag: str = "") -> str:
    """Table 5 name: ``GBR-<rule>-<0 softmax | 1 cosine | 2 euclidean>`` (+ ``-invt``; + ``-ctr``
    on centred item representations; + ``-<tag>`` when a tag names the run)."""
    if loss not in LOSS_INDEX:
        raise ValueError(f"loss {loss!r}: choose one of {', '.join(LOSS_INDEX)}")
    return (f"GBR-{rule}-{LOSS_INDEX[loss]}" + ("-invt" if weighting == "inv_t" else "")
            + ("-ctr" if center else "") + (f"-{tag}" if tag else ""))


def variant_root(dataset: str, variant: str, artifact_dir: Optional[str] = None) -> Path:
    """``<artifact_dir>/<dataset>/gbr/<variant>/`` (absolute; never inside site-packages)."""
    from recbole_reaseq.knowledge.pipeline import resolve_artifact_dir

    return resolve_artifact_dir(artifact_dir) / dataset / "gbr" / variant


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def data_fingerprint(dataset: str, data_path: Optional[str] = None,
                     normalize_time: Optional[bool] = None,
                     data: Optional[SequenceData] = None) -> Dict[str, str]:
    """sha256 of ``<dataset>.inter`` (and ``.item`` when present), plus ``time_order`` where
    RecBole's interaction order departs from the raw timestamps' (``data.time_order``, see
    :func:`recbole_reaseq.gbr.locate.load_sequences`). Without ``data`` the sequences are loaded,
    once per process for the same ``.inter`` content and time normalisation (the transform and
    the model of one run both check the augmentation)."""
    from recbole_reaseq.config import default_time_normalized
    from recbole_reaseq.knowledge.items import dataset_folder

    folder = dataset_folder(dataset, data_path)
    out = {}
    for suffix in ("inter", "item"):
        path = os.path.join(folder, f"{dataset}.{suffix}")
        if os.path.isfile(path):
            out[suffix] = file_sha256(path)
    if normalize_time is None and data is None:
        normalize_time = default_time_normalized(dataset, data_path)
    key = (out.get("inter"), normalize_time)
    if data is not None:
        note = data.time_order
    elif key in _TIME_ORDER:
        note = _TIME_ORDER[key]
    else:
        note = load_sequences(dataset, data_path, normalize_time=normalize_time).time_order
    if normalize_time is not None:
        _TIME_ORDER[key] = dict(note)
    out.update(note)
    return out


_TIME_ORDER: Dict[Tuple[Optional[str], bool], Dict[str, str]] = {}  # data_fingerprint's memo


def _atomic_write_bytes(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: Path, obj: Any) -> None:
    _atomic_write_bytes(path, lambda f: f.write(
        (json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n").encode()))


def read_json(path: Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# ==================================================================================  data
@dataclass
class Prepared:
    """Everything a GBR run reads, computed once per process."""

    cfg: GBRConfig
    data: SequenceData                 # full sequences (local ids)
    inputs: GBRInputs                  # U, L, Δ of the TRAINING view, one example per user
    item_repr: torch.Tensor            # [n_items, D] local id order, row 0 = 0
    knowledge_fingerprint: str
    missing_items: int
    data_fp: Dict[str, str]
    train_rows: np.ndarray             # indices into inputs.examples (with >= 1 label)
    holdout_rows: np.ndarray           # indices into inputs.examples (held-out users)
    seconds: float = 0.0


def item_representations(cfg: GBRConfig, data: SequenceData) -> Tuple[torch.Tensor, str, int]:
    """Frozen ``[n_items, D]`` item table in ``data``'s LOCAL id order (row 0 = zeros).

    Returns ``(table, encode-manifest fingerprint, items without a row)``.
    """
    from recbole_reaseq.knowledge import pipeline as P
    from recbole_reaseq.model.item_repr import (KNOWLEDGE_FIELDS, _read_rows, center_rows,
                                                preserve_rng)

    if cfg.knowledge_field not in KNOWLEDGE_FIELDS:
        raise ValueError(f"GBR setting knowledge_field={cfg.knowledge_field!r} is unknown. Fix: "
                         f"use one of {', '.join(KNOWLEDGE_FIELDS)}.")
    with preserve_rng():
        paths = P.ensure_artifacts({"dataset": cfg.dataset, "data_path": cfg.data_path,
                                    "reaseq_artifact_dir": cfg.artifact_dir,
                                    "reaseq_knowledge": cfg.knowledge},
                                   steps=("build", "encode"))
        if cfg.knowledge_field == "title_emb":
            ids, emb = P.title_embeddings(paths)
        else:
            ids, emb = _read_rows(paths, cfg.knowledge_field)
    if cfg.center_repr:
        emb = center_rows(emb)
    manifest = P.read_manifest(paths, "encode") or {}
    row = {str(t): j for j, t in enumerate(ids)}
    table = np.zeros((data.n_items, emb.shape[1]), dtype=np.float32)   # [n_items, D]
    missing = 0
    for local in range(1, data.n_items):
        j = row.get(str(data.item_tokens[local]))
        if j is None:
            missing += 1
        else:
            table[local] = emb[j]
    if missing:
        logger.warning("GBR item representations: %d of %d items have no %s row (zeros)",
                       missing, data.n_items - 1, cfg.knowledge_field)
    fp = _fingerprint({"encode": manifest.get("fingerprint"), "field": cfg.knowledge_field,
                       **({"center": True} if cfg.center_repr else {})})
    return torch.from_numpy(table), fp, missing


def prepare(cfg: GBRConfig, data: Optional[SequenceData] = None) -> Prepared:
    """Sequences, GBR inputs (training view only), item table and the held-out split."""
    cfg.check()
    start = time.perf_counter()
    if data is None:
        data = load_sequences(cfg.dataset, cfg.data_path, cfg.category_level,
                              cfg.normalize_time)
    inputs = build_gbr_inputs(data, cfg.rule, eta=cfg.eta, kappa=cfg.kappa,
                              time_percentile=cfg.time_percentile)
    table, kfp, missing = item_representations(cfg, data)
    n = len(inputs.examples)
    n_hold = int(min(cfg.holdout_max_users, max(cfg.holdout_min_users,
                                                round(cfg.holdout_fraction * n))))
    if n_hold >= n:
        raise ValueError(f"GBR setting holdout_fraction={cfg.holdout_fraction}: {n_hold} held-out "
                         f"users of {n} leaves none to train on. Fix: lower holdout_fraction / "
                         f"holdout_min_users or use a larger data set.")
    perm = np.random.default_rng(cfg.seed).permutation(n)
    holdout = np.sort(perm[:n_hold])
    is_hold = np.zeros(n, dtype=bool)
    is_hold[holdout] = True
    train_rows = np.array([r for r in range(n) if not is_hold[r]
                           and len(inputs.examples[r].labelled) > 0], dtype=np.int64)
    if len(train_rows) == 0:
        raise ValueError(f"GBR: no training user has a labelled position (eta={cfg.eta}). Fix: "
                         f"lower --eta.")
    return Prepared(cfg=cfg, data=data, inputs=inputs, item_repr=table,
                    knowledge_fingerprint=kfp, missing_items=missing,
                    data_fp=data_fingerprint(cfg.dataset, cfg.data_path, data=data),
                    train_rows=train_rows, holdout_rows=holdout,
                    seconds=time.perf_counter() - start)


def _sequences(prep: Prepared, rows: Sequence[int]):
    max_len = prep.cfg.max_len
    return [build_sequence(prep.inputs.examples[r].items, prep.inputs.examples[r].fill_after,
                           prep.inputs.examples[r].labelled, max_len) for r in rows]


def _run_key(prep: Prepared) -> Dict[str, Any]:
    return {"version": VERSION, "config": prep.cfg.key(), "data": prep.data_fp,
            "knowledge": prep.knowledge_fingerprint,
            "train_users": int(len(prep.train_rows)), "holdout_users": int(len(prep.holdout_rows))}


def _epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 7919) % (2 ** 31 - 1)


def build_model(prep: Prepared) -> BehaviorReasoner:
    cfg = prep.cfg
    torch.manual_seed(cfg.seed)
    rcfg = ReasonerConfig(item_dim=int(prep.item_repr.shape[1]), d_model=cfg.d_model,
                          n_layers=cfg.n_layers, n_heads=cfg.n_heads, max_len=cfg.max_len,
                          dropout=cfg.dropout, pack=cfg.pack)
    return BehaviorReasoner(rcfg, prep.item_repr)


# ================================================================================  metrics
@torch.no_grad()
def evaluate_ib(model: BehaviorReasoner, sequences, cfg: GBRConfig) -> Dict[str, float]:
    """IB-PPL / IB-ACC on [MASK] and [FILL] tokens and the loss over fixed batches of
    ``eval_batch_size`` held-out sequences; batch ``b`` masks with a generator seeded
    ``eval_seed + b`` (the same masks every epoch) and draws its negatives with seed
    ``eval_seed + b``. Per-batch values are pooled over tokens (PPL = exp of the pooled NLL)."""
    was = model.training
    model.eval()
    tot = {"mask": [0.0, 0.0, 0], "fill": [0.0, 0.0, 0]}      # sum nll, sum hits, n
    loss_sum, loss_n, skipped = 0.0, 0, 0
    for b, lo in enumerate(range(0, len(sequences), cfg.eval_batch_size)):
        batch = collate(sequences[lo:lo + cfg.eval_batch_size])
        gen = torch.Generator().manual_seed(cfg.eval_seed + b)
        masked, t = sample_mask(batch.label_mask, gen, t_min=cfg.t_min)
        ids_in, kinds_in = apply_mask(batch, masked)
        pred = model(ids_in, kinds_in)                                 # [B, T, D]
        m = ib_metrics(pred, batch.ids, kinds_in, model.item_repr, temperature=cfg.temperature,
                       seed=cfg.eval_seed + b)
        for name in ("mask", "fill"):
            n = m[f"n_{name}"]
            if n:
                tot[name][0] += math.log(m[f"{name}_ppl"]) * n
                tot[name][1] += m[f"{name}_acc"] * n
                tot[name][2] += n
        skipped += m["fill_skipped"]
        q = int(masked.sum())
        if q:
            loss = gbr_loss(pred, batch.ids, masked, model.item_repr, variant=cfg.loss,
                            temperature=cfg.temperature, weighting="mean",
                            negatives=cfg.negatives)
            loss_sum += float(loss) * q
            loss_n += q
    model.train(was)
    out: Dict[str, float] = {}
    for name, (nll, hits, n) in tot.items():
        out[f"{name}_ppl"] = math.exp(nll / n) if n else math.nan
        out[f"{name}_acc"] = hits / n if n else math.nan
        out[f"n_{name}"] = n
    out["fill_skipped"] = skipped
    out["eval_loss"] = loss_sum / loss_n if loss_n else math.nan
    return out


# ================================================================================  training
def _rng_state() -> Dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
            "python": random.getstate()}


def _set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def _write_log(root: Path, history: List[Dict[str, Any]]) -> None:
    text = "".join(json.dumps(h, sort_keys=True) + "\n" for h in history)
    _atomic_write_bytes(root / "train_log.jsonl", lambda f: f.write(text.encode()))


def load_reasoner(prep: Prepared) -> Tuple[BehaviorReasoner, Dict[str, Any]]:
    """The trained reasoner of ``prep.cfg`` (checkpoint must be fresh and finished)."""
    root = variant_root(prep.cfg.dataset, prep.cfg.variant, prep.cfg.artifact_dir)
    ckpt = root / "reasoner.pt"
    manifest = read_json(root / "manifest.train.json")
    key_fp = _fingerprint(_run_key(prep))
    if not ckpt.is_file() or manifest is None or manifest.get("key_fingerprint") != key_fp \
            or manifest.get("epochs_done", 0) < prep.cfg.epochs:
        raise FileNotFoundError(
            f"no finished, up-to-date reasoner for {prep.cfg.variant} at {ckpt} (epochs "
            f"{prep.cfg.epochs}). Fix: python -m recbole_reaseq.gbr train --dataset "
            f"{prep.cfg.dataset} --rule {prep.cfg.rule} --loss {prep.cfg.loss} --weighting "
            f"{prep.cfg.weighting} --epochs {prep.cfg.epochs} (or run 'all').")
    blob = torch.load(ckpt, map_location="cpu", weights_only=False)
    model = build_model(prep)
    model.load_state_dict(blob["model"])
    return model.eval(), manifest


def train(prep: Prepared) -> Dict[str, Any]:
    """Train (or resume) the reasoner of ``prep.cfg``; returns the train manifest."""
    from tqdm import tqdm

    cfg = prep.cfg
    root = variant_root(cfg.dataset, cfg.variant, cfg.artifact_dir)
    root.mkdir(parents=True, exist_ok=True)
    ckpt = root / "reasoner.pt"
    key = _run_key(prep)
    key_fp = _fingerprint(key)
    train_seqs = _sequences(prep, prep.train_rows)
    hold_seqs = _sequences(prep, prep.holdout_rows)
    steps_per_epoch = math.ceil(len(train_seqs) / cfg.batch_size)
    total = steps_per_epoch * cfg.schedule_epochs
    warmup = max(1, int(round(cfg.warmup_ratio * total))) if cfg.warmup_ratio > 0 else 0

    model = build_model(prep)
    opt, sched = make_optimizer(model, lr=cfg.lr, warmup_steps=warmup, total_steps=total,
                                weight_decay=cfg.weight_decay, min_ratio=cfg.min_lr_ratio)
    start_epoch, history, status = 0, [], "trained"
    if ckpt.is_file():
        blob = torch.load(ckpt, map_location="cpu", weights_only=False)
        if blob.get("key_fingerprint") == key_fp:
            model.load_state_dict(blob["model"])
            opt.load_state_dict(blob["optimizer"])
            sched.load_state_dict(blob["scheduler"])
            start_epoch, history = int(blob["epoch"]), list(blob["history"])
            _set_rng_state(blob["rng"])
            status = "resumed" if start_epoch < cfg.epochs else "fresh"
            logger.info("GBR %s: resuming after epoch %d", cfg.variant, start_epoch)
        else:
            reasons = [k for k in key if blob.get("key", {}).get(k) != key[k]]
            logger.warning("GBR %s: checkpoint %s is stale (changed: %s); training from "
                           "scratch", cfg.variant, ckpt, ", ".join(reasons) or "version")
            status = "retrained (stale checkpoint: " + ", ".join(reasons) + ")"
    if start_epoch > cfg.epochs:
        logger.warning("GBR %s: checkpoint has %d epochs > requested %d; keeping it",
                       cfg.variant, start_epoch, cfg.epochs)
    train_start = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        seed = _epoch_seed(cfg.seed, epoch)
        torch.manual_seed(seed)                                        # dropout
        gen = torch.Generator().manual_seed(seed)                      # shuffling + masking
        order = torch.randperm(len(train_seqs), generator=gen).tolist()
        t0 = time.perf_counter()
        loss_sum, n_batches = 0.0, 0
        bar = tqdm(range(0, len(order), cfg.batch_size), desc=f"{cfg.variant} epoch {epoch + 1}"
                   f"/{cfg.epochs}", disable=not cfg.progress, leave=False, dynamic_ncols=True)
        for lo in bar:
            batch = collate([train_seqs[i] for i in order[lo:lo + cfg.batch_size]])
            out = training_step(model, batch, opt, sched, gen, variant=cfg.loss,
                                temperature=cfg.temperature, weighting=cfg.weighting,
                                negatives=cfg.negatives, t_min=cfg.t_min,
                                grad_clip=cfg.grad_clip or None)
            loss_sum += out["loss"]
            n_batches += 1
            bar.set_postfix(loss=f"{out['loss']:.4f}")
        bar.close()
        seconds = time.perf_counter() - t0
        metrics = evaluate_ib(model, hold_seqs, cfg)
        history.append({"epoch": epoch + 1, "train_loss": loss_sum / max(n_batches, 1),
                        "lr": opt.param_groups[0]["lr"], "train_seconds": round(seconds, 3),
                        "steps": n_batches, **metrics})
        blob = {"model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "epoch": epoch + 1, "history": history,
                "rng": _rng_state(), "key": key, "key_fingerprint": key_fp}
        _atomic_write_bytes(ckpt, lambda f: torch.save(blob, f))
        _write_log(root, history)
        if cfg.progress:
            h = history[-1]
            print(f"  epoch {epoch + 1}: loss {h['train_loss']:.4f}  [MASK] IB-PPL "
                  f"{h['mask_ppl']:.3f} IB-ACC {h['mask_acc']:.3f}  [FILL] IB-PPL "
                  f"{h['fill_ppl']:.3f} IB-ACC {h['fill_acc']:.3f}  ({seconds:.1f}s)",
                  flush=True)
    stats = prep.inputs.stats
    manifest = {
        "version": VERSION, "variant": cfg.variant, "dataset": cfg.dataset,
        "config": asdict(cfg), "seed": cfg.seed, "key": key, "key_fingerprint": key_fp,
        "data_fingerprint": prep.data_fp, "knowledge_fingerprint": prep.knowledge_fingerprint,
        "items_without_representation": prep.missing_items,
        "fill_ratio": stats["fill_ratio"], "label_ratio": stats["label_ratio"],
        "location": stats, "train_users": int(len(prep.train_rows)),
        "holdout_users": int(len(prep.holdout_rows)), "steps_per_epoch": steps_per_epoch,
        "schedule_steps": total, "warmup_steps": warmup,
        "epochs_done": int(history[-1]["epoch"]) if history else 0,
        "final_metrics": history[-1] if history else {}, "history": history,
        "status": status, "train_seconds_this_call": round(time.perf_counter() - train_start, 3),
        "prepare_seconds": round(prep.seconds, 3),
        "checkpoint": str(ckpt), "checkpoint_sha256": file_sha256(str(ckpt)),
        "versions": {"torch": torch.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "machine": platform.processor() or platform.machine(),
    }
    write_json(root / "manifest.train.json", manifest)
    return manifest


def config_from_recbole(config) -> GBRConfig:
    """A :class:`GBRConfig` from a RecBole config: ``dataset``, ``data_path``,
    ``reaseq_artifact_dir``, ``reaseq_knowledge``, ``knowledge_field``, ``center_repr``,
    ``gbr_rule``,
    ``gbr_loss``, ``gbr_weighting``, ``gbr_context`` and any GBRConfig field in the dict
    ``gbr_options`` (e.g. ``{epochs: 5, batch_size: 256}``)."""
    from recbole_reaseq.config import config_get, time_normalized

    def get(key, default=None):
        return config_get(config, key, default)

    options = dict(get("gbr_options", {}) or {})
    names = {f.name for f in dataclasses.fields(GBRConfig)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise KeyError(f"config gbr_options: unknown key(s) {unknown}. Fix: use GBRConfig "
                       f"fields: {', '.join(sorted(names))}.")
    data_path = get("data_path")
    kw = dict(dataset=get("dataset"), data_path=data_path,
              artifact_dir=get("reaseq_artifact_dir", "artifacts"),
              knowledge=dict(get("reaseq_knowledge", {}) or {}),
              knowledge_field=get("knowledge_field", "knowledge_emb"),
              center_repr=bool(get("center_repr", False)),
              rule=get("gbr_rule", "C"), loss=get("gbr_loss", "softmax"),
              weighting=get("gbr_weighting", "mean"), context=get("gbr_context", "prefix"),
              normalize_time=time_normalized(config), progress=False)
    kw.update(options)
    return GBRConfig(**kw).check()
