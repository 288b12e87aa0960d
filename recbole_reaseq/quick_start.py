"""The one pipeline every entry point uses: config -> data -> model -> RecBole trainer -> results.

``run_recbole.py``, the benchmarks and the tests call :func:`run`; checkpoints reload through
:func:`load_data_and_model`. Both resolve models with :mod:`recbole_reaseq.registry`, so RecBole's
built-ins and ours go through the same code.

Distributed training (RecBole's DDP mode): :func:`run_distributed` spawns ``nproc`` processes that
each call :func:`run` with ``local_rank`` and RecBole's ``nproc`` / ``world_size`` / ``ip`` /
``port`` / ``offset``; RecBole then shards the training batches (``DistributedSampler``;
``train_batch_size`` is the global batch) and averages gradients (``DistributedDataParallel``;
gloo on CPU, see :mod:`recbole_reaseq.compat`). Under DDP:

- knowledge artefacts and CTR candidates are built by global rank 0 first, the other ranks then
  load them (no two processes write the same files);
- every rank evaluates the WHOLE valid / test set on the CTR track (RecBole's evaluation loaders
  are sharded; :class:`FullEvalView` iterates them unsharded), so the metrics, and therefore the
  early-stopping decisions, are exactly those of a single process with the same weights and are
  identical on all ranks (no gather: evaluation is not parallelised). The ranking track keeps
  RecBole's own sharded evaluation with its all-gather of sample-weighted metric means;
- the checkpoint is written by rank 0 only (RecBole) under one file name shared by all ranks;
- ``train_loss`` in the result is the mean over ranks of each rank's summed batch losses, i.e.
  the sum over steps of the global-batch mean loss, comparable with a single process.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import resource
import sys
import time

from recbole_reaseq import compat
from recbole_reaseq import registry
from recbole_reaseq.config import EVAL_PROTOCOLS, Config
from recbole_reaseq.data.bucketing import LengthBucketedLoader
from recbole_reaseq.data.candidates import load_or_build_candidates
from recbole_reaseq.data.transforms import install_transforms
from recbole_reaseq.evaluation.ctr import ReaSeqTrainerMixin, evaluate_ctr

import torch  # noqa: E402
from recbole.data import create_dataset, data_preparation  # noqa: E402
from recbole.utils import init_logger, init_seed  # noqa: E402


def prepare_data(config, dataset=None):
    """RecBole's dataset + loaders, with our transforms installed, eval loaders tagged and, with
    ``length_bucketing``, the train loader wrapped in :class:`LengthBucketedLoader`."""
    if dataset is None:
        dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    valid_data.reaseq_phase, test_data.reaseq_phase = "valid", "test"
    install_transforms(config, [train_data, valid_data, test_data])
    if config["length_bucketing"]:
        train_data = LengthBucketedLoader(train_data, config["length_bucketing"], config["seed"],
                                          config["ITEM_LIST_LENGTH_FIELD"])
    return dataset, train_data, valid_data, test_data


def build_model(config, train_data):
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model_class = registry.get_model(config["model"])
    return model_class(config, train_data._dataset).to(config["device"])


def is_distributed(config) -> bool:
    return not config["single_spec"]


class FullEvalView:
    """An evaluation loader iterated WITHOUT its ``DistributedSampler`` shard: the batches of a
    single process (``eval_batch_size`` users each, in order). Other attributes pass through."""

    def __init__(self, loader):
        self.loader = loader

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def __len__(self) -> int:
        step = self.loader.config["eval_batch_size"]
        return (self.loader.sample_size + step - 1) // step

    def __iter__(self):
        step = self.loader.config["eval_batch_size"]
        for start in range(0, self.loader.sample_size, step):
            yield self.loader.collate_fn(list(range(start, min(start + step,
                                                                self.loader.sample_size))))


class DistributedEvalMixin:
    """Under DDP, CTR-track evaluation scores the whole set on every rank (see module doc)."""

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if eval_data and self.config["eval_protocol"] == "ctr":
            eval_data = FullEvalView(eval_data)
        return super().evaluate(eval_data, load_best_model, model_file, show_progress)


@contextlib.contextmanager
def rank_zero_first(config):
    """Global rank 0 runs the block first, then the other ranks (artefact building). With several
    nodes, ``reaseq_artifact_dir`` should be on a shared file system, or the artefacts built on
    every node beforehand (``python -m recbole_reaseq.knowledge``)."""
    if not is_distributed(config):
        yield
        return
    first = torch.distributed.get_rank() == 0
    if not first:
        torch.distributed.barrier()
    try:
        yield
    finally:
        if first:
            torch.distributed.barrier()


def build_trainer(config, model, dataset, candidates=None):
    """RecBole's trainer for the model, with :class:`ReaSeqTrainerMixin` in front (and, under
    DDP, :class:`DistributedEvalMixin`; CPU modules are wrapped with ``device_ids=None``)."""
    base = registry.get_trainer(type(model))
    mixins = (ReaSeqTrainerMixin,)
    if is_distributed(config):
        mixins = (DistributedEvalMixin,) + mixins
    trainer_class = type(f"ReaSeq{base.__name__}", mixins + (base,), {})
    # RecBole's ensure_dir is not atomic: under DDP two ranks creating it can collide
    os.makedirs(config["checkpoint_dir"], exist_ok=True)
    with compat.cpu_ddp():
        trainer = trainer_class(config, model)
    if is_distributed(config):   # RecBole names the checkpoint by each rank's clock: use rank 0's
        name = [trainer.saved_model_file]
        torch.distributed.broadcast_object_list(name, src=0)
        trainer.saved_model_file = name[0]
    if config["eval_protocol"] == "ctr":
        trainer.ctr_candidates = (candidates if candidates is not None
                                  else load_or_build_candidates(config, dataset))
    return trainer


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@contextlib.contextmanager
def denormals_flushed(enabled: bool):
    """Within the block, denormal floats (``|x| < 1.2e-38``) read and are written as 0 if
    ``enabled`` (``torch.set_flush_denormal``: x86 SSE3 FTZ/DAZ; a no-op where unsupported),
    then the previous state is restored. x86 CPUs process denormals far more slowly: ReaRec
    PRL with trained weights on Beauty's shape (softmax at tau = 0.07 over 12k items; 7 % of
    the entries denormal) takes 1.5-1.6x as long per loss step with them
    (``benchmarks/results/latent_train_cost.md``)."""
    if not enabled:
        yield
        return
    before = bool(torch.tensor(1e-40, dtype=torch.float32) != 0)   # denormals kept now?
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(not before)


def make_config(model=None, dataset=None, config_file_list=None, config_dict=None, argv=None):
    config = Config(model=model, dataset=dataset, config_file_list=config_file_list,
                    config_dict=config_dict, argv=argv)
    if config["eval_protocol"] not in EVAL_PROTOCOLS:
        raise ValueError(f"eval_protocol must be one of {EVAL_PROTOCOLS}, got "
                         f"'{config['eval_protocol']}'.")
    unknown = [p for p in config["report_protocols"] or [] if p not in EVAL_PROTOCOLS]
    if unknown:
        raise ValueError(f"report_protocols may list only {EVAL_PROTOCOLS}, got {unknown}.")
    return config


def evaluate_protocol(trainer, eval_data, protocol: str, dataset) -> tuple[dict, dict | None]:
    """Evaluate the trainer's current model under ``protocol`` (ranking or ctr)."""
    if protocol == "ctr":
        if trainer.ctr_candidates is None:
            trainer.ctr_candidates = load_or_build_candidates(trainer.config, dataset)
        if is_distributed(trainer.config):
            eval_data = FullEvalView(eval_data)
        result, per_user = evaluate_ctr(trainer.model, eval_data, trainer.ctr_candidates,
                                        eval_data.reaseq_phase, trainer.config)
        return dict(result), per_user
    result = trainer.evaluate_ranking(eval_data, load_best_model=False)
    return dict(result), trainer.last_per_user


