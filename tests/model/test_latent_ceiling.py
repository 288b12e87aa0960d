"""benchmarks/latent_ceiling.py: the views it scores are the models' own building blocks, and the
oracle / table rows are exact on hand-made per-user metrics."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.latent_ceiling import latent_views, oracle, rows_for
from recbole_reaseq.quick_start import make_config, prepare_data
from tests.conftest import tiny_config

from . import build_with, first_batch, single_thread  # noqa: F401  (fixture)


@pytest.mark.parametrize("model_name,overrides", [
    ("ReaRec", {"rearec_mode": "ERL"}), ("ReaRec", {"rearec_mode": "PRL"}),
    ("PLR", {"plr_fast_thinking": True}), ("PLR", {"plr_fast_thinking": False})])
def test_views_rebuild_the_models_own_output(model_name, overrides, tiny_root, tmp_path):
    """ERL's output = the mean of its step views, PRL's = the last step, PLR's = the gate's
    mixture of h_0 (with fast thinking) and the streams; step 0 / h0 = SASRec's encoder state."""
    config = make_config(model_name, "tiny", config_dict=tiny_config(tiny_root, str(tmp_path),
                                                                     n_heads=2))
    _dataset, train, _valid, test = prepare_data(config)
    model = build_with(config, train, **overrides).eval()
    inter = first_batch(test)
    seq, length = inter["item_id_list"], inter["item_length"]
    with torch.no_grad():
        names, views = latent_views(model, seq, length)                    # [B, V, H]
        own = model(seq, length)                                          # [B, H]
        encoder = super(type(model), model).forward(seq, length)          # SASRec's h_0
    assert torch.allclose(views[:, 0], encoder, atol=1e-6)
    if model_name == "ReaRec":
        assert names == ["step 0", "step 1", "step 2"]
        expected = views.mean(1) if overrides["rearec_mode"] == "ERL" else views[:, -1]
    else:
        assert names == ["h0", "stream 1", "stream 2", "stream 3", "stream 4"]
        candidates = views if overrides["plr_fast_thinking"] else views[:, 1:]
        expected, _ = model.mixture(candidates)
    assert torch.allclose(own, expected, atol=1e-6)


def test_oracle_and_rows_hand_computed():
    views = {"own": {"ndcg@10": np.array([0.5, 0.0, 0.2]), "hit@10": np.array([1., 0., 1.])},
             "step 0": {"ndcg@10": np.array([0.4, 0.3, 0.0]), "hit@10": np.array([1., 1., 0.])},
             "step 1": {"ndcg@10": np.array([0.6, 0.0, 0.1]), "hit@10": np.array([1., 0., 1.])}}
    assert oracle(np.array([[0.4, 0.3, 0.0], [0.6, 0.0, 0.1]])).tolist() == [0.6, 0.3, 0.1]
    base = {"ndcg@10": np.array([0.1, 0.1, 0.4]), "hit@10": np.array([1., 1., 1.])}
    rows = rows_for("M", 1, views, base, cosine=(0.25, 0.5))
    assert [r["view"] for r in rows] == ["own", "step 0", "step 1", "oracle over 2"]
    top = rows[-1]                          # the oracle ignores "own": [0.6, 0.3, 0.1], [1, 1, 1]
    assert top["ndcg@10"] == pytest.approx(1.0 / 3) and top["hit@10"] == 1.0
    assert top["ndcg@10 / own"] == pytest.approx((1.0 / 3) / (0.7 / 3))
    assert top["ndcg@10 / SASRec"] == pytest.approx((1.0 / 3) / 0.2)
    assert rows[0]["ndcg@10 / own"] == 1.0
    assert [r["cosine: all views"] for r in rows] == [None, None, None, 0.25]
    assert [r["cosine: reasoning outputs"] for r in rows] == [None, None, None, 0.5]
