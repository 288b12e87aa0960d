"""GBR-ReaSeqCTR: ReaSeqCTR reading GBR's augmented behaviour sequences (gbr_augment) on the tiny
synthetic data set (see the NOTEs of recbole_reaseq/model/reaseqctr.py)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from recbole.data.interaction import Interaction

from recbole_reaseq.evaluation.ctr import score_candidates
from recbole_reaseq.gbr.augment import StaleAugmentationError, load_augmentation
from recbole_reaseq.model import item_repr as IR
from recbole_reaseq.model import reaseqctr as RC
from recbole_reaseq.model.reaseqctr import ReaSeqCTR
from recbole_reaseq.quick_start import make_config, prepare_data, run
from tests.conftest import tiny_config
from tests.gbr.gbr_helpers import fill_and_no_fill_artifacts
from tests.model.test_reaseqctr import build, full_and_pointwise

from . import TINY_KNOWLEDGE, single_thread  # noqa: F401  (fixture)

SMALL = {"embedding_size": 8, "hidden_size": 16, "n_heads": 2, "gsu_top_k": 3, "n_anchors": 3,
         "mlp_hidden_size": [16], "dropout_prob": 0.0, "eval_protocol": "ctr",
         "reaseq_knowledge": TINY_KNOWLEDGE}
GBR = {"reaseq_transforms": ["gbr_augment"]}
FILL_PARAMS = {"fill_proj.weight", "fill_proj.bias"}


@pytest.fixture(scope="module")
def artifacts(tiny_root, tmp_path_factory):
    return fill_and_no_fill_artifacts(tiny_root, tmp_path_factory, "reaseqctr_gbr")


def _config(tiny_root, workdir, artifacts, **kw):
    return tiny_config(tiny_root, workdir, reaseq_artifact_dir=artifacts, **dict(SMALL, **kw))


@pytest.fixture(scope="module")
def prepared(tiny_root, tmp_path_factory, artifacts):
    """(config, dataset, train, valid, test) with gbr_augment (rule C) on every loader."""
    work = str(tmp_path_factory.mktemp("reaseqctr_gbr_loaders"))
    config = make_config("ReaSeqCTR", "tiny", config_dict=_config(tiny_root, work, artifacts,
                                                                  **GBR))
    return (config,) + tuple(prepare_data(config))


def batch_with_fills(loader) -> Interaction:
    """The first evaluation batch that holds fills (as the model sees it: transform applied)."""
    for batch in loader:
        inter = batch[0] if isinstance(batch, tuple) else batch
        if (inter["gbr_fill_index"] > 0).any():
            return inter
    raise AssertionError("no batch with fills")


def strip_fills(inter: Interaction, rows: torch.Tensor) -> Interaction:
    """``inter`` with the fills of ``rows`` [B] (bool) removed: those rows carry their observed
    history only, as the transform writes a row without fills."""
    width = inter["gbr_items"].shape[1]
    plain = F.pad(inter["item_id_list"], (0, width - inter["item_id_list"].shape[1]))  # [B, W]
    keep = rows.unsqueeze(1)                                                # [B, 1]
    return with_fields(inter,
                       gbr_items=torch.where(keep, plain, inter["gbr_items"]),
                       gbr_fill_index=torch.where(keep, 0, inter["gbr_fill_index"]),
                       gbr_is_fill=torch.where(keep, False, inter["gbr_is_fill"]),
                       gbr_length=torch.where(rows, inter["item_length"], inter["gbr_length"]))


def with_fields(inter: Interaction, **fields) -> Interaction:
    out = Interaction(dict(inter.interaction))
    out.update(Interaction(fields))
    return out


# ---------------------------------------------------------------------------------  parameters
def test_fill_projection_exists_only_with_gbr_augment(prepared):
    """gbr_augment adds exactly fill_proj + the fill_table buffer (one row per stored fill + the
    zero row); every other parameter is initialised exactly as in the plain model."""
    config, dataset = prepared[0], prepared[1]
    gbr = build(config, dataset)
    plain = build(config, dataset, reaseq_transforms=[])
    gbr_params, plain_params = dict(gbr.named_parameters()), dict(plain.named_parameters())
    assert set(gbr_params) - set(plain_params) == FILL_PARAMS
    assert set(plain_params) <= set(gbr_params)
    assert not any(n.startswith("fill_") for n in plain_params)
    assert gbr.fill_proj.weight.shape == (16, gbr.knowledge_unit.shape[1])   # [H, D]
    assert all(torch.equal(v, gbr_params[k]) for k, v in plain_params.items())
    gbr_buffers, plain_buffers = dict(gbr.named_buffers()), dict(plain.named_buffers())
    assert set(gbr_buffers) - set(plain_buffers) == {"fill_table"}
    aug = load_augmentation(config)
    table = gbr.fill_table                                                  # [G+1, D]
    assert table.shape == (len(aug.fills) + 1, aug.dim) and len(aug.fills) > 0
    assert torch.equal(table[0], torch.zeros(aug.dim))
    assert torch.allclose(table[1:], F.normalize(torch.from_numpy(aug.fills), dim=-1))
    assert "fill_table" in gbr.state_dict()                                 # persistent


# ---------------------------------------------------------------------------------  equivalence
def test_zero_fills_equal_plain_reaseqctr(tiny_root, workdir, artifacts):
    """Rule T with time_percentile 100 locates no gap: the augmented sequences (W = 10 + 10
    columns) hold exactly RecBole's histories, and training + evaluation are bit-identical."""
    cfg = dict(epochs=2, dropout_prob=0.1)                  # dropout: the RNG stream must match
    base = run("ReaSeqCTR", "tiny", saved=False, config_dict=_config(
        tiny_root, workdir, artifacts, **cfg))
    zero = run("ReaSeqCTR", "tiny", saved=False, config_dict=_config(
        tiny_root, workdir, artifacts, **cfg, **GBR, gbr_rule="T"))
    assert zero["train_loss"] == base["train_loss"]
    assert zero["test_result"] == base["test_result"]
    assert zero["valid_result"] == base["valid_result"]

    # the same on one batch, predict and full sort, with the widths differing (20 vs 10)
    config = make_config("ReaSeqCTR", "tiny", config_dict=_config(
        tiny_root, workdir, artifacts, **GBR, gbr_rule="T"))
    dataset, _train, _valid, test = prepare_data(config)
    inter = next(iter(test))[0]
    assert inter["gbr_items"].shape[1] == 20 and inter["item_id_list"].shape[1] == 10
    assert not (inter["gbr_fill_index"] > 0).any()
    gbr = build(config, dataset)
    plain = build(config, dataset, reaseq_transforms=[])
    with torch.no_grad():
        assert torch.equal(gbr.predict(inter), plain.predict(inter))
        assert torch.equal(gbr.full_sort_predict(inter), plain.full_sort_predict(inter))


