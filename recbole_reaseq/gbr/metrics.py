"""In-batch perplexity and accuracy of the reasoner (IB-PPL, IB-ACC) on [MASK] and [FILL] tokens.

Reference: ReaSeq (TaoRank Team, arXiv 2512.21257), Section 4.2.1, eq. 8-9 (Table 5).

For every evaluated token ``q`` of sample ``b`` with prediction ``y_q`` [D]:

* candidates = its positive ``e^+_q`` plus ONE random item token from EVERY OTHER sample of the
  batch (``B - 1`` negatives ``e_{b'}``; one draw per sample, shared by all queries of the batch,
  from a fixed seed);
* ``s(y, e) = cos(y, e) / temperature`` (0.07, the training temperature), and
  ``p_q = e^{s(y_q, e^+_q)} / (e^{s(y_q, e^+_q)} + sum_{b' != b} e^{s(y_q, e_{b'})})``;
* ``IB-PPL = exp(mean_q(-log p_q))``; ``IB-ACC = mean_q 1[s(y_q, e^+_q) > max_{b'} s(y_q, e_{b'})]``
  (strict: a tie counts as a miss).

Positives: at a [MASK] token, its ground-truth item; at a [FILL] token, the ground-truth item of the
[MASK] position of the SAME sequence whose representation is closest (cosine) to ``y_q``. A [FILL]
in a sequence without any [MASK] is not evaluated (counted in ``fill_skipped``).

NOTE: a negative drawn from another sample may be the same item as the positive; it is kept (the
paper fixes B - 1 negatives), so such a query can only tie, which counts as a miss.
NOTE: "item token" = any position with a real ground-truth item (shown or masked) of that sample;
a sample without one contributes no negative.
NOTE: every variant (GBR-T-0 ... GBR-C-2) is scored with the same cosine/temperature formula,
batch size and seed, whatever loss it was trained with.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from .reasoner import FILL, MASK

__all__ = ["sample_negative_positions", "in_batch_scores", "ib_metrics"]


def sample_negative_positions(ids: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """One uniformly random real item position (``ids > 0``) per sample, from ``seed``.

    ids [B, T] -> [B] long (``-1`` for a sample without items).
    """
    real = ids > 0                                                     # [B, T]
    count = real.sum(dim=1)                                            # [B]
    g = torch.Generator().manual_seed(int(seed))
    u = torch.rand(ids.shape[0], generator=g)                          # [B]
    k = torch.clamp((u * count).floor().long(), max=torch.clamp(count - 1, min=0))  # [B]
    rank = real.long().cumsum(dim=1) - 1                               # [B, T] k-th real token
    hit = real & (rank == k.view(-1, 1))                               # [B, T] one True per row
    pos = hit.float().argmax(dim=1)                                    # [B]
    return torch.where(count > 0, pos, torch.full_like(pos, -1))


def in_batch_scores(y: torch.Tensor, e_pos: torch.Tensor, qb: torch.Tensor,
                    e_neg: torch.Tensor, neg_ok: torch.Tensor, temperature: float
                    ) -> Dict[str, torch.Tensor]:
    """-log p and hit per query.

    y [Q, D], e_pos [Q, D], qb [Q] (sample of each query), e_neg [B, D], neg_ok [B] bool.
    Returns ``nll`` [Q] and ``hit`` [Q] bool.
    """
    yn = F.normalize(y, dim=-1)                                        # [Q, D]
    s_pos = (yn * F.normalize(e_pos, dim=-1)).sum(-1) / temperature   # [Q]
    s_neg = yn @ F.normalize(e_neg, dim=-1).T / temperature            # [Q, B]
    other = torch.arange(e_neg.shape[0]).view(1, -1) != qb.view(-1, 1)  # [Q, B]
    s_neg = s_neg.masked_fill(~(other & neg_ok.view(1, -1)), float("-inf"))  # [Q, B]
    logits = torch.cat([s_pos.unsqueeze(1), s_neg], dim=1)             # [Q, 1 + B]
    nll = torch.logsumexp(logits, dim=1) - s_pos                       # [Q]
    hit = s_pos > s_neg.max(dim=1).values                              # [Q]
    return {"nll": nll, "hit": hit}


@torch.no_grad()
def ib_metrics(pred: torch.Tensor, ids: torch.Tensor, kinds_in: torch.Tensor,
               item_repr: torch.Tensor, *, temperature: float = 0.07, seed: int = 0,
               neg_positions: Optional[torch.Tensor] = None) -> Dict[str, float]:
    """IB-PPL / IB-ACC on [MASK] and [FILL] tokens of one batch.

    pred [B, T, D] model output; ids [B, T] GROUND-TRUTH item ids (also at masked positions, 0 at
    [FILL] / PAD); kinds_in [B, T] the kinds the model saw (ITEM / MASK / FILL / PAD);
    item_repr [N, D]; ``neg_positions`` [B] overrides the seeded draw (-1 = none).
    Returns ``mask_ppl``, ``mask_acc``, ``n_mask``, ``fill_ppl``, ``fill_acc``, ``n_fill``,
    ``fill_skipped`` (nan metrics where nothing was evaluated).
    """
    pred = pred.float()
    B = ids.shape[0]
    if neg_positions is None:
        neg_positions = sample_negative_positions(ids, seed)           # [B]
    neg_ok = neg_positions >= 0                                        # [B]
    neg_ids = ids[torch.arange(B), neg_positions.clamp(min=0)]          # [B]
    neg_ok = neg_ok & (neg_ids > 0)
    e_neg = item_repr[neg_ids].float()                                 # [B, D]
    out: Dict[str, float] = {}

    mb, mt = (kinds_in == MASK).nonzero(as_tuple=True)                 # [Qm]
    res = in_batch_scores(pred[mb, mt], item_repr[ids[mb, mt]].float(), mb, e_neg, neg_ok,
                          temperature)
    out.update(_summary("mask", res, len(mb)))

    fb, ft = (kinds_in == FILL).nonzero(as_tuple=True)                 # [Qf]
    keep, pos_ids = [], []
    for q in range(len(fb)):
        b = int(fb[q])
        cand = mt[mb == b]                                             # [k] masked positions of b
        if cand.numel() == 0:
            continue
        cand_ids = ids[b, cand]                                        # [k]
        sims = F.cosine_similarity(pred[b, ft[q]].view(1, -1), item_repr[cand_ids].float(),
                                   dim=-1)                             # [k]
        keep.append(q)
        pos_ids.append(int(cand_ids[int(sims.argmax())]))
    keep_t = torch.tensor(keep, dtype=torch.long)
    if keep:
        res = in_batch_scores(pred[fb[keep_t], ft[keep_t]],
                              item_repr[torch.tensor(pos_ids)].float(), fb[keep_t], e_neg, neg_ok,
                              temperature)
    else:
        res = {"nll": torch.zeros(0), "hit": torch.zeros(0, dtype=torch.bool)}
    out.update(_summary("fill", res, len(keep)))
    out["fill_skipped"] = int(len(fb) - len(keep))
    return out


def _summary(name: str, res: Dict[str, torch.Tensor], n: int) -> Dict[str, float]:
    if n == 0:
        return {f"{name}_ppl": math.nan, f"{name}_acc": math.nan, f"n_{name}": 0}
    return {f"{name}_ppl": float(torch.exp(res["nll"].double().mean())),
            f"{name}_acc": float(res["hit"].double().mean()), f"n_{name}": int(n)}
