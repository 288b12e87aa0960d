"""GBRDIN (Table 6 "Base") and GBR-DIN (with gbr_augment) on the tiny synthetic data set."""
from __future__ import annotations

import math

import pytest
import torch

from recbole_reaseq import registry
from recbole_reaseq.gbr.augment import augment
from recbole_reaseq.gbr.train import prepare, train
from recbole_reaseq.gbr.transform import GBRAugment
from recbole_reaseq.model.gbrdin import GBRDIN
from recbole_reaseq.quick_start import build_model, make_config, prepare_data, run
from tests.conftest import tiny_config
from tests.gbr import single_thread  # noqa: F401  (fixture)
from tests.model import TINY_KNOWLEDGE

from .gbr_helpers import fill_and_no_fill_artifacts, tiny_gbr

SMALL = {"embedding_size": 8, "mlp_hidden_size": [16, 8], "eval_protocol": "ctr",
         "reaseq_knowledge": TINY_KNOWLEDGE}


@pytest.fixture(scope="module")
def artifacts(tiny_root, tmp_path_factory):
    return fill_and_no_fill_artifacts(tiny_root, tmp_path_factory, "gbrdin")


def _config(tiny_root, workdir, artifacts, **kw):
    return tiny_config(tiny_root, workdir, reaseq_artifact_dir=artifacts, **dict(SMALL, **kw))


def test_registered_with_ctr_defaults(tiny_root, workdir, artifacts):
    assert registry.get_model("GBRDIN") is GBRDIN and registry.is_ours("GBRDIN")
    config = make_config("GBRDIN", "tiny", config_dict=tiny_config(tiny_root, workdir))
    assert config["eval_protocol"] == "ctr" and config["gbr_fill_slots"] == 10
    assert config["train_neg_sample_args"]["sample_num"] == 1
    assert not torch.is_anomaly_enabled()


def test_gbr_din_trains_loss_falls(tiny_root, workdir, artifacts):
    result = run("GBRDIN", "tiny", saved=False, config_dict=_config(
        tiny_root, workdir, artifacts, epochs=5, reaseq_transforms=["gbr_augment"]))
    losses = result["train_loss"]
    assert len(losses) == 5 and losses[-1] < losses[0]
    for key in ("auc", "gauc", "logloss"):
        assert math.isfinite(result["test_result"][key])


def test_base_equals_gbr_din_with_zero_fills(tiny_root, workdir, artifacts):
    base = run("GBRDIN", "tiny", saved=False, config_dict=_config(
        tiny_root, workdir, artifacts, epochs=2))
    zero = run("GBRDIN", "tiny", saved=False, config_dict=_config(
        tiny_root, workdir, artifacts, epochs=2, reaseq_transforms=["gbr_augment"],
        gbr_rule="T"))
    assert zero["train_loss"] == base["train_loss"]
    assert zero["test_result"] == base["test_result"]


@pytest.fixture(scope="module")
def prepared(tiny_root, tmp_path_factory, artifacts):
    work = str(tmp_path_factory.mktemp("gbrdin_loaders"))
    config = make_config("GBRDIN", "tiny", config_dict=_config(
        tiny_root, work, artifacts, reaseq_transforms=["gbr_augment"]))
    return (config,) + tuple(prepare_data(config))


def _check_rows(inter, with_fill):
    items, fidx = inter["gbr_items"], inter["gbr_fill_index"]
    for b in range(len(items)):
        observed = items[b][fidx[b] == 0][: int(inter["item_length"][b])]
        l = int(inter["item_length"][b])
        assert observed.tolist() == inter["item_id_list"][b, :l].tolist()
        assert int(inter["gbr_length"][b]) == l + int((fidx[b] > 0).sum())
    with_fill.append(int((fidx > 0).sum()))


def test_train_and_eval_loaders_are_augmented(prepared):
    _config_, _dataset, train_data, valid_data, test_data = prepared
    for loader in (train_data, valid_data, test_data):
        fills = []
        for batch in loader:
            inter = batch if not isinstance(batch, tuple) else batch[0]
            assert "gbr_items" in inter.interaction
            _check_rows(inter, fills)
        assert sum(fills) > 0


def test_insert_and_append_differ_only_through_positions(prepared):
    config, dataset, train_data, _valid, test_data = prepared
    inter = next(iter(test_data))[0]
    assert (inter["gbr_fill_index"] > 0).any()
    appended = GBRAugment(dict(config.final_config_dict, gbr_mode="append"))(
        dataset, inter.clone() if hasattr(inter, "clone") else inter[torch.arange(len(inter))])
    assert not torch.equal(appended["gbr_items"], inter["gbr_items"])
    for use_position, equal in ((False, True), (True, False)):
        config["position_embedding"] = use_position
        try:
            model = build_model(config, train_data).eval()
        finally:
            config["position_embedding"] = True
        with torch.no_grad():
            a, b = model.predict(inter), model.predict(appended)
        assert torch.allclose(a, b, atol=1e-6) == equal


def test_projecting_distinct_rows_equals_projecting_every_token(prepared, monkeypatch):
    """GBRDIN projects each distinct item / fill once per batch (map_unique); the naive path,
    item_proj over every token's representation, gives the same scores and gradients."""
    import recbole_reaseq.model.gbrdin as gbrdin_module

    config, _dataset, train_data, _valid, test_data = prepared
    model = build_model(config, train_data)
    batch = next(iter(train_data))
    assert (batch["gbr_fill_index"] > 0).any()

    def loss_and_grads():
        loss = model.calculate_loss(batch)
        return loss, torch.autograd.grad(loss, [model.item_proj.weight])[0]

    model.eval()                        # no dropout; BatchNorm on running statistics
    fast, fast_grad = loss_and_grads()
    monkeypatch.setattr(gbrdin_module, "map_unique",
                        lambda fn, idx: fn(idx.reshape(-1)).view(*idx.shape, -1))
    naive, naive_grad = loss_and_grads()
    assert fast.item() == pytest.approx(naive.item(), rel=1e-6)
    assert torch.allclose(fast_grad, naive_grad, rtol=1e-5, atol=1e-7)


