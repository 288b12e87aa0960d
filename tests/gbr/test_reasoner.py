"""The reasoner: shared [FILL]/[MASK] embedding, sequences, masking, loss, optimiser, learning."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.gbr import single_thread  # noqa: F401  (fixture)
from recbole_reaseq.gbr.metrics import ib_metrics
from recbole_reaseq.gbr.reasoner import (FILL, ITEM, MASK, PAD, BehaviorReasoner, GBRBatch,
                                         ReasonerConfig, apply_mask, build_sequence, collate,
                                         fill_predictions, gbr_loss, make_optimizer,
                                         pack_sequences, sample_mask, training_step,
                                         warmup_cosine)


def _model(n_items=10, item_dim=6, **kw):
    torch.manual_seed(0)
    table = torch.randn(n_items, item_dim)
    table[0] = 0
    cfg = ReasonerConfig(item_dim=item_dim, d_model=16, n_layers=2, n_heads=4, max_len=12,
                         dropout=0.0, **kw)
    return BehaviorReasoner(cfg, table).eval()


def test_default_architecture():
    cfg = ReasonerConfig(item_dim=384)
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads) == (128, 4, 8)
    model = BehaviorReasoner(cfg, torch.zeros(5, 384))
    assert model.pos.weight.shape == (cfg.max_len, 128) and model.pos.weight.requires_grad
    assert model.head.out_features == 384 and model.adapter.fc1.in_features == 384
    assert "item_repr" not in model.state_dict()            # frozen table, not a parameter
    assert all(p is not model.item_repr for p in model.parameters())


def test_fill_and_mask_share_one_embedding():
    model = _model()
    assert model.fill_embedding is model.mask_embedding
    assert isinstance(model.fill_embedding, torch.nn.Parameter)
    specials = [n for n, p in model.named_parameters() if p.shape == (16,) and "special" in n]
    assert specials == ["special"]
    ids = torch.tensor([[3, 4, 0, 5]])
    with_fill = model(ids, torch.tensor([[ITEM, ITEM, FILL, ITEM]]))
    with_mask = model(ids, torch.tensor([[ITEM, ITEM, MASK, ITEM]]))
    assert torch.equal(with_fill, with_mask)


def test_bidirectional_and_masked_ids_are_never_read():
    model = _model()
    kinds = torch.tensor([[ITEM, MASK, ITEM, ITEM, PAD]])
    a = model(torch.tensor([[1, 2, 3, 4, 0]]), kinds)
    b = model(torch.tensor([[1, 9, 3, 4, 0]]), kinds)            # other id under [MASK]
    assert torch.equal(a, b)
    c = model(torch.tensor([[1, 2, 3, 7, 0]]), kinds)            # a LATER token changes
    assert not torch.allclose(a[0, 0], c[0, 0])                  # an EARLIER output: no causal mask
    d = model(torch.tensor([[1, 2, 3, 4, 8]]), kinds)            # padding is ignored
    assert torch.allclose(a[0, :4], d[0, :4])


def test_pack_sequences_first_fit_decreasing_by_hand():
    # longest first: 5 -> row 0; 4 -> row 1; 3 fits neither (5+3, 4+3 > 6) -> row 2;
    # 2 -> row 1 after the 4 (4+2 = 6); the empty sequence takes no slot
    row, offset, rows = pack_sequences([3, 5, 2, 0, 4], 6)
    assert (row, offset, rows) == ([2, 0, 1, 0, 1], [0, 0, 4, 0, 0], 3)
    with pytest.raises(ValueError, match="7 tokens > row width 6"):
        pack_sequences([7], 6)


def _varied_batch():
    """Right-padded batch: lengths 9, 1, 0, 12 (= T, the longest), 4, with FILL and MASK."""
    gen = torch.Generator().manual_seed(5)
    lengths, T = [9, 1, 0, 12, 4], 12
    ids = torch.zeros(len(lengths), T, dtype=torch.long)
    kinds = torch.full((len(lengths), T), PAD, dtype=torch.long)
    for b, n in enumerate(lengths):
        kinds[b, :n] = torch.tensor([ITEM, FILL, MASK])[torch.randint(0, 3, (n,), generator=gen)]
        ids[b, :n] = torch.randint(1, 10, (n,), generator=gen) * (kinds[b, :n] == ITEM)
    return ids, kinds


def test_packed_forward_equals_padded_forward_values_and_gradients():
    packed, padded = _model(pack=True), _model(pack=False)
    padded.load_state_dict(packed.state_dict())
    ids, kinds = _varied_batch()
    real = kinds != PAD
    out_packed, out_padded = packed(ids, kinds), padded(ids, kinds)
    assert torch.allclose(out_packed[real], out_padded[real], atol=1e-5)
    assert torch.equal(out_packed[~real], torch.zeros_like(out_packed[~real]))
    weights = torch.randn_like(out_padded) * real.unsqueeze(-1)
    grads = [torch.autograd.grad((m(ids, kinds) * weights).sum(), list(m.parameters()))
             for m in (packed, padded)]
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="right-padded"):
        packed(ids, torch.roll(kinds, 1, dims=1))


def test_build_sequence_and_collate():
    ids, kinds, lab = build_sequence([5, 6, 7, 8], fill_after=[1, 2], labelled=[0, 2, 3])
    assert ids.tolist() == [5, 6, 0, 7, 0, 8]
    assert kinds.tolist() == [ITEM, ITEM, FILL, ITEM, FILL, ITEM]
    assert lab.tolist() == [True, False, False, True, False, True]
    ids, kinds, lab = build_sequence([5, 6, 7, 8], [1, 2], [0, 2, 3], max_len=4)  # most recent
    assert ids.tolist() == [0, 7, 0, 8] and lab.tolist() == [False, True, False, True]
    batch = collate([build_sequence([1, 2], [0], [1]), build_sequence([3], (), [0])])
    assert batch.ids.tolist() == [[1, 0, 2], [3, 0, 0]]
    assert batch.kinds.tolist() == [[ITEM, FILL, ITEM], [ITEM, PAD, PAD]]
    assert batch.label_mask.tolist() == [[False, False, True], [True, False, False]]


def test_masking_distribution_at_fixed_t():
    B, T = 2000, 50
    label = torch.zeros(B, T, dtype=torch.bool)
    label[:, ::2] = True                                          # 25 labelled positions each
    g = torch.Generator().manual_seed(0)
    masked, t = sample_mask(label, g, t=torch.full((B,), 0.3))
    assert not (masked & ~label).any()                            # only labelled positions
    frac = masked.sum().item() / label.sum().item()
    sd = math.sqrt(0.3 * 0.7 / label.sum().item())                # binomial, 50,000 draws
    assert abs(frac - 0.3) < 4 * sd
    # t drawn per sequence: t in [t_min, 1], mean 1/2; each sequence masks about t of its labels
    masked, t = sample_mask(label, torch.Generator().manual_seed(1), t_min=0.1)
    assert t.min() >= 0.1 and t.max() <= 1.0 and abs(t.mean().item() - 0.55) < 0.02
    per_seq = masked.sum(1).float() / 25
    assert abs((per_seq - t).mean().item()) < 0.01
    assert torch.corrcoef(torch.stack([per_seq, t]))[0, 1] > 0.9
    # masked positions become [MASK] with id 0, unmasked labelled ones keep their item
    batch = GBRBatch(ids=torch.tensor([[4, 5, 6]]), kinds=torch.tensor([[ITEM, ITEM, ITEM]]),
                     label_mask=torch.tensor([[True, True, False]]))
    ids_in, kinds_in = apply_mask(batch, torch.tensor([[True, False, False]]))
    assert ids_in.tolist() == [[0, 5, 6]] and kinds_in.tolist() == [[MASK, ITEM, ITEM]]


# =========================================================================  loss by hand
E = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])  # items 0..4
IDS = torch.tensor([[1, 2], [3, 4]])
MASKED = torch.tensor([[True, False], [False, True]])
PRED = torch.zeros(2, 2, 2)
PRED[0, 0] = torch.tensor([2.0, 0.0])     # cos with e1 = 1
PRED[1, 1] = torch.tensor([0.0, 1.0])     # cos with e4 = 0
R2 = 1 / math.sqrt(2)


def _softmax_hand(tau, negatives):
    if negatives == "all":
        # q0: pos e1 (1); negatives = items of sequence 1: e3 (1/sqrt2), e4 (-1)
        l0 = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + math.exp(R2 / tau)
                                            + math.exp(-1 / tau)))
        # q1: pos e4 (0); negatives = items of sequence 0: e1 (0), e2 (1)
        l1 = -math.log(1 / (1 + 1 + math.exp(1 / tau)))
    else:
        # only the masked targets of the other sequence: q0 vs e4, q1 vs e1
        l0 = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + math.exp(-1 / tau)))
        l1 = -math.log(1 / (1 + 1))
    return l0, l1


@pytest.mark.parametrize("tau", [1.0, 0.07])
@pytest.mark.parametrize("negatives", ["all", "targets"])
def test_softmax_loss_equals_hand_computation(tau, negatives):
    l0, l1 = _softmax_hand(tau, negatives)
    loss = gbr_loss(PRED, IDS, MASKED, E, temperature=tau, negatives=negatives)
    assert loss.item() == pytest.approx((l0 + l1) / 2, rel=1e-5)


def test_pointwise_losses_and_inverse_t_weighting():
    cos = gbr_loss(PRED, IDS, MASKED, E, variant="cosine")
    assert cos.item() == pytest.approx(((1 - 1) + (1 - 0)) / 2)
    euc = gbr_loss(PRED, IDS, MASKED, E, variant="euclidean")
    assert euc.item() == pytest.approx((1 + math.sqrt(2)) / 2, rel=1e-6)
    # seq 0: labels at both positions (|L|=2), t=0.5; seq 1: one label, t=0.25
    t = torch.tensor([0.5, 0.25])
    label = torch.tensor([[True, True], [False, True]])
    w = gbr_loss(PRED, IDS, MASKED, E, variant="cosine", weighting="inv_t", t=t,
                 label_mask=label)
    assert w.item() == pytest.approx((0 / (0.5 * 2) + 1 / (0.25 * 1)) / 2)
    l0, l1 = _softmax_hand(0.07, "all")
    w = gbr_loss(PRED, IDS, MASKED, E, weighting="inv_t", t=t, label_mask=label)
    assert w.item() == pytest.approx((l0 / (0.5 * 2) + l1 / (0.25 * 1)) / 2, rel=1e-5)
    with pytest.raises(ValueError, match="inv_t"):
        gbr_loss(PRED, IDS, MASKED, E, weighting="inv_t")


def test_same_item_in_another_sequence_is_not_a_negative():
    ids = torch.tensor([[1, 2], [1, 4]])                          # item 1 in both sequences
    pred = PRED.clone()
    masked = torch.tensor([[True, False], [False, False]])
    loss = gbr_loss(pred, ids, masked, E, temperature=1.0)
    # q0: pos e1; negatives of sequence 1: e1 (dropped, same item), e4 (-1)
    expected = -math.log(math.e / (math.e + math.exp(-1)))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    zero = gbr_loss(pred.requires_grad_(), ids, torch.zeros(2, 2, dtype=torch.bool), E)
    assert zero.item() == 0.0 and zero.requires_grad


def test_warmup_cosine_schedule_and_optimizer():
    vals = [warmup_cosine(s, 4, 12) for s in (0, 3, 4, 8, 12, 20)]
    assert vals == pytest.approx([0.25, 1.0, 1.0, 0.5, 0.0, 0.0])
    assert warmup_cosine(8, 4, 12, min_ratio=0.1) == pytest.approx(0.55)
    model = _model()
    opt, sched = make_optimizer(model, lr=0.01, warmup_steps=4, total_steps=12)
    assert isinstance(opt, torch.optim.Adam)
    lrs = []
    for _ in range(9):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.0025) and lrs[3] == pytest.approx(0.01)
    assert lrs[8] == pytest.approx(0.005)


# ==================================================================  a tiny synthetic task
def test_reasoner_learns_a_task_where_neighbours_determine_the_masked_item():
    """Items are the states of a chain e_{k+1} = A e_k (A a random rotation of R^16); every
    sequence is 5 consecutive chain items, all labelled, so a masked item is determined by its
    neighbours (A e_{k-1} or A^-1 e_{k+1}). Random vectors would need memorising; the rotation
    is learnable in a few hundred steps."""
    torch.manual_seed(0)
    n, dim, length = 5000, 16, 5
    g = torch.Generator().manual_seed(0)
    rot, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g))
    table = torch.zeros(n + 1, dim)
    table[1] = torch.randn(dim, generator=g)
    for k in range(2, n + 1):
        table[k] = rot @ table[k - 1]
    rng = np.random.default_rng(0)

    def batch(size):
        starts = rng.integers(1, n - length + 2, size=size)
        return collate([build_sequence(range(s, s + length), (), range(length)) for s in starts])

    cfg = ReasonerConfig(item_dim=dim, d_model=32, n_layers=2, n_heads=4, max_len=8, dropout=0.0)
    model = BehaviorReasoner(cfg, table)
    steps = 500
    opt, sched = make_optimizer(model, lr=1e-3, warmup_steps=20, total_steps=steps)
    gen = torch.Generator().manual_seed(1)
    losses = [training_step(model, batch(64), opt, sched, gen)["loss"] for _ in range(steps)]
    first, last = np.mean(losses[:20]), np.mean(losses[-20:])
    assert last < 0.5 * first, (first, last)

    ev = batch(64)
    masked, _ = sample_mask(ev.label_mask, torch.Generator().manual_seed(5),
                            t=torch.full((64,), 0.3))
    ids_in, kinds_in = apply_mask(ev, masked)
    model.eval()
    with torch.no_grad():
        pred = model(ids_in, kinds_in)
    res = ib_metrics(pred, ev.ids, kinds_in, table, seed=0)
    assert res["n_mask"] > 50 and res["mask_acc"] >= 0.85, res
    assert res["mask_ppl"] < 3.0, res
    # inference: a [FILL] standing for a dropped chain item is filled with (nearly) that item:
    # it ranks in the top 10 of all 5000 items by cosine (measured: ranks 1, 3, 2; cos > 0.8)
    seqs = [build_sequence([s, s + 1, s + 3, s + 4], fill_after=[1]) for s in (10, 200, 3000)]
    fb = collate(seqs)
    out = fill_predictions(model, fb)                              # [3, 5, D]
    filled = out[fb.kinds == FILL]                                 # [3, D]
    sims = torch.nn.functional.normalize(filled, dim=-1) @ torch.nn.functional.normalize(
        table[1:], dim=-1).T                                       # [3, n]
    target = sims[torch.arange(3), torch.tensor([11, 201, 3001])]   # the dropped items
    ranks = 1 + (sims > target.view(-1, 1)).sum(dim=1)
    assert ranks.max().item() <= 10 and target.min().item() > 0.6, (ranks, target)  # of 5000
