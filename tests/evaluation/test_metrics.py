import numpy as np
import pytest
import torch
from recbole.evaluator import Evaluator
from recbole.evaluator.collector import DataStruct
from sklearn.metrics import log_loss, roc_auc_score

from recbole_reaseq.evaluation.ctr import ctr_metrics_from_scores
from recbole_reaseq.evaluation.metrics import per_user_auc, topk_struct

CONFIG = {"ctr_metrics": ["AUC", "GAUC_V", "LogLoss", "Hit", "NDCG"], "ctr_topk": [2],
          "metric_decimal_place": 6}


def test_per_user_auc_hand_computed():
    # user 0: positive 0.9 beats 0.8 and 0.1, loses to 0.95 -> 2/3
    # user 1: positive 0.5 ties 0.5 (counts 1/2) and beats 0.2 -> 1.5/2 = 0.75
    # user 2: only negatives -> skipped
    scores = np.array([0.9, 0.8, 0.95, 0.1, 0.5, 0.5, 0.2, 0.3, 0.4])
    labels = np.array([1, 0, 0, 0, 1, 0, 0, 0, 0])
    groups = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2])
    ids, aucs = per_user_auc(scores, labels, groups)
    assert ids.tolist() == [0, 1]
    assert aucs.tolist() == pytest.approx([2 / 3, 0.75], abs=1e-12)


def test_per_user_auc_equals_sklearn_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=600).astype(float)   # many ties
    labels = (rng.random(600) < 0.3).astype(int)
    groups = rng.integers(0, 20, size=600)
    ids, aucs = per_user_auc(scores, labels, groups)
    expected = [roc_auc_score(labels[groups == g], scores[groups == g]) for g in ids]
    assert aucs == pytest.approx(expected, abs=1e-12)


