"""Exact tests of recbole_reaseq/model/layers.py on small synthetic tensors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.model import single_thread  # noqa: F401  (fixture)
from recbole_reaseq.model.layers import (AnchorCompressor, CrossAttention, KnowledgeIndex, map_unique,
                                         TargetAttention, dedup_retrieved, gather_positions,
                                         masked_attention, masked_topk, masked_topk_similar,
                                         project_kv_dedup, project_kv_naive)


def brute_force_topk(query, keys, mask, k, ties="earlier"):
    """Reference GSU: float64 cosine, real positions only, ties to the earlier (or later)
    position."""
    out_idx, out_valid = [], []
    for q, ks, m in zip(query.double(), keys.double(), mask):
        cands = []
        for j in range(len(ks)):
            if m[j]:
                denom = max(float(q.norm()), 1e-12) * max(float(ks[j].norm()), 1e-12)
                cosine = round(float(q @ ks[j]) / denom, 9)  # equal directions tie exactly
                cands.append((-cosine, j if ties == "earlier" else -j))
        chosen = [abs(j) for _, j in sorted(cands)][:k]
        out_idx.append(chosen + [0] * (k - len(chosen)))
        out_valid.append([True] * len(chosen) + [False] * (k - len(chosen)))
    return torch.tensor(out_idx), torch.tensor(out_valid)


@pytest.mark.parametrize("ties,tied", [("earlier", [1, 3, 6]), ("later", [6, 3, 1])])
def test_gsu_equals_brute_force_with_ties_short_histories_and_no_padding(ties, tied):
    gen = torch.Generator().manual_seed(0)
    n_rows, length, dim, k = 6, 9, 5, 4
    keys = torch.randn(n_rows, length, dim, generator=gen)
    keys[:, 3] = keys[:, 1]                  # exact ties: positions 1 and 3 are the same item
    keys[:, 6] = 2.5 * keys[:, 1]            # same direction, other norm: also a cosine tie
    query = torch.randn(n_rows, dim, generator=gen)
    query[0] = keys[0, 1]                    # row 0: the tied items are the best match
    lengths = torch.tensor([9, 7, 4, 2, 1, 0])  # short histories, one empty
    mask = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)
    # padding positions hold the query itself: the most similar vectors there are
    keys[~mask] = query.unsqueeze(1).expand(-1, length, -1)[~mask]

    idx, valid = masked_topk_similar(query, keys, mask, k, ties)
    ref_idx, ref_valid = brute_force_topk(query, keys, mask, k, ties)
    assert idx.shape == valid.shape == (n_rows, k)
    assert torch.equal(valid, ref_valid) and torch.equal(idx, ref_idx)
    assert idx[0, :3].tolist() == tied                        # the tie, in the asked order
    assert valid.sum(1).tolist() == [4, 4, 4, 2, 1, 0]
    assert mask.gather(1, idx)[valid].all()                   # never a padding position
    assert (idx[~valid] == 0).all()


def test_gsu_k_larger_than_history_width():
    scores = torch.tensor([[0.1, 0.9, 0.5], [0.3, 0.3, 0.3]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    idx, valid = masked_topk(scores, mask, 5)
    assert idx.tolist() == [[1, 0, 0, 0, 0], [0, 1, 2, 0, 0]]
    assert valid.tolist() == [[True, True, False, False, False],
                              [True, True, True, False, False]]
    idx3, valid3 = masked_topk(scores.unsqueeze(1), mask.unsqueeze(1), 1)   # extra batch dims
    assert idx3.squeeze(1).tolist() == [[1], [0]] and valid3.all()
    # ties to the later position: row 1's three equal scores reversed; row 0 has no tie
    idx, valid = masked_topk(scores, mask, 5, ties="later")
    assert idx.tolist() == [[1, 0, 0, 0, 0], [2, 1, 0, 0, 0]]
    assert valid.tolist() == [[True, True, False, False, False],
                              [True, True, True, False, False]]
    with pytest.raises(ValueError, match="ties must be one of"):
        masked_topk(scores, mask, 2, ties="recent")


def test_gather_positions():
    x = torch.arange(2 * 4 * 3, dtype=torch.float).view(2, 4, 3)
    idx = torch.tensor([[[3, 0], [1, 1]], [[2, 2], [0, 3]]])                # [B, C, K]
    out = gather_positions(x, idx)
    assert out.shape == (2, 2, 2, 3)
    assert torch.equal(out[1, 1, 1], x[1, 3]) and torch.equal(out[0, 0, 0], x[0, 3])


def reference_mha(attn: CrossAttention, query, keys, mask):
    """torch.nn.MultiheadAttention with the same weights (key_padding_mask: True = ignore)."""
    h = attn.hidden_size
    mha = torch.nn.MultiheadAttention(h, attn.n_heads, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([attn.q_proj.weight, attn.k_proj.weight,
                                            attn.v_proj.weight]))
        mha.in_proj_bias.copy_(torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]))
        mha.out_proj.weight.copy_(attn.out_proj.weight)
        mha.out_proj.bias.copy_(attn.out_proj.bias)
    out, _ = mha(query, keys, keys, key_padding_mask=~mask)
    return out


def test_target_attention_matches_reference_and_respects_padding():
    torch.manual_seed(0)
    attn = TargetAttention(8, 2).eval()
    target, keys = torch.randn(4, 8), torch.randn(4, 5, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]]).bool()
    out = attn(target, keys, mask)                                          # [B, H]
    ref = reference_mha(attn, target.unsqueeze(1), keys, mask).squeeze(1)
    assert torch.allclose(out[:3], ref[:3], atol=1e-6)
    assert torch.equal(out[3], torch.zeros(8))                              # fully masked -> 0
    perturbed = keys.clone()
    perturbed[~mask] = 1e3 * torch.randn(int((~mask).sum()), 8)
    assert torch.equal(attn(target, perturbed, mask), out)                  # padding: no effect
    changed = keys.clone()
    changed[1, 1] += 1.0                                                    # a real position
    assert not torch.allclose(attn(target, changed, mask)[1], out[1])


def test_fully_masked_row_has_finite_zero_gradient():
    torch.manual_seed(1)
    attn = TargetAttention(4, 1)
    keys = torch.randn(2, 3, 4, requires_grad=True)
    mask = torch.tensor([[True, False, False], [False, False, False]])
    out = attn(torch.randn(2, 4), keys, mask)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(keys.grad).all()
    assert torch.equal(keys.grad[1], torch.zeros(3, 4))                     # masked row
    assert torch.equal(keys.grad[0, 1:], torch.zeros(2, 4))                 # padded keys
    assert keys.grad[0, 0].abs().sum() > 0


def test_masked_attention_weights_by_hand():
    # one head, dh = 1: scores q*k / 1 -> softmax over the two real keys
    q = torch.tensor([[[[2.0]]]])                                           # [1, Q=1, h=1, 1]
    k = torch.tensor([[[[1.0]], [[0.0]], [[5.0]]]])                         # [1, N=3, 1, 1]
    v = torch.tensor([[[[10.0]], [[20.0]], [[99.0]]]])
    out = masked_attention(q, k, v, torch.tensor([[True, True, False]]))
    w = math.exp(2.0) / (math.exp(2.0) + 1.0)
    assert out.item() == pytest.approx(10 * w + 20 * (1 - w), rel=1e-6)


def test_anchor_compressor_masks_and_two_stages():
    torch.manual_seed(2)
    comp = AnchorCompressor(8, n_anchors=3, n_heads=2).eval()
    seq, target = torch.randn(3, 6, 8), torch.randn(3, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]]).bool()
    compressed = comp.compress(seq, mask)
    assert compressed.shape == (3, 3, 8)
    out = comp(target, seq, mask)
    assert torch.allclose(out, comp.target_attn(target, compressed), atol=0)
    # stage 1 equals MultiheadAttention over the real positions, + residual + LayerNorm
    queries = comp.anchors.unsqueeze(0).expand(3, -1, -1)
    ref = comp.norm(queries + reference_mha(comp.compress_attn, queries, seq, mask))
    assert torch.allclose(compressed, ref, atol=1e-6)
    perturbed = seq.clone()
    perturbed[~mask] = 1e3 * torch.randn(int((~mask).sum()), 8)
    assert torch.equal(comp(target, perturbed, mask), out)
    changed = seq.clone()
    changed[2, 0] += 1.0
    assert not torch.allclose(comp(target, changed, mask)[2], out[2])


def test_dedup_path_equals_naive_path():
    torch.manual_seed(3)
    attn = TargetAttention(16, 4)
    table = torch.nn.Embedding(50, 16)
    idx = torch.randint(1, 12, (30, 5))                                     # heavy overlap
    unique, inverse = dedup_retrieved(idx)
    assert torch.equal(unique[inverse], idx) and len(unique) == len(set(idx.flatten().tolist()))
    k_naive, v_naive = project_kv_naive(attn, table, idx)
    k_dedup, v_dedup = project_kv_dedup(attn, table, idx)
    assert k_dedup.shape == (30, 5, 16)
    assert (k_dedup - k_naive).abs().max() <= 1e-6 and (v_dedup - v_naive).abs().max() <= 1e-6
    target = torch.randn(30, 16)
    mask = torch.rand(30, 5) > 0.3
    out_naive = attn.attend_target(target, k_naive, v_naive, mask)
    out_dedup = attn.attend_target(target, k_dedup, v_dedup, mask)
    assert (out_naive - out_dedup).abs().max() <= 1e-6
    # attending against the unique keys with an index: same output, no [C, K, H] gather; rows
    # with a repeated item (weights add up), an all-masked row (zeros), leading dims [2, 15]
    assert any(len(set(row.tolist())) < 5 for row in idx)
    mask[7] = False
    out_naive = attn.attend_target(target, k_naive, v_naive, mask)
    k_u, v_u = attn.project_kv(table(unique))                              # [U, H]
    out_unique = attn.attend_target_unique(target.view(2, 15, 16), k_u, v_u,
                                           inverse.view(2, 15, 5), mask.view(2, 15, 5))
    assert out_unique.shape == (2, 15, 16)
    assert (out_unique.view(30, 16) - out_naive).abs().max() <= 1e-6
    assert torch.equal(out_unique.view(30, 16)[7], torch.zeros(16))


def test_map_unique_equals_the_row_wise_map_values_and_gradients():
    torch.manual_seed(4)
    table = torch.randn(20, 6)
    proj = torch.nn.Linear(6, 3)
    idx = torch.tensor([[3, 3, 0, 7], [7, 19, 3, 0]])                      # repeats, padding
    got = map_unique(lambda i: proj(table[i]), idx)                         # [2, 4, 3]
    want = proj(table[idx])
    assert got.shape == (2, 4, 3) and torch.allclose(got, want, atol=1e-6)
    weights = torch.randn(2, 4, 3)
    grads_got = torch.autograd.grad((got * weights).sum(), list(proj.parameters()))
    grads_want = torch.autograd.grad((want * weights).sum(), list(proj.parameters()))
    for a, b in zip(grads_got, grads_want):
        assert torch.allclose(a, b, atol=1e-6)
    # only 4 distinct ids are projected
    seen = []
    map_unique(lambda i: seen.append(i.clone()) or proj(table[i]), idx)
    assert seen[0].tolist() == [0, 3, 7, 19]


def test_faiss_index_equals_brute_force():
    rng = np.random.default_rng(0)
    pool = rng.normal(size=(300, 24)).astype(np.float32)
    ids = np.arange(1000, 1300)
    query = rng.normal(size=(7, 24)).astype(np.float32)
    index = KnowledgeIndex(pool, ids=ids)
    scores, items = index.search(query, 10)
    unit = pool / np.linalg.norm(pool, axis=1, keepdims=True)
    cos = (query / np.linalg.norm(query, axis=1, keepdims=True)) @ unit.T    # [7, 300]
    ref_rows = np.argsort(-cos, axis=1, kind="stable")[:, :10]
    assert len(index) == 300
    assert np.array_equal(items.numpy(), ids[ref_rows])
    assert np.allclose(scores.numpy(), np.take_along_axis(cos, ref_rows, 1), atol=1e-5)
    _, rows = KnowledgeIndex(pool[:3]).search(query, 5)                      # pool < k
    assert (rows[:, 3:] == -1).all() and sorted(rows[0, :3].tolist()) == [0, 1, 2]
