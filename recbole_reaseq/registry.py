"""The one explicit registry of models and batch transforms.

``get_model(name)`` resolves our models first, then every RecBole 1.2.1 built-in (SASRec, GRU4Rec,
BERT4Rec, DIN, DIEN, BPR, LightGCN, ...). RecBole resolves a name through the module file
``recbole/model/<type>_recommender/<name.lower()>.py``, so a name of ours whose lower-case form is a
RecBole module would be ambiguous: :func:`register_model` refuses it, as it refuses a second
registration of the same name.

Our own entries are listed explicitly in ``_MODEL_TABLE`` / ``_TRANSFORM_TABLE`` as import paths
(imported on first use, so ``import recbole_reaseq`` stays cheap). ``run_recbole.py``,
:func:`recbole_reaseq.quick_start.load_data_and_model` and ``benchmarks/run.py`` all go through here.
"""
from __future__ import annotations

import pkgutil
from functools import lru_cache

from recbole_reaseq import compat  # noqa: F401

RECBOLE_MODEL_PACKAGES = (
    "general_recommender",
    "context_aware_recommender",
    "sequential_recommender",
    "knowledge_aware_recommender",
    "exlib_recommender",
)

# name -> "module:attribute". Add new models and transforms here (and nowhere else).
_MODEL_TABLE: dict[str, str] = {
    "ReaSeqCTR": "recbole_reaseq.model.reaseqctr:ReaSeqCTR",
    "KnowledgeDIN": "recbole_reaseq.model.knowledgedin:KnowledgeDIN",
    "GBRDIN": "recbole_reaseq.model.gbrdin:GBRDIN",
    "ReaRec": "recbole_reaseq.model.rearec:ReaRec",
    "PLR": "recbole_reaseq.model.plr:PLR",
}
_TRANSFORM_TABLE: dict[str, str] = {
    "trim_padding": "recbole_reaseq.data.transforms:TrimPadding",
    "gbr_augment": "recbole_reaseq.gbr.transform:GBRAugment",
}

MODELS: dict[str, type] = {}
TRANSFORMS: dict[str, type] = {}


class RegistryError(KeyError):
    """An unknown or colliding model/transform name."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


@lru_cache(maxsize=None)
def recbole_model_modules() -> dict[str, str]:
    """Map lower-case model name -> RecBole module path, from the installed wheel (no imports)."""
    import os

    import recbole.model

    root = os.path.dirname(recbole.model.__file__)
    found = {}
    for package in RECBOLE_MODEL_PACKAGES:
        for info in pkgutil.iter_modules([os.path.join(root, package)]):
            found[info.name] = f"recbole.model.{package}.{info.name}"
    return found


@lru_cache(maxsize=None)
def recbole_model_names() -> tuple[str, ...]:
    """Class names of every RecBole built-in model (imports each model module once)."""
    from recbole.model.abstract_recommender import AbstractRecommender

    names = []
    for lower, module_path in recbole_model_modules().items():
        try:
            module = compat.import_recbole_module(module_path)
        except ImportError:  # exlib models need lightgbm / xgboost
            continue
        for attr, obj in vars(module).items():
            if (attr.lower() == lower and isinstance(obj, type)
                    and issubclass(obj, AbstractRecommender)):
                names.append(attr)
    return tuple(sorted(names))


def _load(path: str):
    module, attr = path.split(":")
    return getattr(compat.import_recbole_module(module), attr)


def _check_new_name(name: str, table: dict, kind: str) -> None:
    if name in table or name in (MODELS if kind == "model" else TRANSFORMS):
        raise RegistryError(f"{kind} name '{name}' is already registered.")
    if kind == "model" and name.lower() in recbole_model_modules():
        raise RegistryError(
            f"model name '{name}' collides with RecBole's built-in module "
            f"'{recbole_model_modules()[name.lower()]}'; choose another name.")


def register_model(name: str, cls: type) -> type:
    """Register a model class under ``name``; refuses duplicates and RecBole names."""
    _check_new_name(name, _MODEL_TABLE, "model")
    MODELS[name] = cls
    return cls


def register_transform(name: str, cls: type) -> type:
    """Register a batch transform class (``cls(config)``, called as ``t(dataset, interaction)``)."""
    _check_new_name(name, _TRANSFORM_TABLE, "transform")
    TRANSFORMS[name] = cls
    return cls


def model_names() -> list[str]:
    return sorted(set(_MODEL_TABLE) | set(MODELS) | set(recbole_model_names()))


def transform_names() -> list[str]:
    return sorted(set(_TRANSFORM_TABLE) | set(TRANSFORMS))


def is_ours(name: str) -> bool:
    return name in _MODEL_TABLE or name in MODELS


def get_model(name: str) -> type:
    """Model class for ``name``: ours first, then RecBole's built-ins."""
    if name in MODELS:
        return MODELS[name]
    if name in _MODEL_TABLE:
        MODELS[name] = _load(_MODEL_TABLE[name])
        return MODELS[name]
    module_path = recbole_model_modules().get(name.lower())
    if module_path is not None:
        cls = getattr(compat.import_recbole_module(module_path), name, None)
        if cls is not None:
            return cls
    raise RegistryError(f"unknown model '{name}'. Valid names: {', '.join(model_names())}")


def get_transform(name: str) -> type:
    if name in TRANSFORMS:
        return TRANSFORMS[name]
    if name in _TRANSFORM_TABLE:
        TRANSFORMS[name] = _load(_TRANSFORM_TABLE[name])
        return TRANSFORMS[name]
    raise RegistryError(
        f"unknown transform '{name}' in config key 'reaseq_transforms'. "
        f"Valid names: {', '.join(transform_names())}")


def get_trainer(model_class: type):
    """RecBole's trainer for the model (ours may name one with a ``trainer_class`` attribute)."""
    from recbole.utils import get_trainer as recbole_get_trainer

    return getattr(model_class, "trainer_class", None) or recbole_get_trainer(
        model_class.type, model_class.__name__)
