r"""
ReaSeqCTR
################################################
Reference:
    TaoRank Team. "ReaSeq: Unleashing World Knowledge via Reasoning for Sequential Modeling."
    arXiv 2512.21257, Section 2.2 "Knowledge-enhanced CTR" (eq. 1-5).

A pointwise CTR model (trained with BCE on one sampled negative per positive, like RecBole's DIN)
whose item representation and behaviour modelling use the reasoning-enhanced item knowledge of
Section 2.1 (:mod:`recbole_reaseq.knowledge`):

* item representation: the embeddings of the item's semantic ID (one table per SID level, summed)
  + side features (category levels, brand, price bucket from ``dataset.item_feat``) + optionally
  an item-ID embedding, concatenated and projected to ``hidden_size``;
* retrieval pathway: GSU = the ``gsu_top_k`` history items most cosine-similar to the target under
  the frozen knowledge embeddings, over the whole history; ESU = multi-head target attention over
  them;
* compression pathway: ``n_anchors`` learnable interest anchors cross-attend over the full
  sequence, then the target attends over the anchors;
* integration: MLP over [ESU out, ESU out * target, anchor out, anchor out * target, user profile,
  context, target] -> logit.

Ablations (config): ``reaseq_pathways`` (``[retrieval]``, ``[compression]`` or both), ``use_sid``,
``use_item_id``; a disabled part has no parameters (and no buffers) and the output does not depend
on its inputs.

NOTE: the integration MLP also receives the element-wise products target * pathway output (as
DIN's ``user * target``); the paper only names the concatenation.
NOTE: the user profile is the masked mean of the history's item representations by default
(``user_profile: pooled``); ``user_id`` uses a user-ID embedding, ``none`` drops it. The context is
an embedding of the history length (``use_context``); the paper's production context features
(time, scene, ...) do not exist in the public data sets.
NOTE: the SID embedding sums all ``L + 1`` code levels, including the collision index that makes
each item's code unique; codes are shifted so that 0 = padding and 1 = an item without artefacts.
NOTE: GSU ties (equal cosine, e.g. items with identical knowledge texts) go to the earlier history
position; retrieved slots beyond the history length are masked.
NOTE: the frozen knowledge embeddings (L2-normalised) and the SID codes are persistent buffers, so a
checkpoint reproduces its predictions even if the artefacts are rebuilt later.
NOTE: ``ctr_score_with_full_sort`` is off in ``ReaSeqCTR.yaml``: the CTR track scores the 100
candidates with ``predict``, which is far cheaper than a full sort for this model (its GSU depends
on the target). ``full_sort_predict`` (ranking track) computes the per-user work (sequence
encodings, projected ESU keys/values, compressed anchors) once and scores items in chunks of
``full_sort_budget`` floats; it equals ``predict`` on the same pairs (tested).
NOTE: any history width <= ``MAX_ITEM_LIST_LENGTH`` is accepted (``trim_padding``): masks come from
``item_length`` and nothing depends on the width.
"""
from __future__ import annotations

import logging

import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.layers import MLPLayers
from recbole.utils import InputType
from torch.nn.init import constant_, xavier_normal_

from recbole_reaseq.model.item_repr import load_item_representations, side_feature_columns
from recbole_reaseq.model.layers import (AnchorCompressor, TargetAttention, gather_positions,
                                         dedup_retrieved, masked_topk, project_kv_naive)

logger = logging.getLogger(__name__)

PATHWAYS = ("retrieval", "compression")
KV_MODES = ("positions", "dedup", "naive")
USER_PROFILES = ("pooled", "user_id", "none")
_PREDICT_ROWS = 4096  # rows per slice in predict


