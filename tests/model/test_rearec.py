"""ReaRec (ERL / PRL latent reasoning on SASRec) on the tiny synthetic data set (conftest.py)."""
from __future__ import annotations

import math

import pytest
import torch
from recbole.utils import init_seed

from recbole_reaseq import registry
from recbole_reaseq.model.rearec import (ErlLoss, ReaRec, in_batch_info_nce,
                                         pairwise_kl_diversity)
from recbole_reaseq.quick_start import (evaluate_checkpoint, load_data_and_model,
                                        make_config, prepare_data, run)
from tests.conftest import tiny_config

from . import build_with, first_batch, single_thread  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def prepared(tiny_root, tmp_path_factory):
    work = str(tmp_path_factory.mktemp("rearec"))
    config = make_config("ReaRec", "tiny", config_dict=tiny_config(tiny_root, work, n_heads=2))
    return (config,) + tuple(prepare_data(config))


def test_registered_and_defaults(prepared):
    config = prepared[0]
    assert registry.get_model("ReaRec") is ReaRec and registry.is_ours("ReaRec")
    assert not torch.is_anomaly_enabled()              # importing SASRec did not switch it on
    assert config["rearec_mode"] == "ERL" and config["reasoning_steps"] == 2
    assert config["loss_type"] == "CE" and config["train_neg_sample_args"]["sample_num"] == "none"


@pytest.mark.parametrize("mode", ["ERL", "PRL"])
def test_zero_steps_is_exactly_sasrec(prepared, mode):
    config, dataset, train, _valid, test = prepared
    init_seed(config["seed"], config["reproducibility"])
    sasrec = registry.get_model("SASRec")(config, dataset)
    model = build_with(config, train, reasoning_steps=0, rearec_mode=mode)   # same seed
    assert model.reason_pos_emb is None
    ours, theirs = model.state_dict(), sasrec.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    sasrec.load_state_dict(ours)                                          # strict both ways
    model.load_state_dict(theirs)
    batch, inter = next(iter(train)), first_batch(test)
    with torch.no_grad():
        model.eval(), sasrec.eval()
        seq, length = inter["item_id_list"], inter["item_length"]
        assert torch.equal(model(seq, length), sasrec(seq, length))
        assert torch.equal(model.full_sort_predict(inter), sasrec.full_sort_predict(inter))
        assert torch.equal(model.predict(inter), sasrec.predict(inter))
        model.train(), sasrec.train()                                     # dropout: same draws
        torch.manual_seed(3)
        ours_loss = model.calculate_loss(batch)
        torch.manual_seed(3)
        assert torch.equal(ours_loss, sasrec.calculate_loss(batch))


def test_cached_reasoning_equals_reencoding_with_appended_tokens(prepared):
    config, _dataset, train, _valid, test = prepared
    model = build_with(config, train, reasoning_steps=3).eval()
    inter = first_batch(test)
    seq, length = inter["item_id_list"], inter["item_length"]
    with torch.no_grad():
        steps, _ = model.reason(seq, length)                              # [B, 4, H]
        positions = torch.arange(seq.shape[1]).unsqueeze(0).expand_as(seq)
        items = model.LayerNorm(model.item_embedding(seq) + model.position_embedding(positions))
        for step in range(1, 4):                  # re-encode items + reasoning tokens so far
            tokens = torch.stack([model.reasoning_input(steps[:, k], k) for k in range(step)], 1)
            valid = torch.cat([seq, torch.ones(seq.shape[0], step, dtype=seq.dtype)], 1)
            out = model.trm_encoder(torch.cat([items, tokens], 1),
                                    model.get_attention_mask(valid))[-1][:, -1]
            assert torch.allclose(out, steps[:, step], atol=1e-5)
        sasrec_h0 = super(ReaRec, model).forward(seq, length)
        assert torch.equal(steps[:, 0], sasrec_h0)                        # step 0 = SASRec


def test_reasoning_position_embeddings_only_on_reasoning_steps(prepared):
    config, _dataset, train, _valid, test = prepared
    model = build_with(config, train, reasoning_steps=2).eval()
    inter = first_batch(test)
    seq, length = inter["item_id_list"], inter["item_length"]
    with torch.no_grad():
        before, _ = model.reason(seq, length)
        model.reason_pos_emb.weight.add_(torch.randn_like(model.reason_pos_emb.weight))
        after, _ = model.reason(seq, length)
    assert torch.equal(before[:, 0], after[:, 0])            # the item encoding is untouched
    for step in (1, 2):                                      # every reasoning step moved
        assert (before[:, step] - after[:, step]).abs().max() > 1e-3
    model.train()
    model.calculate_loss(next(iter(train))).backward()
    assert model.reason_pos_emb.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", ["ERL", "PRL"])
