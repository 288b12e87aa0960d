"""The CTR track: score each valid/test user's fixed 1 + 99 candidates, metrics in one pass.

Metrics (RecBole's ``Evaluator`` with AUC, our value-type GAUC_V, LogLoss, Hit and NDCG), overall
and per user segment (``cold/...``, ``hot/...``):

- AUC over all scored (user, candidate) rows; GAUC = mean over users of per-user AUC;
- LogLoss of the predicted probabilities. Models trained pointwise with BCE (DIN, DIEN, ReaSeqCTR)
  already output probabilities from ``predict``; for the others (SASRec, GRU4Rec, BERT4Rec, trained
  with a softmax over items) the score is passed through a sigmoid, so their LogLoss is not
  calibrated and is reported for completeness only;
- HR@k / NDCG@k of the positive within the candidates; ties count against the positive (its rank
  is the number of negatives scoring >= it).

Scores come from ``model.predict`` on the candidate rows, or, when the model has
``full_sort_predict`` and ``ctr_score_with_full_sort`` is on, from one full-sort pass per user
gathered at the candidates (the same numbers for dot-product models, tested, and 100x less work).
"""
from __future__ import annotations

import json
import time
from collections import OrderedDict

import numpy as np
import torch
from recbole.data.interaction import Interaction
from recbole.evaluator import Evaluator
from recbole.evaluator.collector import DataStruct
from recbole.utils import InputType

from recbole_reaseq.data.candidates import CandidateSet
from recbole_reaseq.evaluation import metrics as _metrics  # noqa: F401  (registers GAUC_V)
from recbole_reaseq.evaluation.metrics import per_user_auc, per_user_topk, topk_struct


def outputs_probability(model) -> bool:
    """``predict`` returns probabilities for pointwise (BCE-trained) models."""
    return getattr(model, "input_type", None) == InputType.POINTWISE


@torch.no_grad()
def score_candidates(model, interaction, cands: torch.Tensor, dataset, config) -> torch.Tensor:
    """[B, C] scores of the candidate items ``cands`` [B, C] for the B rows of ``interaction``."""
    iid = dataset.iid_field
    n_rows, n_cands = cands.shape
    if config["ctr_score_with_full_sort"]:
        try:
            full = model.full_sort_predict(interaction)               # [B * n_items]
            return full.view(n_rows, -1).gather(1, cands)             # [B, C]
        except NotImplementedError:
            pass
    rows = interaction.repeat_interleave(n_cands)                     # B * C rows
    rows.update(Interaction({iid: cands.reshape(-1)}))
    if dataset.item_feat is not None:
        rows = dataset.join(rows)
    chunk = max(1, int(config["eval_batch_size"])) * 16
    scores = [model.predict(rows[i:i + chunk]) for i in range(0, len(rows), chunk)]
    return torch.cat(scores).view(n_rows, n_cands)                    # [B, C]


def ctr_metrics_from_scores(scores: torch.Tensor, probabilities: bool, config,
                            groups: dict[str, np.ndarray] | None = None) -> tuple[dict, dict]:
    """Metrics from [U, C] scores whose column 0 is the positive.

    Returns (result, per_user): result has the overall metrics and ``<segment>/<metric>`` for each
    boolean mask in ``groups``; per_user has each user's AUC and 0-based rank of the positive.
    """
    n_users, n_cands = scores.shape
    probs = scores if probabilities else torch.sigmoid(scores)
    labels = torch.zeros(n_users, n_cands)
    labels[:, 0] = 1
    uid = torch.arange(n_users).unsqueeze(1).expand(n_users, n_cands)
    pos_rank = (scores[:, 1:] >= scores[:, :1]).sum(dim=1)            # [U], ties pessimistic
    _, user_auc = per_user_auc(scores.reshape(-1).double().numpy(), labels.reshape(-1).numpy(),
                               uid.reshape(-1).numpy())
    eval_config = {"metrics": list(config["ctr_metrics"]), "topk": list(config["ctr_topk"]),
                   "metric_decimal_place": config["metric_decimal_place"]}
    evaluator = Evaluator(eval_config)

    def run(mask: np.ndarray | None) -> OrderedDict:
        keep = torch.ones(n_users, dtype=torch.bool) if mask is None else torch.as_tensor(mask)
        struct = DataStruct()
        struct.set("rec.score", probs[keep].reshape(-1).float())
        struct.set("data.label", labels[keep].reshape(-1))
        struct.set("data.uid", uid[keep].reshape(-1))
        struct.set("rec.topk", topk_struct(pos_rank[keep], max(eval_config["topk"])))
        return evaluator.evaluate(struct)

    result = OrderedDict(run(None))
    result["users"] = n_users
    for name, mask in (groups or {}).items():
        if mask.any():
            for key, value in run(mask).items():
                result[f"{name}/{key}"] = value
            result[f"{name}/users"] = int(mask.sum())
    return result, {"auc": user_auc, "rank": pos_rank.numpy()}


