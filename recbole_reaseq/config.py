"""``Config``: RecBole's Config plus this package's YAML defaults, registry and data-path lookup.

Precedence, lowest first (RecBole's own order, with our defaults slotted in as "internal"):

1. RecBole's internal defaults (its ``overall.yaml``, model YAML, quick-start YAML);
2. ours: ``properties/overall.yaml`` < ``properties/model/<Model>.yaml`` <
   ``properties/dataset/<dataset>.yaml``;
3. ``config_file_list`` < ``config_dict`` < command line (``argv``), exactly as in RecBole.

``properties/`` ships inside the package (``recbole_reaseq/properties``, declared as package data), so
it is found from a checkout and after ``pip install .`` alike (tested).

The command line is read only from the ``argv`` argument (``run_recbole.py`` passes
``sys.argv[1:]``); see :mod:`recbole_reaseq.compat`.

Data sets: ``ml-100k`` is RecBole's embedded copy (RecBole hard-wires its ``data_path``). For every
other data set, ``data_path`` is, in order: ``--data_path`` / config, the environment variable
``REASEQ_DATA_PATH``, then ``../shared/datasets`` beside the checkout and ``./dataset``. A data set
found in none of them raises :class:`DatasetNotFoundError`, which lists where it looked.

Distributed runs (``local_rank`` set by :func:`recbole_reaseq.quick_start.run_distributed`): RecBole's
own ``_init_device`` starts torch.distributed, with the backend ``dist_backend`` (nccl on GPUs, gloo
on CPU, see :func:`recbole_reaseq.compat.distributed_init`).
"""
from __future__ import annotations

import os

from recbole_reaseq import compat
from recbole_reaseq import registry

from recbole.config import Config as _RecBoleConfig  # noqa: E402  (after compat)

EVAL_PROTOCOLS = ("ranking", "ctr")  # values of eval_protocol / report_protocols (README "Evaluation protocols")

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(PACKAGE_DIR)
DATA_PATH_ENV = "REASEQ_DATA_PATH"
EMBEDDED_DATASETS = ("ml-100k",)


def properties_dir() -> str:
    """Folder of our YAML defaults (package data: works from a checkout and when installed)."""
    path = os.path.join(PACKAGE_DIR, "properties")
    if not os.path.isfile(os.path.join(path, "overall.yaml")):
        raise FileNotFoundError(
            f"recbole_reaseq's properties/overall.yaml is missing under {path}; reinstall the "
            "package (`pip install .`), which ships properties/ as package data.")
    return path


def property_files(model: str, dataset: str) -> list[str]:
    """Existing default files for (model, dataset), lowest precedence first."""
    root = properties_dir()
    files = [os.path.join(root, "overall.yaml"),
             os.path.join(root, "model", f"{model}.yaml"),
             os.path.join(root, "dataset", f"{dataset}.yaml")]
    return [f for f in files if os.path.isfile(f)]


class DatasetNotFoundError(FileNotFoundError):
    pass


def data_path_candidates(explicit: str | None = None) -> list[str]:
    """Folders that may hold ``<dataset>/<dataset>.inter``, in lookup order."""
    if explicit:
        return [os.path.abspath(explicit)]
    found = []
    if os.environ.get(DATA_PATH_ENV):
        found.append(os.path.abspath(os.environ[DATA_PATH_ENV]))
    found += [os.path.abspath(os.path.join(REPO_ROOT, "..", "shared", "datasets")),
              os.path.abspath(os.path.join(os.getcwd(), "dataset"))]
    return list(dict.fromkeys(found))


def resolve_data_path(dataset: str, explicit: str | None = None) -> str:
    """The folder that holds ``dataset``; raises with every place it looked and how to fix it."""
    candidates = data_path_candidates(explicit)
    for root in candidates:
        if os.path.isfile(os.path.join(root, dataset, f"{dataset}.inter")):
            return root
    looked = "\n  ".join(os.path.join(c, dataset, f"{dataset}.inter") for c in candidates)
    raise DatasetNotFoundError(
        f"data set '{dataset}' not found. Looked for:\n  {looked}\n"
        f"Provide RecBole atomic files there, or point at their parent folder with "
        f"--data_path=PATH or the environment variable {DATA_PATH_ENV}=PATH "
        f"(this project's data sets live in ../shared/datasets). "
        f"Embedded data sets that need no files: {', '.join(EMBEDDED_DATASETS)}.")


def config_get(config, key: str, default=None):
    """``config[key]`` from a RecBole Config or a plain dict; ``default`` when the key is missing
    or None. (RecBole's ``Config.__getitem__`` returns None for an unknown key, a dict raises.)"""
    try:
        value = config[key]
    except (KeyError, TypeError):
        value = None
    return default if value is None else value


def time_normalized(config) -> bool:
    """Whether RecBole rescales the time field (``TIME_FIELD``) to [0, 1] under ``config``: named
    in ``normalize_field``, or, with no ``normalize_field``, ``normalize_all``. The interaction
    order then follows the rescaled float32 values
    (:func:`recbole_reaseq.data.candidates.recbole_time_key`)."""
    chosen = config_get(config, "normalize_field")
    if chosen:
        return config_get(config, "TIME_FIELD", "timestamp") in chosen
    return bool(config_get(config, "normalize_all"))


def default_time_normalized(dataset: str, data_path: str | None = None) -> bool:
    """:func:`time_normalized` under the defaults for ``dataset`` (RecBole's and ours, no user
    overrides): for tools run outside a RecBole config, such as ``python -m recbole_reaseq.gbr``."""
    config = Config(model="DIN", dataset=dataset,
                    config_dict={"data_path": data_path} if data_path else None)
    return time_normalized(config)


class Config(_RecBoleConfig):
    """RecBole ``Config`` that knows our registry, our properties and our data folders.

    Args:
        model: model name (ours or any RecBole built-in) or class.
        dataset: data set name.
        config_file_list: YAML files, as in RecBole.
        config_dict: overrides, as in RecBole.
        argv: command-line tokens (``--key=value``); ``None`` means no command line.
    """

    def __init__(self, model=None, dataset=None, config_file_list=None, config_dict=None,
                 argv: list[str] | None = None):
        self._argv = list(argv or [])
        super().__init__(model=model, dataset=dataset, config_file_list=config_file_list,
                         config_dict=config_dict)

    def _load_cmd_line(self):
        with compat.explicit_argv(self._argv):
            return super()._load_cmd_line()

    def _get_model_and_dataset(self, model, dataset):
        if model is None:
            model = self.external_config_dict.get("model")
        if isinstance(model, str):
            model = registry.get_model(model)
        return super()._get_model_and_dataset(model, dataset)

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        for path in property_files(model, dataset):
            loaded = self._update_internal_config_dict(path) or {}
            if os.path.basename(os.path.dirname(path)) == "dataset":
                self.parameters["Dataset"] += [k for k in loaded
                                               if k not in self.parameters["Dataset"]]

    def _init_device(self):
        # RecBole's own device / torch.distributed set-up, made to work on CPU (gloo) too
        with compat.distributed_init(self.final_config_dict):
            super()._init_device()

    def _set_default_parameters(self):
        if self.final_config_dict.get("eval_protocol") == "ctr":
            # early stopping on the CTR track watches ctr_valid_metric (default gauc)
            self.final_config_dict["valid_metric"] = self.final_config_dict["ctr_valid_metric"]
        if self.dataset not in EMBEDDED_DATASETS:
            self.final_config_dict["data_path"] = resolve_data_path(
                self.dataset, self.external_config_dict.get("data_path"))
        super()._set_default_parameters()