class ReaSeqCTR(SequentialRecommender):
    """Knowledge-enhanced CTR model of ReaSeq (see the module docstring)."""

    input_type = InputType.POINTWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        # load parameters
        self.LABEL_FIELD = config["LABEL_FIELD"]
        self.embedding_size = config["embedding_size"]
        self.hidden_size = config["hidden_size"]
        self.n_heads = config["n_heads"]
        self.top_k = config["gsu_top_k"]
        self.n_anchors = config["n_anchors"]
        self.mlp_hidden_size = list(config["mlp_hidden_size"])
        self.dropout_prob = config["dropout_prob"]
        self.attn_dropout_prob = config["attn_dropout_prob"]
        self.full_sort_budget = int(config["full_sort_budget"] or 1 << 24)
        self.pathways = self._parse_pathways(config["reaseq_pathways"])
        self.use_sid = bool(config["use_sid"])
        self.use_item_id = bool(config["use_item_id"])
        self.use_context = bool(config["use_context"])
        self.user_profile = config["user_profile"] or "none"
        if self.user_profile not in USER_PROFILES:
            raise ValueError(f"config user_profile must be one of {USER_PROFILES}, got "
                             f"{self.user_profile!r}.")
        self.retrieval = "retrieval" in self.pathways
        self.compression = "compression" in self.pathways
        side_fields = config["side_features"]

        # frozen item tables (built on demand by the knowledge pipeline)
        reprs = load_item_representations(config, dataset, knowledge=self.retrieval,
                                          sid=self.use_sid)
        if self.retrieval:
            self.register_buffer("knowledge_unit", F.normalize(reprs.knowledge_emb, dim=-1))
        if self.use_sid:
            self.register_buffer("sid_codes", reprs.sid)                    # [n_items, L+1]
        side = side_feature_columns(dataset, side_fields, config["category_levels"],
                                    config["price_buckets"])
        self.side_fields = list(side)
        for name, (codes, _vocab) in side.items():
            self.register_buffer(f"side_codes_{name}", codes)               # [n_items, c]

        # define layers
        d, h = self.embedding_size, self.hidden_size
        n_parts = 0
        if self.use_sid:
            self.sid_embeddings = nn.ModuleList(
                nn.Embedding(v, d, padding_idx=0) for v in reprs.sid_vocab)
            n_parts += 1
        self.side_embeddings = nn.ModuleDict({
            name: nn.ModuleList(nn.Embedding(v, d, padding_idx=0) for v in vocab)
            for name, (_codes, vocab) in side.items()})
        n_parts += len(side)
        if self.use_item_id:
            self.item_embedding = nn.Embedding(self.n_items, d, padding_idx=0)
            n_parts += 1
        if n_parts == 0:
            raise ValueError("ReaSeqCTR has no item representation: set use_sid or use_item_id, or "
                             "load side features.")
        self.item_proj = nn.Linear(n_parts * d, h)
        mlp_in = h                                                          # target
        if self.retrieval:
            self.esu = TargetAttention(h, self.n_heads, self.attn_dropout_prob)
            mlp_in += 2 * h
        if self.compression:
            self.compressor = AnchorCompressor(h, self.n_anchors, self.n_heads,
                                               self.attn_dropout_prob)
            mlp_in += 2 * h
        if self.user_profile == "user_id":
            self.user_embedding = nn.Embedding(dataset.num(self.USER_ID), h)
        if self.user_profile != "none":
            mlp_in += h
        if self.use_context:
            self.length_embedding = nn.Embedding(self.max_seq_length + 1, d)
            mlp_in += d
        self.mlp = MLPLayers([mlp_in] + self.mlp_hidden_size, dropout=self.dropout_prob,
                             activation="relu")
        self.predict_layer = nn.Linear(self.mlp_hidden_size[-1] if self.mlp_hidden_size
                                       else mlp_in, 1)
        self.loss = nn.BCEWithLogitsLoss()

        # parameters initialization
        self.apply(self._init_weights)

    @staticmethod
    def _parse_pathways(value) -> tuple:
        names = [value] if isinstance(value, str) else list(value or [])
        bad = [n for n in names if n not in PATHWAYS]
        if bad or not names:
            raise ValueError(f"config reaseq_pathways must be a non-empty subset of {PATHWAYS}; "
                             f"got {value!r}.")
        return tuple(n for n in PATHWAYS if n in names)

    def _init_weights(self, module):
        if isinstance(module, nn.Embedding):
            xavier_normal_(module.weight.data)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, nn.Linear):
            xavier_normal_(module.weight.data)
            if module.bias is not None:
                constant_(module.bias.data, 0)
        elif isinstance(module, nn.LayerNorm):
            constant_(module.weight.data, 1.0)
            constant_(module.bias.data, 0)

    # ---------------------------------------------------------------------------------  items
    def item_repr(self, items: torch.Tensor) -> torch.Tensor:
        """items [...] (internal ids) -> [..., H]."""
        parts = []
        if self.use_sid:
            codes = self.sid_codes[items]                                   # [..., L+1]
            parts.append(sum(emb(codes[..., lvl]) for lvl, emb in enumerate(self.sid_embeddings)))
        for name in self.side_fields:
            codes = getattr(self, f"side_codes_{name}")[items]              # [..., c]
            parts.append(sum(emb(codes[..., c])
                             for c, emb in enumerate(self.side_embeddings[name])))
        if self.use_item_id:
            parts.append(self.item_embedding(items))                        # [..., d]
        return self.item_proj(torch.cat(parts, dim=-1))                     # [..., H]

    # ---------------------------------------------------------------------------------  users
    def encode_user(self, user, item_seq, item_seq_len, project_history: bool = True) -> dict:
        """Target-independent work, done once per user: history representations, the projected
        ESU keys/values (``project_history``; serving projects only the retrieved items), the
        compressed anchors (projected for stage 2), profile and context."""
        length = item_seq.shape[1]
        positions = torch.arange(length, device=item_seq.device)
        mask = (positions.unsqueeze(0) < item_seq_len.unsqueeze(1)) & (item_seq > 0)  # [B, L]
        seq = self.item_repr(item_seq)                                      # [B, L, H]
        state = {"mask": mask, "item_seq": item_seq}
        if self.retrieval:
            state["hist_knowledge"] = self.knowledge_unit[item_seq]         # [B, L, D]
            if project_history:
                state["esu_kv"] = self.esu.project_kv(seq)                  # 2 x [B, L, H]
        if self.compression:
            anchors = self.compressor.compress(seq, mask)                   # [B, M, H]
            state["anchor_kv"] = self.compressor.target_attn.project_kv(anchors)  # 2 x [B, M, H]
        if self.user_profile == "pooled":
            weights = mask.unsqueeze(-1).to(seq.dtype)                      # [B, L, 1]
            state["profile"] = (seq * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # [B, H]
        elif self.user_profile == "user_id":
            state["profile"] = self.user_embedding(user)                    # [B, H]
        if self.use_context:
            state["context"] = self.length_embedding(
                item_seq_len.clamp(0, self.max_seq_length))                 # [B, d]
        return state

    def retrieve(self, state: dict, items: torch.Tensor):
        """GSU for items [B, C]: (history positions [B, C, K], valid [B, C, K]) of the top-K
        history items by knowledge cosine (padding never selected, see ``masked_topk``)."""
        query = self.knowledge_unit[items]                                  # [B, C, D]
        sims = torch.einsum("bcd,bld->bcl", query, state["hist_knowledge"])  # [B, C, L]
        mask = state["mask"].unsqueeze(1).expand_as(sims)                   # [B, C, L]
        return masked_topk(sims, mask, self.top_k)                          # [B, C, K] x 2

    def retrieved_items(self, state: dict, idx: torch.Tensor, valid: torch.Tensor):
        """Item ids [B, C, K] at the retrieved positions (0 = padding at invalid slots)."""
        ids = gather_positions(state["item_seq"].unsqueeze(-1), idx).squeeze(-1)  # [B, C, K]
        return ids.masked_fill(~valid, 0)

    def score(self, state: dict, items: torch.Tensor, target=None,
              kv: str = "positions") -> torch.Tensor:
        """Logits [B, C] of items [B, C] for the users of ``state`` (target: their repr
        [B, C, H] when already computed).

        ``kv`` says how the ESU keys/values of the retrieved items are obtained; all three give
        the same logits: ``positions`` gathers the per-position projections of ``encode_user``
        (training, full sort); ``naive`` embeds and projects each candidate's K retrieved items
        (C * K rows); ``dedup`` (serving) merges the retrieved items of all candidates, projects
        each unique item once and attends against the unique keys/values with an index
        (``TargetAttention.attend_target_unique``)."""
        if kv not in KV_MODES:
            raise ValueError(f"kv must be one of {KV_MODES}, got {kv!r}")
        if target is None:
            target = self.item_repr(items)                                  # [B, C, H]
        n_cands = items.shape[1]
        feats = [target]
        if self.retrieval:
            idx, valid = self.retrieve(state, items)                        # [B, C, K]
            if kv == "dedup":
                unique, inverse = dedup_retrieved(self.retrieved_items(state, idx, valid))
                k, v = self.esu.project_kv(self.item_repr(unique))          # [U, H] x 2
                esu = self.esu.attend_target_unique(target, k, v, inverse, valid)  # [B, C, H]
            else:
                if kv == "positions":
                    k, v = (gather_positions(x, idx) for x in state["esu_kv"])  # [B, C, K, H]
                else:
                    ids = self.retrieved_items(state, idx, valid)           # [B, C, K]
                    k, v = project_kv_naive(self.esu, self.item_repr, ids)  # [B, C, K, H]
                esu = self.esu.attend_target(target, k, v, valid)           # [B, C, H]
            feats += [esu, esu * target]
        if self.compression:
            k, v = state["anchor_kv"]                                       # [B, M, H]
            anchor = self.compressor.target_attn.attend(target, k, v)       # [B, C, H]
            feats += [anchor, anchor * target]
        if self.user_profile != "none":
            feats.append(state["profile"].unsqueeze(1).expand(-1, n_cands, -1))  # [B, C, H]
        if self.use_context:
            feats.append(state["context"].unsqueeze(1).expand(-1, n_cands, -1))  # [B, C, d]
        hidden = self.mlp(torch.cat(feats, dim=-1))                         # [B, C, mlp]
        return self.predict_layer(hidden).squeeze(-1)                       # [B, C]

    # ---------------------------------------------------------------------------------  RecBole
    def forward(self, user, item_seq, item_seq_len, items):
        """Logits [B] of the target ``items`` [B]."""
        state = self.encode_user(user, item_seq, item_seq_len)
        return self.score(state, items.unsqueeze(1)).squeeze(1)

    @torch.no_grad()
    def serve(self, item_seq, item_seq_len, candidates, user=None, kv: str = "dedup"):
        """One serving request: a user's history item_seq [1, L] (length [1]) and candidates
        [C] -> probabilities [C]. ``kv="dedup"`` is the paper's deployment optimisation (the
        retrieved history items of all candidates merged, K/V projected once per unique item);
        ``kv="naive"`` projects every candidate's K retrieved items (see ``score``)."""
        if user is None:
            user = torch.zeros_like(item_seq_len)
        state = self.encode_user(user, item_seq, item_seq_len, project_history=False)
        return torch.sigmoid(self.score(state, candidates.view(1, -1), kv=kv)).view(-1)

    def _inputs(self, interaction):
        return (interaction[self.USER_ID], interaction[self.ITEM_SEQ],
                interaction[self.ITEM_SEQ_LEN], interaction[self.POS_ITEM_ID])

    def calculate_loss(self, interaction):
        logits = self.forward(*self._inputs(interaction))
        return self.loss(logits, interaction[self.LABEL_FIELD].float())

    def predict(self, interaction):
        """Probabilities [B]; rows are scored in slices of ``_PREDICT_ROWS`` (the GSU gathers a
        [rows, L, D] block of knowledge vectors; the CTR track sends 16 x eval_batch_size rows)."""
        user, item_seq, item_seq_len, items = self._inputs(interaction)
        logits = [self.forward(user[i:i + _PREDICT_ROWS], item_seq[i:i + _PREDICT_ROWS],
                               item_seq_len[i:i + _PREDICT_ROWS], items[i:i + _PREDICT_ROWS])
                  for i in range(0, len(items), _PREDICT_ROWS)]
        return torch.sigmoid(torch.cat(logits))

    def full_sort_predict(self, interaction):
        """Probabilities [B * n_items] of every item for each row, per-user work done once."""
        user, item_seq = interaction[self.USER_ID], interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        state = self.encode_user(user, item_seq, item_seq_len)
        n_users = item_seq.shape[0]
        all_items = torch.arange(self.n_items, device=item_seq.device)
        all_repr = self.item_repr(all_items)                                # [n_items, H]
        # floats per (user, item) pair of a chunk: ESU keys + values, knowledge query, sims, MLP
        width = self.hidden_size * 6 + max(self.mlp_hidden_size or [1]) + item_seq.shape[1]
        if self.retrieval:
            width += 2 * self.top_k * self.hidden_size + self.knowledge_unit.shape[1]
        chunk = max(1, self.full_sort_budget // (n_users * width))
        out = []
        for start in range(0, self.n_items, chunk):
            items = all_items[start:start + chunk].unsqueeze(0).expand(n_users, -1)  # [B, C]
            target = all_repr[start:start + chunk].unsqueeze(0).expand(n_users, -1, -1)
            out.append(self.score(state, items, target))                    # [B, C]
        return torch.sigmoid(torch.cat(out, dim=1)).reshape(-1)             # [B * n_items]
