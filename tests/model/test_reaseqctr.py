"""ReaSeqCTR and its item representations on the tiny synthetic data set (conftest.py)."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from recbole.data.interaction import Interaction
from recbole.utils import init_seed

from recbole_reaseq.data.transforms import TrimPadding
from recbole_reaseq.evaluation.ctr import evaluate_ctr, score_candidates
from recbole_reaseq.knowledge.pipeline import artifact_paths
from recbole_reaseq.model import item_repr as IR
from recbole_reaseq.model import reaseqctr as RC
from recbole_reaseq.model.reaseqctr import ReaSeqCTR
from recbole_reaseq.quick_start import (build_trainer, load_data_and_model, make_config,
                                        prepare_data, run)
from tests.conftest import tiny_config

from . import TINY_KNOWLEDGE, shared_artifacts, single_thread  # noqa: F401  (fixture)

CTR_KEYS = ["auc", "gauc", "logloss", "hit@10", "ndcg@10"]
SMALL = {"embedding_size": 8, "hidden_size": 16, "n_heads": 2, "gsu_top_k": 3, "n_anchors": 3,
         "mlp_hidden_size": [16], "dropout_prob": 0.0}


@pytest.fixture(scope="module")
def prepared(tiny_root, tmp_path_factory):
    """(config, dataset, train, valid, test) with the session's shared artefacts."""
    work = str(tmp_path_factory.mktemp("reaseqctr"))
    config = make_config("ReaSeqCTR", "tiny", config_dict=tiny_config(
        tiny_root, work, eval_protocol="ctr", reaseq_knowledge=TINY_KNOWLEDGE,
        reaseq_artifact_dir=shared_artifacts(tiny_root, tmp_path_factory), **SMALL))
    return (config,) + tuple(prepare_data(config))


def build(config, dataset, **overrides):
    """A fresh model with ``overrides`` (config restored afterwards), seeded as build_model."""
    saved = {k: config[k] for k in overrides}
    for k, v in overrides.items():
        config[k] = v
    try:
        init_seed(config["seed"], config["reproducibility"])
        return ReaSeqCTR(config, dataset).eval()
    finally:
        for k, v in saved.items():
            config[k] = v


def first_test_batch(test):
    return next(iter(test))[0]


# ---------------------------------------------------------------------------------  item_repr
def test_item_representations_in_internal_id_order(prepared):
    config, dataset = prepared[0], prepared[1]
    state = torch.get_rng_state()
    reprs = IR.load_item_representations(config, dataset)
    assert torch.equal(torch.get_rng_state(), state)          # loading never moves the RNG
    paths = artifact_paths("tiny", config["reaseq_artifact_dir"])
    ids = json.loads(paths.ids("knowledge_emb").read_text())
    emb = np.load(paths.npy("knowledge_emb"))
    sid_ids = json.loads(paths.ids("sid_codes").read_text())
    codes = np.load(paths.npy("sid_codes"))
    tokens = dataset.field2id_token["item_id"]
    assert reprs.knowledge_emb.shape == (41, emb.shape[1]) and reprs.sid.shape == (41, 3)
    assert torch.equal(reprs.knowledge_emb[0], torch.zeros(emb.shape[1]))
    assert torch.equal(reprs.sid[0], torch.zeros(3, dtype=torch.long))
    for internal in (1, 17, 40):
        token = tokens[internal]
        assert torch.equal(reprs.knowledge_emb[internal], torch.from_numpy(emb[ids.index(token)]))
        assert reprs.sid[internal].tolist() == (codes[sid_ids.index(token)] + 2).tolist()
    assert reprs.missing == {"knowledge_emb": 0, "sid": 0}
    assert reprs.sid_vocab == [int(c) + 1 for c in reprs.sid.max(0).values]


def test_map_rows_fills_and_counts_missing_items():
    fake = SimpleNamespace(iid_field="item_id",
                           field2id_token={"item_id": np.array(["[PAD]", "a", "b", "c"])})
    out, missing = IR.map_rows(fake, ["c", "a", "zz"], np.array([[3, 3], [1, 1], [9, 9]]),
                               IR.SID_UNKNOWN)
    assert out.tolist() == [[1, 1], [1, 1], [1, 1], [3, 3]] and missing == 1   # 'b' unknown


