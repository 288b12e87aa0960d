r"""
PLR
################################################
Reference:
    Jiakai Tang et al. "Parallel Latent Reasoning for Sequential Recommendation."
    arXiv 2601.03153.

Width-level latent reasoning on RecBole's SASRec, unchanged as the encoder. SASRec's last hidden
state ``h_0`` (the "fast-thinking" state) starts ``plr_streams`` (S) parallel reasoning streams,
each ``reasoning_steps`` (T) tokens deep, as in ReaRec (:mod:`recbole_reaseq.model.rearec`) but
with a learnable trigger token per stream:

* stream ``s``, step 1 input: ``LayerNorm(h_0 + g_s + r_1)``; step ``t`` > 1:
  ``LayerNorm(h_{s,t-1} + r_t)`` (dropout in training), with ``g_s`` the trigger token of stream
  ``s`` and ``r_t`` the reasoning position embeddings (shared by the streams, used only on
  reasoning tokens). Each reasoning token attends to the valid items and to its own stream's
  earlier tokens; streams never see each other. Stream ``s`` yields ``z_s = h_{s,T}``.
* mixture-of-reasoning-streams aggregation: a gate (``Linear(H, 1)``) scores every candidate
  state, a softmax over the candidates gives weights that sum to 1, and the user representation
  is the weighted sum. With ``plr_fast_thinking: True`` the candidates are ``h_0`` and the S
  streams (dual-process: fast + slow thinking), else the S streams only.
* training: SASRec's CE on the aggregated representation, plus ``plr_stream_loss_weight`` times
  the mean CE of the individual streams, plus ``plr_reg_weight`` times the global reasoning
  regulariser: the mean pairwise cosine similarity between the S stream outputs of each user
  (all pairs of the stream Gram matrix), which keeps the streams diverse.

``reasoning_steps: 0`` is exactly SASRec (no stream, no extra parameter; tested).

NOTE: the paper's exact form of the global regulariser and of the gate is not public code; the
choices above (cosine Gram-matrix penalty over all stream pairs, a linear gate over the candidate
states) are ours. The trigger token is added to the first reasoning input of its stream only;
later steps continue from the stream's own state.
NOTE: the per-stream CE keeps every stream predictive on its own (otherwise the gate could pick
one stream and leave the others untrained); the regulariser counteracts the collapse that the
shared target would cause.
NOTE: reasoning uses the key/value cache of :mod:`recbole_reaseq.model.rearec` (one token per step
and stream; the items' keys/values are computed once and shared by the S streams).
NOTE: ``loss_type`` must be ``CE``.
NOTE: ``knowledge_features: True`` (default ``False``: nothing added) adds the frozen knowledge
embedding (``knowledge_field``) to every item exactly as in ReaRec (see its module docstring,
:func:`recbole_reaseq.model.rearec.add_knowledge_features`): ``e(i) = E_id[i] + W k(i)``, ``k``
the centred unit rows of the knowledge table (``center_repr: False``: unit rows only;
padding = 0), ``W`` a zero-initialised ``Linear(D, hidden_size, bias=False)``; the one combined
table feeds the input tokens, the training logits (mixture and streams), ``predict`` and
``full_sort_predict``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from recbole_reaseq.model.rearec import (SASRec, add_knowledge_features, encode_items,
                                         non_negative_int, reasoning_step, require_ce_loss)


def stream_similarity(streams: torch.Tensor) -> torch.Tensor:
    """Global reasoning regulariser: mean pairwise cosine similarity of ``[B, S, H]`` streams."""
    n_streams = streams.shape[1]
    if n_streams < 2:
        return streams.new_zeros(())
    unit = F.normalize(streams, dim=-1)                                        # [B, S, H]
    gram = torch.matmul(unit, unit.transpose(1, 2))                            # [B, S, S]
    off_diagonal = ~torch.eye(n_streams, dtype=torch.bool, device=streams.device)
    return gram[:, off_diagonal].mean()


class MixtureOfStreams(nn.Module):
    """Softmax gate over candidate states ``[B, C, H]`` -> (``[B, H]``, weights ``[B, C]``)."""

    def __init__(self, hidden_size):
        super().__init__()
        self.gate = nn.Linear(hidden_size, 1)

    def forward(self, candidates):
        weights = torch.softmax(self.gate(candidates).squeeze(-1), dim=-1)     # [B, C]
        return (weights.unsqueeze(-1) * candidates).sum(1), weights            # [B, H], [B, C]


class PLR(SASRec):
    r"""SASRec + parallel latent reasoning streams; see the module docstring."""

    def __init__(self, config, dataset):
        require_ce_loss(config, type(self).__name__)
        super().__init__(config, dataset)

        # load parameters
        self.reasoning_steps = non_negative_int(config, "reasoning_steps")
        self.n_streams = non_negative_int(config, "plr_streams")
        if self.reasoning_steps > 0 and self.n_streams < 1:
            raise ValueError(f"plr_streams must be >= 1 when reasoning_steps > 0 (got "
                             f"{self.n_streams}); set plr_streams: 4, or reasoning_steps: 0 "
                             "for the SASRec backbone alone.")
        self.fast_thinking = bool(config["plr_fast_thinking"])
        self.stream_loss_weight = float(config["plr_stream_loss_weight"] or 0.0)
        self.reg_weight = float(config["plr_reg_weight"] or 0.0)

        # define layers (none at T = 0: then the parameters are exactly SASRec's)
        if self.reasoning_steps > 0:
            self.trigger_tokens = nn.Embedding(self.n_streams, self.hidden_size)
            self.reason_pos_emb = nn.Embedding(self.reasoning_steps, self.hidden_size)
            self.mixture = MixtureOfStreams(self.hidden_size)
        else:
            self.trigger_tokens = self.reason_pos_emb = self.mixture = None

        # parameters initialization (SASRec's init ran in super().__init__; same rule here)
        for module in (self.trigger_tokens, self.reason_pos_emb, self.mixture):
            if module is not None:
                module.apply(self._init_weights)

        # knowledge as an item feature (config knowledge_features; off: nothing added)
        self.knowledge_features = add_knowledge_features(self, config, dataset)

    def streams(self, item_seq, item_seq_len):
        """``h_0`` ``[B, H]`` and the S streams' outputs ``[B, S, H]``."""
        h0, cache = encode_items(self, item_seq, item_seq_len)
        batch, n_streams = h0.shape[0], self.n_streams
        cache = cache.repeat_interleave(n_streams)                             # rows b*S + s
        hidden = h0.repeat_interleave(n_streams, dim=0)                        # [B*S, H]
        trigger = self.trigger_tokens.weight.repeat(batch, 1)                  # [B*S, H]
        for step in range(self.reasoning_steps):
            x = hidden + self.reason_pos_emb.weight[step]
            if step == 0:
                x = x + trigger
            hidden = reasoning_step(self.trm_encoder, cache,
                                    self.dropout(self.LayerNorm(x)))           # [B*S, H]
        return h0, hidden.view(batch, n_streams, -1)

    def aggregate(self, h0, streams):
        """Mixture of reasoning streams: ``[B, H]`` and the gate weights ``[B, C]``."""
        candidates = torch.cat([h0.unsqueeze(1), streams], 1) if self.fast_thinking else streams
        return self.mixture(candidates)

    def forward(self, item_seq, item_seq_len):
        if self.reasoning_steps == 0:
            return super().forward(item_seq, item_seq_len)                     # [B, H]
        user, _weights = self.aggregate(*self.streams(item_seq, item_seq_len))
        return user                                                            # [B, H]

    def calculate_loss(self, interaction):
        if self.reasoning_steps == 0:
            return super().calculate_loss(interaction)                         # SASRec's CE
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        pos_items = interaction[self.POS_ITEM_ID]                              # [B]
        h0, streams = self.streams(item_seq, item_seq_len)
        user, _weights = self.aggregate(h0, streams)
        item_emb = self.item_embedding.weight                                  # [N, H]
        loss = self.loss_fct(torch.matmul(user, item_emb.t()), pos_items)
        if self.stream_loss_weight > 0:
            stream_logits = torch.matmul(streams, item_emb.t())                # [B, S, N]
            loss = loss + self.stream_loss_weight * self.loss_fct(
                stream_logits.reshape(-1, item_emb.shape[0]),
                pos_items.repeat_interleave(self.n_streams))
        if self.reg_weight > 0:
            loss = loss + self.reg_weight * stream_similarity(streams)
        return loss
