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

Implementation: DIN's own ``forward`` runs unchanged; its ``embedding_layer`` is wrapped in
:class:`recbole_reaseq.model.layers.KnowledgeFeatureEmbedding`, which adds ``W k(i)`` to the item
features it returns. RecBole's DIN pickles ``embedding_layer`` into every checkpoint
(``other_parameter``) and sets it back on load, which would drop the wrapper; KnowledgeDIN pickles
and restores the wrapped RecBole layer instead. Checkpoints written before the wrapper
(``knowledge_emb``, ``knowledge_proj.weight`` and ``embedding_layer.*`` at the top level) load
unchanged (their keys are renamed on load; tested).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from recbole_reaseq import compat
from recbole_reaseq.model.item_repr import load_item_representations
from recbole_reaseq.model.layers import KnowledgeFeatureEmbedding

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

        # define layers: DIN's item feature width is att_list[0] / 4 (4 * F * d)
        self.item_width = self.att_list[0] // 4
        self.embedding_layer = KnowledgeFeatureEmbedding(
            self.embedding_layer, reprs.knowledge_emb,                       # [n_items, D]
            n_fields=self.item_width // self.embedding_size, embedding_size=self.embedding_size)
        self._register_load_state_dict_pre_hook(_rename_old_keys)

        # parameters initialization: DIN's ran in super().__init__; the projection starts at zero

    @property
    def knowledge_emb(self) -> torch.Tensor:
        return self.embedding_layer.knowledge_emb                            # [n_items, D]

    @property
    def knowledge_proj(self) -> nn.Linear:
        return self.embedding_layer.knowledge_proj

    def forward(self, user, item_seq, item_seq_len, next_items):
        if item_seq.shape[1] < self.max_seq_length:                     # trim_padding batches
            item_seq = F.pad(item_seq, (0, self.max_seq_length - item_seq.shape[1]))
        return super().forward(user, item_seq, item_seq_len, next_items)   # [B]

    def other_parameter(self):
        return {"embedding_layer": self.embedding_layer.layer}

    def load_other_parameter(self, para):
        if para and "embedding_layer" in para:
            self.embedding_layer.layer = para["embedding_layer"]


def _rename_old_keys(state_dict, prefix, *args) -> None:
    """Keys of checkpoints written before the wrapper, renamed in place to the wrapper's."""
    moved = {"knowledge_emb": "embedding_layer.knowledge_emb",
             "knowledge_proj.weight": "embedding_layer.knowledge_proj.weight"}
    for old, new in moved.items():
        if prefix + old in state_dict:
            state_dict[prefix + new] = state_dict.pop(prefix + old)
    layer, wrapped = prefix + "embedding_layer.", prefix + "embedding_layer.layer."
    own = (prefix + "embedding_layer.knowledge_", wrapped)
    for key in [k for k in state_dict if k.startswith(layer) and not k.startswith(own)]:
        state_dict[wrapped + key[len(layer):]] = state_dict.pop(key)
