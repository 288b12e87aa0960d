"""The generative behaviour reasoner: a tiny LLaDA-style bidirectional transformer over item
representations that fills [MASK] (trained) and [FILL] (inferred) positions.

Reference: ReaSeq (TaoRank Team, arXiv 2512.21257), Sections 3.2.2-3.2.3 (training sequences,
eq. 6-7 loss) and 4.2.1 (128-d, 4 layers, 8 heads; Adam, warm-up + cosine; lr 0.0075, batch
3200); LLaDA (Nie et al. 2025, "Large Language Diffusion Models") for the masking process
``t ~ U(0, 1)`` per sequence and the optional ``1/t`` weighting; nanoGPT (Karpathy) for the module
layout.

Shapes: ``B`` batch, ``T`` tokens, ``H`` hidden size (``d_model``), ``D`` item-representation size,
``N`` item table rows (row 0 = padding), ``Q`` masked positions in a batch, ``C`` candidates.

Token kinds (``kinds`` [B, T]): :data:`PAD`, :data:`ITEM` (an observed behaviour, shows its frozen
item representation through the adapter), :data:`FILL` (a located gap, Section 3.1) and
:data:`MASK` (a labelled behaviour hidden for training). [FILL] and [MASK] share ONE learnable
embedding (:attr:`BehaviorReasoner.special`), so what the model learns to do at [MASK] (recover a
behaviour from its context) it does at [FILL] at inference.

Training sequence (:func:`build_sequence`, :func:`collate`, :func:`sample_mask`): [FILL] after
every gap position of U; items at L keep their ground truth as labels; each step draws ``t`` per
sequence and masks every labelled position independently with probability ``t``; masked positions
become [MASK] (their ids are zeroed before the model sees them), unmasked labelled positions show
their item; the loss is on masked positions only.

Loss (:func:`gbr_loss`):

* ``softmax`` (eq. 6-7, GBR-*-0): in-batch sampled softmax over cosine similarity / temperature
  (0.07): ``l_p = -log( e^{cos(y_p, e_p)/tau} / (e^{cos(y_p, e_p)/tau} + sum_{c in N_p}
  e^{cos(y_p, e_c)/tau}) )`` where ``N_p`` = the item tokens of the OTHER sequences of the batch
  (``negatives="all"``: every real item token, masked or not; ``"targets"``: only their masked
  targets).
* ``cosine`` (GBR-C-1): ``l_p = 1 - cos(y_p, e_p)``; ``euclidean`` (GBR-C-2):
  ``l_p = ||y_p - e_p||_2``.
* ``weighting="mean"`` (the paper's normalisation as read here): the mean of ``l_p`` over all
  masked positions of the batch. ``weighting="inv_t"`` (LLaDA): per sequence
  ``(1/t_b) * sum_{p masked in b} l_p / |L_b|`` (an unbiased estimate of the mean loss over ALL
  labelled positions of ``b``), averaged over sequences with ``|L_b| > 0``.

NOTE: ``t`` is drawn as ``t_min + (1 - t_min) * U(0, 1)`` (LLaDA's ``eps = 1e-3``) so that ``1/t``
stays finite; ``t_min=0`` gives exactly U(0, 1).
NOTE: a candidate with the SAME item id as the positive is dropped from ``N_p`` (it is not a
negative); the paper does not say.
NOTE: ``euclidean`` is the distance, not its square.
NOTE: sequences longer than ``max_len`` tokens keep their most recent tokens (left truncation).
NOTE: the adapter is a 2-layer MLP (Linear-GELU-Linear); the paper only says "lightweight".
NOTE: dropout defaults to 0.1 (the paper does not give one); pre-LayerNorm blocks as in nanoGPT.
NOTE: by default (``ReasonerConfig.pack``) the model runs on packed rows: a batch's sequences are
laid side by side in rows as wide as its longest one, each token keeps its position within its
own sequence, and attention stays within a sequence (:meth:`BehaviorReasoner.forward_packed`).
The outputs are those of the padded batch (tested); only the dropout masks fall differently. On
amazon-beauty 83 % of the padded slots are padding, and a training step is 6.1x faster packed
(``benchmarks/gbr_packing.py``). ``pack: False`` runs the padded batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["PAD", "ITEM", "FILL", "MASK", "LOSS_VARIANTS", "ReasonerConfig", "Adapter",
           "SelfAttention", "MLP", "Block", "BehaviorReasoner", "GBRBatch", "build_sequence",
           "pack_sequences",
           "collate", "sample_mask", "apply_mask", "gbr_loss", "warmup_cosine",
           "make_optimizer", "training_step", "fill_predictions"]

PAD, ITEM, FILL, MASK = 0, 1, 2, 3
LOSS_VARIANTS = ("softmax", "cosine", "euclidean")  # GBR-*-0, GBR-C-1, GBR-C-2


@dataclass
class ReasonerConfig:
    item_dim: int                  # D, size of the frozen item representations
    d_model: int = 128             # H
    n_layers: int = 4
    n_heads: int = 8
    max_len: int = 64              # tokens (items + [FILL]) per sequence
    dropout: float = 0.1
    adapter_hidden: Optional[int] = None  # default: d_model
    mlp_ratio: int = 4
    pack: bool = True              # pack sequences into shared rows (see pack_sequences)


# ==================================================================================  modules
class Adapter(nn.Module):
    """Frozen item representation (D) -> model width (H)."""

    def __init__(self, item_dim: int, hidden: int, d_model: int):
        super().__init__()
        self.fc1 = nn.Linear(item_dim, hidden)
        self.fc2 = nn.Linear(hidden, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:               # [..., D] -> [..., H]
        return self.fc2(F.gelu(self.fc1(x)))


class SelfAttention(nn.Module):
    """Multi-head self-attention WITHOUT a causal mask; padded keys are excluded."""

    def __init__(self, cfg: ReasonerConfig):
        super().__init__()
        if cfg.d_model % cfg.n_heads:
            raise ValueError(f"d_model {cfg.d_model} is not a multiple of n_heads {cfg.n_heads}")
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, key_ok: torch.Tensor) -> torch.Tensor:
        """key_ok: ``[B, T]`` keys each query may see, or ``[B, T, T]`` per query (packed)."""
        B, T, H = x.shape                                              # [B, T, H]
        q, k, v = self.qkv(x).split(H, dim=2)                          # 3 x [B, T, H]
        shape = (B, T, self.n_heads, H // self.n_heads)
        q, k, v = (z.view(shape).transpose(1, 2) for z in (q, k, v))   # [B, h, T, H/h]
        mask = (key_ok[:, None, None, :] if key_ok.dim() == 2          # [B, 1, 1, T] True = attend
                else key_ok[:, None])                                  # [B, 1, T, T]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=False,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, H)               # [B, T, H]
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: ReasonerConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model)
        self.proj = nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:               # [B, T, H] -> [B, T, H]
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block (nanoGPT)."""

    def __init__(self, cfg: ReasonerConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, key_ok: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), key_ok)                         # [B, T, H]
        return x + self.mlp(self.ln2(x))                               # [B, T, H]


