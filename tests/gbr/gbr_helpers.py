"""Shared helpers of the GBR pipeline tests: tiny reasoner settings and per-test artefact folders
that reuse the session's tiny knowledge artefacts (tests/model)."""
from __future__ import annotations

import os
import shutil

from recbole_reaseq.gbr.train import GBRConfig
from tests.model import TINY_KNOWLEDGE, shared_artifacts

TINY_REASONER = dict(d_model=16, n_layers=1, n_heads=2, max_len=32, dropout=0.1, batch_size=16,
                     eval_batch_size=8, schedule_epochs=6, lr=3e-3, progress=False,
                     knowledge=TINY_KNOWLEDGE)


def artifact_copy(tiny_root: str, tmp_path_factory, name: str) -> str:
    """A new artefact folder holding a copy of the session's tiny knowledge artefacts."""
    src = shared_artifacts(tiny_root, tmp_path_factory)
    dst = str(tmp_path_factory.mktemp(name))
    shutil.copytree(os.path.join(src, "tiny", "knowledge"), os.path.join(dst, "tiny", "knowledge"))
    return dst


def tiny_gbr(tiny_root: str, artifact_dir: str, **overrides) -> GBRConfig:
    kw = dict(TINY_REASONER, dataset="tiny", data_path=tiny_root, artifact_dir=artifact_dir)
    kw.update(overrides)
    return GBRConfig(**kw).check()


def fill_and_no_fill_artifacts(tiny_root: str, tmp_path_factory, name: str) -> str:
    """An artefact folder with two trained tiny reasoners and their augmentations: rule C (fills)
    and rule T with time_percentile 100 (no gap at all, hence zero fills)."""
    from recbole_reaseq.gbr.augment import augment
    from recbole_reaseq.gbr.train import prepare, train

    folder = artifact_copy(tiny_root, tmp_path_factory, name)
    for kw in ({"rule": "C"}, {"rule": "T", "time_percentile": 100.0}):
        prep = prepare(tiny_gbr(tiny_root, folder, epochs=2, **kw))
        train(prep)
        augment(prep)
    return folder