# ---------------------------------------------------------------------------------  GSU
def test_gsu_retrieves_a_fill_most_similar_to_the_target_never_padding(prepared):
    """Hand-made history of 5 tokens: the 3 items most similar to the target (but not it), a fill
    whose vector IS the target's knowledge embedding and a fill opposite to it; then padding slots
    holding the target itself and the first fill again (cosine 1, but beyond gbr_length). The GSU
    ranks the tokens by cosine (the fill first, the opposite fill last) and never a padded slot."""
    config, dataset = prepared[0], prepared[1]
    model = build(config, dataset, gsu_top_k=6)
    unit = model.knowledge_unit                                             # [n_items, D]
    target = 5
    cos = unit @ unit[target]                                               # [n_items]
    close = [i for i in torch.argsort(cos, descending=True).tolist()
             if i not in (0, target) and cos[i] < 0.999][:3]                # most similar items
    model.fill_table[1] = unit[target]                                      # fill = target
    model.fill_table[2] = -unit[target]                                     # fill, opposite
    #                  pos:  0         1         2  3  4         5       6  7
    items = torch.tensor([[close[0], close[1], 0, 0, close[2], target, 0, 0]])
    fills = torch.tensor([[0, 0, 1, 2, 0, 0, 1, 0]])                        # [1, 8]
    length = torch.tensor([5])                                              # positions 0..4
    with torch.no_grad():
        state = model.encode_user(torch.tensor([1]), items, length, fill_index=fills)
        idx, valid = model.retrieve(state, torch.tensor([[target]]))        # [1, 1, K]
    assert state["mask"][0].tolist() == [True] * 5 + [False] * 3
    assert torch.allclose(state["hist_knowledge"][0, 2], unit[target])
    assert torch.allclose(state["hist_knowledge"][0, 3], -unit[target])
    assert valid[0, 0].tolist() == [True] * 5 + [False]                     # 5 real tokens, K=6
    assert idx[0, 0, valid[0, 0]].tolist() == [2, 0, 1, 4, 3]              # by cosine, by hand
    assert 5 not in idx[0, 0].tolist() and 6 not in idx[0, 0].tolist()
    model.top_k = 2                                                         # K < real tokens
    with torch.no_grad():
        idx2, valid2 = model.retrieve(state, torch.tensor([[target]]))
    assert idx2[0, 0].tolist() == [2, 0] and valid2.all()