@torch.no_grad()
def evaluate_ctr(model, eval_data, candidates: CandidateSet, phase: str, config):
    """Score every user of ``eval_data`` (a full-sort eval loader) on its fixed candidates."""
    dataset = eval_data._dataset
    uid_f, iid_f = dataset.uid_field, dataset.iid_field
    device = config["device"]
    model.eval()
    limit = config["ctr_valid_max_users"] if phase == "valid" else None
    subset = candidates.valid_subset(limit, config["ctr_candidate_seed"]) if limit else None
    all_scores, all_uids = [], []
    for interaction, _history, _pos_u, _pos_i in eval_data:
        if uid_f not in interaction.interaction:
            raise KeyError(f"eval batch has no '{uid_f}' field")
        uids = interaction[uid_f].numpy()
        if subset is not None:
            keep = np.flatnonzero(subset[candidates.rows(uids)])
            if len(keep) == 0:
                continue
            interaction, uids = interaction[torch.as_tensor(keep)], uids[keep]
        cands = torch.as_tensor(candidates.candidates(uids, phase))   # [B, C]
        if iid_f in interaction.interaction and not torch.equal(interaction[iid_f], cands[:, 0]):
            raise ValueError(f"the stored {phase} positives differ from RecBole's split; the "
                             "candidate file does not match this data or eval_args.")
        scores = score_candidates(model, interaction.to(device), cands.to(device), dataset, config)
        all_scores.append(scores.float().cpu())
        all_uids.append(uids)
    scores = torch.cat(all_scores)
    uids = np.concatenate(all_uids)
    rows = candidates.rows(uids)
    cold = candidates.cold[rows]
    result, per_user = ctr_metrics_from_scores(
        scores, outputs_probability(model), config, {"cold": cold, "hot": ~cold})
    per_user["user_id"] = uids
    per_user["cold"] = cold
    return result, per_user


def ranking_users(eval_data) -> np.ndarray:
    """User ids of a full-sort loader in RecBole's evaluation order (rows of ``rec.topk``)."""
    if getattr(eval_data, "is_sequential", False):
        return eval_data._dataset.inter_feat[eval_data.uid_field].numpy()
    return eval_data.uid_list.numpy()


def repoint_optimizer(optimizer, model) -> int:
    """Point ``optimizer`` at ``model``'s current parameters, by position, with their state.

    The optimizer must have been built on ``model.parameters()`` (RecBole's ``_build_optimizer``)
    and the model may since have had submodules replaced by copies of the same structure. Returns
    how many parameters changed. Raises if the parameters no longer line up (count or shapes).
    """
    current = list(model.parameters())
    held = [p for group in optimizer.param_groups for p in group["params"]]
    if len(held) != len(current) or any(a.shape != b.shape for a, b in zip(held, current)):
        raise RuntimeError("the optimizer's parameters do not line up with the model's (count "
                           "or shapes differ); it was not built on model.parameters()")
    moved, it = 0, iter(current)
    for group in optimizer.param_groups:
        for i, old in enumerate(group["params"]):
            new = next(it)
            if new is not old:
                if old in optimizer.state:
                    optimizer.state[new] = optimizer.state.pop(old)
                group["params"][i] = new
                moved += 1
    return moved


