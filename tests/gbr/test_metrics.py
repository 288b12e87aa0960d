"""IB-PPL and IB-ACC on toy tensors, against hand computations."""
from __future__ import annotations

import math

import pytest
import torch

from tests.gbr import single_thread  # noqa: F401  (fixture)
from recbole_reaseq.gbr.metrics import in_batch_scores, ib_metrics, sample_negative_positions
from recbole_reaseq.gbr.reasoner import FILL, ITEM, MASK, PAD

# items 0..5: e1 (1,0), e2 (0,1), e3 (-1,0), e4 (1,1), e5 (0,-1)
E = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 1.0], [0.0, -1.0]])
IDS = torch.tensor([[1, 2, 0], [3, 4, 0], [5, 0, 0]])
KINDS = torch.tensor([[MASK, MASK, FILL], [ITEM, MASK, PAD], [ITEM, FILL, PAD]])
PRED = torch.zeros(3, 3, 2)
PRED[0, 0] = torch.tensor([1.0, 0.0])      # [MASK], truth e1
PRED[0, 1] = torch.tensor([-1.0, 0.0])     # [MASK], truth e2: a miss (e3 of sample 1 wins)
PRED[0, 2] = torch.tensor([0.2, 1.0])      # [FILL]: closest [MASK] truth of sample 0 is e2
PRED[1, 1] = torch.tensor([1.0, 1.0])      # [MASK], truth e4
PRED[2, 1] = torch.tensor([5.0, 5.0])      # [FILL] of a sample without [MASK]: not evaluated
NEG = torch.tensor([1, 0, 0])              # negatives: e2 (sample 0), e3 (sample 1), e5 (s. 2)
R2 = 1 / math.sqrt(2)
N104 = math.sqrt(1.04)


def _nll(pos, negs, tau):
    return -(pos / tau) + math.log(math.exp(pos / tau) + sum(math.exp(n / tau) for n in negs))


def _hand(tau):
    mask = [
        _nll(1.0, [-1.0, 0.0], tau),        # (0,0) y=(1,0): e1 1 | e3 -1, e5 0       hit
        _nll(0.0, [1.0, 0.0], tau),         # (0,1) y=(-1,0): e2 0 | e3 1, e5 0       miss
        _nll(1.0, [R2, -R2], tau),          # (1,1) y=(1,1): e4 1 | e2 1/√2, e5 -1/√2 hit
    ]
    fill = [_nll(1 / N104, [-0.2 / N104, -1 / N104], tau)]   # (0,2) pos e2 | e3, e5   hit
    return mask, fill


@pytest.mark.parametrize("tau", [1.0, 0.07])
def test_ib_metrics_match_hand_computation(tau):
    res = ib_metrics(PRED, IDS, KINDS, E, temperature=tau, neg_positions=NEG)
    mask, fill = _hand(tau)
    assert res["n_mask"] == 3 and res["n_fill"] == 1 and res["fill_skipped"] == 1
    assert res["mask_acc"] == pytest.approx(2 / 3)
    assert res["mask_ppl"] == pytest.approx(math.exp(sum(mask) / 3), rel=1e-5)
    assert res["fill_acc"] == pytest.approx(1.0)
    assert res["fill_ppl"] == pytest.approx(math.exp(fill[0]), rel=1e-5)


def test_fill_positive_is_the_closest_masked_truth():
    pred = PRED.clone()
    pred[0, 2] = torch.tensor([1.0, 0.1])   # now closest to e1 (the other [MASK] of sample 0)
    res = ib_metrics(pred, IDS, KINDS, E, temperature=1.0, neg_positions=NEG)
    c = 1 / math.sqrt(1.01)
    expected = _nll(c, [-c, -0.1 * c], 1.0)  # pos e1 | e3 (-1,0), e5 (0,-1)
    assert res["fill_ppl"] == pytest.approx(math.exp(expected), rel=1e-5)


def test_exactly_b_minus_1_negatives_and_ties_miss():
    y = torch.tensor([[1.0, 0.0]])
    e_neg = torch.tensor([[9.0, 9.0], [1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])  # row 0 = own sample
    out = in_batch_scores(y, torch.tensor([[1.0, 0.0]]), torch.tensor([0]), e_neg,
                          torch.ones(4, dtype=torch.bool), temperature=1.0)
    # candidates: the positive + samples 1, 2, 3 (B - 1 = 3); sample 1 ties with the positive
    assert out["nll"].item() == pytest.approx(_nll(1.0, [1.0, 0.0, 0.0], 1.0), rel=1e-6)
    assert not out["hit"].item()


def test_seeded_negative_sampling():
    ids = torch.tensor([[0, 7, 0, 8, 9, 6], [0, 0, 0, 0, 0, 0], [3, 0, 0, 0, 0, 0]])
    a = sample_negative_positions(ids, seed=3)
    assert torch.equal(a, sample_negative_positions(ids, seed=3))
    assert a[1].item() == -1 and a[2].item() == 0 and ids[0, a[0]].item() > 0
    counts = torch.zeros(6)
    for seed in range(400):
        counts[sample_negative_positions(ids, seed=seed)[0]] += 1
    assert counts[[0, 2]].sum() == 0                               # never a non-item position
    assert counts[[1, 3, 4, 5]].min() > 60                         # ~100 each: uniform
    res = ib_metrics(PRED, IDS, KINDS, E, seed=0)                  # the seeded path runs
    assert res["n_mask"] == 3
    assert res == ib_metrics(PRED, IDS, KINDS, E, seed=0)