class BehaviorReasoner(nn.Module):
    """Bidirectional transformer: (ids, kinds) [B, T] -> predicted item representations [B, T, D].

    ``item_repr`` [N, D] is the frozen item table (a non-persistent buffer: checkpoints do not
    carry it; the caller passes the same table again).
    """

    def __init__(self, cfg: ReasonerConfig, item_repr: torch.Tensor):
        super().__init__()
        if item_repr.dim() != 2 or item_repr.shape[1] != cfg.item_dim:
            raise ValueError(f"item_repr must be [N, {cfg.item_dim}], got {tuple(item_repr.shape)}")
        self.cfg = cfg
        self.register_buffer("item_repr", item_repr.detach().float().clone(), persistent=False)
        self.adapter = Adapter(cfg.item_dim, cfg.adapter_hidden or cfg.d_model, cfg.d_model)
        self.special = nn.Parameter(torch.zeros(cfg.d_model))          # [H] shared [FILL]/[MASK]
        self.pos = nn.Embedding(cfg.max_len, cfg.d_model)              # [max_len, H]
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.item_dim)               # H -> D
        self.apply(self._init_weights)
        nn.init.normal_(self.special, mean=0.0, std=0.02)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def fill_embedding(self) -> nn.Parameter:
        return self.special

    @property
    def mask_embedding(self) -> nn.Parameter:
        return self.special

    def embed(self, ids: torch.Tensor, kinds: torch.Tensor,
              positions: torch.Tensor) -> torch.Tensor:
        """Input vectors: adapted item representation, or the shared [FILL]/[MASK] embedding,
        plus the position's embedding; zero content at PAD. ids/kinds/positions [R, T] ->
        [R, T, H]."""
        is_item = kinds == ITEM                                        # [R, T]
        safe_ids = ids.masked_fill(~is_item, 0)                        # [R, T] never read [MASK]
        items = self.adapter(self.item_repr[safe_ids])                 # [R, T, H]
        special = self.special.view(1, 1, -1).expand(*ids.shape, -1)   # [R, T, H]
        x = torch.where(is_item.unsqueeze(-1), items, special)         # [R, T, H]
        x = x * (kinds != PAD).unsqueeze(-1)                           # [R, T, H] zero padding
        return self.drop(x + self.pos(positions))                      # [R, T, H]

    def forward(self, ids: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
        """ids/kinds [B, T] (right-padded) -> predictions [B, T, D] (zeros at PAD when packed)."""
        B, T = ids.shape                                               # [B, T]
        if T > self.cfg.max_len:
            raise ValueError(f"{T} tokens > max_len {self.cfg.max_len}")
        if self.cfg.pack:
            return self.forward_packed(ids, kinds)
        x = self.embed(ids, kinds, torch.arange(T, device=ids.device).expand(B, T))
        key_ok = kinds != PAD                                          # [B, T]
        key_ok = key_ok | ~key_ok.any(dim=1, keepdim=True)             # all-PAD rows: no NaN
        for block in self.blocks:
            x = block(x, key_ok)                                       # [B, T, H]
        return self.head(self.ln_f(x))                                 # [B, T, D]

    def forward_packed(self, ids: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
        """The same function as the padded path, computed on packed rows: the sequences are laid
        side by side in rows of T slots (:func:`pack_sequences`), each token keeps its position
        in its own sequence, and attention is restricted to tokens of the same sequence, so
        every output equals the padded path's (tested); only the dropout masks fall on other
        slots. A batch's longest sequence sets T for all, so padded rows are mostly padding on
        short-history data (83 % of the slots on amazon-beauty); packed, the model runs on about
        the real tokens only."""
        B, T = ids.shape                                               # [B, T]
        valid = kinds != PAD                                           # [B, T]
        lengths = valid.sum(dim=1)                                     # [B]
        steps = torch.arange(T, device=ids.device)                     # [T]
        if not torch.equal(valid, steps.view(1, -1) < lengths.view(-1, 1)):
            raise ValueError("packing needs right-padded sequences (PAD only after the last "
                             "token); build batches with collate()")
        row, offset, rows = pack_sequences(lengths.tolist(), T)
        row, offset = (torch.as_tensor(v, device=ids.device) for v in (row, offset))
        b_idx, t_idx = valid.nonzero(as_tuple=True)                    # [M] real tokens
        slot = (row[b_idx] * T + offset[b_idx] + t_idx)                # [M] in [rows * T]

        def place(values: torch.Tensor, empty: int) -> torch.Tensor:   # [M] -> [R, T]
            out = torch.full((rows * T,), empty, dtype=torch.long, device=ids.device)
            out[slot] = values
            return out.view(rows, T)

        seq = place(b_idx, -1)                                         # [R, T] sequence of a slot
        x = self.embed(place(ids[b_idx, t_idx], 0), place(kinds[b_idx, t_idx], PAD),
                       place(t_idx, 0))                                # [R, T, H]
        same = seq.unsqueeze(2) == seq.unsqueeze(1)                    # [R, T, T] (PAD sees PAD)
        for block in self.blocks:
            x = block(x, same)                                         # [R, T, H]
        packed = self.head(self.ln_f(x)).view(rows * T, -1)            # [R * T, D]
        out = packed.new_zeros(B, T, packed.shape[-1])                 # [B, T, D]
        out[b_idx, t_idx] = packed[slot]
        return out


def pack_sequences(lengths: Sequence[int], width: int) -> Tuple[list, list, int]:
    """First-fit decreasing: place sequences of ``lengths`` (each <= ``width``) in rows of
    ``width`` slots. -> (row [B], offset [B], number of rows); sequence ``b`` occupies slots
    ``offset[b] .. offset[b] + lengths[b] - 1`` of row ``row[b]``; empty sequences take no slot
    (row 0, offset 0)."""
    row, offset, used = [0] * len(lengths), [0] * len(lengths), []     # used[r]: slots taken
    for b in sorted(range(len(lengths)), key=lambda i: -int(lengths[i])):
        n = int(lengths[b])
        if n > width:
            raise ValueError(f"sequence {b} has {n} tokens > row width {width}")
        if n == 0:
            continue
        for r, taken in enumerate(used):
            if taken + n <= width:
                break
        else:
            r = len(used)
            used.append(0)
        row[b], offset[b] = r, used[r]
        used[r] += n
    return row, offset, max(len(used), 1)


# ========================================================================  training sequences
@dataclass
class GBRBatch:
    ids: torch.Tensor         # [B, T] long, ground-truth item id (0 at [FILL] / PAD)
    kinds: torch.Tensor       # [B, T] long, ITEM / FILL / PAD (before masking)
    label_mask: torch.Tensor  # [B, T] bool, item positions in L (maskable)


def build_sequence(items: Sequence[int], fill_after: Sequence[int] = (),
                   labelled: Sequence[int] = (), max_len: Optional[int] = None
                   ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tokens of one example: item ``i``, then a [FILL] if ``i`` is in ``fill_after``.

    Returns ``ids`` [T] int64 (0 at [FILL]), ``kinds`` [T] int64 (ITEM/FILL), ``label`` [T] bool
    (True at items whose position is in ``labelled``); the last ``max_len`` tokens if longer.
    """
    fills, labs = set(int(i) for i in fill_after), set(int(i) for i in labelled)
    ids, kinds, label = [], [], []
    for i, item in enumerate(items):
        ids.append(int(item))
        kinds.append(ITEM)
        label.append(i in labs)
        if i in fills:
            ids.append(0)
            kinds.append(FILL)
            label.append(False)
    ids_a, kinds_a, label_a = (np.asarray(ids, dtype=np.int64), np.asarray(kinds, dtype=np.int64),
                               np.asarray(label, dtype=bool))
    if max_len is not None and len(ids_a) > max_len:
        ids_a, kinds_a, label_a = ids_a[-max_len:], kinds_a[-max_len:], label_a[-max_len:]
    return ids_a, kinds_a, label_a


def collate(sequences: Sequence[Tuple[np.ndarray, np.ndarray, np.ndarray]]) -> GBRBatch:
    """Right-pad :func:`build_sequence` outputs to the longest one."""
    T = max(len(s[0]) for s in sequences)
    B = len(sequences)
    ids = torch.zeros(B, T, dtype=torch.long)                          # [B, T]
    kinds = torch.full((B, T), PAD, dtype=torch.long)                  # [B, T]
    label = torch.zeros(B, T, dtype=torch.bool)                        # [B, T]
    for b, (i, k, lab) in enumerate(sequences):
        ids[b, :len(i)] = torch.from_numpy(i)
        kinds[b, :len(k)] = torch.from_numpy(k)
        label[b, :len(lab)] = torch.from_numpy(lab)
    return GBRBatch(ids=ids, kinds=kinds, label_mask=label)


def sample_mask(label_mask: torch.Tensor, generator: Optional[torch.Generator] = None,
                t: Optional[torch.Tensor] = None, t_min: float = 1e-3
                ) -> Tuple[torch.Tensor, torch.Tensor]:
    """LLaDA forward process on the labelled positions.

    label_mask [B, T] bool -> (masked [B, T] bool, t [B]). ``t`` per sequence is
    ``t_min + (1 - t_min) * U(0, 1)`` unless given; each labelled position is masked independently
    with probability ``t``.
    """
    B, T = label_mask.shape
    dev = label_mask.device
    if t is None:
        u = torch.rand(B, generator=generator, device=dev)            # [B]
        t = t_min + (1.0 - t_min) * u                                  # [B]
    draw = torch.rand(B, T, generator=generator, device=dev)          # [B, T]
    masked = (draw < t.view(B, 1)) & label_mask                        # [B, T]
    return masked, t


def apply_mask(batch: GBRBatch, masked: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Model inputs: masked positions become [MASK] with id 0. -> (ids_in, kinds_in) [B, T]."""
    kinds_in = torch.where(masked, torch.full_like(batch.kinds, MASK), batch.kinds)  # [B, T]
    ids_in = batch.ids.masked_fill(masked, 0)                          # [B, T]
    return ids_in, kinds_in


# =====================================================================================  loss
def gbr_loss(pred: torch.Tensor, ids: torch.Tensor, masked: torch.Tensor,
             item_repr: torch.Tensor, *, variant: str = "softmax", temperature: float = 0.07,
             weighting: str = "mean", t: Optional[torch.Tensor] = None,
             label_mask: Optional[torch.Tensor] = None, negatives: str = "all"
             ) -> torch.Tensor:
    """Loss on the masked positions (see the module docstring).

    pred [B, T, D] predictions; ids [B, T] ground-truth item ids (0 = none); masked [B, T] bool;
    item_repr [N, D]; t [B] and label_mask [B, T] are needed for ``weighting="inv_t"``.
    """
    if variant not in LOSS_VARIANTS:
        raise ValueError(f"variant {variant!r}: choose one of {LOSS_VARIANTS}")
    if weighting not in ("mean", "inv_t"):
        raise ValueError(f"weighting {weighting!r}: choose 'mean' or 'inv_t'")
    B, T, D = pred.shape
    qb, qt = masked.nonzero(as_tuple=True)                             # [Q], [Q]
    if qb.numel() == 0:
        return pred.sum() * 0.0
    y = pred[qb, qt]                                                   # [Q, D]
    pos_ids = ids[qb, qt]                                              # [Q]
    e_pos = item_repr[pos_ids]                                         # [Q, D]
    if variant == "softmax":
        if negatives == "all":
            cb, ct = (ids > 0).nonzero(as_tuple=True)                  # [C], [C]
        elif negatives == "targets":
            cb, ct = qb, qt                                            # [C], [C]
        else:
            raise ValueError(f"negatives {negatives!r}: choose 'all' or 'targets'")
        cand_ids = ids[cb, ct]                                         # [C]
        yn = F.normalize(y, dim=-1)                                    # [Q, D]
        s_pos = (yn * F.normalize(e_pos, dim=-1)).sum(-1) / temperature  # [Q]
        s_neg = yn @ F.normalize(item_repr[cand_ids], dim=-1).T / temperature  # [Q, C]
        invalid = (cb.view(1, -1) == qb.view(-1, 1)) | (cand_ids.view(1, -1) == pos_ids.view(-1, 1))
        s_neg = s_neg.masked_fill(invalid, float("-inf"))              # [Q, C]
        logits = torch.cat([s_pos.unsqueeze(1), s_neg], dim=1)         # [Q, 1 + C]
        per = torch.logsumexp(logits, dim=1) - s_pos                   # [Q]
    elif variant == "cosine":
        per = 1.0 - F.cosine_similarity(y, e_pos, dim=-1)              # [Q]
    else:
        per = (y - e_pos).norm(dim=-1)                                 # [Q]
    if weighting == "mean":
        return per.mean()
    if t is None or label_mask is None:
        raise ValueError("weighting='inv_t' needs t [B] and label_mask [B, T]")
    per_seq = torch.zeros(B, dtype=per.dtype, device=per.device).index_add(0, qb, per)  # [B]
    n_lab = label_mask.sum(dim=1).to(per.dtype)                        # [B]
    has = n_lab > 0                                                    # [B]
    weighted = per_seq[has] / (t[has].to(per.dtype) * n_lab[has])      # [B']
    return weighted.mean()


# ===============================================================================  optimiser
def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0
                  ) -> float:
    """LR multiplier: ``(step+1)/warmup`` for ``step < warmup``, then cosine from 1 to
    ``min_ratio`` at ``total_steps`` (flat at ``min_ratio`` after)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, lr: float = 1e-3, warmup_steps: int = 100,
                   total_steps: int = 1000, weight_decay: float = 0.0, min_ratio: float = 0.0,
                   betas: Tuple[float, float] = (0.9, 0.999)
                   ) -> Tuple[torch.optim.Adam, torch.optim.lr_scheduler.LambdaLR]:
    """Adam with linear warm-up then cosine annealing (call ``scheduler.step()`` per step).

    NOTE: the paper's lr 0.0075 with batch 3200 is for Taobao scale; the default here (1e-3) is a
    starting point for public data sets, set by the caller.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, warmup_steps, total_steps, min_ratio))
    return opt, sched