def run(model=None, dataset=None, config_file_list=None, config_dict=None, argv=None,
        saved: bool = True, config=None, resume_file: str | None = None) -> dict:
    """Train and evaluate one model; returns config, metrics, timings and memory.

    ``report_protocols`` (config) lists extra protocols to evaluate the best model on after
    training (e.g. a ranking-trained SASRec also scored on the CTR candidates). ``resume_file``
    continues from a RecBole checkpoint of an interrupted run (the best epoch saved so far).
    """
    wall_start = time.perf_counter()
    if config is None:
        config = make_config(model, dataset, config_file_list, config_dict, argv)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = logging.getLogger()
    logger.info(sys.argv)
    logger.info(config)

    candidates = None
    with rank_zero_first(config):            # artefacts (knowledge, candidates) written once
        dataset_obj, train_data, valid_data, test_data = prepare_data(config)
        model_obj = build_model(config, train_data)
        if config["eval_protocol"] == "ctr":
            candidates = load_or_build_candidates(config, dataset_obj)
    logger.info(dataset_obj)
    logger.info(model_obj)
    trainer = build_trainer(config, model_obj, dataset_obj, candidates)
    if resume_file:
        trainer.resume_checkpoint(resume_file)        # also keeps saving into resume_file
        logger.info(f"resumed from {resume_file} at epoch {trainer.start_epoch}")

    with denormals_flushed(bool(config["flush_denormal"])):
        fit_start = time.perf_counter()
        best_valid_score, best_valid_result = trainer.fit(
            train_data, valid_data, saved=saved, show_progress=config["show_progress"])
        fit_seconds = time.perf_counter() - fit_start
        if is_distributed(config):
            torch.distributed.barrier()           # rank 0 has written the best checkpoint
        if best_valid_result is None and saved:      # resumed and never improved afterwards
            best_valid_result = trainer.evaluate(valid_data, load_best_model=True)
        test_result = trainer.evaluate(test_data, load_best_model=saved,
                                       show_progress=config["show_progress"])
        logger.info(f"best valid : {best_valid_result}")
        logger.info(f"test result: {test_result}")
        per_user = {config["eval_protocol"]: getattr(trainer, "last_per_user", None)}
        extra = {}
        for protocol in config["report_protocols"] or []:
            if protocol == config["eval_protocol"]:
                continue
            valid_extra, _ = evaluate_protocol(trainer, valid_data, protocol, dataset_obj)
            test_extra, per_user[protocol] = evaluate_protocol(trainer, test_data, protocol,
                                                               dataset_obj)
            extra[protocol] = {"valid": valid_extra, "test": test_extra}
            logger.info(f"[{protocol}] test result: {test_extra}")
    epochs = getattr(trainer, "epoch_seconds", [])
    return {
        "model": config["model"],
        "dataset": config["dataset"],
        "protocol": config["eval_protocol"],
        "seed": config["seed"],
        "best_valid_score": best_valid_score,
        "valid_result": dict(best_valid_result or {}),
        "test_result": dict(test_result or {}),
        "train_loss": _mean_over_ranks(config, [float(trainer.train_loss_dict[k])
                                                for k in sorted(trainer.train_loss_dict)]),
        "epochs_trained": len(epochs),
        "epoch_seconds": epochs,
        "fit_seconds": fit_seconds,
        "wall_seconds": time.perf_counter() - wall_start,
        "peak_rss_mb": peak_rss_mb(),
        "checkpoint": trainer.saved_model_file if saved else None,
        "other_protocols": extra,
        "per_user_test": per_user,
        "start_epoch": trainer.start_epoch if resume_file else 0,
        "frozen_tables": frozen_table_fingerprints(model_obj),
        "config": config,
    }