def test_side_feature_columns_exact(prepared):
    dataset = prepared[1]
    side = IR.side_feature_columns(dataset, None, levels=3, n_buckets=10)
    assert list(side) == ["categories", "brand", "price"]
    tokens = dataset.field2id_token["item_id"]
    row = {t: i for i, t in enumerate(tokens)}
    price, _ = side["price"]
    assert price[row["i1"]].item() == 1 and price[row["i40"]].item() == 10   # prices 6 .. 45
    assert np.bincount(price[1:, 0].numpy()).tolist() == [0] + [4] * 10
    cats, vocab = side["categories"]
    i6 = cats[row["i6"]].tolist()                                 # "Beauty Hair_Care Sub0"
    assert [dataset.field2id_token["categories"][c] for c in i6] == ["Beauty", "Hair_Care", "Sub0"]
    assert vocab == [dataset.num("categories")] * 3
    brand, _ = side["brand"]
    assert dataset.field2id_token["brand"][brand[row["i7"], 0]] == "brand2"
    for codes, _ in side.values():
        assert (codes[0] == 0).all()


# ---------------------------------------------------------------------------------  model
def full_and_pointwise(model, inter, n_items):
    """(full_sort_predict [B, n_items], predict on every (row, item) pair [B, n_items])."""
    n_rows = len(inter)
    with torch.no_grad():
        full = model.full_sort_predict(inter).view(n_rows, -1)      # [B, n_items]
        rows = inter.repeat_interleave(n_items)
        rows.update(Interaction({"item_id": torch.arange(n_items).repeat(n_rows)}))
        point = model.predict(rows).view(n_rows, -1)
    return full, point


def test_predict_and_full_sort_agree(prepared, monkeypatch):
    config, dataset, _train, _valid, test = prepared
    model = build(config, dataset, full_sort_budget=60_000)        # 3-item chunks
    monkeypatch.setattr(RC, "_PREDICT_ROWS", 100)                   # several row slices
    inter = first_test_batch(test)
    n_rows = len(inter)
    full, point = full_and_pointwise(model, inter, dataset.item_num)
    assert full.shape == (n_rows, dataset.item_num)
    assert torch.allclose(full, point, atol=1e-6)
    assert ((point > 0) & (point < 1)).all()
    cands = torch.randint(1, dataset.item_num, (n_rows, 10))
    config["ctr_score_with_full_sort"] = True
    fast = score_candidates(model, inter, cands, dataset, config)
    config["ctr_score_with_full_sort"] = False
    assert torch.allclose(fast, score_candidates(model, inter, cands, dataset, config), atol=1e-6)


def test_serving_dedup_equals_naive_and_predict(prepared):
    """A serving request (one history, C candidates): the deduplicated K/V path, the naive path
    and predict on the same (user, item) pairs give the same probabilities (1e-6), and the dedup
    path projects only the unique retrieved items."""
    config, dataset, _train, _valid, test = prepared
    model = build(config, dataset)
    inter = first_test_batch(test)
    for row in range(4):
        seq, length = inter["item_id_list"][row:row + 1], inter["item_length"][row:row + 1]
        cands = torch.randint(1, dataset.item_num, (25,))
        dedup = model.serve(seq, length, cands, user=inter["user_id"][row:row + 1], kv="dedup")
        naive = model.serve(seq, length, cands, user=inter["user_id"][row:row + 1], kv="naive")
        rows = inter[[row]].repeat_interleave(len(cands))
        rows.update(Interaction({"item_id": cands}))
        with torch.no_grad():
            point = model.predict(rows)
        assert torch.allclose(dedup, naive, atol=1e-6) and torch.allclose(dedup, point, atol=1e-6)
        state = model.encode_user(inter["user_id"][row:row + 1], seq, length)
        idx, valid = model.retrieve(state, cands.view(1, -1))
        ids = model.retrieved_items(state, idx, valid)                  # [1, C, K]
        assert set(ids[valid].tolist()) <= set(seq[0, :int(length)].tolist())
        assert torch.unique(ids).numel() <= min(int(length) + 1, ids.numel())
    with pytest.raises(ValueError, match="kv must be one of"):
        model.serve(seq, length, cands, kv="fast")


def test_any_sequence_length_and_trim_padding(prepared):
    config, dataset, _train, _valid, test = prepared
    model = build(config, dataset)
    inter = first_test_batch(test)
    wide = Interaction({k: v for k, v in inter.interaction.items()})
    wide.update(Interaction({"item_id_list": F.pad(inter["item_id_list"], (0, 15)),
                             "timestamp_list": F.pad(inter["timestamp_list"], (0, 15))}))
    trimmed = TrimPadding(config)(dataset, wide)
    assert trimmed["item_id_list"].shape[1] == int(inter["item_length"].max()) + 1
    with torch.no_grad():
        ref = model.predict(inter)
        assert torch.allclose(model.predict(wide), ref, atol=1e-6)
        assert torch.allclose(model.predict(trimmed), ref, atol=1e-6)


