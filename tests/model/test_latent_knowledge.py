"""ReaRec / PLR with ReaSeq knowledge embeddings as item features (``knowledge_features``).

The tiny synthetic data set (conftest.py) with the tiny knowledge artefacts of ``__init__.py``.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from recbole_reaseq import registry
from recbole_reaseq.model.item_repr import load_item_representations
from recbole_reaseq.model.layers import KnowledgeItemEmbedding, knowledge_item_table
from recbole_reaseq.quick_start import (evaluate_checkpoint, load_data_and_model, make_config,
                                        prepare_data, run)
from tests.conftest import tiny_config

from . import TINY_KNOWLEDGE, build_with, first_batch, shared_artifacts, single_thread  # noqa: F401

# (model, overrides): the variants of suites/latent_reasoning_knowledge_beauty.yaml (and PRL)
VARIANTS = {
    "ReaRec-ERL": ("ReaRec", {"rearec_mode": "ERL"}),
    "ReaRec-PRL": ("ReaRec", {"rearec_mode": "PRL"}),
    "PLR": ("PLR", {}),
}
# the parameters each model adds to SASRec's (knowledge off); reasoning_steps 2 by default
EXTRA_PARAMETERS = {
    "ReaRec": {"reason_pos_emb.weight"},
    "PLR": {"trigger_tokens.weight", "reason_pos_emb.weight", "mixture.gate.weight",
            "mixture.gate.bias"},
}
KNOWLEDGE_KEYS = {"item_embedding.knowledge_emb", "item_embedding.knowledge_proj.weight"}


def _config(tiny_root, tmp_path_factory, workdir, **overrides):
    return tiny_config(tiny_root, workdir, n_heads=2, reaseq_knowledge=TINY_KNOWLEDGE,
                       reaseq_artifact_dir=shared_artifacts(tiny_root, tmp_path_factory),
                       **overrides)


@pytest.fixture(scope="module")
def prepared(tiny_root, tmp_path_factory):
    """{model: (config, dataset, train, valid, test)}, knowledge off (the YAML default)."""
    out = {}
    for model in ("ReaRec", "PLR"):
        work = str(tmp_path_factory.mktemp(f"latent_knowledge_{model}"))
        config = make_config(model, "tiny",
                             config_dict=_config(tiny_root, tmp_path_factory, work))
        out[model] = (config,) + tuple(prepare_data(config))
    return out


def _variant(prepared, name, **overrides):
    """(config, dataset, train, test, model built with the variant's and ``overrides``)."""
    model_name, variant = VARIANTS[name]
    config, dataset, train, _valid, test = prepared[model_name]
    return config, dataset, train, test, build_with(config, train, **variant, **overrides)


def _as_id_only(state):
    """A knowledge model's state dict in the ID-only model's names (knowledge entries dropped)."""
    return {key.replace("item_embedding.id_embedding.", "item_embedding."): value
            for key, value in state.items() if key not in KNOWLEDGE_KEYS}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_off_by_default_adds_nothing(prepared, name):
    model_name = VARIANTS[name][0]
    config, dataset = prepared[model_name][:2]
    assert config["knowledge_features"] is False and config["knowledge_field"] == "knowledge_emb"
    model = _variant(prepared, name)[-1]
    sasrec = registry.get_model("SASRec")(config, dataset)
    assert model.knowledge_features is False
    assert type(model.item_embedding) is nn.Embedding
    names = {key for key, _ in model.named_parameters()}
    assert names == {key for key, _ in sasrec.named_parameters()} | EXTRA_PARAMETERS[model_name]
    assert dict(model.named_buffers()).keys() == dict(sasrec.named_buffers()).keys()
    assert set(model.state_dict()) == names | set(dict(sasrec.named_buffers()))
    # off, the knowledge artefacts are not even read: a bad knowledge_field goes unnoticed
    _variant(prepared, name, knowledge_field="no_such_embedding")


@pytest.mark.parametrize("name", list(VARIANTS))
def test_starts_as_id_only_model_and_knowledge_projection_gets_gradient(prepared, name):
    _config, dataset, train, test, off = _variant(prepared, name)
    on = _variant(prepared, name, knowledge_features=True)[-1]          # same seed
    assert on.knowledge_features is True
    table = on.item_embedding
    assert isinstance(table, KnowledgeItemEmbedding)
    assert set(on.state_dict()) == ((set(off.state_dict()) - {"item_embedding.weight"})
                                    | {"item_embedding.id_embedding.weight"} | KNOWLEDGE_KEYS)
    # the same weights as the ID-only model, and the frozen, unit-row knowledge buffer
    theirs, ours = off.state_dict(), _as_id_only(on.state_dict())
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[key], theirs[key]) for key in ours)
    knowledge = table.knowledge_emb
    assert knowledge.shape[0] == dataset.item_num and not knowledge.requires_grad
    assert "knowledge_emb" in dict(table.named_buffers())
    assert torch.equal(knowledge[0], torch.zeros(knowledge.shape[1]))   # padding
    assert torch.allclose(knowledge[1:].norm(dim=1), torch.ones(dataset.item_num - 1))
    assert table.knowledge_proj.bias is None
    assert table.knowledge_proj.weight.shape == (on.hidden_size, knowledge.shape[1])
    assert torch.equal(table.knowledge_proj.weight, torch.zeros_like(table.knowledge_proj.weight))
    batch, inter = next(iter(train)), first_batch(test)
    with torch.no_grad():                                  # zero projection: the ID-only model
        on.eval(), off.eval()
        assert torch.equal(on.full_sort_predict(inter), off.full_sort_predict(inter))
        assert torch.equal(on.predict(inter), off.predict(inter))
        on.train(), off.train()                            # dropout: the same draws
        torch.manual_seed(7)
        on_loss = on.calculate_loss(batch)
        torch.manual_seed(7)
        assert torch.equal(on_loss, off.calculate_loss(batch))
    on.train()
    optimizer = torch.optim.Adam([table.knowledge_proj.weight], lr=0.01)
    torch.manual_seed(7)
    on.calculate_loss(batch).backward()
    assert table.knowledge_proj.weight.grad.abs().sum() > 0
    assert table.id_embedding.weight.grad.abs().sum() > 0
    optimizer.step()                                       # only the projection moves
    with torch.no_grad():
        on.eval(), off.eval()
        assert not torch.allclose(on.full_sort_predict(inter), off.full_sort_predict(inter))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_predict_and_full_sort_predict_share_the_combined_table(prepared, name):
    test, model = _variant(prepared, name, knowledge_features=True)[-2:]
    table = model.item_embedding
    with torch.no_grad():                                  # a non-zero projection
        torch.manual_seed(11)
        table.knowledge_proj.weight.normal_(std=0.1)
    model.eval()
    inter = first_batch(test)
    seq, length, items = inter["item_id_list"], inter["item_length"], inter["item_id"]
    with torch.no_grad():
        weight = table.id_embedding.weight + table.knowledge_emb @ table.knowledge_proj.weight.t()
        assert torch.allclose(table.weight, weight, atol=1e-6)          # E_id + K W^T
        assert torch.allclose(table(seq), table.weight[seq], atol=1e-6)  # rows = the table's
        user = model(seq, length)                                         # [B, H]
        full = model.full_sort_predict(inter)                             # [B, n_items]
        assert torch.allclose(full, user @ weight.t(), atol=1e-5)
        gathered = full.gather(1, items.unsqueeze(1)).squeeze(1)
        assert torch.allclose(model.predict(inter), gathered, atol=1e-5)
        assert torch.allclose(model.predict(inter), (user * weight[items]).sum(-1), atol=1e-5)
        table.knowledge_proj.weight.zero_()                               # knowledge matters
        assert not torch.allclose(model.full_sort_predict(inter), full, atol=1e-3)