def frozen_table_fingerprints(model) -> dict:
    """{buffer name: first 16 hex digits of the sha256 of its bytes} for every buffer of the model
    with >= 2 dimensions: the frozen tables it read from stored artefacts (knowledge, SIDs, GBR
    fills, side features; RecBole's own models register none). Stored with a run's result, so the
    seeds of one benchmark row can be checked to have read the same artefacts
    (``benchmarks/report.py`` marks a row whose seeds did not)."""
    out = {}
    for name, buffer in model.named_buffers():
        if buffer.dim() >= 2:
            raw = buffer.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
            out[name] = hashlib.sha256(raw.tobytes()).hexdigest()[:16]
    return dict(sorted(out.items()))


def _mean_over_ranks(config, values: list[float]) -> list[float]:
    """Element-wise mean over the ranks of a distributed run (identity for one process)."""
    if not is_distributed(config) or not values:
        return values
    total = torch.tensor(values, dtype=torch.float64)
    torch.distributed.all_reduce(total)
    return (total / torch.distributed.get_world_size()).tolist()


def run_distributed(model=None, dataset=None, config_file_list=None, config_dict=None,
                    argv=None, saved: bool = True, nproc: int = 1, world_size: int = -1,
                    ip: str = "localhost", port: int | str = 5678, offset: int = 0):
    """RecBole's distributed mode for any registered model: spawn ``nproc`` ranks on this node.

    ``world_size`` (default ``nproc``) ranks in all, this node's ranks are ``offset`` ..
    ``offset + nproc - 1``; rank 0's node (``ip``:``port``) hosts the rendezvous. Each process runs
    :func:`run` with ``local_rank`` and these keys in its config (as RecBole's
    ``run_recboles``). Returns global rank 0's result (``None`` on the other nodes).
    """
    import pickle
    import tempfile

    import torch.multiprocessing as mp

    world_size = nproc if world_size in (None, -1) else int(world_size)
    config_dict = dict(config_dict or {}, nproc=int(nproc), world_size=world_size, ip=str(ip),
                       port=str(port), offset=int(offset))
    # rank 0 pickles its result to a file: a queue would block once the result outgrows the pipe
    # buffer, because nobody reads it while mp.spawn joins the processes
    with tempfile.TemporaryDirectory(prefix="reaseq_ddp_") as folder:
        result_file = os.path.join(folder, "result.pkl")
        mp.spawn(_distributed_worker, nprocs=int(nproc), join=True,
                 args=(model, dataset, config_file_list, config_dict, argv, saved, result_file))
        if not os.path.isfile(result_file):
            return None
        with open(result_file, "rb") as f:
            return pickle.load(f)


