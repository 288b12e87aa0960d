"""Tests for recbole_reaseq.knowledge.quantize (RQ-VAE, code statistics, disambiguation)."""
import math

import numpy as np
import pytest
import torch

from recbole_reaseq.knowledge.quantize import (
    MLP,
    RQVAE,
    RQVAEConfig,
    code_report,
    collision_groups,
    disambiguate,
    kmeans,
    reconstruction_error,
)


def planted_clusters(n_per: int = 50, n_clusters: int = 8, dim: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim)) * 3.0  # pairwise distance ~ 3 * sqrt(2 * 32)
    labels = np.repeat(np.arange(n_clusters), n_per)
    x = centres[labels] + 0.1 * rng.standard_normal((labels.size, dim))
    return x.astype(np.float32), labels


def fit_planted(seed: int = 0):
    x, labels = planted_clusters()
    torch.manual_seed(seed)
    model = RQVAE(RQVAEConfig(in_dim=32, latent_dim=16, n_levels=2, codebook_size=8,
                              dead_code_steps=20))
    history = model.fit(x, epochs=40, batch_size=100, lr=3e-3, seed=seed)
    return model, history, x, labels


@pytest.fixture(scope="module")
def planted_fit():
    return fit_planted(0)


def test_rqvae_recovers_planted_clusters_and_loss_falls(planted_fit):
    model, history, x, labels = planted_fit
    codes = model.encode(x)
    assert codes.dtype == torch.long and codes.shape == (400, 2)
    first = codes[:, 0].numpy()
    # first level is a bijection with the planted clusters: 8 (label, code) pairs, 8 codes
    pairs = set(zip(labels.tolist(), first.tolist()))
    assert len(pairs) == 8 and len(set(first.tolist())) == 8
    assert [h["epoch"] for h in history] == [float(e) for e in range(40)]
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    assert history[-1]["recon"] < history[0]["recon"]
    rep = model.report(codes, x)
    assert rep["utilisation"][0] == 1.0
    assert rep["entropy_norm"][0] == pytest.approx(1.0)  # 8 equal clusters over K = 8
    assert rep["recon_rel"] < 0.1
    assert rep["max_group_size"] >= 1 and 0.0 <= rep["collision_rate"] <= 1.0


def test_fit_is_deterministic(planted_fit):
    m1, h1, x, _ = planted_fit
    m2, h2, _, _ = fit_planted(0)
    assert torch.equal(m1.encode(x), m2.encode(x))
    assert h1 == h2


