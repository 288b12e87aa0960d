"""RecBole's distributed mode (DDP) on CPU with 2 gloo processes, against one process.

Why the comparisons are what they are. With DDP, RecBole shards every training batch of
``train_batch_size`` rows (``DistributedSampler``: rank r takes rows r, r + 2, ... of the epoch's
order, ``train_batch_size / 2`` per step) and averages the two ranks' gradients. Each rank's loss
is the mean over its half batch, so for equal halves the averaged gradient IS the gradient of the
mean loss over the union of the two halves. Under RecBole's defaults a DDP trajectory still cannot
equal a single process's: the sampler shuffles with its own seed (another order than the
single-process loader's), each rank draws its own negatives from its own RNG (seeded
``seed + local_rank``), and dropout masks differ. Hence:

1. default config (shuffling, negative sampling): the first step's averaged gradient on both ranks
   equals the single-process gradient on the union of the two shards (same initial weights),
   for ReaSeqCTR (CTR track, 1 negative per positive) and RecBole's SASRec (full softmax);
2. what IS exactly comparable over whole epochs: explicit labels (no negative sampling), no
   shuffling, no dropout and an even number of training rows (no sampler padding). Then each DDP
   step sees exactly the single process's batch, and the per-epoch loss (mean over ranks of each
   rank's summed half-batch means = the sum of global-batch means), the weights and the metrics
   must match a single process with the same global batch and seed up to float rounding
   (summation order of the all-reduce: relative 1e-5 on losses; metrics computed from scores that
   differ by ~1e-7 are equal to 1e-5).
"""
from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch

from recbole_reaseq.quick_start import make_config, run, run_distributed
from tests.conftest import tiny_config, write_tiny_dataset