def _distributed_worker(local_rank, model, dataset, config_file_list, config_dict, argv, saved,
                        result_file):
    import pickle

    result = run(model, dataset, config_file_list, dict(config_dict, local_rank=local_rank),
                 argv, saved)
    if torch.distributed.get_rank() == 0:
        with open(result_file, "wb") as f:
            pickle.dump(result, f, protocol=4)
    # tear down together: a gloo rank that destroys its group after its peer has already gone
    # can abort ("terminate called without an active exception"); rank 0 works longest here
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def load_data_and_model(model_file: str, config_dict: dict | None = None):
    """Rebuild config, data and model from a checkpoint written by :func:`run`.

    Unlike RecBole's version it resolves the model through our registry, so our models reload too.
    Returns ``(config, model, dataset, train_data, valid_data, test_data)``.
    """
    checkpoint = torch.load(model_file, map_location="cpu")
    config = checkpoint["config"]
    if not config["single_spec"]:        # trained with DDP: reload into this single process
        config["single_spec"], config["local_rank"] = True, 0
        config["device"] = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for key, value in (config_dict or {}).items():
        config[key] = value
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset, train_data, valid_data, test_data = prepare_data(config)
    model = build_model(config, train_data)
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    return config, model, dataset, train_data, valid_data, test_data


def evaluate_checkpoint(model_file: str, phase: str = "test") -> dict:
    """Reload a checkpoint and evaluate it on ``phase`` under the protocol it was trained with."""
    config, model, dataset, _train, valid_data, test_data = load_data_and_model(model_file)
    trainer = build_trainer(config, model, dataset)
    return dict(trainer.evaluate(valid_data if phase == "valid" else test_data,
                                 load_best_model=False))