def test_every_anchor_and_sid_embedding_in_batch_gets_gradient(prepared):
    config, dataset, train = prepared[0], prepared[1], prepared[2]
    model = build(config, dataset).train()
    batch = next(iter(train))
    model.calculate_loss(batch).backward()
    grad = model.compressor.anchors.grad                                   # [M, H]
    assert (grad.abs().sum(1) > 0).all()
    seq, length = batch["item_id_list"], batch["item_length"]
    real = seq[torch.arange(seq.shape[1]).unsqueeze(0) < length.unsqueeze(1)]
    items = torch.cat([real, batch["item_id"]]).unique()
    for level, table in enumerate(model.sid_embeddings):
        used = model.sid_codes[items, level].unique()
        row_grad = table.weight.grad.abs().sum(1)                           # [vocab]
        assert (row_grad[used] > 0).all(), f"level {level}"
        unused = torch.ones_like(row_grad, dtype=torch.bool)
        unused[used] = False
        assert (row_grad[unused] == 0).all()                                # incl. padding code 0


def test_loss_falls_over_a_few_steps(prepared):
    config, dataset, train = prepared[0], prepared[1], prepared[2]
    model = build(config, dataset).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    epochs = []
    for _ in range(6):
        losses = []
        for batch in train:
            optimizer.zero_grad()
            loss = model.calculate_loss(batch)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        epochs.append(sum(losses) / len(losses))
    assert all(math.isfinite(x) for x in epochs)
    assert epochs[-1] < 0.85 * epochs[0] and epochs[-1] < epochs[1], epochs


def _perturbed_loader(what: str):
    real = IR.load_item_representations

    def load(config, dataset, **kwargs):
        out = real(config, dataset, **kwargs)
        gen = torch.Generator().manual_seed(123)                            # never the global RNG
        if what == "knowledge" and out.knowledge_emb is not None:
            out.knowledge_emb = torch.randn(out.knowledge_emb.shape, generator=gen)
            out.knowledge_emb[0] = 0
        if what == "sid" and out.sid is not None:
            out.sid = out.sid.flip(0)                                       # other items' codes
            out.sid[0] = 0
        return out
    return load


def _outputs(config, dataset, batch, monkeypatch, perturb=None, **overrides):
    if perturb:
        monkeypatch.setattr(RC, "load_item_representations", _perturbed_loader(perturb))
    try:
        model = build(config, dataset, **overrides)
        with torch.no_grad():
            return model, model.predict(batch)
    finally:
        monkeypatch.setattr(RC, "load_item_representations", IR.load_item_representations)


@pytest.mark.parametrize("switch,prefixes,buffers,perturb", [
    ({"reaseq_pathways": ["compression"]}, ["esu."], ["knowledge_unit"], "knowledge"),
    ({"reaseq_pathways": ["retrieval"]}, ["compressor."], [], "unretrieved"),
    ({"use_sid": False}, ["sid_embeddings."], ["sid_codes"], "sid"),
    ({"use_item_id": False}, ["item_embedding."], [], None),
])
def test_ablation_switch_removes_its_pathway(prepared, monkeypatch, switch, prefixes, buffers,
                                             perturb):
    config, dataset, _train, _valid, test = prepared
    batch = first_test_batch(test)
    common = {"user_profile": "none"}           # the pooled profile reads the whole history too
    full, _ = _outputs(config, dataset, batch, monkeypatch, **common)
    ablated, out = _outputs(config, dataset, batch, monkeypatch, **common, **switch)
    names = [n for n, _ in ablated.named_parameters()]
    for prefix in prefixes:
        assert any(n.startswith(prefix) for n in dict(full.named_parameters()))
        assert not any(n.startswith(prefix) for n in names), prefix
    for name in buffers:
        assert name in dict(full.named_buffers()) and name not in dict(ablated.named_buffers())
    assert sum(p.numel() for p in ablated.parameters()) < sum(p.numel() for p in full.parameters())
    if perturb in ("knowledge", "sid"):
        _, same = _outputs(config, dataset, batch, monkeypatch, perturb, **common, **switch)
        _, base = _outputs(config, dataset, batch, monkeypatch, None, **common)
        _, moved = _outputs(config, dataset, batch, monkeypatch, perturb, **common)
        assert torch.equal(same, out)                        # ablated: independent of the input
        assert not torch.allclose(moved, base)               # full model: the input matters
    elif perturb == "unretrieved":
        # history items that the GSU does not retrieve only reach the model via the anchors
        with torch.no_grad():
            state = ablated.encode_user(batch["user_id"], batch["item_id_list"],
                                        batch["item_length"])
            sims = torch.einsum("bd,bld->bl", ablated.knowledge_unit[batch["item_id"]],
                                state["hist_knowledge"])
            idx, valid = RC.masked_topk(sims, state["mask"], ablated.top_k)
        keep = torch.zeros_like(state["mask"])
        for row in range(len(idx)):
            keep[row, idx[row][valid[row]]] = True
        swap = state["mask"] & ~keep                          # real but not retrieved
        assert swap.any()
        changed = Interaction(dict(batch.interaction))
        seq = batch["item_id_list"].clone()
        seq[swap] = seq[swap] % (dataset.item_num - 1) + 1     # other real items
        changed.update(Interaction({"item_id_list": seq}))
        with torch.no_grad():
            new_sims = torch.einsum("bd,bld->bl", ablated.knowledge_unit[batch["item_id"]],
                                    ablated.knowledge_unit[seq])
            new_idx, _ = RC.masked_topk(new_sims, state["mask"], ablated.top_k)
            same_retrieval = (new_idx == idx).all(1)            # rows whose top-K is unchanged
            assert same_retrieval.any()
            assert torch.equal(ablated.predict(changed)[same_retrieval], out[same_retrieval])
            moved = full.predict(changed)[same_retrieval & swap.any(1)]
            assert not torch.allclose(moved, full.predict(batch)[same_retrieval & swap.any(1)])