TINY_KNOWLEDGE = {"levels": 2, "codes": 8, "latent_dim": 8, "epochs": 100}
SMALL = {"embedding_size": 8, "hidden_size": 16, "n_heads": 2, "gsu_top_k": 3, "n_anchors": 3,
         "mlp_hidden_size": [16], "dropout_prob": 0.0, "hidden_dropout_prob": 0.0,
         "attn_dropout_prob": 0.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_labelled_dataset(root: str, name: str = "tinylab", n_users: int = 60,
                           length: int = 10, n_items: int = 40, seed: int = 0) -> str:
    """Every user has ``length`` rows with a 0/1 label: (length - 3) training rows per user."""
    write_tiny_dataset(root, name, n_users=n_users, n_items=n_items, seed=seed)   # the .item file
    rng = np.random.default_rng(seed)
    with open(os.path.join(root, name, f"{name}.inter"), "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\tlabel:float\n")
        for u in range(1, n_users + 1):
            item = int(rng.integers(1, n_items + 1))
            for t in range(length):
                f.write(f"u{u}\ti{item}\t{1_000_000 + 86400 * t}\t{int(rng.random() < 0.6)}\n")
                jump = rng.random() >= 0.8
                item = int(rng.integers(1, n_items + 1)) if jump else item % n_items + 1
    return root


@pytest.fixture(scope="module")
def artefacts(tiny_root, tmp_path_factory):
    """Knowledge artefacts of both data sets, built once (the ranks only load them)."""
    from recbole_reaseq.knowledge.pipeline import ensure_artifacts

    root = write_labelled_dataset(str(tmp_path_factory.mktemp("labelled")))
    folder = str(tmp_path_factory.mktemp("ddp_artifacts"))
    for name, path in (("tiny", tiny_root), ("tinylab", root)):
        ensure_artifacts({"dataset": name, "data_path": path, "reaseq_artifact_dir": folder,
                          "reaseq_knowledge": TINY_KNOWLEDGE})
    return folder, root


# ------------------------------------------------------------------------  1. first step, default
class _Stop(Exception):
    pass


def _first_step_worker(local_rank, model_name, cfg, out_dir):
    """One rank: RecBole's own _train_epoch up to the first optimizer step; saves its batch, the
    averaged gradients and the initial weights."""
    from recbole.utils import init_seed

    from recbole_reaseq.data.candidates import load_or_build_candidates
    from recbole_reaseq.quick_start import (build_model, build_trainer, prepare_data,
                                            rank_zero_first)

    torch.set_num_threads(1)
    config = make_config(model_name, "tiny", config_dict=dict(cfg, local_rank=local_rank))
    init_seed(config["seed"], config["reproducibility"])
    candidates = None
    with rank_zero_first(config):
        dataset, train, _valid, _test = prepare_data(config)
        model = build_model(config, train)
        if config["eval_protocol"] == "ctr":
            candidates = load_or_build_candidates(config, dataset)
    trainer = build_trainer(config, model, dataset, candidates)
    assert type(trainer.distributed_model).__name__ == "DistributedDataParallel"
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}   # after DDP's sync
    seen = {}
    loss_of = model.calculate_loss

    def spy(interaction):
        seen.setdefault("batch", interaction)
        return loss_of(interaction)

    def step(*args, **kwargs):
        seen["grads"] = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
        raise _Stop()

    model.calculate_loss, trainer.optimizer.step = spy, step
    try:
        trainer._train_epoch(train, 0)
    except _Stop:
        pass
    torch.save({"batch": seen["batch"], "grads": seen["grads"], "initial": initial,
                "device": str(config["device"]), "backend": config["dist_backend"]},
               os.path.join(out_dir, f"rank{local_rank}.pt"))
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("model_name,extra", [
    ("ReaSeqCTR", {"eval_protocol": "ctr"}),
    ("SASRec", {"train_neg_sample_args": None, "loss_type": "CE"}),
])
def test_first_step_gradient_equals_single_process_on_union(model_name, extra, tiny_root,
                                                            workdir, artefacts):
    import torch.multiprocessing as mp
    from recbole.data.interaction import cat_interactions

    from recbole_reaseq.quick_start import build_model, prepare_data

    cfg = tiny_config(tiny_root, workdir, reaseq_knowledge=TINY_KNOWLEDGE,
                      reaseq_artifact_dir=artefacts[0], train_batch_size=64, **SMALL, **extra)
    ddp_cfg = dict(cfg, nproc=2, world_size=2, ip="127.0.0.1", port=str(free_port()), offset=0)
    mp.spawn(_first_step_worker, args=(model_name, ddp_cfg, workdir), nprocs=2, join=True)
    ranks = [torch.load(os.path.join(workdir, f"rank{r}.pt")) for r in range(2)]
    assert [r["device"] for r in ranks] == ["cpu", "cpu"]
    assert [r["backend"] for r in ranks] == ["gloo", "gloo"]
    sizes = [len(r["batch"]) for r in ranks]
    assert sizes == [32, 32]                            # the global batch of 64 rows, in halves
    assert not torch.equal(ranks[0]["batch"]["user_id"], ranks[1]["batch"]["user_id"])
    for name, grad in ranks[0]["grads"].items():        # all-reduced: the same on both ranks
        assert torch.equal(grad, ranks[1]["grads"][name]), name
    for name, value in ranks[0]["initial"].items():     # DDP broadcast rank 0's initial weights
        assert torch.equal(value, ranks[1]["initial"][name]), name

    config = make_config(model_name, "tiny", config_dict=cfg)
    _dataset, train, _valid, _test = prepare_data(config)
    model = build_model(config, train)
    model.load_state_dict(ranks[0]["initial"])
    model.train()
    union = cat_interactions([ranks[0]["batch"], ranks[1]["batch"]])
    model.calculate_loss(union).backward()
    checked = 0
    for name, param in model.named_parameters():
        reference = param.grad if param.grad is not None else torch.zeros_like(param)
        assert torch.allclose(ranks[0]["grads"][name], reference, rtol=1e-4, atol=1e-7), name
        checked += int(reference.abs().sum() > 0)
    assert checked >= 5                                 # real, non-zero gradients were compared