def test_center_rows_by_hand():
    from recbole_reaseq.model.item_repr import center_rows

    # unit rows (0.6, 0.8), (0, 0) padding, (1, 0); mean of the real ones (0.8, 0.4)
    out = center_rows(torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]]).numpy())
    s = 1 / math.sqrt(5)                    # (-0.2, 0.4) / |(-0.2, 0.4)| = (-1, 2) / sqrt(5)
    assert torch.allclose(torch.from_numpy(out),
                          torch.tensor([[-s, 2 * s], [0.0, 0.0], [s, -2 * s]]), atol=1e-6)


def test_centred_gbr_din_reads_the_centred_reasoner(tiny_root, workdir, artifacts):
    """center_repr: the reasoner and GBRDIN see the same centred table (two implementations), and
    GBRDIN picks the augmentation of the centred reasoner (variant GBR-C-0-ctr)."""
    from recbole_reaseq.gbr.augment import StaleAugmentationError

    config_dict = _config(tiny_root, workdir, artifacts, reaseq_transforms=["gbr_augment"],
                          center_repr=True)
    config = make_config("GBRDIN", "tiny", config_dict=config_dict)
    with pytest.raises(StaleAugmentationError, match="GBR-C-0-ctr.*--center-repr"):
        prepare_data(config)                 # the gbr_augment transform loads the augmentation

    prep = prepare(tiny_gbr(tiny_root, artifacts, epochs=1, center_repr=True))
    assert prep.cfg.variant == "GBR-C-0-ctr"
    train(prep)
    manifest = augment(prep)
    _, train_data, _, _ = prepare_data(config)
    model = build_model(config, train_data)
    tokens = train_data.dataset.field2id_token["item_id"]
    local = {str(t): i for i, t in enumerate(prep.data.item_tokens)}
    rows = [local[str(t)] for t in tokens[1:]]
    assert torch.allclose(model.item_repr[1:], prep.item_repr[rows], atol=1e-6)
    assert torch.allclose(model.item_repr[1:].norm(dim=-1), torch.ones(len(rows)), atol=1e-5)
    uncentred = build_model(make_config("GBRDIN", "tiny", config_dict=dict(
        config_dict, center_repr=False)), train_data)
    assert not torch.allclose(model.item_repr, uncentred.item_repr, atol=1e-3)
    assert model.fill_repr.shape[0] == manifest["gaps"] + 1


def test_decode_fills_by_hand():
    from recbole_reaseq.gbr.augment import decode_fills

    items = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 1.0]])      # row 0: padding, never used
    fills = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    raw = decode_fills(fills, items, "raw")
    assert torch.allclose(raw, torch.tensor([[1.0, 0.0], [0.6, 0.8]]))
    assert torch.equal(decode_fills(fills, items, "nearest"), torch.tensor([[1.0, 0.0],
                                                                            [0.0, 1.0]]))
    # tau = 1: fill (1, 0) has cosines (1, 0) -> weights e/(e+1), 1/(e+1) on (1,0), (0,1)
    w = torch.tensor([math.e, 1.0]) / (math.e + 1)
    # fill (0.6, 0.8): cosines (0.6, 0.8)
    v = torch.softmax(torch.tensor([0.6, 0.8]), 0)
    expected = torch.stack([w / w.norm(), v / v.norm()])
    out = decode_fills(fills, items, "expected", temperature=1.0, chunk=1)
    assert torch.allclose(out, expected, atol=1e-6)
    with pytest.raises(ValueError, match="gbr_fill_decode='mean'"):
        decode_fills(fills, items, "mean")


@pytest.mark.parametrize("decode", ["expected", "nearest"])
def test_gbrdin_decodes_fills_onto_its_item_table(tiny_root, workdir, artifacts, decode):
    """gbr_fill_decode: the fill table equals a direct computation over GBRDIN's own item table
    (nearest: a row of it; expected: the softmax-weighted mean at the reasoner's temperature)."""
    from recbole_reaseq.gbr.augment import load_augmentation

    config = make_config("GBRDIN", "tiny", config_dict=_config(
        tiny_root, workdir, artifacts, reaseq_transforms=["gbr_augment"], gbr_fill_decode=decode))
    _, train_data, _, _ = prepare_data(config)
    model = build_model(config, train_data)
    raw = torch.nn.functional.normalize(torch.from_numpy(load_augmentation(config).fills), dim=-1)
    items = model.item_repr[1:]                                        # unit rows, no padding
    sims = raw @ items.T                                               # [G, N]
    if decode == "nearest":
        want = items[sims.argmax(1)]
    else:
        want = torch.nn.functional.normalize(torch.softmax(sims / 0.07, 1) @ items, dim=-1)
    assert torch.allclose(model.fill_repr[1:], want, atol=1e-5)
    assert torch.equal(model.fill_repr[0], torch.zeros(items.shape[1]))
    if decode == "nearest":                                            # every fill is an item
        assert torch.allclose((model.fill_repr[1:] @ items.T).max(1).values,
                              torch.ones(len(raw)), atol=1e-5)