def test_bad_pathway_config_is_refused():
    with pytest.raises(ValueError, match="reaseq_pathways"):
        ReaSeqCTR._parse_pathways(["retrieval", "reasoning"])
    with pytest.raises(ValueError, match="reaseq_pathways"):
        ReaSeqCTR._parse_pathways([])
    assert ReaSeqCTR._parse_pathways("compression") == ("compression",)


def test_gsu_tie_break_older_or_recent(prepared):
    """Item 5 four times in a history, target 5: four exact cosine ties for K = 3 slots. ``older``
    keeps the first three positions, ``recent`` the last three (most recent first); a wrong value
    is refused with the key named."""
    config, dataset = prepared[:2]
    seq = torch.tensor([[5, 5, 5, 5, 7, 0]])                    # [B=1, L=6], length 5
    for tie, expected in (("older", [0, 1, 2]), ("recent", [3, 2, 1])):
        model = build(config, dataset, gsu_tie_break=tie)
        unit = model.knowledge_unit
        assert unit[5].norm() > 0.5 and float(unit[5] @ unit[7]) < 0.99   # 7 ranks below the ties
        with torch.no_grad():
            state = model.encode_user(torch.tensor([1]), seq, torch.tensor([5]))
            idx, valid = model.retrieve(state, torch.tensor([[5]]))       # [1, 1, K] x 2
        assert idx[0, 0].tolist() == expected and valid.all(), tie
    with pytest.raises(ValueError, match="gsu_tie_break"):
        build(config, dataset, gsu_tie_break="newest")


# ---------------------------------------------------------------------------------  end to end
def test_run_ctr_end_to_end_builds_artefacts_and_checkpoint_reloads(tiny_root, workdir):
    config = tiny_config(tiny_root, workdir, eval_protocol="ctr", epochs=2,
                         reaseq_knowledge=TINY_KNOWLEDGE, **SMALL)
    result = run("ReaSeqCTR", "tiny", config_dict=config)
    test = result["test_result"]
    for key in CTR_KEYS:
        assert math.isfinite(test[key])
    assert 0.0 < test["logloss"] < 5.0 and test["users"] == 60
    assert all(math.isfinite(x) for x in result["train_loss"])
    # the artefacts were built on demand into this run's reaseq_artifact_dir
    paths = artifact_paths("tiny", config["reaseq_artifact_dir"])
    assert paths.npy("knowledge_emb").is_file() and paths.npy("sid_codes").is_file()

    cfg, model, dataset, _train, _valid, test_data = load_data_and_model(result["checkpoint"])
    state = torch.load(result["checkpoint"], map_location="cpu")["state_dict"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    trainer = build_trainer(cfg, model, dataset)
    again, _ = evaluate_ctr(model.eval(), test_data, trainer.ctr_candidates, "test", cfg)
    assert dict(again) == test                         # same predictions -> same metrics
    inter = first_test_batch(test_data)
    _c2, model2, *_ = load_data_and_model(result["checkpoint"])
    with torch.no_grad():
        assert torch.equal(model.predict(inter), model2.eval().predict(inter))


def test_run_ranking_track_with_trim_padding(tiny_root, workdir, tmp_path_factory):
    result = run("ReaSeqCTR", "tiny", saved=False, config_dict=tiny_config(
        tiny_root, workdir, reaseq_knowledge=TINY_KNOWLEDGE, reaseq_transforms=["trim_padding"], eval_protocol="ranking",
        reaseq_artifact_dir=shared_artifacts(tiny_root, tmp_path_factory), **SMALL))
    test = result["test_result"]
    assert sorted(test) == sorted(f"{m}@{k}" for m in ("hit", "ndcg", "mrr") for k in (5, 10, 20))
    assert all(0.0 <= v <= 1.0 for v in test.values())
