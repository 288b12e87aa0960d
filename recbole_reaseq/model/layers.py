"""Building blocks of ReaSeqCTR: knowledge-based retrieval (GSU), target attention (ESU), interest
anchors, and the serving helpers (K/V de-duplication, a faiss GSU index).

Reference: ReaSeq (TaoRank Team, arXiv 2512.21257), Section 2.2, "Knowledge-enhanced CTR".

Conventions: shapes are in the comments (``B`` batch, ``L`` history length, ``K`` retrieved items,
``M`` anchors, ``H`` hidden size, ``h`` heads, ``D`` knowledge dimension); masks are explicit
booleans, ``True`` = a real position. No function here reads a config.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["masked_topk", "masked_topk_similar", "gather_positions", "masked_attention",
           "CrossAttention", "TargetAttention", "AnchorCompressor", "dedup_retrieved",
           "project_kv_naive", "project_kv_dedup", "KnowledgeIndex", "TIE_BREAKS"]


# =====================================================================================  GSU
TIE_BREAKS = ("earlier", "later")


def masked_topk(scores: torch.Tensor, mask: torch.Tensor, k: int, ties: str = "earlier"
                ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` positions of ``scores`` [..., L] among ``mask`` [..., L] (bool, True = real).

    Padding is filled with ``-inf`` BEFORE the selection. Ties are broken deterministically by
    position: ``ties="earlier"`` (the default) puts the earlier of equal scores first, ``"later"``
    the later one (stable sort; on a left-aligned history, later = more recent). Returns
    ``(idx [..., k], valid [..., k])``, best first; ``valid`` is ``mask`` gathered at ``idx``.
    Slots beyond the number of real positions (short histories, or ``L < k``) have
    ``valid=False`` and ``idx=0``.
    """
    if scores.shape != mask.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and mask {tuple(mask.shape)} differ")
    if ties not in TIE_BREAKS:
        raise ValueError(f"ties must be one of {TIE_BREAKS}, got {ties!r}.")
    length = scores.shape[-1]
    filled = scores.masked_fill(~mask, float("-inf"))                 # [..., L]
    if ties == "earlier":
        order = torch.sort(filled, dim=-1, descending=True, stable=True).indices
    else:                                       # sort the reversed positions, map back
        order = length - 1 - torch.sort(filled.flip(-1), dim=-1, descending=True,
                                        stable=True).indices          # [..., L]
    kk = min(k, length)
    idx = order[..., :kk]                                             # [..., kk]
    valid = mask.gather(-1, idx)                                      # [..., kk]
    if kk < k:
        pad = idx.new_zeros(idx.shape[:-1] + (k - kk,))
        idx = torch.cat([idx, pad], dim=-1)                           # [..., k]
        valid = torch.cat([valid, pad.bool()], dim=-1)                # [..., k]
    return idx.masked_fill(~valid, 0), valid


def masked_topk_similar(query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor, k: int,
                        ties: str = "earlier") -> Tuple[torch.Tensor, torch.Tensor]:
    """GSU: the ``k`` history positions most cosine-similar to the target.

    query [B, D], keys [B, L, D], mask [B, L] bool -> (idx [B, k], valid [B, k] bool). Zero vectors
    (items without knowledge) have similarity 0. See :func:`masked_topk` for padding and ties.
    """
    q = F.normalize(query, dim=-1)                                    # [B, D]
    kn = F.normalize(keys, dim=-1)                                    # [B, L, D]
    sims = torch.einsum("bd,bld->bl", q, kn)                          # [B, L]
    return masked_topk(sims, mask, k, ties)