class ReaSeqTrainerMixin:
    """Adds per-epoch timing, per-user test metrics (``last_per_user``) and, for
    ``eval_protocol: ctr``, the CTR-track evaluation.

    Mixed in front of whatever trainer RecBole picks for the model (see
    :func:`recbole_reaseq.quick_start.build_trainer`); RecBole's ``fit`` loop is used unchanged.
    """

    ctr_candidates: CandidateSet | None = None

    def _log_epoch(self, epoch: int, phase: str, seconds: float) -> None:
        path = self.config["reaseq_epoch_log"]
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if not path or (distributed and torch.distributed.get_rank() != 0):
            return
        with open(path, "a", encoding="utf-8") as f:     # one line per event: survives a kill
            f.write(json.dumps({"epoch": epoch, "phase": phase, "seconds": seconds}) + "\n")

    def resume_checkpoint(self, resume_file):
        """RecBole's resume, then the optimizer pointed at the model's current parameters.

        RecBole restores ``other_parameter`` by assignment; for DIN, DIEN and KnowledgeDIN that
        swaps in a new ``embedding_layer`` after the optimizer was built, and the optimizer went
        on stepping the discarded copy: the embedding tables stopped training after a resume.
        """
        super().resume_checkpoint(resume_file)
        repoint_optimizer(self.optimizer, self.model)

    def _train_epoch(self, train_data, epoch_idx, *args, **kwargs):
        start = time.perf_counter()
        loss = super()._train_epoch(train_data, epoch_idx, *args, **kwargs)
        seconds = time.perf_counter() - start
        self.epoch_seconds = getattr(self, "epoch_seconds", []) + [seconds]
        self._epoch_idx = epoch_idx
        self._log_epoch(epoch_idx, "train", seconds)
        return loss

    def _valid_epoch(self, valid_data, *args, **kwargs):
        start = time.perf_counter()
        out = super()._valid_epoch(valid_data, *args, **kwargs)
        self._log_epoch(getattr(self, "_epoch_idx", -1), "valid", time.perf_counter() - start)
        return out

    @torch.no_grad()
    def evaluate_ranking(self, eval_data, load_best_model=True, model_file=None,
                         show_progress=False):
        """RecBole's own full-ranking ``evaluate``; also keeps each user's metrics (from the
        ``rec.topk`` struct it computes them from) in ``last_per_user`` (None under DDP, where
        each rank only holds its share)."""
        captured = {}
        evaluator = self.evaluator
        recbole_evaluate = evaluator.evaluate

        def capture(struct):
            if "rec.topk" in struct:
                captured["topk"] = struct.get("rec.topk").numpy()
            return recbole_evaluate(struct)

        evaluator.evaluate = capture
        try:
            result = super().evaluate(eval_data, load_best_model, model_file, show_progress)
        finally:
            del evaluator.evaluate
        self.last_per_user = None
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if "topk" in captured and not distributed:
            users = ranking_users(eval_data)
            if len(users) == len(captured["topk"]):
                self.last_per_user = {"user_id": users,
                                      **per_user_topk(captured["topk"], self.config["topk"])}
        return result

    @torch.no_grad()
    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if self.config["eval_protocol"] != "ctr":
            return self.evaluate_ranking(eval_data, load_best_model, model_file, show_progress)
        if not eval_data:
            return None
        if load_best_model:
            checkpoint = torch.load(model_file or self.saved_model_file, map_location=self.device)
            self.model.load_state_dict(checkpoint["state_dict"])
            self.model.load_other_parameter(checkpoint.get("other_parameter"))
        phase = getattr(eval_data, "reaseq_phase", None)
        if phase not in ("valid", "test"):
            raise ValueError("CTR evaluation needs the loader's phase; build loaders with "
                             "recbole_reaseq.quick_start.prepare_data, which tags them.")
        result, per_user = evaluate_ctr(self.model, eval_data, self.ctr_candidates, phase,
                                        self.config)
        self.last_per_user = per_user
        return result
