r"""
KnowledgeDIN
################################################
Reference:
    TaoRank Team. "ReaSeq: Unleashing World Knowledge via Reasoning for Sequential Modeling."
    arXiv 2512.21257, Table 4 ("Base + MAKR": the base CTR model with the MAKR knowledge
    embeddings). Base: Guorui Zhou et al. "Deep Interest Network for Click-Through Rate
    Prediction", KDD 2018 (RecBole's ``DIN``).

RecBole's DIN, unchanged, except that every item (the history items and the target) gets the
frozen knowledge embedding of :mod:`recbole_reaseq.knowledge` added to its feature representation
through a small trainable projection: ``e(i) = e_DIN(i) + W k(i)``, with ``k(i)`` the frozen
``[D]`` vector and ``W`` a ``[F * embedding_size, D]`` matrix (``F`` = DIN's number of item
feature fields).

Config ``knowledge_field``: ``knowledge_emb`` (demand + attribute, the default), ``demand_emb``,
``attribute_emb`` or ``title_emb`` (title-only text embedding; the pipeline has no public one, so
:func:`recbole_reaseq.knowledge.pipeline.title_embeddings` computes and caches it).

NOTE: the projection has no bias, so the padding item (zero knowledge) gets exactly DIN's
representation; items without artefacts (counted and logged) likewise.
NOTE: the projection starts at zero, so an untrained KnowledgeDIN equals RecBole's DIN built with
the same seed (tested) and learns how much knowledge to add; its gradient is non-zero from the
first step (``dL/dW = dL/de * k^T``).
NOTE: RecBole 1.2.1's DIN builds its attention mask once with ``MAX_ITEM_LIST_LENGTH`` columns, so
it cannot take shorter batches. KnowledgeDIN re-pads shorter (``trim_padding``) batches to that
width with padding items, which leaves its output unchanged (and saves nothing).
NOTE: the frozen knowledge matrix is a persistent buffer, so a checkpoint reproduces its
predictions even if the artefacts are rebuilt later.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.init import zeros_

from recbole_reaseq import compat
from recbole_reaseq.model.item_repr import load_item_representations

# importing RecBole's sequential package runs sine.py, which switches autograd anomaly mode on
DIN = compat.import_recbole_module("recbole.model.sequential_recommender.din").DIN


class KnowledgeDIN(DIN):
    """DIN + frozen MAKR knowledge embedding projected into the item representation."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        # load parameters
        self.knowledge_field = config["knowledge_field"] or "knowledge_emb"
        reprs = load_item_representations(config, dataset, knowledge=True, sid=False,
                                          knowledge_field=self.knowledge_field)
        self.register_buffer("knowledge_emb", reprs.knowledge_emb)          # [n_items, D]

        # define layers: DIN's item feature width is att_list[0] / 4 (4 * F * d)
        self.item_width = self.att_list[0] // 4
        self.knowledge_proj = nn.Linear(reprs.knowledge_emb.shape[1], self.item_width, bias=False)

        # parameters initialization (DIN's init ran in super().__init__)
        zeros_(self.knowledge_proj.weight.data)

    def forward(self, user, item_seq, item_seq_len, next_items):
        if item_seq.shape[1] < self.max_seq_length:                     # trim_padding batches
            item_seq = F.pad(item_seq, (0, self.max_seq_length - item_seq.shape[1]))
        max_length = item_seq.shape[1]
        # concatenate the history item seq with the target item to get embedding together
        item_seq_next_item = torch.cat((item_seq, next_items.unsqueeze(1)), dim=-1)  # [B, L+1]
        sparse_embedding, dense_embedding = self.embedding_layer(user, item_seq_next_item)
        feature_table = {}
        for type in self.types:
            feature_table[type] = []
            if sparse_embedding[type] is not None:
                feature_table[type].append(sparse_embedding[type])
            if dense_embedding[type] is not None:
                feature_table[type].append(dense_embedding[type])
            feature_table[type] = torch.cat(feature_table[type], dim=-2)
            table_shape = feature_table[type].shape
            feat_num, embedding_size = table_shape[-2], table_shape[-1]
            feature_table[type] = feature_table[type].view(
                table_shape[:-2] + (feat_num * embedding_size,))

        # the knowledge: [B, L+1, F*d] += W k(item)
        item_table = feature_table["item"] + self.knowledge_proj(
            self.knowledge_emb[item_seq_next_item])
        item_feat_list, target_item_feat_emb = item_table.split([max_length, 1], dim=1)
        target_item_feat_emb = target_item_feat_emb.squeeze(1)             # [B, F*d]

        # attention
        user_emb = self.attention(target_item_feat_emb, item_feat_list, item_seq_len)
        user_emb = user_emb.squeeze(1)                                     # [B, F*d]

        # input the DNN to get the prediction score
        din_in = torch.cat([user_emb, target_item_feat_emb, user_emb * target_item_feat_emb],
                           dim=-1)
        din_out = self.dnn_mlp_layers(din_in)
        preds = self.dnn_predict_layers(din_out)
        return preds.squeeze(1)