@pytest.mark.parametrize("center", [True, False])
def test_knowledge_rows_are_unit_rows_centred_by_default(prepared, center):
    config, dataset, train = prepared["PLR"][:3]
    assert config["center_repr"] is True
    model = build_with(config, train, knowledge_features=True, center_repr=center)
    stored = load_item_representations(config, dataset, knowledge=True, sid=False,
                                       center=center).knowledge_emb
    knowledge = model.item_embedding.knowledge_emb
    assert torch.allclose(knowledge, F.normalize(stored, dim=-1), atol=1e-6)
    unit = knowledge[1:]                                   # cosine with the mean direction
    shared = (unit @ F.normalize(unit.mean(0), dim=0)).mean()
    assert shared < 0.2 if center else shared > 0.8       # tiny data: 0.04 vs 0.95


def test_knowledge_item_table_is_the_sum():
    torch.manual_seed(0)
    id_weight, knowledge = torch.randn(5, 4), torch.randn(5, 3)
    proj = nn.Linear(3, 4, bias=False)
    assert torch.allclose(knowledge_item_table(id_weight, knowledge, proj),
                          id_weight + knowledge @ proj.weight.t())
    with pytest.raises(ValueError, match="one row per item"):
        KnowledgeItemEmbedding(nn.Embedding(5, 4), torch.randn(6, 3))


def test_bad_flag_is_refused_with_the_key(prepared):
    config, _dataset, train = prepared["PLR"][:3]
    with pytest.raises(ValueError, match="knowledge_features"):
        build_with(config, train, knowledge_features="yes")


@pytest.mark.parametrize("name", ["ReaRec-ERL", "PLR"])
def test_loss_falls_on_tiny_slice_with_knowledge(tiny_root, workdir, tmp_path_factory, name):
    model_name, variant = VARIANTS[name]
    result = run(model_name, "tiny", saved=False, config_dict=_config(
        tiny_root, tmp_path_factory, workdir, epochs=8, stopping_step=100,
        learning_rate=0.01, knowledge_features=True, **variant))
    losses = result["train_loss"]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.85 * losses[0]
    assert result["test_result"]["hit@10"] > 0.25          # random ranking: 10 / 40


def test_checkpoint_reloads_with_the_knowledge_buffer(tiny_root, workdir, tmp_path_factory):
    result = run("ReaRec", "tiny", config_dict=_config(
        tiny_root, tmp_path_factory, workdir, epochs=2, rearec_mode="PRL",
        knowledge_features=True))
    assert evaluate_checkpoint(result["checkpoint"]) == result["test_result"]
    config, model, _dataset, _train, _valid, test = load_data_and_model(result["checkpoint"])
    assert config["knowledge_features"] is True
    assert isinstance(model.item_embedding, KnowledgeItemEmbedding)
    state = torch.load(result["checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    assert torch.equal(state["item_embedding.knowledge_emb"], model.item_embedding.knowledge_emb)
    assert state["item_embedding.knowledge_proj.weight"].abs().sum() > 0   # it trained
    again = load_data_and_model(result["checkpoint"])[1]
    inter = first_batch(test)
    with torch.no_grad():
        assert torch.equal(model.eval().full_sort_predict(inter),
                           again.eval().full_sort_predict(inter))
