"""Shared helpers of the model tests: tiny knowledge artefacts built once per test session."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# tiny RQ-VAE (2 levels x 8 codes), trained in well under a second on the 40 synthetic items
TINY_KNOWLEDGE = {"levels": 2, "codes": 8, "latent_dim": 8, "epochs": 100}

_BUILT: dict = {}


def shared_artifacts(tiny_root: str, tmp_path_factory) -> str:
    """An artefact folder with the tiny data set's knowledge + SIDs, built once per session."""
    if tiny_root not in _BUILT:
        from recbole_reaseq.knowledge.pipeline import ensure_artifacts

        folder = str(tmp_path_factory.mktemp("model_artifacts"))
        ensure_artifacts({"dataset": "tiny", "data_path": tiny_root,
                          "reaseq_artifact_dir": folder, "reaseq_knowledge": TINY_KNOWLEDGE})
        _BUILT[tiny_root] = folder
    return _BUILT[tiny_root]


import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny models run fastest on one thread (thread hand-offs dominate, worse on busy cores)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build_with(config, train, **overrides):
    """``quick_start.build_model`` with config ``overrides`` (the config is restored afterwards)."""
    from recbole_reaseq.quick_start import build_model

    saved = {key: config[key] for key in overrides}
    for key, value in overrides.items():
        config[key] = value
    try:
        return build_model(config, train)
    finally:
        for key, value in saved.items():
            config[key] = value


def first_batch(loader):
    """The first evaluation batch's interaction."""
    return next(iter(loader))[0]
