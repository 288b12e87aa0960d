"""PLR (parallel latent reasoning streams on SASRec) on the tiny synthetic data set."""
from __future__ import annotations

import math

import pytest
import torch
from recbole.utils import init_seed

from recbole_reaseq import registry
from recbole_reaseq.model.plr import PLR, stream_similarity
from recbole_reaseq.quick_start import (evaluate_checkpoint, load_data_and_model,
                                        make_config, prepare_data, run)
from tests.conftest import tiny_config

from . import build_with, first_batch, single_thread  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def prepared(tiny_root, tmp_path_factory):
    work = str(tmp_path_factory.mktemp("plr"))
    config = make_config("PLR", "tiny", config_dict=tiny_config(tiny_root, work, n_heads=2))
    return (config,) + tuple(prepare_data(config))


def _pairwise_distance(streams):
    """Mean Euclidean distance between the streams of each user, ``[B, S, H]`` -> scalar."""
    distance = torch.cdist(streams, streams)                              # [B, S, S]
    n = streams.shape[1]
    return distance[:, ~torch.eye(n, dtype=torch.bool)].mean()


def test_registered_and_defaults(prepared):
    config = prepared[0]
    assert registry.get_model("PLR") is PLR and registry.is_ours("PLR")
    assert not torch.is_anomaly_enabled()
    assert config["plr_streams"] == 4 and config["reasoning_steps"] == 2
    assert config["loss_type"] == "CE"


def test_zero_depth_is_exactly_sasrec(prepared):
    config, dataset, train, _valid, test = prepared
    init_seed(config["seed"], config["reproducibility"])
    sasrec = registry.get_model("SASRec")(config, dataset)
    model = build_with(config, train, reasoning_steps=0)                      # same seed
    ours, theirs = model.state_dict(), sasrec.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    model.load_state_dict(theirs)
    batch, inter = next(iter(train)), first_batch(test)
    with torch.no_grad():
        model.eval(), sasrec.eval()
        assert torch.equal(model.full_sort_predict(inter), sasrec.full_sort_predict(inter))
        assert torch.equal(model.predict(inter), sasrec.predict(inter))
        model.train(), sasrec.train()
        torch.manual_seed(5)
        ours_loss = model.calculate_loss(batch)
        torch.manual_seed(5)
        assert torch.equal(ours_loss, sasrec.calculate_loss(batch))


@pytest.mark.parametrize("fast_thinking", [True, False])
def test_aggregation_weights_sum_to_one(prepared, fast_thinking):
    config, _dataset, train, _valid, test = prepared
    model = build_with(config, train, plr_fast_thinking=fast_thinking).eval()
    inter = first_batch(test)
    with torch.no_grad():
        h0, streams = model.streams(inter["item_id_list"], inter["item_length"])
        user, weights = model.aggregate(h0, streams)
        candidates = 1 + model.n_streams if fast_thinking else model.n_streams
        assert streams.shape == (h0.shape[0], 4, model.hidden_size)
        assert weights.shape == (h0.shape[0], candidates) and (weights > 0).all()
        assert torch.allclose(weights.sum(-1), torch.ones(h0.shape[0]), atol=1e-6)
        parts = torch.cat([h0.unsqueeze(1), streams], 1) if fast_thinking else streams
        assert torch.allclose(user, (weights.unsqueeze(-1) * parts).sum(1), atol=1e-6)
        assert torch.allclose(model(inter["item_id_list"], inter["item_length"]), user)


def test_trigger_tokens_start_distinct_streams_and_pos_emb_only_on_reasoning(prepared):
    config, _dataset, train, _valid, test = prepared
    model = build_with(config, train).eval()
    inter = first_batch(test)
    seq, length = inter["item_id_list"], inter["item_length"]
    with torch.no_grad():
        h0, streams = model.streams(seq, length)
        assert torch.equal(h0, super(PLR, model).forward(seq, length))    # encoder = SASRec
        assert _pairwise_distance(streams) > 0                              # triggers differ
        model.trigger_tokens.weight.copy_(model.trigger_tokens.weight[:1].expand(4, -1))
        _h0, same = model.streams(seq, length)                            # one trigger for all
        assert torch.allclose(same, same[:, :1].expand_as(same), atol=1e-6)
        model.reason_pos_emb.weight.add_(torch.randn_like(model.reason_pos_emb.weight))
        h0_after, moved = model.streams(seq, length)
    assert torch.equal(h0, h0_after)                          # the item encoding is untouched
    assert (moved - same).abs().max() > 1e-3                  # the reasoning streams moved


def test_regulariser_increases_stream_distance(prepared):
    """A few optimisation steps on a toy batch: the regulariser pushes the streams apart."""
    config, _dataset, train, _valid, _test = prepared
    batch = next(iter(train))
    seq, length = batch["item_id_list"][:16], batch["item_length"][:16]

    def distance_after(reg_weight, steps=5, only_regulariser=False):
        model = build_with(config, train, plr_reg_weight=reg_weight)          # same init each time
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        model.eval()                                        # no dropout: a deterministic probe
        with torch.no_grad():
            start = _pairwise_distance(model.streams(seq, length)[1])
        for _ in range(steps):
            optimizer.zero_grad()
            if only_regulariser:
                loss = stream_similarity(model.streams(seq, length)[1])
            else:
                loss = model.calculate_loss(batch[:16])
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            return start, _pairwise_distance(model.streams(seq, length)[1])

    start, end = distance_after(1.0, only_regulariser=True)
    assert end > 2 * start
    start_without, without = distance_after(0.0)
    start_with, with_reg = distance_after(1.0)
    assert torch.equal(start_without, start_with)
    assert with_reg > 1.5 * without


def test_predict_agrees_with_full_sort_predict(prepared):
    config, _dataset, train, _valid, test = prepared
    model = build_with(config, train).eval()
    inter = first_batch(test)
    with torch.no_grad():
        full = model.full_sort_predict(inter)
        gathered = full.gather(1, inter["item_id"].unsqueeze(1)).squeeze(1)
        assert torch.allclose(model.predict(inter), gathered, atol=1e-5)


@pytest.mark.parametrize("overrides,message", [
    ({"plr_streams": 0}, "plr_streams"),
    ({"reasoning_steps": 1.5}, "reasoning_steps"),
    ({"loss_type": "BPR"}, "loss_type: CE"),
])
def test_bad_config_is_refused_with_the_key(prepared, overrides, message):
    config, _dataset, train = prepared[0], prepared[1], prepared[2]
    with pytest.raises(ValueError, match=message):
        build_with(config, train, **overrides)


def test_loss_falls_on_tiny_slice(tiny_root, workdir):
    result = run("PLR", "tiny", saved=False, config_dict=tiny_config(
        tiny_root, workdir, epochs=8, stopping_step=100, learning_rate=0.01))
    losses = result["train_loss"]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.85 * losses[0]
    assert result["test_result"]["hit@10"] > 0.25          # random ranking: 10 / 40


def test_checkpoint_reloads_to_identical_predictions(tiny_root, workdir):
    result = run("PLR", "tiny", config_dict=tiny_config(tiny_root, workdir, epochs=2))
    assert evaluate_checkpoint(result["checkpoint"]) == result["test_result"]
    _config, model, _dataset, _train, _valid, test = load_data_and_model(result["checkpoint"])
    again = load_data_and_model(result["checkpoint"])[1]
    inter = first_batch(test)
    with torch.no_grad():
        assert torch.equal(model.eval().full_sort_predict(inter),
                           again.eval().full_sort_predict(inter))