def test_gauc_v_registered_with_recbole_evaluator():
    rng = np.random.default_rng(1)
    scores = rng.random(300)
    labels = np.zeros(300)
    labels[::10] = 1
    uid = np.repeat(np.arange(30), 10)
    struct = DataStruct()
    struct.set("rec.score", torch.tensor(scores, dtype=torch.float64))
    struct.set("data.label", torch.tensor(labels))
    struct.set("data.uid", torch.tensor(uid))
    result = Evaluator({"metrics": ["GAUC_V", "AUC", "LogLoss"],
                        "metric_decimal_place": 12}).evaluate(struct)
    per_user = [roc_auc_score(labels[uid == u], scores[uid == u]) for u in range(30)]
    assert result["gauc"] == pytest.approx(np.mean(per_user), abs=1e-10)
    assert result["auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-10)
    assert result["logloss"] == pytest.approx(log_loss(labels, scores), abs=1e-10)


def test_gauc_v_without_uid_is_a_clear_error():
    struct = DataStruct()
    struct.set("rec.score", torch.rand(4))
    struct.set("data.label", torch.tensor([1.0, 0, 0, 0]))
    with pytest.raises(KeyError, match="data.uid"):
        Evaluator({"metrics": ["GAUC_V"], "metric_decimal_place": 6}).evaluate(struct)


def test_topk_struct_layout():
    out = topk_struct(torch.tensor([0, 2, 1]), k=2)
    assert out.tolist() == [[1, 0, 1], [0, 0, 1], [0, 1, 1]]


def test_ctr_metrics_hand_computed():
    # column 0 is the positive; 3 users x 4 candidates (probabilities already)
    scores = torch.tensor([[0.9, 0.1, 0.2, 0.3],     # rank 0, auc 1
                           [0.5, 0.6, 0.5, 0.1],     # ties count against: rank 2; auc 1.5/3
                           [0.2, 0.3, 0.4, 0.5]])    # rank 3, auc 0
    cold = np.array([True, False, False])
    result, per_user = ctr_metrics_from_scores(scores, True, CONFIG,
                                               {"cold": cold, "hot": ~cold})
    assert per_user["rank"].tolist() == [0, 2, 3]
    assert per_user["auc"].tolist() == pytest.approx([1.0, 0.5, 0.0])
    assert result["gauc"] == pytest.approx(0.5)
    assert result["hit@2"] == pytest.approx(1 / 3, abs=1e-6)
    assert result["ndcg@2"] == pytest.approx(1 / 3, abs=1e-6)
    labels = np.tile([1, 0, 0, 0], 3)
    assert result["auc"] == pytest.approx(roc_auc_score(labels, scores.reshape(-1)), abs=1e-6)
    assert result["logloss"] == pytest.approx(log_loss(labels, scores.reshape(-1)), abs=1e-6)
    assert (result["cold/gauc"], result["hot/gauc"]) == pytest.approx((1.0, 0.25))
    assert (result["cold/users"], result["hot/users"], result["users"]) == (1, 2, 3)


def test_ctr_metrics_sigmoid_for_score_models():
    logits = torch.tensor([[2.0, -1.0, 0.0]])
    result, _ = ctr_metrics_from_scores(logits, False, CONFIG)
    probs = torch.sigmoid(logits).reshape(-1).numpy()
    assert result["logloss"] == pytest.approx(log_loss([1, 0, 0], probs), abs=1e-6)


def test_ctr_valid_subset_is_fixed_and_test_uses_everyone(tiny_root, workdir):
    from recbole_reaseq.data.candidates import load_or_build_candidates
    from recbole_reaseq.evaluation.ctr import evaluate_ctr
    from recbole_reaseq.quick_start import build_model, make_config, prepare_data
    from tests.conftest import tiny_config

    config = make_config("DIN", "tiny", config_dict=tiny_config(
        tiny_root, workdir, eval_protocol="ctr", ctr_valid_max_users=20))
    dataset, train, valid, test = prepare_data(config)
    cands = load_or_build_candidates(config, dataset)
    model = build_model(config, train)
    first, users_a = evaluate_ctr(model, valid, cands, "valid", config)
    again, users_b = evaluate_ctr(model, valid, cands, "valid", config)
    assert first["users"] == 20 and first == again
    assert np.array_equal(users_a["user_id"], users_b["user_id"])
    expected = cands.user_ids[cands.valid_subset(20, config["ctr_candidate_seed"])]
    assert sorted(users_a["user_id"].tolist()) == sorted(expected.tolist())
    full, _ = evaluate_ctr(model, test, cands, "test", config)
    assert full["users"] == 60


def test_per_user_topk_hand_computed():
    from recbole_reaseq.evaluation.metrics import per_user_topk

    # ranks 0..3 hit flags, then the number of positives
    topk = np.array([[0, 1, 0, 0, 1],        # one positive at rank 1
                     [0, 0, 0, 0, 1],        # missed
                     [1, 0, 1, 0, 2]])       # two positives, at ranks 0 and 2
    out = per_user_topk(topk, ks=(2, 4))
    d = 1 / np.log2([2, 3, 4, 5])
    np.testing.assert_allclose(out["hit@2"], [1, 0, 1])
    np.testing.assert_allclose(out["mrr@4"], [0.5, 0, 1])
    np.testing.assert_allclose(out["recall@2"], [1, 0, 0.5])
    np.testing.assert_allclose(out["ndcg@2"], [d[1] / d[0], 0, d[0] / (d[0] + d[1])])
    np.testing.assert_allclose(out["ndcg@4"], [d[1] / d[0], 0, (d[0] + d[2]) / (d[0] + d[1])])
    with pytest.raises(ValueError, match="topk >= 5"):
        per_user_topk(topk, ks=(5,))


def test_per_user_topk_means_equal_recbole_metrics():
    from recbole_reaseq.evaluation.metrics import per_user_topk

    rng = np.random.default_rng(0)
    hits = rng.random((50, 20)) < 0.15
    pos_len = np.maximum(hits.sum(1), 1) + rng.integers(0, 2, 50)
    topk = np.concatenate([hits, pos_len[:, None]], 1).astype(np.int64)
    struct = DataStruct()
    struct.set("rec.topk", torch.from_numpy(topk))
    recbole = Evaluator({"metrics": ["Hit", "Recall", "MRR", "NDCG"], "topk": [10, 20],
                         "metric_decimal_place": 10}).evaluate(struct)
    mine = per_user_topk(topk, ks=(10, 20))
    for key, value in recbole.items():
        assert mine[key].mean() == pytest.approx(value, abs=1e-9), key