def test_predict_agrees_with_full_sort_predict(prepared, mode):
    config, _dataset, train, _valid, test = prepared
    model = build_with(config, train, rearec_mode=mode).eval()
    inter = first_batch(test)
    with torch.no_grad():
        full = model.full_sort_predict(inter)                             # [B, n_items]
        gathered = full.gather(1, inter["item_id"].unsqueeze(1)).squeeze(1)
        assert torch.allclose(model.predict(inter), gathered, atol=1e-5)
        steps, _ = model.reason(inter["item_id_list"], inter["item_length"])
        expected = steps.mean(1) if mode == "ERL" else steps[:, -1]       # inference rule
        assert torch.allclose(full, expected @ model.item_embedding.weight.t(), atol=1e-5)


def test_erl_and_prl_losses(prepared):
    config, _dataset, train, _valid, _test = prepared
    log_probs = torch.log_softmax(torch.randn(4, 3, 7), -1)
    assert pairwise_kl_diversity(log_probs) > 0
    assert pairwise_kl_diversity(log_probs[:, :1].expand(-1, 3, -1)).abs() < 1e-6
    prl = build_with(config, train, rearec_mode="PRL", reasoning_steps=2)
    assert torch.allclose(prl.step_temperatures("cpu"), torch.tensor([1.75, 0.35, 0.07]))
    batch = next(iter(train))
    losses = {}
    for cl_weight in (0.0, 1.0):                            # the contrastive term is in the loss
        prl.prl_cl_weight = cl_weight
        torch.manual_seed(0)
        losses[cl_weight] = prl.calculate_loss(batch)
    assert math.isfinite(losses[1.0].item()) and losses[1.0] > losses[0.0]
    erl = build_with(config, train, rearec_mode="ERL", reasoning_steps=2)
    torch.manual_seed(0)
    with_kl = erl.calculate_loss(batch)
    erl.erl_kl_weight = 0.0
    torch.manual_seed(0)
    assert with_kl < erl.calculate_loss(batch)              # the diversity term is subtracted


def test_pairwise_kl_equals_hand_computation():
    # two steps over two items: p_0 = (0.5, 0.5), p_1 = (0.8, 0.2)
    p = torch.tensor([[[0.5, 0.5], [0.8, 0.2]]])
    kl_10 = 0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5)         # KL(p_1 || p_0)
    kl_01 = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)         # KL(p_0 || p_1)
    assert pairwise_kl_diversity(p.log()).item() == pytest.approx((kl_10 + kl_01) / 2, rel=1e-6)


def assert_same_loss_and_gradients(model, batch, plain):
    """``model.calculate_loss(batch)`` and ``plain()`` (the loss written out), both after
    ``torch.manual_seed(0)`` (same dropout masks and noise): same value, same gradient for
    every parameter."""
    torch.manual_seed(0)
    loss = model.calculate_loss(batch)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    torch.manual_seed(0)
    expected = plain()
    expected_grads = torch.autograd.grad(expected, list(model.parameters()))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    for got, want in zip(grads, expected_grads):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-7)


def test_fused_erl_loss_equals_the_autograd_definition_values_and_gradients():
    """ErlLoss (closed-form gradient) = mean CE - w * pairwise_kl_diversity through autograd,
    in value and gradient (float64; finite differences do not apply: the loss has a
    stop-gradient), with K = 3 steps and 2 steps, and a target repeated across the batch."""
    torch.manual_seed(0)
    for steps in (2, 3):
        logits = torch.randn(5, steps, 11, dtype=torch.float64, requires_grad=True)
        target = torch.tensor([3, 0, 10, 3, 7])
        log_probs = logits.log_softmax(-1)
        definition = (torch.nn.functional.nll_loss(log_probs.reshape(-1, 11),
                                                   target.repeat_interleave(steps))
                      - 0.3 * pairwise_kl_diversity(log_probs))
        fused = ErlLoss.apply(logits, target, 0.3)
        assert fused.item() == pytest.approx(definition.item(), rel=1e-12)
        want, = torch.autograd.grad(definition, logits)
        got, = torch.autograd.grad(fused, logits)
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-14)