def training_step(model: BehaviorReasoner, batch: GBRBatch, optimizer: torch.optim.Optimizer,
                  scheduler=None, generator: Optional[torch.Generator] = None, *,
                  variant: str = "softmax", temperature: float = 0.07,
                  weighting: str = "mean", negatives: str = "all", t_min: float = 1e-3,
                  grad_clip: Optional[float] = 1.0) -> Dict[str, float]:
    """One step: sample the mask, forward, loss on masked positions, Adam (+ scheduler) step."""
    model.train()
    masked, t = sample_mask(batch.label_mask, generator, t_min=t_min)  # [B, T], [B]
    ids_in, kinds_in = apply_mask(batch, masked)                       # [B, T] x 2
    pred = model(ids_in, kinds_in)                                     # [B, T, D]
    loss = gbr_loss(pred, batch.ids, masked, model.item_repr, variant=variant,
                    temperature=temperature, weighting=weighting, t=t,
                    label_mask=batch.label_mask, negatives=negatives)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return {"loss": float(loss.detach()), "n_masked": int(masked.sum())}


@torch.no_grad()
def fill_predictions(model: BehaviorReasoner, batch: GBRBatch) -> torch.Tensor:
    """Inference: [FILL] at U, every labelled item shown. -> predictions [B, T, D] (read them at
    ``batch.kinds == FILL``)."""
    was = model.training
    model.eval()
    out = model(batch.ids, batch.kinds)                                # [B, T, D]
    model.train(was)
    return out
