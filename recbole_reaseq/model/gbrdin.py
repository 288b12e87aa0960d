r"""
GBRDIN
################################################
Reference:
    TaoRank Team. "ReaSeq: Unleashing World Knowledge via Reasoning for Sequential Modeling."
    arXiv 2512.21257, Section 3.3 and Table 6 ("Base": a DIN whose behaviours are represented only
    by the reasoning-enhanced item representations; "GBR-*": the same model fed the sequences
    augmented by Generative Behavior Reasoning). Base: Guorui Zhou et al. "Deep Interest Network
    for Click-Through Rate Prediction", KDD 2018 (RecBole's ``DIN``).

Item representation: ``e(i) = W norm(k(i))``, ``k(i)`` the frozen knowledge embedding
(``knowledge_field``) of :mod:`recbole_reaseq.knowledge`, ``norm`` the L2 normalisation
(``normalize_repr``), ``W`` a trainable ``[embedding_size, D]`` projection. No item-ID embedding and
no other item feature. Behaviour tokens, the target and the filled behaviours all go through the
same ``W``, so a filled vector (a unit vector in the same representation space, produced by the
reasoner, :mod:`recbole_reaseq.gbr.augment`) is read exactly like a real item.

Without transform it is the Base. With ``reaseq_transforms: [gbr_augment]``
(:class:`recbole_reaseq.gbr.transform.GBRAugment`) it reads the batch's ``gbr_items`` /
``gbr_fill_index`` / ``gbr_length`` (``gbr_mode: insert`` or ``append`` layout) and the table of
filled vectors of the same stored augmentation: GBR-DIN. Then RecBole's DIN: target attention
(``SequenceAttLayer``, sigmoid weights, padding masked) -> ``[user, target, user * target]`` ->
Dice MLP -> logit, BCE (CTR track).

NOTE: behaviours are a W-token sequence, ``W = MAX_ITEM_LIST_LENGTH + gbr_fill_slots`` for the Base
too (its extra slots are always padding), so the Base and GBR-DIN have the same parameters and
initialisation, and GBR-DIN with zero fills equals the Base exactly (tested).
NOTE: ``position_embedding: True`` adds a learnable recency embedding (0 = the most recent token)
to every behaviour token. DIN has none, and its target attention is a weighted sum, blind to
order: without it the ``insert`` and ``append`` layouts give identical outputs (tested), so the
comparison asked for by Table 6's set-up needs it.
NOTE: the filled vectors are a persistent buffer (like KnowledgeDIN's knowledge matrix), so a
checkpoint keeps the table its indices refer to.
NOTE: ``center_repr: True`` (beyond the paper) centres the frozen representations
(``item_repr.center_rows``) and reads the augmentation of a reasoner trained on the same centred
table. The in-batch cosine softmax of eq. 6-7 cannot see the direction that all items share, so
without centring the filled vectors come out orthogonal to it (cosine 0.01 with the mean item
direction, against 0.73 for real items) and DIN reads them as off-manifold tokens.
NOTE: ``gbr_fill_decode`` (beyond the paper) maps each filled vector back onto the catalogue
before DIN reads it (:func:`recbole_reaseq.gbr.augment.decode_fills`): ``raw`` (the paper's
reading), ``expected`` (the representation expected under the reasoner's softmax over all items
at ``gbr_decode_temperature``) or ``nearest`` (the closest real item). Raw fills lie far from
every real item (cosine 0.2 with the nearest one, against 0.9 between real neighbours;
``benchmarks/results/gbr_qualitative_*.md``).
NOTE: user features are not used (DIN in RecBole does not feed them to the MLP either).
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.layers import MLPLayers, SequenceAttLayer
from recbole.utils import InputType

from recbole_reaseq import compat
from recbole_reaseq.model.item_repr import load_item_representations
from recbole_reaseq.model.layers import map_unique

# importing RecBole's sequential package runs sine.py, which switches autograd anomaly mode on
DIN = compat.import_recbole_module("recbole.model.sequential_recommender.din").DIN


class GBRDIN(SequentialRecommender):
    """DIN over reasoning-enhanced item representations (+ GBR's filled behaviours)."""

    input_type = InputType.POINTWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        # load parameters
        self.LABEL_FIELD = config["LABEL_FIELD"]
        self.embedding_size = config["embedding_size"]
        self.mlp_hidden_size = config["mlp_hidden_size"]
        self.dropout_prob = config["dropout_prob"]
        self.device = config["device"]
        self.knowledge_field = config["knowledge_field"] or "knowledge_emb"
        self.normalize_repr = bool(config["normalize_repr"])
        self.center_repr = bool(config["center_repr"])
        self.use_position = bool(config["position_embedding"])
        slots = config["gbr_fill_slots"]
        if not isinstance(slots, int) or slots < 0:
            raise ValueError(f"config gbr_fill_slots={slots!r} must be an integer >= 0. Fix: "
                             f"e.g. gbr_fill_slots: 10.")
        self.width = self.max_seq_length + slots                            # W
        transforms = config["reaseq_transforms"] or []
        self.use_gbr = "gbr_augment" in ([transforms] if isinstance(transforms, str)
                                         else transforms)
        reprs = load_item_representations(config, dataset, knowledge=True, sid=False,
                                          knowledge_field=self.knowledge_field,
                                          center=self.center_repr)    # centred rows: unit
        knowledge = reprs.knowledge_emb                                     # [n_items, D]
        if self.normalize_repr:
            knowledge = F.normalize(knowledge, dim=-1)                      # row 0 stays 0
        self.register_buffer("item_repr", knowledge)                        # [n_items, D]
        dim = knowledge.shape[1]
        if self.use_gbr:
            from recbole_reaseq.gbr.augment import decode_fills, load_augmentation

            aug = load_augmentation(config)
            if aug.dim != dim:
                raise ValueError(f"GBR augmentation {aug.path} has {aug.dim}-d vectors, the "
                                 f"{self.knowledge_field} table {dim}-d. Fix: rebuild it with "
                                 f"the same knowledge_field.")
            fills = decode_fills(torch.from_numpy(aug.fills), knowledge,      # [G, D] unit
                                 config["gbr_fill_decode"] or "raw",
                                 config["gbr_decode_temperature"] or 0.07)
            table = torch.cat([torch.zeros(1, dim), fills])                 # [G+1, D] row 0 = 0
        else:
            table = torch.zeros(1, dim)
        self.register_buffer("fill_repr", table)

        # define layers
        d = self.embedding_size
        self.item_proj = nn.Linear(dim, d, bias=False)
        self.position = nn.Embedding(self.width, d) if self.use_position else None
        self.att_list = [4 * d] + self.mlp_hidden_size
        self.dnn_list = [3 * d] + self.mlp_hidden_size
        mask_mat = torch.arange(self.width).to(self.device).view(1, -1)     # [1, W]
        self.attention = SequenceAttLayer(mask_mat, self.att_list, activation="Sigmoid",
                                          softmax_stag=False, return_seq_weight=False)
        self.dnn_mlp_layers = MLPLayers(self.dnn_list, activation="Dice",
                                        dropout=self.dropout_prob, bn=True)
        self.dnn_predict_layers = nn.Linear(self.mlp_hidden_size[-1], 1)
        self.sigmoid = nn.Sigmoid()
        self.loss = nn.BCEWithLogitsLoss()

        # parameters initialization (DIN's: xavier normal, zero biases)
        self.apply(partial(DIN._init_weights, self))

    def _behaviours(self, interaction):
        """(item ids [B, W], fill rows [B, W] or None, lengths [B])."""
        if self.use_gbr:
            if "gbr_items" not in interaction.interaction:
                raise KeyError("GBRDIN with gbr_augment in reaseq_transforms got a batch "
                               "without gbr_items: build the loaders with "
                               "recbole_reaseq.quick_start.prepare_data (installs the transform).")
            return (interaction["gbr_items"], interaction["gbr_fill_index"],
                    interaction["gbr_length"])
        return interaction[self.ITEM_SEQ], None, interaction[self.ITEM_SEQ_LEN]

    def project_item(self, items):
        """Item ids ``[N]`` -> projected representations ``[N, d]``."""
        return self.item_proj(self.item_repr[items])

    def project_fill(self, fill_index):
        """Fill rows ``[N]`` (0 = none) -> projected filled vectors ``[N, d]``."""
        return self.item_proj(self.fill_repr[fill_index])

    def forward(self, item_seq, fill_index, item_seq_len, next_items):
        if item_seq.shape[1] < self.width:                                  # Base: pad to W
            item_seq = F.pad(item_seq, (0, self.width - item_seq.shape[1]))
        # project each distinct item / fill once (= item_proj(item_repr[item_seq]), cheaper)
        keys = map_unique(self.project_item, item_seq)                      # [B, W, d]
        if fill_index is not None:
            is_fill = (fill_index > 0).unsqueeze(-1)                        # [B, W, 1]
            fills = map_unique(self.project_fill, fill_index)               # [B, W, d]
            keys = torch.where(is_fill, fills, keys)                        # [B, W, d]
        if self.position is not None:
            steps = torch.arange(self.width, device=item_seq.device).view(1, -1)
            recency = (item_seq_len.view(-1, 1) - 1 - steps).clamp(min=0)   # [B, W]
            keys = keys + self.position(recency)                            # [B, W, d]
        target = map_unique(self.project_item, next_items)                  # [B, d]

        # attention
        user_emb = self.attention(target, keys, item_seq_len).squeeze(1)    # [B, d]

        # input the DNN to get the prediction score
        din_in = torch.cat([user_emb, target, user_emb * target], dim=-1)  # [B, 3d]
        din_out = self.dnn_mlp_layers(din_in)
        preds = self.dnn_predict_layers(din_out)                            # [B, 1]
        return preds.squeeze(1)                                             # [B]

    def calculate_loss(self, interaction):
        label = interaction[self.LABEL_FIELD]
        item_seq, fill_index, item_seq_len = self._behaviours(interaction)
        output = self.forward(item_seq, fill_index, item_seq_len, interaction[self.POS_ITEM_ID])
        return self.loss(output, label)

    def predict(self, interaction):
        item_seq, fill_index, item_seq_len = self._behaviours(interaction)
        return self.sigmoid(self.forward(item_seq, fill_index, item_seq_len,
                                         interaction[self.POS_ITEM_ID]))
