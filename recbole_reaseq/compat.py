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
6. RecBole's distributed mode (``local_rank`` / ``nproc`` / ``world_size`` / ``ip`` / ``port`` /
   ``offset``) assumes CUDA: ``Config._init_device`` asserts ``len(gpu_id) >= nproc``, hard-codes
   ``init_process_group(backend="nccl")`` and ``torch.cuda.set_device(local_rank)``, and the
   trainer wraps the model in ``DistributedDataParallel(model, device_ids=[local_rank])``; on a
   CPU machine all of these fail (no nccl, no CUDA device, and DDP refuses ``device_ids`` for a
   CPU module). Fix: :func:`distributed_init` (used by :class:`recbole_reaseq.config.Config` around
   RecBole's own ``_init_device``) starts the process group with ``dist_backend`` (default: nccl
   when CUDA is usable, else gloo) and, without CUDA, skips the GPU-count check and
   ``set_device`` and puts the rank on the CPU; :func:`cpu_ddp` (used by
   :func:`recbole_reaseq.quick_start.build_trainer`) drops ``device_ids`` for CPU modules.
7. ``recbole.utils.ensure_dir`` checks ``os.path.exists`` and then calls ``os.makedirs``: under DDP
   two ranks building their trainer (``checkpoint_dir``), logger or dataset at once can both see
   the folder missing, and the slower one dies with ``FileExistsError``. Fix:
   :func:`atomic_ensure_dir` replaces it with ``os.makedirs(path, exist_ok=True)`` in
   ``recbole.utils`` before RecBole's trainer, data and dataset modules import it by name (and in
   any of them already imported).
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


def _ensure_dir(dir_path: str) -> None:
    os.makedirs(dir_path, exist_ok=True)


_ENSURE_DIR_USERS = ("recbole.utils", "recbole.utils.utils", "recbole.utils.logger",
                     "recbole.data.utils", "recbole.data.dataset.dataset",
                     "recbole.trainer.trainer")


def atomic_ensure_dir() -> None:
    """Make RecBole's ``ensure_dir`` race-free wherever RecBole looks it up (see 7. above).

    Importing ``recbole.utils`` is cheap; the modules that bind ``ensure_dir`` by name later
    (trainer, data, dataset) then bind this one, so they are not imported here."""
    import recbole.utils  # noqa: F401  (also loads recbole.utils.utils and .logger)

    for name in _ENSURE_DIR_USERS:
        module = sys.modules.get(name)
        if module is not None and getattr(module, "ensure_dir", None) is not None:
            module.ensure_dir = _ensure_dir


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


DIST_BACKENDS = ("nccl", "gloo")
DISTRIBUTED_KEYS = ("nproc", "world_size", "ip", "port", "offset")


def _cuda_usable(gpu_id: str) -> bool:
    """CUDA devices usable for ``gpu_id`` (RecBole's string, ``''`` = CPU)."""
    import torch

    if gpu_id == "" or not torch.cuda._is_compiled():
        return False
    # RecBole's _init_device sets exactly this before touching CUDA; do it first so that the CUDA
    # runtime, initialised by is_available(), sees the same devices.
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu_id
    return torch.cuda.is_available()


def dist_backend(config: dict, cuda: bool) -> str:
    """The torch.distributed backend: config ``dist_backend``, or nccl with CUDA, gloo without."""
    backend = config.get("dist_backend")
    if backend in (None, "", "auto"):
        return "nccl" if cuda else "gloo"
    backend = str(backend).lower()
    if backend not in DIST_BACKENDS:
        raise ValueError(f"dist_backend: unknown backend {config.get('dist_backend')!r}. Fix: set "
                         "dist_backend to gloo, nccl or ~ (auto: nccl on GPUs, gloo on CPU).")
    if backend == "nccl" and not cuda:
        raise ValueError("dist_backend: nccl needs CUDA GPUs, and none is usable here (gpu_id "
                         f"{config.get('gpu_id')!r}). Fix: dist_backend: gloo (or ~ for auto).")
    return backend


@contextlib.contextmanager
def distributed_init(config: dict):
    """Wrap RecBole's ``Config._init_device`` so that its distributed branch also runs on CPU.

    ``config`` is the final config dict. Nothing changes for a single process (no
    ``local_rank``). For a rank of a distributed run, ``torch.distributed.init_process_group`` is
    called with the backend of :func:`dist_backend`; without CUDA, RecBole's check that
    ``gpu_id`` lists ``nproc`` GPUs and its ``torch.cuda.set_device`` are skipped, and the device
    becomes the CPU afterwards.
    """
    if "local_rank" not in config:
        yield
        return
    missing = [k for k in DISTRIBUTED_KEYS if config.get(k) is None]
    if missing:
        raise ValueError(f"local_rank is set but {', '.join(missing)} is not. Fix: launch "
                         "distributed runs with `run_recbole.py --nproc=N` (or "
                         "recbole_reaseq.quick_start.run_distributed), which sets all of "
                         f"local_rank, {', '.join(DISTRIBUTED_KEYS)}.")
    import torch
    import torch.distributed as dist

    gpu_id = config.get("gpu_id")
    gpu_id = ",".join(map(str, gpu_id)) if isinstance(gpu_id, (tuple, list)) else str(gpu_id)
    cuda = _cuda_usable(gpu_id)
    backend = dist_backend(config, cuda)
    init_process_group, set_device, nproc = dist.init_process_group, torch.cuda.set_device, None

    def init_with_backend(*args, **kwargs):
        kwargs["backend"] = backend
        return init_process_group(*args, **kwargs)

    dist.init_process_group = init_with_backend
    if not cuda:
        nproc = config["nproc"]
        config["nproc"] = 0                        # RecBole asserts len(gpu_id) >= nproc
        torch.cuda.set_device = lambda device: None
    try:
        yield
    finally:
        dist.init_process_group, torch.cuda.set_device = init_process_group, set_device
        if nproc is not None:
            config["nproc"] = nproc
    if not cuda:
        config["device"] = torch.device("cpu")
    config["dist_backend"] = backend


@contextlib.contextmanager
def cpu_ddp():
    """While RecBole's trainer is built, ``DistributedDataParallel`` of a CPU module gets
    ``device_ids=None`` (RecBole passes ``[local_rank]``, valid for one-GPU-per-rank only)."""
    from recbole.trainer import trainer as recbole_trainer

    ddp = recbole_trainer.DistributedDataParallel

    def ddp_any_device(module, device_ids=None, *args, **kwargs):
        if all(p.device.type == "cpu" for p in module.parameters()):
            device_ids = None
        return ddp(module, device_ids, *args, **kwargs)

    recbole_trainer.DistributedDataParallel = ddp_any_device
    try:
        yield
    finally:
        recbole_trainer.DistributedDataParallel = ddp


atomic_ensure_dir()