def test_kv_paths_that_need_item_ids_refuse_fills_and_serve_is_plain_only(prepared):
    config, dataset, _train, _valid, test = prepared
    model = build(config, dataset)
    inter = batch_with_fills(test)
    with torch.no_grad():
        item_seq, fill_index, length = model._history(inter)
        state = model.encode_user(inter["user_id"], item_seq, length, fill_index=fill_index)
        for kv in ("naive", "dedup"):
            with pytest.raises(ValueError, match="kv='positions'"):
                model.score(state, inter["item_id"].view(-1, 1), kv=kv)
    with pytest.raises(NotImplementedError, match="gbr_augment"):
        model.serve(inter["item_id_list"][:1], inter["item_length"][:1], torch.tensor([1, 2]))
    plain = Interaction({k: v for k, v in inter.interaction.items() if not k.startswith("gbr_")})
    with pytest.raises(KeyError, match="gbr_items"):
        model.predict(plain)
    no_gbr = build(config, dataset, reaseq_transforms=[])
    with pytest.raises(ValueError, match="gbr_augment"):
        no_gbr.encode_user(inter["user_id"], item_seq, length, fill_index=fill_index)


# ---------------------------------------------------------------------------------  fills matter
@pytest.mark.parametrize("overrides", [
    {},
    {"reaseq_pathways": ["retrieval"], "gsu_top_k": 20, "user_profile": "none"},
    {"reaseq_pathways": ["compression"], "user_profile": "none"},
    {"reaseq_pathways": ["retrieval"], "gsu_top_k": 20, "user_profile": "pooled",
     "use_context": False},
], ids=["full", "retrieval", "compression", "profile"])
def test_fill_vectors_change_the_output_padding_does_not(prepared, overrides):
    """Each pathway (and the pooled profile) reads the fills: moving the fill vectors changes the
    rows that hold fills (and only those); rewriting the padded slots changes nothing."""
    config, dataset, _train, _valid, test = prepared
    model = build(config, dataset, **overrides)
    inter = batch_with_fills(test)
    inter = strip_fills(inter, torch.arange(len(inter)) % 3 == 0)          # some rows: no fill
    fill_index, length = inter["gbr_fill_index"], inter["gbr_length"]
    has_fill = (fill_index > 0).any(1)                                      # [B]
    assert has_fill.any() and (~has_fill).any()
    with torch.no_grad():
        ref = model.predict(inter)
        gen = torch.Generator().manual_seed(7)
        saved = model.fill_table.clone()
        model.fill_table[1:] = F.normalize(torch.randn(saved[1:].shape, generator=gen), dim=-1)
        moved = model.predict(inter)
        model.fill_table.copy_(saved)
        assert torch.equal(model.predict(inter), ref)

        # padding: slots at or beyond gbr_length get real items and fill rows
        width = inter["gbr_items"].shape[1]
        pad = torch.arange(width).unsqueeze(0) >= length.unsqueeze(1)       # [B, W]
        assert pad.any()
        junk_items = torch.randint(1, dataset.item_num, pad.shape, generator=gen)
        junk_fills = torch.randint(1, len(saved), pad.shape, generator=gen)
        padded = with_fields(inter,
                             gbr_items=torch.where(pad, junk_items, inter["gbr_items"]),
                             gbr_fill_index=torch.where(pad & (junk_items % 2 == 0), junk_fills,
                                                        fill_index))
        same = model.predict(padded)
    assert (moved[has_fill] - ref[has_fill]).abs().min() > 0
    assert (moved[has_fill] - ref[has_fill]).abs().max() > 1e-4
    assert torch.equal(moved[~has_fill], ref[~has_fill])
    assert torch.equal(same, ref)