def gather_positions(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [B, L, H], idx [B, ..., K] (positions in L) -> [B, ..., K, H]."""
    batch = torch.arange(x.shape[0], device=x.device).view((-1,) + (1,) * (idx.dim() - 1))
    return x[batch, idx]


# =====================================================================================  attention
def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     mask: Optional[torch.Tensor] = None,
                     dropout: Optional[nn.Module] = None) -> torch.Tensor:
    """Scaled dot-product attention per head with a key padding mask.

    q [..., Q, h, dh], k / v [..., N, h, dh], mask [..., N] bool (True = attend) -> [..., Q, h, dh].
    Masked keys get weight exactly 0; a row whose keys are all masked gets all-zero weights (so a
    zero output, never NaN).
    """
    scores = torch.einsum("...qhd,...nhd->...hqn", q, k) / math.sqrt(q.shape[-1])  # [..., h, Q, N]
    if mask is not None:
        key_mask = mask[..., None, None, :]                           # [..., 1, 1, N]
        scores = scores.masked_fill(~key_mask, float("-inf"))
        empty = ~mask.any(dim=-1)                                     # [...]
        scores = scores.masked_fill(empty[..., None, None, None], 0.0)
    weights = torch.softmax(scores, dim=-1)                           # [..., h, Q, N]
    if mask is not None:
        weights = weights * key_mask                                  # exact 0 at padding
    if dropout is not None:
        weights = dropout(weights)
    return torch.einsum("...hqn,...nhd->...qhd", weights, v)          # [..., Q, h, dh]


class CrossAttention(nn.Module):
    """Multi-head cross-attention: queries [..., Q, H] attend over keys/values [..., N, H].

    ``project_kv`` and ``attend`` are separate so that serving can project K/V once and reuse them
    for many queries (:func:`project_kv_dedup`, ReaSeqCTR's ``full_sort_predict``).
    """

    def __init__(self, hidden_size: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        if hidden_size % n_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by n_heads {n_heads}")
        self.hidden_size, self.n_heads = hidden_size, n_heads
        self.head_dim = hidden_size // n_heads
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[:-1] + (self.n_heads, self.head_dim))   # [..., n, h, dh]

    def project_kv(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """x [..., N, H] -> (k, v) [..., N, H]."""
        return self.k_proj(x), self.v_proj(x)

    def attend(self, query: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """query [..., Q, H], projected k / v [..., N, H], mask [..., N] -> [..., Q, H].

        Rows whose keys are all masked return zeros.
        """
        q = self._split(self.q_proj(query))                           # [..., Q, h, dh]
        out = masked_attention(q, self._split(k), self._split(v), mask, self.dropout)
        out = self.out_proj(out.reshape(out.shape[:-2] + (self.hidden_size,)))  # [..., Q, H]
        if mask is not None:
            out = out * mask.any(dim=-1)[..., None, None].to(out.dtype)
        return out

    def forward(self, query: torch.Tensor, keys: torch.Tensor,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """query [..., Q, H], keys [..., N, H], mask [..., N] -> [..., Q, H]."""
        k, v = self.project_kv(keys)
        return self.attend(query, k, v, mask)


class TargetAttention(CrossAttention):
    """ESU: the target item [..., H] attends over the retrieved items [..., K, H]."""

    def attend_target(self, target: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """target [..., H], projected k / v [..., K, H], mask [..., K] -> [..., H]."""
        return self.attend(target.unsqueeze(-2), k, v, mask).squeeze(-2)

    def attend_target_unique(self, target: torch.Tensor, k_unique: torch.Tensor,
                             v_unique: torch.Tensor, inverse: torch.Tensor,
                             mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Serving form of :meth:`attend_target` when the K retrieved items of many targets come
        from one small set of U unique items (K/V projected once, :func:`dedup_retrieved`).

        target [..., H], k_unique / v_unique [U, H], inverse [..., K] (rows of the unique set),
        mask [..., K] -> [..., H]. Equal to ``attend_target(target, k_unique[inverse],
        v_unique[inverse], mask)`` without materialising the [..., K, H] gathers: the scores are
        computed against the U unique keys and gathered ([..., h, U] -> [..., h, K]); the
        weights are scattered back onto the unique rows (a duplicated item's weights add up) and
        multiply the U unique values.
        """
        lead = target.shape[:-1]
        q = self._split(self.q_proj(target.reshape(-1, self.hidden_size)))  # [C, h, dh]
        ku, vu = self._split(k_unique), self._split(v_unique)              # [U, h, dh]
        inv = inverse.reshape(q.shape[0], 1, -1).expand(-1, self.n_heads, -1)  # [C, h, K]
        scores = torch.einsum("chd,uhd->chu", q, ku) / math.sqrt(self.head_dim)  # [C, h, U]
        scores = scores.gather(-1, inv)                                    # [C, h, K]
        if mask is not None:
            key_mask = mask.reshape(q.shape[0], 1, -1)                     # [C, 1, K]
            scores = scores.masked_fill(~key_mask, float("-inf"))
            empty = ~key_mask.any(dim=-1, keepdim=True)                    # [C, 1, 1]
            scores = scores.masked_fill(empty, 0.0)
        weights = torch.softmax(scores, dim=-1)                            # [C, h, K]
        if mask is not None:
            weights = weights * key_mask
        weights = self.dropout(weights)
        w_unique = weights.new_zeros(q.shape[:2] + (ku.shape[0],)).scatter_add_(-1, inv, weights)
        out = torch.einsum("chu,uhd->chd", w_unique, vu)                   # [C, h, dh]
        out = self.out_proj(out.reshape(q.shape[0], self.hidden_size))     # [C, H]
        if mask is not None:
            out = out * (~empty.view(-1, 1)).to(out.dtype)
        return out.view(lead + (self.hidden_size,))                        # [..., H]

    def forward(self, target: torch.Tensor, keys: torch.Tensor,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """target [..., H], keys [..., K, H], mask [..., K] bool -> [..., H]."""
        k, v = self.project_kv(keys)
        return self.attend_target(target, k, v, mask)


class AnchorCompressor(nn.Module):
    """Compression pathway: M learnable interest anchors summarise the whole history.

    Stage 1 (target-independent, computed once per user): the anchors [M, H] cross-attend over the
    sequence [B, L, H] with its padding mask; residual + LayerNorm -> compressed [B, M, H].
    Stage 2: the target [B, H] attends over the M compressed anchors -> [B, H].
    """

    def __init__(self, hidden_size: int, n_anchors: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        self.anchors = nn.Parameter(torch.randn(n_anchors, hidden_size) * hidden_size ** -0.5)
        self.compress_attn = CrossAttention(hidden_size, n_heads, dropout)
        self.norm = nn.LayerNorm(hidden_size)
        self.target_attn = TargetAttention(hidden_size, n_heads, dropout)

    def compress(self, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """seq [B, L, H], mask [B, L] -> compressed anchors [B, M, H]."""
        queries = self.anchors.unsqueeze(0).expand(seq.shape[0], -1, -1)  # [B, M, H]
        return self.norm(queries + self.compress_attn(queries, seq, mask))

    def forward(self, target: torch.Tensor, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """target [B, H], seq [B, L, H], mask [B, L] -> [B, H]."""
        return self.target_attn(target, self.compress(seq, mask))


# =====================================================================================  serving
def dedup_retrieved(idx: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """idx [C, K] retrieved item ids of C candidates -> (unique_items [U], inverse [C, K]) with
    ``unique_items[inverse] == idx``. Candidates of one request retrieve overlapping items, so
    projecting K/V on the U unique items instead of C*K rows saves work."""
    unique, inverse = torch.unique(idx, sorted=True, return_inverse=True)
    return unique, inverse


def map_unique(fn: Callable[[torch.Tensor], torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
    """``fn(idx)`` for a row-wise ``fn`` (ids ``[N]`` -> ``[N, ...]``), computed once per distinct
    id: ``fn(unique)[inverse]``, shape ``[*idx.shape, ...]``. Equal to ``fn(idx)`` because a
    row-wise map commutes with gathering (values and gradients; tested); much cheaper when ids
    repeat, as in CTR scoring, where a user's history is the same for all of its candidates.
    """
    unique, inverse = dedup_retrieved(idx)
    return fn(unique)[inverse]


def project_kv_naive(attn: CrossAttention, embed: Callable[[torch.Tensor], torch.Tensor],
                     idx: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Reference path: embed and project every retrieved slot. idx [C, K] -> k, v [C, K, H]."""
    return attn.project_kv(embed(idx))


def project_kv_dedup(attn: CrossAttention, embed: Callable[[torch.Tensor], torch.Tensor],
                     idx: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Serving path: embed + project K/V once per unique item, gather per candidate.

    idx [C, K] -> k, v [C, K, H]; equal to :func:`project_kv_naive` (row-wise maps commute with
    gathering).
    """
    unique, inverse = dedup_retrieved(idx)
    k, v = attn.project_kv(embed(unique))                             # [U, H]
    return k[inverse], v[inverse]                                     # [C, K, H]


class KnowledgeIndex:
    """Optional faiss GSU for serving: cosine top-K over a large pool of items.

    Inner product over L2-normalised knowledge embeddings [N, D]; ``search`` returns the pool rows
    (or ``ids[row]`` when ``ids`` are given) of the ``k`` most similar items per query.

    ``index`` (config key ``gsu_index``, see :meth:`from_config`):

    - ``"flat"`` (default): exact search, ``IndexFlatIP``;
    - ``"ivf"``: ``IndexIVFFlat`` with ``nlist`` k-means lists (default ``~4 sqrt(N)``), searching
      the ``nprobe`` nearest lists (``nprobe = nlist`` is exhaustive, hence exact);
    - ``"hnsw"``: ``IndexHNSWFlat`` with ``hnsw_m`` neighbours per node, search beam ``ef_search``,
      build beam ``ef_construction``.

    Approximate indexes may miss true neighbours (recall < 1, measured in
    ``benchmarks/results/ann_index.md``); a query with fewer than ``k`` results gets ``-1`` rows.
    The index construction is shared with :func:`recbole_reaseq.knowledge.evaluate.build_index`.
    """

    def __init__(self, emb, ids=None, index: str = "flat", nlist: Optional[int] = None,
                 nprobe: int = 16, hnsw_m: int = 32, ef_search: int = 128,
                 ef_construction: int = 40):
        import faiss

        from recbole_reaseq.knowledge.evaluate import build_index, index_options

        opts = index_options({"gsu_index": index, "gsu_index_nlist": nlist,
                              "gsu_index_nprobe": nprobe, "gsu_index_hnsw_m": hnsw_m,
                              "gsu_index_ef_search": ef_search,
                              "gsu_index_ef_construction": ef_construction})  # validates all
        x = np.ascontiguousarray(np.asarray(emb, dtype=np.float32))   # [N, D]
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = np.ascontiguousarray(x / np.maximum(norms, 1e-12))
        self.kind = opts.pop("index")
        if self.kind == "flat":
            self.index = faiss.IndexFlatIP(x.shape[1])
            self.index.add(x)
        else:
            self.index = build_index(x, self.kind, normalize=False, **opts)
        self.ids = None if ids is None else torch.as_tensor(np.asarray(ids), dtype=torch.long)

    @classmethod
    def from_config(cls, config, emb, ids=None) -> "KnowledgeIndex":
        """Index chosen by ``gsu_index`` and
        ``gsu_index_{nlist,nprobe,hnsw_m,ef_search,ef_construction}``."""
        from recbole_reaseq.knowledge.evaluate import index_options

        opts = index_options(config)
        return cls(emb, ids=ids, **opts)

    def set_search_params(self, nprobe: Optional[int] = None,
                          ef_search: Optional[int] = None) -> None:
        """Change the IVF ``nprobe`` / HNSW ``ef_search`` of a built index (speed vs recall)."""
        import faiss

        index = faiss.downcast_index(self.index)
        if nprobe is not None and hasattr(index, "nprobe"):
            index.nprobe = int(nprobe)
        if ef_search is not None and hasattr(index, "hnsw"):
            index.hnsw.efSearch = int(ef_search)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, query, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """query [C, D] -> (cosine [C, k], item [C, k]); rows beyond the pool size get -1."""
        q = np.ascontiguousarray(np.asarray(query, dtype=np.float32))
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        scores, rows = self.index.search(q, k)                        # [C, k] each
        rows = torch.from_numpy(rows).long()
        if self.ids is not None:
            rows = torch.where(rows >= 0, self.ids[rows.clamp(min=0)], rows)
        return torch.from_numpy(scores), rows


# =====================================================================================  item table
def knowledge_item_table(id_weight: torch.Tensor, knowledge: torch.Tensor,
                         proj: nn.Module) -> torch.Tensor:
    """Item table with knowledge: ``id_weight + proj(knowledge)``.

    id_weight [N, H] (or rows [..., H]), knowledge [N, D] (the same rows), proj ``D -> H``
    -> [N, H]. Pure: the caller owns the tensors and the projection.
    """
    return id_weight + proj(knowledge)


class KnowledgeItemEmbedding(nn.Module):
    """Drop-in for an item ``nn.Embedding``: ``e(i) = E_id[i] + W k(i)``.

    ``id_embedding`` is the (already initialised) ID table ``[N, H]``, kept as it is;
    ``knowledge`` the frozen ``[N, D]`` table, stored L2-normalised per row as the persistent
    buffer ``knowledge_emb`` (zero rows, e.g. the padding item 0, stay zero); ``W`` =
    ``knowledge_proj``, ``Linear(D, H, bias=False)``, zero-initialised (so the module starts as
    the ID table alone) without drawing from the global random state.

    ``weight`` is the whole combined table ``[N, H]`` (:func:`knowledge_item_table`) and
    ``forward(ids)`` its rows, so code written for ``nn.Embedding`` (``emb(ids)`` and
    ``emb.weight``) scores with one and the same table.
    """

    def __init__(self, id_embedding: nn.Embedding, knowledge: torch.Tensor):
        super().__init__()
        n_items, hidden = id_embedding.weight.shape
        if knowledge.dim() != 2 or knowledge.shape[0] != n_items:
            raise ValueError(f"knowledge table {tuple(knowledge.shape)} does not have one row "
                             f"per item of the ID table ({n_items} rows)")
        self.id_embedding = id_embedding
        self.register_buffer("knowledge_emb", F.normalize(knowledge.float(), dim=-1))  # [N, D]
        self.knowledge_proj = nn.utils.skip_init(nn.Linear, knowledge.shape[1], hidden,
                                                 bias=False,
                                                 device=id_embedding.weight.device,
                                                 dtype=id_embedding.weight.dtype)
        nn.init.zeros_(self.knowledge_proj.weight)

    @property
    def num_embeddings(self) -> int:
        return self.id_embedding.num_embeddings

    @property
    def embedding_dim(self) -> int:
        return self.id_embedding.embedding_dim

    @property
    def weight(self) -> torch.Tensor:
        """The combined item table [N, H]."""
        return knowledge_item_table(self.id_embedding.weight, self.knowledge_emb,
                                    self.knowledge_proj)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [...] -> [..., H]: the rows ``ids`` of :attr:`weight`."""
        return knowledge_item_table(self.id_embedding(ids), self.knowledge_emb[ids],
                                    self.knowledge_proj)


__all__ += ["knowledge_item_table", "KnowledgeItemEmbedding"]


class KnowledgeFeatureEmbedding(nn.Module):
    """A RecBole ``ContextSeqEmbLayer`` whose item features gain a projected frozen knowledge
    vector.

    ``forward(user, items)`` returns what ``layer`` returns, ``(sparse, dense)`` dicts of
    ``[..., fields, d]`` tables by ``"user"`` / ``"item"``, with ``W k(item)`` (``[F * d]``, viewed
    as ``[F, d]``) added to the item fields: the first rows to the sparse fields, the rest to the
    dense ones, the order in which RecBole's DIN concatenates and flattens them. So a model
    that reads the layer, like DIN, sees ``e(i) + W k(i)`` for every item feature vector ``e(i)``.

    ``knowledge`` is the frozen ``[N, D]`` table, kept as it is in the persistent buffer
    ``knowledge_emb``; ``W`` = ``knowledge_proj``, ``Linear(D, F * d, bias=False)``, zeroed after a
    default initialisation, so the module starts as ``layer`` alone. Without a bias, an item with a
    zero knowledge row (the padding item 0) keeps ``layer``'s features exactly.
    """

    def __init__(self, layer: nn.Module, knowledge: torch.Tensor, n_fields: int,
                 embedding_size: int):
        super().__init__()
        self.layer = layer
        self.n_fields, self.embedding_size = n_fields, embedding_size
        self.register_buffer("knowledge_emb", knowledge)                   # [N, D]
        self.knowledge_proj = nn.Linear(knowledge.shape[1], n_fields * embedding_size, bias=False)
        nn.init.zeros_(self.knowledge_proj.weight)

    def forward(self, user: torch.Tensor, items: torch.Tensor):
        sparse, dense = self.layer(user, items)
        shift = self.knowledge_proj(self.knowledge_emb[items])              # [B, L, F*d]
        shift = shift.unflatten(-1, (self.n_fields, self.embedding_size))   # [B, L, F, d]
        n_sparse = 0 if sparse["item"] is None else sparse["item"].shape[-2]
        n_dense = 0 if dense["item"] is None else dense["item"].shape[-2]
        if n_sparse + n_dense != self.n_fields:
            raise ValueError(f"the item features have {n_sparse} sparse + {n_dense} dense fields, "
                             f"the knowledge projection was built for {self.n_fields}")
        if n_sparse:
            sparse = dict(sparse, item=sparse["item"] + shift[..., :n_sparse, :])
        if n_dense:
            dense = dict(dense, item=dense["item"] + shift[..., n_sparse:, :])
        return sparse, dense


__all__ += ["KnowledgeFeatureEmbedding"]