# -------------------------------------------------------------  2. whole epochs, exactly comparable
def test_ddp_loss_trajectory_and_metrics_equal_single_process(workdir, artefacts):
    folder, root = artefacts
    cfg = tiny_config(root, workdir, eval_protocol="ctr", reaseq_knowledge=TINY_KNOWLEDGE,
                      reaseq_artifact_dir=folder, epochs=3, train_batch_size=64, shuffle=False,
                      train_neg_sample_args=None,
                      load_col={"inter": ["user_id", "item_id", "timestamp", "label"],
                                "item": ["item_id", "categories", "brand", "price"]}, **SMALL)
    cfg["reaseq_artifact_dir"] = folder
    single = run("ReaSeqCTR", "tinylab", config_dict=dict(cfg), saved=True)
    assert len(single["train_loss"]) == 3
    n_train = 60 * (10 - 3)
    assert n_train % 2 == 0                               # no DistributedSampler padding
    ddp = run_distributed("ReaSeqCTR", "tinylab", config_dict=dict(cfg), nproc=2,
                          ip="127.0.0.1", port=free_port())
    assert ddp["config"]["dist_backend"] == "gloo" and ddp["config"]["world_size"] == 2
    assert not ddp["config"]["single_spec"]
    # per-epoch loss: sum over the 7 steps of the global-batch mean BCE
    np.testing.assert_allclose(ddp["train_loss"], single["train_loss"], rtol=1e-5)
    assert single["train_loss"][2] < single["train_loss"][0]            # it trains
    for phase in ("valid_result", "test_result"):
        assert set(ddp[phase]) == set(single[phase])
        for key, value in single[phase].items():
            assert ddp[phase][key] == pytest.approx(value, abs=1e-5), (phase, key)
    assert ddp[phase]["users"] == 60                       # every user evaluated, once

    # the DDP checkpoint (rank 0's) reloads in one process and scores the same test metrics
    from recbole_reaseq.quick_start import evaluate_checkpoint
    reloaded = evaluate_checkpoint(ddp["checkpoint"])
    for key, value in ddp["test_result"].items():
        assert reloaded[key] == pytest.approx(value, abs=1e-6), key


# ------------------------------------------------------------------------------  config errors
def test_distributed_config_errors(tiny_root, workdir):
    base = tiny_config(tiny_root, workdir, local_rank=0, nproc=1, world_size=1, ip="127.0.0.1",
                       port=str(free_port()), offset=0)
    with pytest.raises(ValueError, match="dist_backend: unknown backend 'mpi'.*Fix"):
        make_config("SASRec", "tiny", config_dict=dict(base, dist_backend="mpi"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="dist_backend: nccl needs CUDA.*dist_backend: gloo"):
            make_config("SASRec", "tiny", config_dict=dict(base, dist_backend="nccl"))
    partial = {k: v for k, v in base.items() if k not in ("world_size", "port")}
    with pytest.raises(ValueError, match="world_size, port is not.*--nproc=N"):
        make_config("SASRec", "tiny", config_dict=partial)
    assert not torch.distributed.is_initialized()
    single = make_config("SASRec", "tiny", config_dict=tiny_config(tiny_root, workdir))
    assert single["single_spec"] and single["dist_backend"] is None


def test_run_recbole_cli_launches_distributed(monkeypatch):
    import run_recbole

    calls = {}

    def fake(**kwargs):
        calls.update(kwargs)
        return {"valid_result": {}, "test_result": {}}

    monkeypatch.setattr(run_recbole, "run_distributed", fake)
    monkeypatch.setattr(run_recbole, "run", lambda **kw: pytest.fail("single-process run"))
    argv = ["--model=ReaSeqCTR", "--dataset=ml-100k", "--nproc=2", "--port=29511",
            "--world_size=4", "--ip=10.0.0.1", "--group_offset=2"]
    assert run_recbole.main(argv) == 0
    assert (calls["model"], calls["nproc"], calls["world_size"], calls["ip"], calls["port"],
            calls["offset"]) == ("ReaSeqCTR", 2, 4, "10.0.0.1", "29511", 2)
    assert calls["argv"] == argv