def test_fill_projection_gets_gradient(prepared):
    config, dataset, train_data = prepared[0], prepared[1], prepared[2]
    model = build(config, dataset).train()
    for batch in train_data:
        if (batch["gbr_fill_index"] > 0).any():
            break
    else:
        raise AssertionError("no training batch with fills")
    model.calculate_loss(batch).backward()
    assert model.fill_proj.weight.grad.abs().sum() > 0
    assert model.fill_proj.bias.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------  scoring
def test_predict_equals_full_sort_with_fills(prepared, monkeypatch):
    config, dataset, _train, _valid, test = prepared
    model = build(config, dataset, full_sort_budget=60_000)                 # several item chunks
    monkeypatch.setattr(RC, "_PREDICT_ROWS", 100)                           # several row slices
    inter = batch_with_fills(test)
    n_rows = len(inter)
    full, point = full_and_pointwise(model, inter, dataset.item_num)
    assert full.shape == (n_rows, dataset.item_num)
    assert torch.allclose(full, point, atol=1e-6)
    cands = torch.randint(1, dataset.item_num, (n_rows, 10))
    config["ctr_score_with_full_sort"] = True
    try:
        fast = score_candidates(model, inter, cands, dataset, config)
    finally:
        config["ctr_score_with_full_sort"] = False
    assert torch.allclose(fast, score_candidates(model, inter, cands, dataset, config), atol=1e-6)


def test_context_is_the_observed_length(prepared):
    """The history-length context counts observed items (= item_length), not items + fills."""
    config, dataset, _train, _valid, test = prepared
    model = build(config, dataset)
    inter = batch_with_fills(test)
    with torch.no_grad():
        item_seq, fill_index, length = model._history(inter)
        state = model.encode_user(inter["user_id"], item_seq, length, fill_index=fill_index)
    assert (length > inter["item_length"]).any()
    expected = model.length_embedding(inter["item_length"].clamp(0, model.max_seq_length))
    assert torch.equal(state["context"], expected)


# ---------------------------------------------------------------------------------  training
def test_gbr_reaseqctr_trains_loss_falls(tiny_root, workdir, artifacts):
    # 8 epochs: after 5 the fall was 0.83 or 0.86 of the first epoch's loss depending on which
    # (equally valid) tiny reasoner wrote the fills, too close to the bound below
    result = run("ReaSeqCTR", "tiny", saved=False, config_dict=_config(
        tiny_root, workdir, artifacts, epochs=8, learning_rate=0.01, **GBR))
    losses = result["train_loss"]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.85 * losses[0] and losses[-1] < losses[1], losses
    for key in ("auc", "gauc", "logloss"):
        assert math.isfinite(result["test_result"][key])


# ---------------------------------------------------------------------------------  center_repr
def test_center_repr_centres_only_the_knowledge_table(prepared):
    config, dataset = prepared[0], prepared[1]
    plain = build(config, dataset, reaseq_transforms=[])
    centred = build(config, dataset, reaseq_transforms=[], center_repr=True)
    raw = IR.load_item_representations(config, dataset, sid=False).knowledge_emb.numpy()
    expected = torch.from_numpy(IR.center_rows(raw))                        # row 0 stays 0
    assert torch.allclose(centred.knowledge_unit, expected, atol=1e-6)
    assert not torch.allclose(centred.knowledge_unit, plain.knowledge_unit, atol=1e-3)
    assert torch.equal(centred.sid_codes, plain.sid_codes)
    assert all(torch.equal(v, dict(centred.named_parameters())[k])
               for k, v in plain.named_parameters())
    # with gbr_augment it needs the centred reasoner's augmentation (variant GBR-C-0-ctr)
    config["center_repr"] = True
    try:
        with pytest.raises(StaleAugmentationError, match="GBR-C-0-ctr.*--center-repr"):
            ReaSeqCTR(config, dataset)
    finally:
        config["center_repr"] = False