def test_mlp_adapter_shapes_and_decode():
    torch.manual_seed(0)
    cfg = RQVAEConfig(in_dim=12, latent_dim=4, hidden_dims=(8,), n_levels=3, codebook_size=5)
    model = RQVAE(cfg)
    linears = [m for m in model.encoder.net if isinstance(m, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(12, 8), (8, 4)]
    linears = [m for m in model.decoder.net if isinstance(m, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(4, 8), (8, 12)]
    assert len(MLP([3, 2]).net) == 1  # linear adapter: no activation
    x = torch.randn(20, 12)
    model.fit(x, epochs=2, batch_size=10, lr=1e-3, seed=0)
    codes = model.encode(x)
    assert codes.shape == (20, 3) and int(codes.max()) < 5
    assert model.decode(codes).shape == (20, 12)
    with pytest.raises(ValueError, match="drop the disambiguation column"):
        model.decode(disambiguate(codes))
    with pytest.raises(ValueError, match="in_dim"):
        model.encode(torch.randn(3, 11))


def test_kmeans_recovers_centres():
    x, labels = planted_clusters(n_per=20, n_clusters=4, dim=5, seed=1)
    c = kmeans(torch.from_numpy(x), 4, iters=10, generator=torch.Generator().manual_seed(0))
    true = np.stack([x[labels == k].mean(0) for k in range(4)])
    d = ((c.numpy()[:, None, :] - true[None]) ** 2).sum(-1)  # [4, 4]
    assert sorted(d.argmin(1).tolist()) == [0, 1, 2, 3]
    np.testing.assert_allclose(np.sort(d.min(1)), 0.0, atol=1e-8)
    # fewer points than codes: every point is a centroid
    few = kmeans(torch.eye(3), 5, generator=torch.Generator().manual_seed(0))
    assert few.shape == (5, 3) and torch.equal(few[:3], torch.eye(3))


def test_dead_code_is_reseeded():
    torch.manual_seed(0)
    cfg = RQVAEConfig(in_dim=4, latent_dim=4, n_levels=1, codebook_size=4, dead_code_steps=3)
    model = RQVAE(cfg)
    x = torch.randn(32, 4)
    gen = torch.Generator().manual_seed(0)
    vq = model.rq.levels[0]
    with torch.no_grad():
        model.rq.init_kmeans(model.encoder(x), generator=gen)
        vq.codebook.data[3] = 1e3  # artificially dead: never the nearest code
    before = vq.codebook.detach().clone()
    model.train()
    for step in (1, 2, 3):
        codes = model(x, gen)["codes"]
        assert 3 not in codes[:, 0].tolist() and vq.last_reseeded == 0
        assert int(vq.unused_steps[3]) == step
    codes = model(x, gen)["codes"]  # unused for 3 steps -> re-seeded before assignment
    assert vq.last_reseeded == 1
    z = model.encoder(x).detach()
    new = vq.codebook.detach()[3]
    assert float((z - new).abs().max(1).values.min()) == 0.0  # exactly one current residual
    assert torch.equal(vq.codebook.detach()[:3], before[:3])  # live codes untouched
    assert 3 in codes[:, 0].tolist() and int(vq.unused_steps[3]) == 0


def test_dead_code_reseeding_can_be_disabled():
    torch.manual_seed(0)
    model = RQVAE(RQVAEConfig(in_dim=4, latent_dim=4, n_levels=1, codebook_size=4,
                              dead_code_steps=0))
    x = torch.randn(16, 4)
    vq = model.rq.levels[0]
    with torch.no_grad():
        model.rq.init_kmeans(model.encoder(x))
        vq.codebook.data[3] = 1e3
    model.train()
    for _ in range(5):
        model(x)
    assert float(vq.codebook.detach()[3, 0]) == 1e3 and int(vq.unused_steps[3]) == 5


HAND_CODES = [[0, 1], [0, 1], [1, 2], [2, 3], [0, 1], [1, 0]]


def test_code_report_hand_made():
    rep = code_report(torch.tensor(HAND_CODES), codebook_size=4)
    assert rep["n_items"] == 6
    # level 0: counts {0: 3, 1: 2, 2: 1}, code 3 unused; level 1: counts {1: 3, 0: 1, 2: 1, 3: 1}
    assert rep["utilisation"] == [0.75, 1.0]
    h0 = 0.5 * math.log(2) + math.log(3) / 3 + math.log(6) / 6
    h1 = 0.5 * math.log(2) + 0.5 * math.log(6)
    assert rep["entropy"] == pytest.approx([h0, h1], abs=1e-12)
    assert rep["entropy_norm"] == pytest.approx([h0 / math.log(4), h1 / math.log(4)], abs=1e-12)
    # full codes: (0,1) x3 -> items 0,1,4 collide; (1,2), (2,3), (1,0) unique
    assert rep["collision_rate"] == 0.5
    assert rep["n_unique"] == 4
    assert rep["max_group_size"] == 3
    group, sizes = collision_groups(HAND_CODES)
    assert group.tolist() == [0, 0, 2, 3, 0, 1] and sizes.tolist() == [3, 1, 1, 1]
    with pytest.raises(ValueError, match="codebook_size"):
        code_report(HAND_CODES, codebook_size=3)


def test_disambiguate_hand_made():
    out = disambiguate(torch.tensor(HAND_CODES))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.long
    assert out.tolist() == [[0, 1, 0], [0, 1, 1], [1, 2, 0], [2, 3, 0], [0, 1, 2], [1, 0, 0]]
    rep = code_report(out, codebook_size=4)
    assert rep["collision_rate"] == 0.0 and rep["max_group_size"] == 1
    np_out = disambiguate(np.array([[5], [5], [5], [1]]))
    assert isinstance(np_out, np.ndarray)
    assert np_out.tolist() == [[5, 0], [5, 1], [5, 2], [1, 0]]
    assert disambiguate(np.zeros((0, 2), dtype=np.int64)).shape == (0, 3)


def test_reconstruction_error_exact():
    err = reconstruction_error([[1.0, 2.0], [3.0, 4.0]], [[1.0, 2.0], [3.0, 2.0]])
    assert err == {"recon_mse": 1.0, "recon_rel": 4.0 / 30.0}


def test_config_validation():
    with pytest.raises(ValueError, match="beta"):
        RQVAEConfig(beta=-1.0)
    with pytest.raises(ValueError, match="codebook_size"):
        RQVAEConfig(codebook_size=0)
