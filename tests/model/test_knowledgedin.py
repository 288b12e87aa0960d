"""KnowledgeDIN ("Base + MAKR") on the tiny synthetic data set (conftest.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from recbole.utils import init_seed

from recbole_reaseq import registry
from recbole_reaseq.data.transforms import TrimPadding
from recbole_reaseq.knowledge.pipeline import artifact_paths
from recbole_reaseq.knowledge.pipeline import title_embeddings
from recbole_reaseq.model.knowledgedin import KnowledgeDIN
from recbole_reaseq.quick_start import build_model, make_config, prepare_data, run
from tests.conftest import tiny_config

from . import TINY_KNOWLEDGE, shared_artifacts, single_thread  # noqa: F401  (fixture)

CTR_KEYS = ["auc", "gauc", "logloss", "hit@10", "ndcg@10"]


@pytest.fixture(scope="module")
def prepared(tiny_root, tmp_path_factory):
    work = str(tmp_path_factory.mktemp("knowledgedin"))
    config = make_config("KnowledgeDIN", "tiny", config_dict=tiny_config(
        tiny_root, work, eval_protocol="ctr", reaseq_knowledge=TINY_KNOWLEDGE,
        reaseq_artifact_dir=shared_artifacts(tiny_root, tmp_path_factory)))
    return (config,) + tuple(prepare_data(config))


def test_registered():
    assert registry.get_model("KnowledgeDIN") is KnowledgeDIN
    assert registry.is_ours("KnowledgeDIN") and "KnowledgeDIN" in registry.model_names()
    assert not torch.is_anomaly_enabled()          # importing DIN did not switch it on


def test_one_epoch_ctr_finite_metrics(tiny_root, workdir, tmp_path_factory):
    result = run("KnowledgeDIN", "tiny", saved=False, config_dict=tiny_config(
        tiny_root, workdir, eval_protocol="ctr", reaseq_knowledge=TINY_KNOWLEDGE,
        reaseq_artifact_dir=shared_artifacts(tiny_root, tmp_path_factory)))
    test = result["test_result"]
    for key in CTR_KEYS:
        assert math.isfinite(test[key])
    assert 0.0 < test["logloss"] < 5.0 and test["users"] == 60
    assert result["epochs_trained"] == 1
    assert list(result["frozen_tables"]) == ["embedding_layer.knowledge_emb"]   # its one table


def test_starts_as_din_and_knowledge_projection_gets_gradient(prepared):
    config, dataset, train = prepared[0], prepared[1], prepared[2]
    init_seed(config["seed"], config["reproducibility"])
    din = registry.get_model("DIN")(config, dataset).eval()
    model = build_model(config, train)                     # same seed (build_model re-seeds)
    knowledge = model.knowledge_emb
    assert knowledge.shape[0] == dataset.item_num and not knowledge.requires_grad
    assert torch.equal(knowledge[0], torch.zeros(knowledge.shape[1]))
    assert model.knowledge_proj.weight.shape == (model.item_width, knowledge.shape[1])
    batch = next(iter(train))
    with torch.no_grad():                                  # zero projection: exactly DIN
        assert torch.equal(model.eval().predict(batch), din.predict(batch))
    model.train()
    optimizer = torch.optim.Adam([model.knowledge_proj.weight], lr=0.01)
    model.calculate_loss(batch).backward()
    assert model.knowledge_proj.weight.grad.abs().sum() > 0
    optimizer.step()                                       # only the projection moves
    with torch.no_grad():
        assert not torch.allclose(model.eval().predict(batch), din.predict(batch))


def test_knowledge_equals_a_shift_of_dins_item_id_embedding(prepared):
    # a second implementation: with W non-zero on the item_id field's block only, KnowledgeDIN is
    # RecBole's DIN whose item_id embedding row i was moved by that block's W k(i)
    config, dataset, train = prepared[0], prepared[1], prepared[2]
    model = build_model(config, train).eval()
    layer, d = model.embedding_layer.layer, model.embedding_size
    field = layer.token_field_names["item"].index(dataset.iid_field)
    block = torch.randn(d, model.knowledge_emb.shape[1],
                        generator=torch.Generator().manual_seed(0))        # [d, D]
    with torch.no_grad():
        model.knowledge_proj.weight[field * d:(field + 1) * d] = block
    din = registry.get_model("DIN")(config, dataset).eval()
    din.load_state_dict({k.replace("embedding_layer.layer.", "embedding_layer."): v
                         for k, v in model.state_dict().items()
                         if not k.startswith("embedding_layer.knowledge_")})
    offset = int(layer.token_field_offsets["item"][field])
    batch = next(iter(train))
    with torch.no_grad():
        assert not torch.allclose(model.predict(batch), din.predict(batch), atol=1e-3)  # W counts
        table = din.embedding_layer.token_embedding_table["item"].embedding.weight
        table[offset:offset + dataset.item_num] += model.knowledge_emb @ block.T
        assert torch.allclose(model.predict(batch), din.predict(batch), atol=1e-5)


def test_checkpoint_written_before_the_wrapper_loads_unchanged(prepared):
    # the layout of checkpoints written while KnowledgeDIN kept its own forward: knowledge_emb
    # and knowledge_proj.weight at the top, RecBole's layer as embedding_layer (also pickled)
    config, train, test = prepared[0], prepared[2], prepared[4]
    model = build_model(config, train).eval()
    with torch.no_grad():
        model.knowledge_proj.weight.normal_(generator=torch.Generator().manual_seed(1))
    old = {}
    for key, value in model.state_dict().items():
        key = key.replace("embedding_layer.knowledge_", "knowledge_")
        old[key.replace("embedding_layer.layer.", "embedding_layer.")] = value
    assert "knowledge_proj.weight" in old and "embedding_layer.token_embedding_table.item." \
        "embedding.weight" in old
    fresh = build_model(config, train).eval()
    fresh.load_state_dict(old)                                            # strict
    fresh.load_other_parameter({"embedding_layer": model.embedding_layer.layer})
    assert isinstance(fresh.embedding_layer.layer, type(model.embedding_layer.layer))
    assert set(model.other_parameter()) == {"embedding_layer"}
    assert model.other_parameter()["embedding_layer"] is model.embedding_layer.layer
    batch = next(iter(test))[0]
    with torch.no_grad():
        assert torch.equal(fresh.predict(batch), model.predict(batch))


def test_trimmed_batches_give_the_same_predictions(prepared):
    config, dataset, train, _valid, test = prepared
    model = build_model(config, train).eval()
    inter = next(iter(test))[0]
    trimmed = TrimPadding(config)(dataset, inter)
    with torch.no_grad():
        assert torch.allclose(model.predict(trimmed), model.predict(inter), atol=1e-6)


def test_title_only_variant(prepared):
    config, dataset, train = prepared[0], prepared[1], prepared[2]
    config["knowledge_field"] = "title_emb"
    try:
        model = build_model(config, train).eval()
    finally:
        config["knowledge_field"] = "knowledge_emb"
    paths = artifact_paths("tiny", config["reaseq_artifact_dir"])
    ids, emb = title_embeddings(paths)                                   # cached now
    tokens = dataset.field2id_token["item_id"]
    row = ids.index(tokens[5])
    assert torch.allclose(model.knowledge_emb[5], torch.from_numpy(emb[row]))
    assert paths.npy("title_emb").is_file()
    knowledge = np.load(paths.npy("knowledge_emb"))
    assert not np.allclose(knowledge[row], emb[row])                     # another embedding
    batch = next(iter(train))
    with torch.no_grad():
        assert torch.isfinite(model.predict(batch)).all()
