"""Δ against a hand-checked tiny model, L, ratios, and the leakage guard."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tests.gbr import single_thread  # noqa: F401  (fixture)
from recbole_reaseq.gbr.labels import (build_gbr_inputs, delta_scores, labelled_positions,
                                       prefix_statistics, training_view)
from recbole_reaseq.gbr.locate import (CallableScorer, SequenceData, SwingScorer,
                                       default_time_threshold)
from recbole_reaseq.gbr.reasoner import build_sequence, collate

LN2, LN3 = math.log(2), math.log(3)
# logits over items 1..3 (column 0 = padding) by the prefix's last item; empty prefix = uniform
LOGITS = {None: [0, 0, 0], 1: [0, LN2, 0], 2: [0, 0, LN3], 3: [LN2, 0, 0]}
# so P(. | last=1) = 1/4 1/2 1/4, P(. | last=2) = 1/5 1/5 3/5, P(. | last=3) = 1/2 1/4 1/4


def _tiny_model(prefixes):
    return np.array([[0.0] + LOGITS[int(p[-1]) if len(p) else None] for p in prefixes])


TINY = CallableScorer(_tiny_model, n_items=4)


def test_delta_against_a_hand_checked_tiny_model():
    delta = delta_scores([1, 2, 2, 3], TINY)
    # Δ_0 = log P(2 | [1]) - log P(2 | [])       = log(1/2) - log(1/3)
    # Δ_1 = log P(2 | [1,2]) - log P(2 | [1])    = log(1/5) - log(1/2)
    # Δ_2 = log P(3 | [1,2,2]) - log P(3 | [1,2]) = log(3/5) - log(3/5) = 0
    assert delta[0] == pytest.approx(math.log(3 / 2), abs=1e-6)
    assert delta[1] == pytest.approx(math.log(2 / 5), abs=1e-6)
    assert delta[2] == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(delta[3])
    assert labelled_positions(delta, 0.0).tolist() == [0]          # strict: Δ_2 = 0 is out
    assert labelled_positions(delta, -1.0).tolist() == [0, 1, 2]   # the last one never
    assert labelled_positions(delta, math.log(1.5) + 1e-6).tolist() == []


def test_delta_with_temperature():
    delta = delta_scores([1, 2], TINY, temperature=2.0)
    # softmax(logits / 2) after item 1: (1, sqrt 2, 1) / (2 + sqrt 2); empty prefix: uniform
    expected = math.log(math.sqrt(2) / (2 + math.sqrt(2))) - math.log(1 / 3)
    assert delta[0] == pytest.approx(expected, abs=1e-6)


def test_prefix_statistics_batches_across_users():
    data = SequenceData.from_lists([[1, 2, 2, 3], [3, 1]], n_items=4)
    for batch_size in (1, 3, 100):
        st = prefix_statistics(data, TINY, batch_size=batch_size)
        # user 2: P(3 | []) = 1/3, P(1 | [3]) = 1/2; skip: P(1 | []) = 1/3, nan at the end
        assert np.exp(st["lp_next"][4:]) == pytest.approx([1 / 3, 1 / 2], abs=1e-6)
        assert np.exp(st["lp_skip"][4]) == pytest.approx(1 / 3, abs=1e-6)
        assert np.isnan(st["lp_skip"][[3, 5]]).all()
        # rank of x_k given x_<k: user 1: [] -> 1 tied with all (3); [1] -> 2 best (1); ...
        assert st["rank_next"].tolist() == [3, 1, 3, 1, 3, 1]


def test_build_gbr_inputs_ratios_on_a_hand_example():
    # one user, 4 training items + 2 held out; categories A A B B | held-out C C
    data = SequenceData.from_lists([[1, 2, 2, 3, 1, 1]], times=[[0, 1, 2, 3, 4, 5]],
                                   cats=[list("AABBCC")], n_items=4)
    inp = build_gbr_inputs(data, "C", scorer=TINY, eta=0.0)
    ex = inp.examples[0]
    assert ex.items.tolist() == [1, 2, 2, 3]
    assert ex.fill_after.tolist() == [1]            # A A | B B
    assert ex.labelled.tolist() == [0]
    s = inp.stats
    assert (s["n_items"], s["n_pairs"], s["n_gaps"], s["n_labelled"]) == (4, 3, 1, 1)
    assert s["gap_rate"] == pytest.approx(1 / 3)
    assert s["fill_ratio"] == pytest.approx(1 / 5)
    assert s["label_ratio"] == pytest.approx(1 / 4)
    assert s["stage2_keep"] == pytest.approx(1.0)
    # stage 2 at position 1: x_2 = 2 after [1, 2] has P = 1/5, below item 3 (3/5) and tied with
    # item 1 (1/5) -> rank 3 (ties against): kept for kappa=2, dropped for kappa=3
    assert build_gbr_inputs(data, "C", scorer=TINY, kappa=2).examples[0].fill_after.tolist() == [1]
    assert build_gbr_inputs(data, "C", scorer=TINY, kappa=3).examples[0].fill_after.tolist() == []


def _leaky_data(n_users=30, seed=0):
    """Training items 1..20; every user's valid/test targets are unique ids >= 100, and their
    timestamps lie far in the future (they would move a threshold computed on full data)."""
    rng = np.random.default_rng(seed)
    items, times, cats, held = [], [], [], set()
    for u in range(n_users):
        n = int(rng.integers(3, 9))
        seq = rng.integers(1, 21, size=n).tolist()
        tail = [100 + 2 * u, 101 + 2 * u]
        held.update(tail)
        t = np.cumsum(rng.integers(0, 4, size=n)).tolist()
        items.append(seq + tail)
        times.append(t + [t[-1] + 10_000, t[-1] + 20_000])
        cats.append([f"c{i % 3}" for i in seq] + ["z", "z"])
    data = SequenceData.from_lists(items, times=times, cats=cats, n_items=100 + 2 * n_users)
    return data, held


def test_no_valid_or_test_target_in_any_gbr_input():
    data, held = _leaky_data()
    train = training_view(data)
    assert all(len(train.sequence(u)) == len(data.sequence(u)) - 2 for u in range(len(data)))
    seen_by_factory = []

    def factory(view):
        seen_by_factory.extend(view.sequences())
        return SwingScorer.from_sequences(view.sequences(), view.n_items)

    for rule in ("T", "C", "TC", "TDCD"):
        for scorer in (None, factory):
            inp = build_gbr_inputs(data, rule, scorer=scorer, kappa=3)
            for u, ex in enumerate(inp.examples):
                assert ex.items.tolist() == data.sequence(u)[:-2].tolist()
                assert not set(ex.items.tolist()) & held
                assert np.all(ex.fill_after < len(ex.items) - 1)
                assert np.all(ex.labelled < len(ex.items) - 1)
            batch = collate([build_sequence(ex.items, ex.fill_after, ex.labelled)
                             for ex in inp.examples])
            assert not set(batch.ids.unique().tolist()) & held
            if rule != "C":   # the threshold comes from training gaps only
                assert inp.stats["time_threshold"] == default_time_threshold(train)
    assert default_time_threshold(train) != default_time_threshold(data)
    assert seen_by_factory and not any(set(s.tolist()) & held for s in seen_by_factory)
    # the default Swing graph is built on the training view: held-out items have no edges
    swing = SwingScorer.from_sequences(train.sequences(), train.n_items)
    held_idx = sorted(held)
    assert swing.sim[held_idx].nnz == 0 and swing.sim[:, held_idx].nnz == 0