def test_erl_loss_equals_the_unshared_formula_values_and_gradients(prepared):
    """ERL's loss (ErlLoss) equals the same loss computed the plain way (RecBole's
    CrossEntropyLoss on the logits, KL from two separate log_softmax calls with the second
    detached, as the official code): same value, same gradient for every parameter."""
    config, _dataset, train, _valid, _test = prepared
    model = build_with(config, train, rearec_mode="ERL", reasoning_steps=2, erl_kl_weight=0.3)
    batch = next(iter(train))

    def plain():
        steps, _ = model.reason(batch["item_id_list"], batch["item_length"])
        logits = steps @ model.item_embedding.weight.t()                  # [B, K, N]
        k = logits.shape[1]
        ce = torch.nn.CrossEntropyLoss()(logits.reshape(-1, logits.shape[-1]),
                                         batch["item_id"].repeat_interleave(k))
        log_p, log_q = logits.log_softmax(-1), logits.detach().log_softmax(-1)
        kl = torch.stack([(log_p[:, j].exp() * (log_p[:, j] - log_q[:, i])).sum(-1)
                          for j in range(k) for i in range(k) if i != j], 1).mean()
        return ce - 0.3 * kl

    assert_same_loss_and_gradients(model, batch, plain)


def test_prl_loss_equals_the_per_term_formula_values_and_gradients(prepared):
    """PRL's progressive CE computed in one call equals RecBole's CrossEntropyLoss applied
    term by term (last step at tau, the earlier steps at their own temperatures, weighted),
    plus the contrastive term: same value, same gradient for every parameter."""
    config, _dataset, train, _valid, _test = prepared
    model = build_with(config, train, rearec_mode="PRL", reasoning_steps=2, prl_pl_weight=0.7)
    batch = next(iter(train))

    def plain():
        steps, noisy = model.reason(batch["item_id_list"], batch["item_length"],
                                    noise=model.prl_noise_factor)
        logits = steps @ model.item_embedding.weight.t()                  # [B, 3, N]
        ce, target = torch.nn.CrossEntropyLoss(), batch["item_id"]
        taus = [0.07 * 5.0 ** 2, 0.07 * 5.0, 0.07]
        return (ce(logits[:, 2] / taus[2], target)
                + 0.7 * ce(torch.cat([logits[:, 0] / taus[0], logits[:, 1] / taus[1]]),
                           torch.cat([target, target]))
                + model.prl_cl_weight * in_batch_info_nce(noisy, steps[:, 1:], 0.07))

    assert_same_loss_and_gradients(model, batch, plain)


@pytest.mark.parametrize("overrides,message", [
    ({"rearec_mode": "CoT"}, "rearec_mode"),
    ({"reasoning_steps": -1}, "reasoning_steps"),
    ({"loss_type": "BPR"}, "loss_type: CE"),
])
def test_bad_config_is_refused_with_the_key(prepared, overrides, message):
    config, _dataset, train = prepared[0], prepared[1], prepared[2]
    with pytest.raises(ValueError, match=message):
        build_with(config, train, **overrides)


@pytest.mark.parametrize("mode", ["ERL", "PRL"])
def test_loss_falls_on_tiny_slice(tiny_root, workdir, mode):
    result = run("ReaRec", "tiny", saved=False, config_dict=tiny_config(
        tiny_root, workdir, epochs=8, stopping_step=100, learning_rate=0.01, rearec_mode=mode))
    losses = result["train_loss"]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.85 * losses[0]
    assert result["test_result"]["hit@10"] > 0.25          # random ranking: 10 / 40


def test_checkpoint_reloads_to_identical_predictions(tiny_root, workdir):
    result = run("ReaRec", "tiny", config_dict=tiny_config(
        tiny_root, workdir, epochs=2, rearec_mode="PRL"))
    assert evaluate_checkpoint(result["checkpoint"]) == result["test_result"]
    config, model, _dataset, _train, _valid, test = load_data_and_model(result["checkpoint"])
    again = load_data_and_model(result["checkpoint"])[1]
    assert config["rearec_mode"] == "PRL" and model.reason_pos_emb is not None
    inter = first_batch(test)
    with torch.no_grad():
        assert torch.equal(model.eval().full_sort_predict(inter),
                           again.eval().full_sort_predict(inter))
