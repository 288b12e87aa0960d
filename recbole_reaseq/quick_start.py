"""The one pipeline every entry point uses: config -> data -> model -> RecBole trainer -> results.

``run_recbole.py``, the benchmarks and the tests call :func:`run`; checkpoints reload through
:func:`load_data_and_model`. Both resolve models with :mod:`recbole_reaseq.registry`, so RecBole's
built-ins and ours go through the same code.
"""
from __future__ import annotations

import logging
import resource
import sys
import time

from recbole_reaseq import compat  # noqa: F401
from recbole_reaseq import registry
from recbole_reaseq.config import Config
from recbole_reaseq.data.candidates import load_or_build_candidates
from recbole_reaseq.data.transforms import install_transforms
from recbole_reaseq.evaluation.ctr import ReaSeqTrainerMixin, evaluate_ctr

import torch  # noqa: E402
from recbole.data import create_dataset, data_preparation  # noqa: E402
from recbole.utils import init_logger, init_seed  # noqa: E402


def prepare_data(config, dataset=None):
    """RecBole's dataset + loaders, with our transforms installed and eval loaders tagged."""
    if dataset is None:
        dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    valid_data.reaseq_phase, test_data.reaseq_phase = "valid", "test"
    install_transforms(config, [train_data, valid_data, test_data])
    return dataset, train_data, valid_data, test_data


def build_model(config, train_data):
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model_class = registry.get_model(config["model"])
    return model_class(config, train_data._dataset).to(config["device"])


def build_trainer(config, model, dataset):
    """RecBole's trainer for the model, with :class:`ReaSeqTrainerMixin` in front."""
    base = registry.get_trainer(type(model))
    trainer_class = type(f"ReaSeq{base.__name__}", (ReaSeqTrainerMixin, base), {})
    trainer = trainer_class(config, model)
    if config["eval_protocol"] == "ctr":
        trainer.ctr_candidates = load_or_build_candidates(config, dataset)
    return trainer


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_config(model=None, dataset=None, config_file_list=None, config_dict=None, argv=None):
    config = Config(model=model, dataset=dataset, config_file_list=config_file_list,
                    config_dict=config_dict, argv=argv)
    if config["eval_protocol"] not in ("ranking", "ctr"):
        raise ValueError(f"eval_protocol must be 'ranking' or 'ctr', got "
                         f"'{config['eval_protocol']}'.")
    return config


def evaluate_protocol(trainer, eval_data, protocol: str, dataset) -> tuple[dict, dict | None]:
    """Evaluate the trainer's current model under ``protocol`` (ranking or ctr)."""
    if protocol == "ctr":
        if trainer.ctr_candidates is None:
            trainer.ctr_candidates = load_or_build_candidates(trainer.config, dataset)
        result, per_user = evaluate_ctr(trainer.model, eval_data, trainer.ctr_candidates,
                                        eval_data.reaseq_phase, trainer.config)
        return dict(result), per_user
    base = super(ReaSeqTrainerMixin, trainer)               # RecBole's own full-ranking evaluate
    return dict(base.evaluate(eval_data, load_best_model=False)), None


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

    dataset_obj, train_data, valid_data, test_data = prepare_data(config)
    logger.info(dataset_obj)
    model_obj = build_model(config, train_data)
    logger.info(model_obj)
    trainer = build_trainer(config, model_obj, dataset_obj)
    if resume_file:
        trainer.resume_checkpoint(resume_file)        # also keeps saving into resume_file
        logger.info(f"resumed from {resume_file} at epoch {trainer.start_epoch}")

    fit_start = time.perf_counter()
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"])
    fit_seconds = time.perf_counter() - fit_start
    if best_valid_result is None and saved:          # resumed and never improved afterwards
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
        "train_loss": [float(trainer.train_loss_dict[k]) for k in sorted(trainer.train_loss_dict)],
        "epochs_trained": len(epochs),
        "epoch_seconds": epochs,
        "fit_seconds": fit_seconds,
        "wall_seconds": time.perf_counter() - wall_start,
        "peak_rss_mb": peak_rss_mb(),
        "checkpoint": trainer.saved_model_file if saved else None,
        "other_protocols": extra,
        "per_user_test": per_user,
        "start_epoch": trainer.start_epoch if resume_file else 0,
        "config": config,
    }


def load_data_and_model(model_file: str, config_dict: dict | None = None):
    """Rebuild config, data and model from a checkpoint written by :func:`run`.

    Unlike RecBole's version it resolves the model through our registry, so our models reload too.
    Returns ``(config, model, dataset, train_data, valid_data, test_data)``.
    """
    checkpoint = torch.load(model_file, map_location="cpu")
    config = checkpoint["config"]
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
