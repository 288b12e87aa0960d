"""Every workaround that RecBole 1.2.1 needs on today's Python stack, in one place.

This module is imported by ``recbole_reaseq/__init__.py`` before anything from ``recbole``.
Nothing else in the package patches RecBole.

Symptoms and fixes (RecBole 1.2.1):

1. torch >= 2.6 made ``torch.load(weights_only=True)`` the default. RecBole's checkpoints hold a
   ``Config`` object and numpy arrays, so ``Trainer.evaluate(load_best_model=True)`` and
   ``Trainer.resume_checkpoint`` fail with ``UnpicklingError: Weights only load failed``.
   Fix: ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` (read by torch at each ``torch.load``). Only load
   checkpoints you trust, exactly as with RecBole before torch 2.6.
2. RecBole's metrics and data code use ``np.float``, ``np.int``, ... (removed in numpy 1.24).
   RecBole sets these aliases only inside ``Config.__init__``, so e.g. reloading a checkpoint in a
   fresh process and evaluating it crashes in NDCG. Fix: set the same aliases at import time.
3. ``Config._load_cmd_line`` reads ``sys.argv`` wherever ``Config`` is built, so pytest flags or a
   host program's arguments leak into the configuration. Fix: :func:`explicit_argv`, used by
   :class:`recbole_reaseq.config.Config`, makes RecBole's own parser read an explicit list instead
   (empty unless the caller passes one, as ``run_recbole.py`` does).
4. ``recbole/model/sequential_recommender/sine.py`` calls ``torch.autograd.set_detect_anomaly(True)``
   at import time, and importing ANY sequential model imports it (through the package
   ``__init__``). Anomaly mode NaN-checks every backward op: SASRec trains several times slower.
   Fix: :func:`import_recbole_module` (used by the registry for every model import) restores the
   anomaly setting that was in force before the import.
5. numpy 2, pandas 3 and setuptools >= 81 break RecBole outright (``Config.compatibility_settings``,
   no-op in-place ``fillna`` that leaves padding rows NaN, ``from ray import tune`` in
   ``recbole.quick_start``). These cannot be patched safely: ``setup.py`` pins ``numpy<2``,
   ``pandas<3``, ``setuptools<81`` and :func:`check_versions` refuses to run on a broken stack.
"""
from __future__ import annotations

import contextlib
import os
import sys
import warnings

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

import numpy as np  # noqa: E402

# Same aliases as recbole.config.Config.compatibility_settings (RecBole 1.2.1).
_NUMPY_ALIASES = {"bool": "bool_", "int": "int_", "float": "float_", "complex": "complex_",
                  "object": "object_", "str": "str_", "long": "int_", "unicode": "unicode_"}
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    for _alias, _target in _NUMPY_ALIASES.items():
        if not hasattr(np, _alias) and hasattr(np, _target):
            setattr(np, _alias, getattr(np, _target))


def _major(version: str) -> int:
    return int(version.split(".")[0])


def check_versions() -> None:
    """Raise a clear error if numpy/pandas are too new for RecBole 1.2.1."""
    import pandas as pd

    problems = []
    if _major(np.__version__) >= 2:
        problems.append(f"numpy {np.__version__} (need numpy<2)")
    if _major(pd.__version__) >= 3:
        problems.append(f"pandas {pd.__version__} (need pandas<3: in-place fillna is a no-op "
                        "and padding rows become garbage ids)")
    if problems:
        raise RuntimeError("RecBole 1.2.1 does not work with " + ", ".join(problems)
                           + ". Reinstall with `bash scripts/env.sh` or "
                           "`pip install 'numpy<2' 'pandas<3' 'setuptools<81'`.")


check_versions()


def import_recbole_module(path: str):
    """``importlib.import_module(path)`` without RecBole's import-time anomaly-mode switch."""
    import importlib

    import torch

    anomaly = torch.is_anomaly_enabled()
    try:
        return importlib.import_module(path)
    finally:
        torch.autograd.set_detect_anomaly(anomaly)


@contextlib.contextmanager
def explicit_argv(args: list[str] | None):
    """Let RecBole's ``Config._load_cmd_line`` parse ``args`` instead of the process's argv."""
    saved = sys.argv
    sys.argv = [saved[0] if saved else "recbole_reaseq"] + list(args or [])
    try:
        yield
    finally:
        sys.argv = saved
