"""End-to-end runs on the tiny data set: baselines, determinism, reload, transforms, CLI."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from recbole_reaseq.data.transforms import Compose, TrimPadding
from recbole_reaseq.evaluation.ctr import score_candidates
from recbole_reaseq.quick_start import build_model, make_config, prepare_data, run
from tests.conftest import REPO_ROOT, tiny_config

CTR_KEYS = ["auc", "gauc", "logloss", "hit@10", "ndcg@10"]


@pytest.mark.parametrize("model", ["SASRec", "GRU4Rec", "BERT4Rec", "DIN", "DIEN"])
def test_baseline_one_epoch_ctr_track(model, tiny_root, workdir):
    result = run(model, "tiny", config_dict=tiny_config(tiny_root, workdir, eval_protocol="ctr"),
                 saved=False)
    test = result["test_result"]
    for key in CTR_KEYS:
        assert math.isfinite(test[key])
        if key != "logloss":
            assert 0.0 <= test[key] <= 1.0
    assert 0.0 < test["logloss"] < 5.0
    assert test["users"] == 60 and test["cold/users"] + test["hot/users"] == 60
    assert result["epochs_trained"] == 1 and len(result["epoch_seconds"]) == 1
    assert result["peak_rss_mb"] > 0


def test_sasrec_ranking_track_and_loss_falls(tiny_root, workdir):
    result = run("SASRec", "tiny", config_dict=tiny_config(
        tiny_root, workdir, epochs=8, stopping_step=100, learning_rate=0.01), saved=False)
    assert sorted(result["test_result"]) == sorted(
        f"{m}@{k}" for m in ("hit", "ndcg", "mrr") for k in (5, 10, 20))
    losses = result["train_loss"]
    assert len(losses) == 8 and losses[-1] < 0.8 * losses[0]
    # the synthetic chains are learnable: far better than the 10/40 of a random ranking
    assert result["test_result"]["hit@10"] > 0.5
    # per-user ranking metrics (paired significance tests): one row per test user, and their
    # means are RecBole's numbers (rounded to metric_decimal_place)
    users = result["per_user_test"]["ranking"]
    assert len(np.unique(users["user_id"])) == len(users["user_id"]) == len(users["ndcg@10"])
    for key, value in result["test_result"].items():
        assert users[key].mean() == pytest.approx(value, abs=1e-6), key


def test_same_seed_same_metrics(tiny_root, workdir):
    cfg = tiny_config(tiny_root, workdir, eval_protocol="ctr", epochs=2)
    first = run("DIN", "tiny", config_dict=cfg, saved=False)
    second = run("DIN", "tiny", config_dict=cfg, saved=False)
    other = run("DIN", "tiny", config_dict=dict(cfg, seed=7), saved=False)
    assert first["train_loss"] == second["train_loss"]
    assert first["valid_result"] == second["valid_result"]
    assert first["test_result"] == second["test_result"]
    assert first["train_loss"] != other["train_loss"]


@pytest.mark.parametrize("model,protocol", [("SASRec", "ranking"), ("DIN", "ctr")])
def test_checkpoint_reloads_to_same_numbers_in_fresh_process(model, protocol, tiny_root, workdir):
    result = run(model, "tiny", config_dict=tiny_config(tiny_root, workdir, epochs=2,
                                                        eval_protocol=protocol))
    code = ("import json, sys; from recbole_reaseq.quick_start import evaluate_checkpoint; "
            "print('RESULT=' + json.dumps(evaluate_checkpoint(sys.argv[1])))")
    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    out = subprocess.run([sys.executable, "-c", code, result["checkpoint"]], cwd=workdir,
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    line = [l for l in out.stdout.splitlines() if l.startswith("RESULT=")][0]
    assert json.loads(line[len("RESULT="):]) == result["test_result"]


@pytest.mark.parametrize("model", ["SASRec", "GRU4Rec", "BERT4Rec"])
def test_trim_padding_leaves_predictions_unchanged(model, tiny_root, workdir):
    config = make_config(model, "tiny", config_dict=tiny_config(
        tiny_root, workdir, MAX_ITEM_LIST_LENGTH=30))
    _dataset, train, _valid, test = prepare_data(config)
    net = build_model(config, train).eval()
    for batch in (next(iter(train)), next(iter(test))[0]):
        trimmed = TrimPadding(config)(None, batch)
        longest = int(batch["item_length"].max())
        assert batch["item_id_list"].shape[1] == 30                      # input untouched
        assert trimmed["item_id_list"].shape[1] == longest + 1 < 30
        assert torch.equal(trimmed["item_id_list"][:, :longest + 1],
                           batch["item_id_list"][:, :longest + 1])
        with torch.no_grad():
            assert torch.allclose(net.predict(batch), net.predict(trimmed), atol=1e-6)


def test_transforms_installed_on_every_loader(tiny_root, workdir):
    config = make_config("SASRec", "tiny", config_dict=tiny_config(
        tiny_root, workdir, MAX_ITEM_LIST_LENGTH=30, reaseq_transforms=["trim_padding"]))
    _dataset, train, valid, test = prepare_data(config)
    for loader in (train, valid, test):
        assert isinstance(loader.transform, Compose)
        assert isinstance(loader.transform.transforms[-1], TrimPadding)
    batch = next(iter(train))
    assert batch["item_id_list"].shape[1] == int(batch["item_length"].max()) + 1
    inter = next(iter(valid))[0]
    assert inter["item_id_list"].shape[1] == int(inter["item_length"].max()) + 1


def test_trim_padding_refuses_fixed_width_models(tiny_root, workdir):
    config = make_config("DIN", "tiny", config_dict=tiny_config(
        tiny_root, workdir, reaseq_transforms=["trim_padding"]))
    with pytest.raises(ValueError, match="reaseq_transforms"):
        prepare_data(config)


def test_candidate_scores_full_sort_gather_equals_predict(tiny_root, workdir):
    config = make_config("SASRec", "tiny", config_dict=tiny_config(tiny_root, workdir))
    dataset, train, _valid, test = prepare_data(config)
    net = build_model(config, train).eval()
    inter = next(iter(test))[0]
    cands = torch.randint(1, dataset.item_num, (len(inter), 10))
    config["ctr_score_with_full_sort"] = True
    fast = score_candidates(net, inter, cands, dataset, config)
    config["ctr_score_with_full_sort"] = False
    slow = score_candidates(net, inter, cands, dataset, config)
    assert fast.shape == (len(inter), 10)
    assert torch.allclose(fast, slow, atol=1e-5)


def _cli(*args, cwd):
    return subprocess.run([sys.executable, os.path.join(REPO_ROOT, "run_recbole.py"), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


def test_cli_unknown_model_and_dataset(workdir):
    out = _cli("--model=NoSuchModel", "--dataset=ml-100k", cwd=workdir)
    assert out.returncode == 2
    assert "unknown model 'NoSuchModel'" in out.stderr and "SASRec" in out.stderr
    out = _cli("--model=SASRec", "--dataset=nowhere", "--data_path=/nonexistent", cwd=workdir)
    assert out.returncode == 2
    assert "/nonexistent/nowhere/nowhere.inter" in out.stderr and "--data_path" in out.stderr


def test_cli_runs_with_overrides(tiny_root, workdir, tmp_path):
    cfg = tmp_path / "tiny.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump(tiny_config(tiny_root, workdir)))
    out = _cli("--model=GRU4Rec", "--dataset=tiny", f"--config_files={cfg}",
               "--eval_protocol=ctr", "--epochs=1", "--ctr_topk=[5]", cwd=workdir)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "hit@5" in out.stdout and "gauc" in out.stdout and "cold/gauc" in out.stdout


def test_frozen_table_fingerprints_hash_every_2d_buffer():
    import hashlib

    import torch.nn as nn

    from recbole_reaseq.quick_start import frozen_table_fingerprints

    model = nn.Module()
    model.register_buffer("table", torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    model.register_buffer("vector", torch.tensor([1.0, 2.0]))               # 1-D: not a table
    model.inner = nn.Module()
    model.inner.register_buffer("codes", torch.tensor([[1, 2, 3]]))
    model.weight = nn.Parameter(torch.ones(2, 2))                             # not a buffer
    digest = lambda array: hashlib.sha256(array.tobytes()).hexdigest()[:16]  # noqa: E731
    assert frozen_table_fingerprints(model) == {
        "inner.codes": digest(np.array([[1, 2, 3]], dtype=np.int64)),
        "table": digest(np.array([[1, 2], [3, 4]], dtype=np.float32))}
    model.table[0, 0] = 1.5
    assert frozen_table_fingerprints(model)["table"] != digest(
        np.array([[1, 2], [3, 4]], dtype=np.float32))


def test_resumed_din_keeps_training_its_embedding_layer(tiny_root, workdir):
    # RecBole's resume swaps in DIN's pickled embedding_layer after the optimizer was built; the
    # trainer must point the optimizer at it, or the embedding tables stop training
    from recbole_reaseq.evaluation.ctr import repoint_optimizer
    from recbole_reaseq.quick_start import build_model, build_trainer, make_config, prepare_data

    config = make_config("DIN", "tiny", config_dict=tiny_config(tiny_root, workdir,
                                                                eval_protocol="ctr"))
    dataset, train, valid, _test = prepare_data(config)
    trainer = build_trainer(config, build_model(config, train), dataset)
    trainer.fit(train, valid, saved=True)
    resumed = build_trainer(config, build_model(config, train), dataset)
    resumed.resume_checkpoint(trainer.saved_model_file)
    model = resumed.model
    held = [p for group in resumed.optimizer.param_groups for p in group["params"]]
    assert all(a is b for a, b in zip(held, model.parameters()))
    table = model.embedding_layer.token_embedding_table["item"].embedding.weight
    assert "exp_avg" in resumed.optimizer.state[table]             # Adam's state moved along
    before = table.detach().clone()
    resumed._train_epoch(train, 1)
    assert not torch.equal(table, before)              # the embedding table still learns
    assert repoint_optimizer(resumed.optimizer, model) == 0
    with pytest.raises(RuntimeError, match="do not line up"):
        repoint_optimizer(torch.optim.Adam([torch.nn.Parameter(torch.ones(1))]), model)


def denormals_kept() -> bool:
    return bool(torch.tensor(1e-40, dtype=torch.float32) * 1.0 != 0)


def test_denormals_flushed_only_inside_the_block_and_restored():
    from recbole_reaseq.quick_start import denormals_flushed

    assert denormals_kept()
    with denormals_flushed(False):
        assert denormals_kept()
    with denormals_flushed(True):
        assert not denormals_kept()
        assert torch.exp(torch.tensor(-100.0)).item() == 0.0          # e^-100 ~ 3.7e-44
        with denormals_flushed(True):
            assert not denormals_kept()
        assert not denormals_kept()                                   # inner exit keeps it
    assert denormals_kept()
    assert torch.exp(torch.tensor(-100.0)).item() == pytest.approx(3.72e-44, rel=0.05)
    with pytest.raises(RuntimeError):
        with denormals_flushed(True):
            raise RuntimeError("boom")
    assert denormals_kept()                                           # restored on error


@pytest.mark.parametrize("model,expected", [("ReaRec", True), ("PLR", True), ("SASRec", False)])
def test_run_trains_and_evaluates_under_the_models_flush_denormal(model, expected, tiny_root,
                                                                   workdir, monkeypatch):
    """ReaRec and PLR default to flush_denormal: True (model YAML), other models to False;
    ``run`` applies it to training and evaluation and restores it afterwards."""
    from recbole_reaseq import quick_start

    seen = {}
    real_build = quick_start.build_trainer

    def recording_build(*args, **kwargs):
        trainer = real_build(*args, **kwargs)
        def recorded(key, method):
            def call(*a, **k):
                seen.setdefault(key, not denormals_kept())
                return method(*a, **k)
            return call

        trainer.fit = recorded("fit", trainer.fit)
        trainer.evaluate = recorded("evaluate", trainer.evaluate)
        return trainer

    monkeypatch.setattr(quick_start, "build_trainer", recording_build)
    result = run(model, "tiny", config_dict=tiny_config(tiny_root, workdir), saved=False)
    assert result["config"]["flush_denormal"] is expected
    assert seen == {"fit": expected, "evaluate": expected}
    assert denormals_kept()
