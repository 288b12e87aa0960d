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
NOTE: GSU ties (equal cosine, e.g. items with identical knowledge texts) go to the earlier (older)
history position by default; ``gsu_tie_break: recent`` gives them to the more recent one. The paper
does not say. ``older`` stays the default because every stored benchmark run used it. At K = 10
the choice changes the retrieved set for 2.0 % of the Beauty test (user, candidate) pairs with
more than K history items, and for 35 % on ml-100k, whose offline knowledge is the genres only
(``benchmarks/results/gsu_ties.md``; ``benchmarks/suites/gsu_k_ml100k.yaml`` trains both).
Retrieved slots beyond the history length are masked.
NOTE: the frozen knowledge embeddings (L2-normalised) and the SID codes are persistent buffers, so a
checkpoint reproduces its predictions even if the artefacts are rebuilt later.
NOTE: ``ctr_score_with_full_sort`` is off in ``ReaSeqCTR.yaml``: the CTR track scores the 100
candidates with ``predict``, which is far cheaper than a full sort for this model (its GSU depends
on the target). ``full_sort_predict`` (ranking track) computes the per-user work (sequence
encodings, projected ESU keys/values, compressed anchors) once and scores items in chunks of
``full_sort_budget`` floats; it equals ``predict`` on the same pairs (tested).
NOTE: any history width <= ``MAX_ITEM_LIST_LENGTH`` is accepted (``trim_padding``): masks come from
``item_length`` and nothing depends on the width (with ``gbr_augment``: up to
``MAX_ITEM_LIST_LENGTH + gbr_fill_slots``, masks from ``gbr_length``).
NOTE: ``center_repr: True`` (beyond the paper) centres the frozen knowledge table
(``item_repr.center_rows``, as GBRDIN's); it changes only the GSU's keys and queries. With
``gbr_augment`` it must match the reasoner's table: it selects the augmentation of the reasoner
trained with ``--center-repr`` (variant ``GBR-*-ctr``, checked by ``load_augmentation``).

GBR-ReaSeqCTR (beyond the paper, issue #5): with ``reaseq_transforms: [gbr_augment]``
(:class:`recbole_reaseq.gbr.transform.GBRAugment`) the model reads the augmented behaviour sequence
``gbr_items`` / ``gbr_fill_index`` / ``gbr_length`` instead of ``item_id_list`` / ``item_length``,
and keeps the stored table of filled vectors (:func:`recbole_reaseq.gbr.augment.load_augmentation`)
as the persistent buffer ``fill_table`` [G+1, D] (row 0 = zeros, other rows L2-normalised).

NOTE: a filled behaviour has no item id, SID or side feature, only a vector in the knowledge space:

* GSU key: the (unit) fill vector instead of the item's knowledge embedding, so the GSU ranks fills
  and real items together by cosine with the target's knowledge embedding; padding is masked as
  before and never retrieved (the mask is ``position < gbr_length`` and item or fill; a fill
  index in a padded slot is ignored);
* item representation: ``fill_proj`` (``nn.Linear(D, hidden_size)``, trainable, created only when
  ``gbr_augment`` is on: a plain model has exactly the plain parameters and buffers);
* the retrieval pathway (ESU keys/values), the compression anchors and the pooled user profile all
  read the augmented sequence;
* the context embedding stays the number of OBSERVED behaviours (real items of the augmented
  sequence, = ``item_length``), not ``gbr_length``: fills are the model's own inference, already
  seen by both pathways and the profile, and the length table keeps its ``MAX_ITEM_LIST_LENGTH + 1``
  rows (same parameters as the plain model).

NOTE: ``gbr_fill_decode: expected | nearest`` maps the fills onto the (centred, if
``center_repr``) knowledge table first, as in GBRDIN (:func:`recbole_reaseq.gbr.augment.
decode_fills`).
NOTE: GBR-ReaSeqCTR with zero fills equals ReaSeqCTR bit for bit (tested): ``fill_proj`` is created
after every other module is initialised, under ``preserve_rng`` (the global RNG stream that
follows, dropout and sampling, is unchanged), and the augmented sequence is cut to the batch's
``max(item_id_list width, longest gbr_length)`` columns (trailing columns are padding in every
row), so without fills the model sees exactly RecBole's tensors.
NOTE: ``full_sort_predict`` works on the augmented sequence (the per-user state holds the fills;
the fills of a row do not depend on the scored item). ``serve`` and ``score(kv="naive" | "dedup")``
re-embed retrieved items from their ids, which fills do not have: they refuse augmented histories.
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

from recbole_reaseq.model.item_repr import (load_item_representations, preserve_rng,
                                            side_feature_columns)
from recbole_reaseq.model.layers import (AnchorCompressor, TargetAttention, gather_positions,
                                         dedup_retrieved, masked_topk, project_kv_naive)

logger = logging.getLogger(__name__)

PATHWAYS = ("retrieval", "compression")
KV_MODES = ("positions", "dedup", "naive")
USER_PROFILES = ("pooled", "user_id", "none")
GSU_TIE_BREAKS = {"older": "earlier", "recent": "later"}  # config value -> masked_topk(ties=)
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
        self.gsu_tie_break = config["gsu_tie_break"] or "older"
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
        if self.gsu_tie_break not in GSU_TIE_BREAKS:
            raise ValueError(f"config gsu_tie_break must be one of {tuple(GSU_TIE_BREAKS)}, got "
                             f"{self.gsu_tie_break!r}.")
        if self.user_profile not in USER_PROFILES:
            raise ValueError(f"config user_profile must be one of {USER_PROFILES}, got "
                             f"{self.user_profile!r}.")
        self.retrieval = "retrieval" in self.pathways
        self.compression = "compression" in self.pathways
        self.center_repr = bool(config["center_repr"])
        transforms = config["reaseq_transforms"] or []
        self.use_gbr = "gbr_augment" in ([transforms] if isinstance(transforms, str)
                                         else transforms)
        side_fields = config["side_features"]

        # frozen item tables (built on demand by the knowledge pipeline)
        reprs = load_item_representations(config, dataset, knowledge=self.retrieval,
                                          sid=self.use_sid, center=self.center_repr)
        if self.retrieval:
            self.register_buffer("knowledge_unit", F.normalize(reprs.knowledge_emb, dim=-1))
        if self.use_gbr:
            with preserve_rng():            # gbr_build_missing may train the reasoner first
                self.register_buffer("fill_table", self._load_fills(config, reprs))  # [G+1, D]
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
        if self.use_gbr:
            # after the others and without moving the global RNG: see the module's NOTE
            with preserve_rng():
                self.fill_proj = nn.Linear(self.fill_table.shape[1], h)
                self._init_weights(self.fill_proj)

    def _load_fills(self, config, reprs) -> torch.Tensor:
        """The stored GBR fills as a [G+1, D] table of unit rows, row 0 = zeros (not a fill)."""
        from recbole_reaseq.gbr.augment import decode_fills, load_augmentation

        aug = load_augmentation(config)
        decode = config["gbr_fill_decode"] or "raw"
        if decode != "raw" and reprs.knowledge_emb is None:
            raise ValueError(f"gbr_fill_decode={decode!r} maps fills onto the knowledge table, "
                             f"which a compression-only ReaSeqCTR does not load. Fix: "
                             f"gbr_fill_decode: raw, or add retrieval to reaseq_pathways.")
        if reprs.knowledge_emb is not None and aug.dim != reprs.knowledge_emb.shape[1]:
            raise ValueError(f"GBR augmentation {aug.path} has {aug.dim}-d vectors, the "
                             f"{reprs.knowledge_field} table {reprs.knowledge_emb.shape[1]}-d. "
                             f"Fix: rebuild it with the same knowledge_field.")
        fills = decode_fills(torch.from_numpy(aug.fills), reprs.knowledge_emb, decode,
                             config["gbr_decode_temperature"] or 0.07)     # [G, D] unit rows
        return torch.cat([fills.new_zeros(1, aug.dim), fills])              # [G+1, D]

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
    def fill_repr(self, fill_index: torch.Tensor) -> torch.Tensor:
        """Representations [..., H] of the fills ``fill_index`` [...] (rows of ``fill_table``;
        each distinct row projected once; row 0 gives ``fill_proj``'s bias, masked by callers)."""
        rows, inverse = torch.unique(fill_index, return_inverse=True)      # [U], [...]
        return self.fill_proj(self.fill_table[rows])[inverse]               # [..., H]

    def encode_user(self, user, item_seq, item_seq_len, project_history: bool = True,
                    fill_index=None) -> dict:
        """Target-independent work, done once per user: history representations, the projected
        ESU keys/values (``project_history``; serving projects only the retrieved items), the
        compressed anchors (projected for stage 2), profile and context.

        ``fill_index`` [B, L] (GBR-augmented histories, see the module): row of ``fill_table`` at
        a filled behaviour (its ``item_seq`` entry is 0), 0 elsewhere, ignored at padding slots;
        ``item_seq_len`` then counts items and fills."""
        length = item_seq.shape[1]
        positions = torch.arange(length, device=item_seq.device)
        within = positions.unsqueeze(0) < item_seq_len.unsqueeze(1)        # [B, L]
        token = item_seq > 0                                                # [B, L]
        is_fill = None
        if fill_index is not None:
            if not self.use_gbr:
                raise ValueError("ReaSeqCTR got filled behaviours (fill_index) but has no fill "
                                 "table. Fix: add gbr_augment to reaseq_transforms.")
            is_fill = (fill_index > 0) & within                             # [B, L]
            fill_index = fill_index.masked_fill(~is_fill, 0)                # padding: no fill
            token = token | is_fill
        mask = within & token                                               # [B, L]
        seq = self.item_repr(item_seq)                                      # [B, L, H]
        if is_fill is not None:
            seq = torch.where(is_fill.unsqueeze(-1), self.fill_repr(fill_index), seq)  # [B, L, H]
        state = {"mask": mask, "item_seq": item_seq, "has_fills": is_fill is not None}
        if self.retrieval:
            hist = self.knowledge_unit[item_seq]                            # [B, L, D]
            if is_fill is not None:
                hist = torch.where(is_fill.unsqueeze(-1), self.fill_table[fill_index], hist)
            state["hist_knowledge"] = hist                                  # [B, L, D]
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
            observed = item_seq_len if is_fill is None else (mask & ~is_fill).sum(1)  # [B]
            state["context"] = self.length_embedding(
                observed.clamp(0, self.max_seq_length))                     # [B, d]
        return state

    def retrieve(self, state: dict, items: torch.Tensor):
        """GSU for items [B, C]: (history positions [B, C, K], valid [B, C, K]) of the top-K
        history items by knowledge cosine (padding never selected, see ``masked_topk``)."""
        query = self.knowledge_unit[items]                                  # [B, C, D]
        sims = torch.einsum("bcd,bld->bcl", query, state["hist_knowledge"])  # [B, C, L]
        mask = state["mask"].unsqueeze(1).expand_as(sims)                   # [B, C, L]
        return masked_topk(sims, mask, self.top_k,
                           GSU_TIE_BREAKS[self.gsu_tie_break])              # [B, C, K] x 2

    def retrieved_items(self, state: dict, idx: torch.Tensor, valid: torch.Tensor):
        """Item ids [B, C, K] at the retrieved positions (0 = padding at invalid slots; also 0 at
        a retrieved fill of an augmented history, which has no item id)."""
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
        if kv != "positions" and self.retrieval and state.get("has_fills"):
            raise ValueError(f"kv={kv!r} re-embeds the retrieved items from their ids, which GBR's "
                             f"filled behaviours do not have. Fix: kv='positions' for augmented "
                             f"histories.")
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
    def forward(self, user, item_seq, item_seq_len, items, fill_index=None):
        """Logits [B] of the target ``items`` [B] (``fill_index``: see ``encode_user``)."""
        state = self.encode_user(user, item_seq, item_seq_len, fill_index=fill_index)
        return self.score(state, items.unsqueeze(1)).squeeze(1)

    @torch.no_grad()
    def serve(self, item_seq, item_seq_len, candidates, user=None, kv: str = "dedup"):
        """One serving request: a user's history item_seq [1, L] (length [1]) and candidates
        [C] -> probabilities [C]. ``kv="dedup"`` is the paper's deployment optimisation (the
        retrieved history items of all candidates merged, K/V projected once per unique item);
        ``kv="naive"`` projects every candidate's K retrieved items (see ``score``)."""
        if self.use_gbr:
            raise NotImplementedError(
                "ReaSeqCTR.serve takes plain item histories; this model was built with "
                "gbr_augment (filled behaviours have no item id to deduplicate). Fix: score "
                "augmented batches with predict / full_sort_predict, or serve a model built "
                "without gbr_augment in reaseq_transforms.")
        if user is None:
            user = torch.zeros_like(item_seq_len)
        state = self.encode_user(user, item_seq, item_seq_len, project_history=False)
        return torch.sigmoid(self.score(state, candidates.view(1, -1), kv=kv)).view(-1)

    def _history(self, interaction):
        """(item ids [B, L], fill rows [B, L] or None, lengths [B]) of the rows' histories: RecBole's
        ``item_id_list`` / ``item_length``, or with ``gbr_augment`` the augmented sequence cut to
        ``max(item_id_list width, longest gbr_length)`` columns (see the module's NOTE)."""
        if not self.use_gbr:
            return interaction[self.ITEM_SEQ], None, interaction[self.ITEM_SEQ_LEN]
        if "gbr_items" not in interaction.interaction:
            raise KeyError("ReaSeqCTR with gbr_augment in reaseq_transforms got a batch without "
                           "gbr_items. Fix: build the loaders with "
                           "recbole_reaseq.quick_start.prepare_data (installs the transform).")
        length = interaction["gbr_length"]                                  # [B]
        width = max(interaction[self.ITEM_SEQ].shape[1], int(length.max()) if len(length) else 0)
        return (interaction["gbr_items"][:, :width], interaction["gbr_fill_index"][:, :width],
                length)                                                     # [B, W'] x 2, [B]

    def _inputs(self, interaction):
        item_seq, fill_index, item_seq_len = self._history(interaction)
        return (interaction[self.USER_ID], item_seq, item_seq_len,
                interaction[self.POS_ITEM_ID], fill_index)

    def calculate_loss(self, interaction):
        logits = self.forward(*self._inputs(interaction))
        return self.loss(logits, interaction[self.LABEL_FIELD].float())

    def predict(self, interaction):
        """Probabilities [B]; rows are scored in slices of ``_PREDICT_ROWS`` (the GSU gathers a
        [rows, L, D] block of knowledge vectors; the CTR track sends 16 x eval_batch_size rows)."""
        user, item_seq, item_seq_len, items, fill_index = self._inputs(interaction)
        logits = []
        for i in range(0, len(items), _PREDICT_ROWS):
            rows = slice(i, i + _PREDICT_ROWS)
            logits.append(self.forward(user[rows], item_seq[rows], item_seq_len[rows], items[rows],
                                       None if fill_index is None else fill_index[rows]))
        return torch.sigmoid(torch.cat(logits))

    def full_sort_predict(self, interaction):
        """Probabilities [B * n_items] of every item for each row, per-user work done once (on the
        augmented history with ``gbr_augment``)."""
        user = interaction[self.USER_ID]
        item_seq, fill_index, item_seq_len = self._history(interaction)
        state = self.encode_user(user, item_seq, item_seq_len, fill_index=fill_index)
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
